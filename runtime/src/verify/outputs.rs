//! Both models over the same chunks of tokens, one chunk at a time: the
//! reference's scored logits are kept only until the artifact's for the same
//! chunk have been compared with them, so memory is bounded by a chunk's logits.

use rayon::prelude::*;

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

/// The logits of `chunk` from an empty cache.
fn chunk_logits(model: &Model, chunk: &[u32], c: usize) -> Result<Vec<f32>, VerifyError> {
    let mut session = model.session(chunk.len());
    model
        .forward(&mut session, chunk, true)
        .map_err(|source| VerifyError::Forward {
            path: model.path().to_path_buf(),
            chunk: c,
            source: Box::new(source),
        })
}

/// Evaluates `plan`'s chunks of `tokens` with both models.
pub fn compare_outputs(
    reference: &Model,
    artifact: &Model,
    tokens: &[u32],
    plan: &ChunkPlan,
    keep_drops: usize,
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
        let ref_scored = chunk_logits(reference, &chunk, c)?[first * vocab..last * vocab].to_vec();
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
