//! Hooks into the forward pass for calibration: an [`Observer`] sees the
//! activations that enter each group of matrices sharing one input, and the
//! residual stream entering each block.
//!
//! `quern calibrate` accumulates an importance matrix from
//! [`Observer::linear_input`]; AWQ's scale search captures block inputs and the
//! per-linear inputs of the same pass.

/// What the forward pass reports. Every method has an empty default, so an
/// observer implements only what it needs.
pub trait Observer {
    /// `x` (`n_tokens × width`, token-major) is about to be multiplied by each of
    /// the matrices `tensors` (GGUF names: `blk.0.attn_q.weight`, …). q/k/v share
    /// one call, as do gate/up; the output projection reports `output.weight`
    /// (or `token_embd.weight` when the embeddings are tied) when the pass
    /// computes logits for every token.
    fn linear_input(&mut self, tensors: &[&str], x: &[f32], n_tokens: usize) {
        let _ = (tensors, x, n_tokens);
    }

    /// The residual stream (`n_tokens × n_embd`) entering block `layer`, and with
    /// `layer == n_layer` leaving the last block (before the output norm).
    fn block_input(&mut self, layer: usize, x: &[f32], n_tokens: usize) {
        let _ = (layer, x, n_tokens);
    }
}

/// An observer that sees nothing (the plain forward pass).
pub struct NoObserver;

impl Observer for NoObserver {}
