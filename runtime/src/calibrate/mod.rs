//! Calibration: statistics of the activations a model sees on a calibration
//! text, for importance-weighted quantisation.
//!
//! [`importance_matrix`] runs the text through the model in chunks exactly as
//! llama.cpp's `llama-imatrix` does and accumulates its importance matrix
//! ([`imatrix::ImatrixCollector`]):
//! - the whole text is tokenised once, BOS first when the tokenizer adds one;
//! - it is cut into non-overlapping chunks of `ctx` tokens (at most `chunks`),
//!   each evaluated in full from an empty cache with its first token replaced by
//!   BOS (when BOS is used), so every token of every chunk contributes;
//! - logits are computed for the last token only, unless the output projection
//!   is collected (`process_output` on a model with its own `output.weight`).
//!
//! The file it makes records the text's name, the chunk count and the chunk size
//! as llama-imatrix's GGUF output does.

pub mod imatrix;

use std::path::{Path, PathBuf};

use quern_formats::imatrix::Imatrix;
use quern_formats::GgmlType;

use crate::error::RuntimeError;
use crate::eval::{ChunkPlan, EvalError};
use crate::model::Model;
use crate::verify::text::{EvalText, EvalTokenizer};
use crate::verify::VerifyError;

pub use imatrix::ImatrixCollector;

/// The smallest chunk llama-imatrix collects from (it skips products of fewer
/// than 16 tokens).
pub const MIN_CTX: usize = 16;

#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks to run (default: all the text holds).
    pub chunks: Option<usize>,
    /// Also collect the output projection's input (`output.weight`).
    pub process_output: bool,
    /// The calibration text's name, recorded in `imatrix.datasets`.
    pub dataset: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{file}: tensor {tensor} is {ty}; calibration needs the float model (F32, F16 or BF16 weights: a Hugging Face folder or an unquantised GGUF)")]
    NotFloat {
        file: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("--ctx {ctx} is too small: llama.cpp's importance matrix collects nothing from batches under {MIN_CTX} tokens")]
    ContextTooSmall { ctx: usize },
    #[error("{file}: --ctx {ctx} exceeds the {n_ctx_train} tokens the model was trained for")]
    ContextTooLong {
        file: PathBuf,
        ctx: usize,
        n_ctx_train: usize,
    },
    #[error("{text}: {source}")]
    Text {
        text: String,
        #[source]
        source: EvalError,
    },
    #[error(transparent)]
    Tokenize(#[from] VerifyError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("internal error: the forward pass reported its inputs inconsistently: {0}")]
    Inconsistent(String),
}

/// What [`importance_matrix`] made, and from what.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub imatrix: Imatrix,
    pub plan: ChunkPlan,
    /// Tokens in the whole text (BOS included).
    pub text_tokens: usize,
    /// Whether `output.weight` was collected (asked for, and not tied).
    pub output_collected: bool,
}

/// Reports progress, one call per chunk.
pub trait CalibrateProgress {
    fn start(&self, chunks: usize) {
        let _ = chunks;
    }
    fn chunk_done(&self) {}
}

pub struct NoProgress;
impl CalibrateProgress for NoProgress {}

/// The text's token ids with the model's own tokenizer (its `tokenizer.json` for
/// a folder, its vocabulary for a GGUF), and the BOS each chunk starts with.
pub fn tokenize(model_path: &Path, text: &Path) -> Result<(Vec<u32>, Option<u32>), VerifyError> {
    let text = EvalText::load(Some(text))?;
    let tok = EvalTokenizer::for_reference(model_path)?;
    Ok((tok.encode(&text.text)?, tok.bos))
}

/// Checks that calibration can run on `model`: float weights in every matrix,
/// a chunk size it supports.
pub fn check_model(model: &Model, ctx: usize) -> Result<(), CalibrateError> {
    if let Some((name, ty)) = model
        .matrices()
        .into_iter()
        .find(|(_, ty)| !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16))
    {
        return Err(CalibrateError::NotFloat {
            file: model.path().to_path_buf(),
            tensor: name.to_string(),
            ty,
        });
    }
    if ctx < MIN_CTX {
        return Err(CalibrateError::ContextTooSmall { ctx });
    }
    if ctx > model.config.n_ctx_train {
        return Err(CalibrateError::ContextTooLong {
            file: model.path().to_path_buf(),
            ctx,
            n_ctx_train: model.config.n_ctx_train,
        });
    }
    Ok(())
}

/// Runs `tokens` (the whole text, from [`tokenize`]) through `model` in
/// llama-imatrix's chunks and returns its importance matrix.
pub fn importance_matrix(
    model: &Model,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &CalibrateOptions,
    progress: &dyn CalibrateProgress,
) -> Result<Calibration, CalibrateError> {
    check_model(model, opts.ctx)?;
    let plan = ChunkPlan::new(tokens.len(), opts.ctx, opts.chunks, bos).map_err(|source| {
        CalibrateError::Text {
            text: opts.dataset.clone(),
            source,
        }
    })?;
    let output_collected = opts.process_output && model.output_tensor() == imatrix::OUTPUT_TENSOR;
    let mut collector = ImatrixCollector::new(opts.process_output);
    let mut session = model.session(plan.n_ctx);
    progress.start(plan.n_chunks);
    for i in 0..plan.n_chunks {
        session.clear();
        let chunk = plan.chunk(tokens, i);
        model.forward_observed(&mut session, &chunk, output_collected, &mut collector)?;
        progress.chunk_done();
    }
    let chunk_count = collector.max_tokens() / plan.n_ctx as u64;
    let imatrix = collector
        .to_imatrix(vec![opts.dataset.clone()], chunk_count, plan.n_ctx as u64)
        .map_err(CalibrateError::Inconsistent)?;
    Ok(Calibration {
        imatrix,
        plan,
        text_tokens: tokens.len(),
        output_collected,
    })
}
