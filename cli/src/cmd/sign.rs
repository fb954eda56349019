//! `quern sign`: write `model.sig` (OpenSSF model-signing format) beside a model's files,
//! or check one with `--verify`.

use anyhow::{Context, Result};
use quern_registry::signing::model_sig::{self, SIGNATURE_FILE};
use quern_registry::signing::{SigningKey, VerifyingKey};
use std::path::PathBuf;

/// Sign a model folder (every file in it) or one file; `model_signing verify key` accepts the result.
#[derive(clap::Args)]
pub struct SignArgs {
    /// Model folder, or a single model file.
    pub path: PathBuf,
    /// PEM private key (ECDSA P-256 or P-384), e.g. from `quern keygen`.
    #[arg(
        long,
        value_name = "KEY",
        required_unless_present = "verify",
        conflicts_with = "verify"
    )]
    pub key: Option<PathBuf>,
    /// Check PATH against its signature with this public key instead of signing.
    #[arg(long, value_name = "KEY.pub")]
    pub verify: Option<PathBuf>,
    /// Signature file (default: model.sig in the folder, or beside the file).
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
}

pub fn run(args: SignArgs) -> Result<()> {
    let default_sig = if args.path.is_dir() {
        args.path.join(SIGNATURE_FILE)
    } else {
        quern_registry::fsutil::parent_dir(&args.path).join(SIGNATURE_FILE)
    };
    let sig_path = args.signature.clone().unwrap_or(default_sig);
    if let Some(pub_key) = &args.verify {
        let key = VerifyingKey::load(pub_key)?;
        let folder = if args.path.is_dir() {
            args.path.clone()
        } else {
            quern_registry::fsutil::parent_dir(&args.path).to_path_buf()
        };
        let sig = model_sig::verify_folder(&folder, &sig_path, &[key])
            .with_context(|| format!("verifying {}", args.path.display()))?;
        println!(
            "verified {} file(s) of {} against {}",
            sig.resources.len(),
            sig.model_name,
            sig_path.display()
        );
        return Ok(());
    }
    let key_path = args.key.as_ref().context("--key is required")?;
    let key = SigningKey::load(key_path)?;
    let (bundle, _) = model_sig::sign_path(&args.path, &key, &[])?;
    quern_registry::fsutil::write_atomic(&sig_path, &bundle.to_json())
        .with_context(|| format!("writing {}", sig_path.display()))?;
    let n = model_sig::ModelSignature::from_statement(&bundle.payload_unverified()?)?
        .resources
        .len();
    println!("signed {n} file(s): {}", sig_path.display());
    Ok(())
}
