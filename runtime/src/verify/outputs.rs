//! Both models over the same chunks of tokens, one chunk at a time: the
//! reference's scored logits are kept only until the artifact's for the same
//! chunk have been compared with them, so memory is bounded by a chunk's logits.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::error::VerifyError;
use super::progress::{Progress, Stage};
use crate::eval::{compare_position, Accumulator, ChunkPlan, OutputSummary};
use crate::model::Model;

/// Checks that the two models can be evaluated over `plan`'s chunks.
pub fn check_models(
    reference: &Model,
    artifact: &Model,
    plan: &ChunkPlan,
) -> Result<(), VerifyError> {
    if reference.config.vocab != artifact.config.vocab {
        return Err(VerifyError::VocabMismatch {
            reference: reference.config.vocab,
            artifact: artifact.config.vocab,
        });
    }
    for m in [reference, artifact] {
        if plan.n_ctx > m.config.n_ctx_train {
            return Err(VerifyError::ContextTooLong {
                n_ctx: plan.n_ctx,
                max: m.config.n_ctx_train,
                path: m.path().to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The logits of `chunk` from an empty cache. A model opened on the CUDA
/// backend runs the device-resident forward pass ([`crate::cuda::decode::DeviceModel`]:
/// every op on the GPU, the logits copied back) unless `QUERN_VERIFY_HOST_OPS=1`.
fn chunk_logits(model: &Model, chunk: &[u32], c: usize) -> Result<Vec<f32>, VerifyError> {
    let err = |source| VerifyError::Forward {
        path: model.path().to_path_buf(),
        chunk: c,
        source: Box::new(source),
    };
    // QUERN_VERIFY_HOST_OPS=1: the CUDA backend multiplies, the host does the
    // rest (to tell the device-resident pass from the kernels when they differ).
    let host_ops = std::env::var("QUERN_VERIFY_HOST_OPS").as_deref() == Ok("1");
    if !host_ops && crate::cuda::decode::cuda_backend(model).is_some() {
        let mut dm = crate::cuda::decode::DeviceModel::new(model, chunk.len()).map_err(err)?;
        return dm.forward(chunk, true).map_err(err);
    }
    let mut session = model.session(chunk.len());
    model.forward(&mut session, chunk, true).map_err(err)
}

/// Where the reference's scored logits of each chunk are kept between runs, so
/// that verifying many artifacts against one reference runs the reference once.
pub struct ReferenceCache<'a> {
    pub dir: &'a Path,
    /// The reference's content digest (sha256 hex): a changed reference misses.
    pub reference_sha256: &'a str,
    /// The activation code width (`precision`): a quantised reference's logits
    /// depend on it. 8-bit entries keep the key they had before the setting.
    pub act_bits: crate::precision::ActBits,
}

impl ReferenceCache<'_> {
    /// The file for one chunk: keyed by the reference, the chunk's tokens, the
    /// scored range and the activation code width, so another text, context,
    /// reference or width never matches.
    fn entry(&self, chunk: &[u32], first: usize, last: usize, vocab: usize) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.reference_sha256.as_bytes());
        if self.act_bits == crate::precision::ActBits::Sixteen {
            h.update(b"act_bits=16");
        }
        for v in [first, last, vocab, chunk.len()] {
            h.update((v as u64).to_le_bytes());
        }
        for t in chunk {
            h.update(t.to_le_bytes());
        }
        let key: [u8; 32] = h.finalize().into();
        let hex: String = key[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.f32"))
    }

    fn load(&self, path: &Path, len: usize) -> Option<Vec<f32>> {
        let bytes = std::fs::read(path).ok()?;
        (bytes.len() == len * 4).then(|| {
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }

    /// Written under a temporary name and renamed: a reader never sees half a chunk.
    fn store(&self, path: &Path, logits: &[f32]) -> Result<(), VerifyError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| VerifyError::Io { path: p, source }
        };
        std::fs::create_dir_all(self.dir).map_err(io(self.dir))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }
}

/// Evaluates `plan`'s chunks of `tokens` with both models.
pub fn compare_outputs(
    reference: &Model,
    artifact: &Model,
    tokens: &[u32],
    plan: &ChunkPlan,
    keep_drops: usize,
    cache: Option<&ReferenceCache>,
    progress: &dyn Progress,
) -> Result<OutputSummary, VerifyError> {
    check_models(reference, artifact, plan)?;
    let vocab = reference.config.vocab;
    let (first, last) = (plan.first_scored(), plan.n_ctx - 1);
    let mut acc = Accumulator::new(keep_drops);
    progress.start(Stage::Outputs, plan.n_chunks as u64);
    for c in 0..plan.n_chunks {
        let chunk = plan.chunk(tokens, c);
        // Keep only the scored rows of the reference while the artifact runs.
        let entry = cache.map(|k| (k, k.entry(&chunk, first, last, vocab)));
        let cached = entry
            .as_ref()
            .and_then(|(k, path)| k.load(path, (last - first) * vocab));
        let ref_scored = match cached {
            Some(logits) => logits,
            None => {
                let logits =
                    chunk_logits(reference, &chunk, c)?[first * vocab..last * vocab].to_vec();
                if let Some((k, path)) = &entry {
                    k.store(path, &logits)?;
                }
                logits
            }
        };
        let art = chunk_logits(artifact, &chunk, c)?;
        let art_scored = &art[first * vocab..last * vocab];
        let scores: Vec<_> = ref_scored
            .par_chunks(vocab)
            .zip(art_scored.par_chunks(vocab))
            .enumerate()
            .map(|(k, (r, a))| compare_position(r, a, chunk[first + k + 1]))
            .collect();
        for (k, s) in scores.iter().enumerate() {
            acc.push(c, first + k, chunk[first + k + 1], s);
        }
        progress.advance(1);
        progress.chunk_done(&acc);
    }
    progress.finish();
    // A plan has at least one chunk with scored positions; no figures otherwise.
    acc.finish()
        .ok_or(VerifyError::Eval(crate::eval::EvalError::ZeroChunks))
}
