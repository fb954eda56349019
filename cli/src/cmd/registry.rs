//! `quern registry serve|gc`: the embedded OCI registry.

use anyhow::{Context, Result};
use quern_registry::server::{gc, Server, ServerConfig, Storage};
use std::path::PathBuf;

/// Run or maintain quern's OCI distribution registry.
#[derive(clap::Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub command: RegistryCommand,
}

#[derive(clap::Subcommand)]
pub enum RegistryCommand {
    /// Serve the OCI distribution API (v2, OCI 1.1 referrers) from a folder.
    Serve {
        /// Storage folder (created if missing).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        #[arg(long, default_value = "127.0.0.1:5000")]
        addr: String,
        /// Require this token (first line of the file) for every write: as
        /// `Authorization: Bearer TOKEN` or as the password of `docker login`.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Print one line per request.
        #[arg(long)]
        log: bool,
        /// Worker threads.
        #[arg(long, default_value_t = 16)]
        threads: usize,
    },
    /// Delete blobs that no manifest references (run while no push is in flight).
    Gc {
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Report what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: RegistryArgs) -> Result<()> {
    match args.command {
        RegistryCommand::Serve {
            root,
            addr,
            token_file,
            log,
            threads,
        } => {
            let mut config = ServerConfig::new(&root, &addr);
            config.log = log;
            config.threads = threads;
            if let Some(f) = &token_file {
                config = config.token_file(f)?;
            }
            let server = Server::start(config)?;
            // Tests and scripts read this line to learn the port (for --addr 127.0.0.1:0).
            println!("listening on {}", server.addr());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            server.wait();
            Ok(())
        }
        RegistryCommand::Gc {
            root,
            dry_run,
            json,
        } => {
            let storage =
                Storage::open(&root).with_context(|| format!("opening {}", root.display()))?;
            let r = gc::collect(&storage, dry_run);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                println!(
                    "{verb} {} blob(s), {} bytes; kept {}; {verb} {} stale upload(s)",
                    r.blobs_removed, r.bytes_freed, r.blobs_kept, r.uploads_removed
                );
            }
            Ok(())
        }
    }
}
