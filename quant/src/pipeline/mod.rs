//! Streaming pipelines from a tensor source to a GGUF file.
//!
//! `convert` turns a Hugging Face folder into GGUF: safetensors (memory map) →
//! architecture mapping (names, q/k permutation) → per-tensor output type →
//! parallel conversion → GGUF writer, with the output behind an atomic
//! temporary name so a failure never leaves a file under the final name.

pub mod awq;
pub mod convert;
mod encode;
mod plan;
pub mod quantize;
mod write;

pub use awq::{quantize_awq, quantize_awq_folded, AwqOptions, AwqPipelineError, AwqReport};
pub use convert::{
    convert_hf_folder, open_hf_model, ConvertError, ConvertOptions, ConvertReport, HfModel, OutType,
};
pub use encode::EncodeError;
pub use plan::TensorPlan;
pub use quantize::{
    planned_types, quantize, quantize_folded, QuantizeError, QuantizeOptions, QuantizeReport,
};

/// Progress of a long pipeline, in output bytes.
pub trait Progress: Sync {
    /// The total is known once the plan is made.
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
}

/// For callers that want no progress reports.
pub struct NoProgress;

impl Progress for NoProgress {}
