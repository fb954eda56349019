//! `--device cpu|cuda`: which backend `run`, `bench`, `verify` and `calibrate`
//! multiply the weights on.

use anyhow::{Context, Result};
use clap::ValueEnum;
use quern_runtime::cuda::CudaBackend;
use quern_runtime::precision::{set_act_bits, ActBits};
use quern_runtime::{Backend, CpuBackend};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The CPU (SIMD kernels on a spinning worker pool).
    Cpu,
    /// The first NVIDIA GPU, through the CUDA driver and NVRTC.
    Cuda,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// The CUDA backend on GPU 0, or a one-line reason why there is none.
pub fn cuda() -> Result<CudaBackend> {
    CudaBackend::new(0).context("--device cuda")
}

pub fn backend(device: Device) -> Result<Box<dyn Backend>> {
    Ok(match device {
        Device::Cpu => Box::new(CpuBackend::new()),
        Device::Cuda => Box::new(cuda()?),
    })
}

/// `--act-bits 8|16`.
pub fn parse_act_bits(s: &str) -> std::result::Result<ActBits, String> {
    s.trim()
        .parse::<u32>()
        .ok()
        .and_then(ActBits::from_bits)
        .ok_or_else(|| format!("{s:?}: the activation codes are 8 or 16 bits"))
}

/// Fixes `--act-bits` for the process, before any backend is made.
pub fn apply_act_bits(bits: Option<ActBits>) {
    if let Some(b) = bits {
        set_act_bits(b);
    }
}
