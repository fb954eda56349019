//! File formats quern reads and writes.
//!
//! This crate owns bytes on disk: safetensors (memory-mapped, sharded), GGUF v3
//! (memory-mapped reader, streaming writer), the ggml tensor-type table (sizes only),
//! Hugging Face `config.json` and tokenizer files, and the architecture table that
//! maps Hugging Face tensor names and config keys to GGUF ones.

pub mod arch;
pub mod atomic;
pub mod awq;
pub mod dtype;
pub mod ggml;
pub mod gguf;
pub mod hf_config;
pub mod imatrix;
pub mod safetensors;
pub mod safetensors_writer;
#[cfg(test)]
mod test_python;
pub mod tokenizer;

pub use ggml::GgmlType;

#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
