//! quern runtime: Llama-family inference from GGUF files, Hugging Face
//! safetensors folders and AutoAWQ folders.
//!
//! - [`backend`]: the interface the matrix-heavy operations go through, so that a
//!   CUDA backend can sit beside [`cpu::CpuBackend`];
//! - [`cpu`]: fused dequantise-and-dot kernels over quantised blocks (portable, and
//!   runtime-detected AVX2 and AVX-512 VNNI), parallel across output rows on a
//!   spinning worker pool;
//! - [`cuda`]: the same products on an NVIDIA GPU (cudarc, NVRTC-compiled kernels);
//! - [`source`]: GGUF, safetensors and AWQ weights seen through GGUF names;
//! - [`model`]: the Llama / Qwen2 / Qwen3 forward pass with a KV cache, reading the
//!   weights straight from the GGUF memory map;
//! - [`precision`]: 8- or 16-bit activation codes for the 4- and 5-bit formats;
//! - [`observe`]: hooks that see the activations entering each matrix (calibration);
//! - [`calibrate`]: llama.cpp's importance matrix from a calibration text;
//! - [`tokenizer`], [`sampler`], [`chat`]: text in and out;
//! - [`generate`]: prompt → tokens, and the timing loop `quern bench` uses;
//! - [`synthetic`]: real model shapes with random weights, for benchmarks.

pub mod awq;
pub mod backend;
pub mod calibrate;
pub mod chat;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod eval;
pub mod generate;
pub mod model;
pub mod observe;
pub mod precision;
pub mod sampler;
pub mod source;
pub mod synthetic;
pub mod tokenizer;
pub mod verify;

pub use backend::{Backend, WeightView};
pub use cpu::CpuBackend;
pub use error::RuntimeError;
pub use model::{Model, Session};
pub use observe::Observer;
pub use sampler::{Sampler, SamplerConfig};
pub use tokenizer::Tokenizer;
