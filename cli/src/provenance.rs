//! The provenance statement `convert` and `quantize` write beside their output
//! (`OUT.provenance.json`): quern's version, the command and parameters, the
//! source and every source file's sha256, other inputs, and the output's digest.
//! `quern push` attaches it to the artifact.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use quern_registry::provenance::{sidecar_path, ProvenanceBuilder};
use quern_registry::Digest;

/// Source hashing started in the background, so it overlaps the conversion.
pub struct Pending(JoinHandle<Result<ProvenanceBuilder>>);

/// Starts hashing `source` (the resolved model folder or file) and `inputs`.
pub fn start(
    command: &str,
    source_arg: &str,
    source: &Path,
    params: Vec<(&'static str, serde_json::Value)>,
    inputs: Vec<(&'static str, PathBuf)>,
) -> Pending {
    let (command, source_arg, source) = (
        command.to_string(),
        source_arg.to_string(),
        source.to_path_buf(),
    );
    Pending(std::thread::spawn(move || {
        let mut b = ProvenanceBuilder::new(&command)
            .builder_version(env!("CARGO_PKG_VERSION"))
            .argv(std::env::args());
        for (k, v) in params {
            b = b.parameter(k, v);
        }
        // A hub id resolves into the cache's snapshots/<revision>/ folder.
        let revision = (!Path::new(&source_arg).exists())
            .then(|| source.file_name().map(|n| n.to_string_lossy().into_owned()))
            .flatten();
        let repo = match &revision {
            Some(_) => source_arg
                .split('@')
                .next()
                .unwrap_or(&source_arg)
                .to_string(),
            None => std::fs::canonicalize(&source)
                .unwrap_or_else(|_| source.clone())
                .display()
                .to_string(),
        };
        b = b.source(&repo, revision.as_deref());
        b = if source.is_dir() {
            b.source_folder(&source)?
        } else {
            let name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            b.source_file(&name, &source)?
        };
        for (role, path) in inputs {
            b = b.input_file(role, &path)?;
        }
        Ok(b)
    }))
}

impl Pending {
    /// Adds the finished output and writes the sidecar; returns its path.
    /// `sha256`: the output file's digest when the writer computed it on the way
    /// out (then the file is not read again, and the digest cache learns it).
    pub fn finish(self, output: &Path, sha256: Option<[u8; 32]>) -> Result<PathBuf> {
        let builder = self
            .0
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .context("provenance: hashing the sources")?;
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let builder = match sha256 {
            _ if output.is_dir() => builder.subject_folder(output)?,
            Some(raw) => {
                let digest = Digest::from_raw(raw);
                quern_registry::digest_cache::remember_written(output, &digest);
                builder.subject_digest(&name, &digest)
            }
            None => builder.subject_file(&name, output)?,
        };
        let path = sidecar_path(output);
        builder
            .write(&path)
            .with_context(|| format!("{}: cannot write the provenance", path.display()))?;
        Ok(path)
    }
}
