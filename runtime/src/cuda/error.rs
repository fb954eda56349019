//! The CUDA backend's errors: what was being done and what the driver or NVRTC said.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda.so could not be loaded): --device cuda needs an NVIDIA GPU and its driver")]
    NoDriver,
    #[error("NVRTC (libnvrtc.so) could not be loaded: the CUDA backend compiles its kernels with it; install the CUDA toolkit's NVRTC library")]
    NoNvrtc,
    #[error("no CUDA device found ({0})")]
    NoDevice(String),
    #[error("CUDA {what}: {detail}")]
    Driver { what: String, detail: String },
    #[error("NVRTC could not compile {module}: {log}")]
    Compile { module: String, log: String },
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CUDA backend has no kernel for {0}")]
    Unsupported(quern_formats::GgmlType),
    #[error("{0}")]
    Stack(String),
    #[error("folded RMSNorm: {0}")]
    Fold(String),
}

impl CudaError {
    pub(crate) fn driver(what: impl Into<String>, e: cudarc::driver::DriverError) -> CudaError {
        let detail = match (e.error_name(), e.error_string()) {
            (Ok(n), Ok(s)) => format!("{} ({})", n.to_string_lossy(), s.to_string_lossy()),
            _ => format!("{:?}", e.0),
        };
        CudaError::Driver {
            what: what.into(),
            detail,
        }
    }
}

/// Adds context to a driver call's result.
pub(crate) trait DriverContext<T> {
    fn ctx(self, what: &str) -> Result<T, CudaError>;
}

impl<T> DriverContext<T> for Result<T, cudarc::driver::DriverError> {
    fn ctx(self, what: &str) -> Result<T, CudaError> {
        self.map_err(|e| CudaError::driver(what, e))
    }
}
