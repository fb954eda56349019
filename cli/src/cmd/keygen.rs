//! `quern keygen`: an ECDSA key pair for signing models (PEM, model-signing compatible).

use anyhow::{bail, Context, Result};
use quern_registry::signing::keys::Curve;
use quern_registry::signing::SigningKey;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CurveArg {
    /// ECDSA P-256 with SHA-256
    P256,
    /// ECDSA P-384 with SHA-384
    P384,
}

/// Write a PEM private key (PKCS#8) to KEY and its public key to KEY.pub.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Private key file to write; the public key goes to the same path plus `.pub`.
    #[arg(short, long, value_name = "KEY")]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "p256")]
    pub curve: CurveArg,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: KeygenArgs) -> Result<()> {
    let mut pub_path = args.output.clone().into_os_string();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    for p in [&args.output, &pub_path] {
        if p.exists() && !args.force {
            bail!("{} exists (use --force to overwrite)", p.display());
        }
    }
    let curve = match args.curve {
        CurveArg::P256 => Curve::P256,
        CurveArg::P384 => Curve::P384,
    };
    let key = SigningKey::generate(curve);
    let private = key.to_pem()?;
    let public = key.verifying_key().to_pem()?;
    write_private(&args.output, private.as_bytes())
        .with_context(|| format!("writing {}", args.output.display()))?;
    std::fs::write(&pub_path, public).with_context(|| format!("writing {}", pub_path.display()))?;
    println!("private key: {}", args.output.display());
    println!(
        "public key:  {} (hint {})",
        pub_path.display(),
        key.verifying_key().hint()
    );
    Ok(())
}

/// The private key is readable by its owner only.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
