//! `quern push`: upload a GGUF file or a model folder as a signed OCI artifact.

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar};
use quern_registry::client::{self, Compress, Observer, PushOptions};
use quern_registry::signing::SigningKey;
use quern_registry::{Digest, Reference};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CompressArg {
    /// Raw files (a layer's digest is the file's sha256).
    None,
    /// zstd for every file.
    Zstd,
    /// zstd where it saves at least 10%.
    Auto,
}

/// Push a GGUF file or a model folder (safetensors, AWQ, tokenizer, config) to an OCI registry.
#[derive(clap::Args)]
pub struct PushArgs {
    /// A .gguf file or a model folder.
    pub path: PathBuf,
    /// Destination: HOST[:PORT]/NAME[:TAG] (tag defaults to `latest`).
    pub reference: String,
    /// Sign with this PEM private key and attach the signature (and provenance) as referrers.
    #[arg(long, value_name = "KEY")]
    pub key: Option<PathBuf>,
    /// Use http:// (loopback registries use it anyway).
    #[arg(long)]
    pub plain_http: bool,
    #[arg(long, value_enum, default_value = "none")]
    pub compress: CompressArg,
    /// Size of each upload chunk (PATCH), MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub chunk_mib: u64,
    /// Blobs uploaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: PushArgs) -> Result<()> {
    let reference = Reference::parse(&args.reference)?;
    let mut opts = PushOptions::new(&args.path, reference);
    if let Some(k) = &args.key {
        opts.key = Some(SigningKey::load(k)?);
    }
    opts.plain_http = args.plain_http;
    opts.compress = match args.compress {
        CompressArg::None => Compress::None,
        CompressArg::Zstd => Compress::Zstd,
        CompressArg::Auto => Compress::Auto,
    };
    opts.chunk_size = args.chunk_mib.max(1) << 20;
    opts.parallel = args.parallel;
    let bars = Bars::new(args.quiet || args.json, "pushed");
    let report = client::push(&opts, &bars)
        .with_context(|| format!("pushing {} to {}", args.path.display(), args.reference))?;
    bars.done();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}@{}", report.reference, report.manifest_digest);
    println!(
        "  {} blob(s) uploaded ({} bytes), {} already there, {} mounted",
        report.uploaded, report.bytes_sent, report.existing, report.mounted
    );
    if let Some((d, via)) = &report.signature {
        println!("  signature {d} ({via:?})");
    } else {
        println!("  unsigned (pass --key to sign)");
    }
    if let Some((d, via)) = &report.provenance {
        println!("  provenance {d} ({via:?})");
    }
    Ok(())
}

/// indicatif bars: one per blob and a total; also used by `pull`.
pub(crate) struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    blobs: Mutex<HashMap<Digest, ProgressBar>>,
    quiet: bool,
}

impl Bars {
    pub(crate) fn new(quiet: bool, total_label: &str) -> Bars {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let total = multi.add(crate::progress::bytes_bar(0, total_label, quiet));
        Bars {
            multi,
            total,
            blobs: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    pub(crate) fn done(&self) {
        self.total.finish();
    }
}

fn short(label: &str) -> String {
    let n = label.chars().count();
    if n <= 24 {
        label.to_string()
    } else {
        format!("…{}", label.chars().skip(n - 23).collect::<String>())
    }
}

impl Observer for Bars {
    fn start(&self, digest: &Digest, label: &str, total: u64, done: u64) {
        let bar = self.multi.insert_before(
            &self.total,
            crate::progress::bytes_bar(total, &short(label), self.quiet),
        );
        bar.set_position(done);
        self.total.inc_length(total);
        self.total.inc(done);
        if let Ok(mut m) = self.blobs.lock() {
            m.insert(digest.clone(), bar);
        }
    }
    fn advance(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = self.blobs.lock().ok().and_then(|m| m.get(digest).cloned()) {
            b.inc(bytes);
        }
        self.total.inc(bytes);
    }
    fn finish(&self, digest: &Digest, _how: &str) {
        if let Some(b) = self.blobs.lock().ok().and_then(|m| m.get(digest).cloned()) {
            let rest = b.length().unwrap_or(0).saturating_sub(b.position());
            self.total.inc(rest);
            b.finish();
        }
    }
    fn note(&self, msg: &str) {
        if !self.quiet {
            let _ = self.multi.println(msg);
        }
    }
}
