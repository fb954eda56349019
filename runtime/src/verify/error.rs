//! `quern verify`'s errors; each names the file, tensor or setting concerned.

use std::path::PathBuf;

use quern_formats::arch::ArchError;
use quern_formats::awq::AwqError;
use quern_formats::dtype::DtypeError;
use quern_formats::gguf::GgufError;
use quern_formats::hf_config::ConfigError;
use quern_formats::safetensors::SafetensorsError;

use crate::error::RuntimeError;
use crate::eval::EvalError;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file, an AWQ folder or a Hugging Face safetensors folder")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: the folder has no weights (no model.safetensors, model.safetensors.index.json or *.safetensors)")]
    NoWeights { path: PathBuf },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("{path}: architecture {arch:?} is not supported (supported: llama, qwen2, qwen3)")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path}: tensor {tensor}: {source}")]
    Dtype {
        path: PathBuf,
        tensor: String,
        #[source]
        source: DtypeError,
    },
    #[error("{path}: tensor {tensor}: {source}")]
    Quant {
        path: PathBuf,
        tensor: String,
        #[source]
        source: quern_quant::QuantError,
    },
    #[error("{path}: tensor {tensor}: {source}")]
    Awq {
        path: PathBuf,
        tensor: String,
        #[source]
        source: AwqError,
    },
    #[error("{path}: tensor {tensor}: {what}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("architecture mismatch: the reference {reference} is {reference_arch}, the artifact {artifact} is {artifact_arch}")]
    ArchMismatch {
        reference: PathBuf,
        reference_arch: String,
        artifact: PathBuf,
        artifact_arch: String,
    },
    #[error("shape mismatch at {tensor}: the reference's {reference_name} is {reference_shape:?}, the artifact's {artifact_name} is {artifact_shape:?}")]
    ShapeMismatch {
        tensor: String,
        reference_name: String,
        reference_shape: Vec<u64>,
        artifact_name: String,
        artifact_shape: Vec<u64>,
    },
    #[error("the artifact {artifact} lacks {tensor} (the reference's {reference_name})")]
    MissingTensor {
        artifact: PathBuf,
        tensor: String,
        reference_name: String,
    },
    #[error("vocabulary mismatch: the reference has {reference} tokens, the artifact {artifact}")]
    VocabMismatch { reference: usize, artifact: usize },
    #[error("{path}: tokenizer: {what}")]
    Tokenizer { path: PathBuf, what: String },
    #[error("{path}: the text is not UTF-8")]
    TextNotUtf8 { path: PathBuf },
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("--ctx {n_ctx} is longer than the {max}-token context {path} was trained for")]
    ContextTooLong {
        n_ctx: usize,
        max: usize,
        path: PathBuf,
    },
    #[error("{name} {value}: {why}")]
    BadThreshold {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
    #[error("{name} needs the output comparison, which --weights-only skips")]
    ThresholdNeedsOutputs { name: &'static str },
    #[error("cannot load {path} for evaluation: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("{path}: chunk {chunk}: {source}")]
    Forward {
        path: PathBuf,
        chunk: usize,
        #[source]
        source: Box<RuntimeError>,
    },
}
