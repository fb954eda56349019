//! `quern pull`: fetch a model artifact, verify digests and signature, write its files.

use anyhow::{Context, Result};
use quern_registry::client::{self, PullOptions};
use quern_registry::signing::VerifyingKey;
use quern_registry::Reference;
use std::path::PathBuf;

/// Pull a model from an OCI registry, verifying digests and signature.
///
/// Fails closed: the signature must verify against a --trust key, and every
/// digest must match, before any file is written under its final name.
#[derive(clap::Args)]
pub struct PullArgs {
    /// HOST[:PORT]/NAME[:TAG] or HOST[:PORT]/NAME@sha256:HEX
    pub reference: String,
    /// Output folder (default: the repository's last name component).
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Public key (PEM) whose signature is accepted; repeat for several.
    #[arg(long, value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// Pull without checking the signature. Dangerous: the weights are unverified.
    #[arg(long)]
    pub insecure_skip_signature: bool,
    /// Use http:// (loopback registries use it anyway).
    #[arg(long)]
    pub plain_http: bool,
    /// Blobs downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Copy files out of the local store instead of hard-linking them.
    #[arg(long)]
    pub copy: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: PullArgs) -> Result<()> {
    let reference = Reference::parse(&args.reference)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(reference.name.rsplit('/').next().unwrap_or("model")));
    let mut opts = PullOptions::new(reference, &out);
    for k in &args.trust {
        opts.trust.push(VerifyingKey::load(k)?);
    }
    if args.insecure_skip_signature {
        eprintln!("quern: WARNING: --insecure-skip-signature: the pulled weights are NOT verified against any signature");
    }
    opts.insecure_skip_signature = args.insecure_skip_signature;
    opts.plain_http = args.plain_http;
    opts.parallel = args.parallel;
    opts.copy = args.copy;
    let bars = super::push::Bars::new(args.quiet || args.json, "pulled");
    let report =
        client::pull(&opts, &bars).with_context(|| format!("pulling {}", args.reference))?;
    bars.done();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}@{} -> {}",
        report.reference,
        report.manifest_digest,
        out.display()
    );
    for f in &report.files {
        println!("  {}  {} bytes  sha256:{}", f.name, f.size, f.sha256.hex());
    }
    println!(
        "  {} bytes downloaded, {} blob(s) from the local store",
        report.bytes_downloaded, report.blobs_cached
    );
    match &report.signed_by {
        Some(h) => println!("  signature verified: key {h}"),
        None => println!("  signature NOT verified"),
    }
    if let Some(p) = &report.provenance {
        let s = &p.summary;
        println!(
            "  provenance ({}): quern {} {} by {}; source {}; {} input(s) hashed; {}",
            if p.verified {
                "signed, verified"
            } else {
                "unsigned"
            },
            s.builder_version,
            s.command,
            s.builder,
            s.source.as_deref().unwrap_or("unknown"),
            s.dependencies,
            if p.covers_files {
                "covers these files"
            } else {
                "does NOT name these files"
            }
        );
    }
    for w in &report.warnings {
        eprintln!("quern: warning: {w}");
    }
    Ok(())
}
