//! The runtime's errors; each names the file or tensor it concerns.

use std::path::PathBuf;

use quern_formats::gguf::GgufError;
use quern_formats::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    HfFolder(#[from] quern_quant::pipeline::ConvertError),
    #[error("{file}: architecture {arch:?} is not supported (supported: llama, qwen2, qwen3)")]
    UnsupportedArch { file: PathBuf, arch: String },
    #[error("{file}: tensor {tensor} has type {ty}, which the {backend} backend cannot multiply")]
    UnsupportedType {
        file: PathBuf,
        tensor: String,
        ty: GgmlType,
        backend: &'static str,
    },
    #[error("{file}: metadata key {key} is missing or has the wrong type")]
    MissingKey { file: PathBuf, key: String },
    #[error("{file}: tensor {tensor} is missing")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("{file}: tensor {tensor} has shape {found:?}, expected {expected:?}")]
    BadShape {
        file: PathBuf,
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("{file}: {what}")]
    BadModel { file: PathBuf, what: String },
    #[error("tensor {tensor}: {source}")]
    Quant {
        tensor: String,
        source: quern_quant::QuantError,
    },
    #[error("synthetic model, tensor {tensor}: {what}")]
    Synthetic { tensor: String, what: String },
    #[error("{tokens} tokens do not fit the context of {ctx} tokens")]
    ContextFull { tokens: usize, ctx: usize },
    #[error("calibration text too short: {tokens} tokens, but {samples} samples of {seq_len} tokens need {}; pass fewer --samples, a shorter --seq-len, or a longer text", samples * seq_len)]
    CalibrationTooShort {
        tokens: usize,
        samples: usize,
        seq_len: usize,
    },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    BadToken { id: u32, vocab: usize },
    #[error("{file}: tokenizer: {what}")]
    Tokenizer { file: PathBuf, what: String },
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the forward pass on the GPU: {0}")]
    CudaForward(#[source] crate::cuda::CudaError),
    #[error("matmul {tensor}: {what}")]
    Shape { tensor: String, what: String },
    #[error("matmul {tensor} on the GPU: {source}")]
    Cuda {
        tensor: String,
        source: crate::cuda::CudaError,
    },
}
