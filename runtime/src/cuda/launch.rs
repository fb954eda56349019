//! Kernel launches with programmatic dependent launch (PDL).
//!
//! On sm_90 and later a launch may carry `PROGRAMMATIC_STREAM_SERIALIZATION`:
//! the kernel can then start while the one before it on the stream is still
//! running, and blocks in its own `griddepcontrol.wait` (common.cu's `pdl_wait`)
//! until that kernel's writes are visible. Every kernel of ours waits before it
//! touches anything another kernel writes, so the overlap only hides launch
//! latency and lets a product issue its first weight loads early; what each
//! kernel computes does not change. A captured CUDA graph keeps the edges
//! programmatic.
//!
//! [`Launch`] is the builder every launch of the backend goes through: the
//! arguments are scalars (device addresses and sizes), copied into the builder,
//! so nothing borrowed must outlive the call. `QUERN_CUDA_PDL=0` launches
//! without the attribute.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaStream, DriverError, LaunchConfig};

/// Arguments a kernel of ours takes at most.
const MAX_ARGS: usize = 24;

static PDL: AtomicBool = AtomicBool::new(false);

/// Turns the attribute on for every later launch when the device has
/// compute capability `major` ≥ 9 and `QUERN_CUDA_PDL` is not `0`.
pub(crate) fn configure(major: i32) {
    let off = std::env::var("QUERN_CUDA_PDL").is_ok_and(|v| v == "0");
    PDL.store(major >= 9 && !off, Ordering::Relaxed);
}

thread_local! {
    static SUSPENDED: Cell<bool> = const { Cell::new(false) };
}

/// Whether launches carry the attribute.
pub fn pdl_enabled() -> bool {
    PDL.load(Ordering::Relaxed)
}

/// Runs `f` with this thread's launches made without the attribute. The
/// device-resident prefill uses it: its products are few and long, and on the
/// H200 pp512 was lower with PDL in each of six paired runs (synthetic 8B
/// Q4_K_M and Q4_0, 0.8-2.7 %, about the spread between repeated runs).
pub(crate) fn without_pdl<R>(f: impl FnOnce() -> R) -> R {
    let was = SUSPENDED.with(|s| s.replace(true));
    let r = f();
    SUSPENDED.with(|s| s.set(was));
    r
}

/// A kernel argument: a scalar the kernel takes by value.
pub(crate) trait KernelArg: Copy {
    /// The value's bytes in the low bytes of a word (little-endian, as the
    /// driver reads `sizeof(param)` bytes from the address it is given).
    fn to_word(self) -> u64;
}

macro_rules! word_arg {
    ($($t:ty => $e:expr),* $(,)?) => {
        $(impl KernelArg for $t {
            #[inline]
            fn to_word(self) -> u64 {
                let f: fn($t) -> u64 = $e;
                f(self)
            }
        })*
    };
}
word_arg! {
    u64 => |v| v,
    i64 => |v| v as u64,
    u32 => |v| v as u64,
    i32 => |v| v as u32 as u64,
    f32 => |v| v.to_bits() as u64,
}

/// One launch being built: `Launch::new(stream, func).arg(&a).arg(&b).launch(cfg)`.
pub(crate) struct Launch<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    words: [u64; MAX_ARGS],
    n: usize,
}

impl<'a> Launch<'a> {
    pub(crate) fn new(stream: &'a CudaStream, func: &'a CudaFunction) -> Self {
        Self {
            stream,
            func,
            words: [0; MAX_ARGS],
            n: 0,
        }
    }

    /// Appends the next argument.
    pub(crate) fn arg<T: KernelArg>(&mut self, v: &T) -> &mut Self {
        assert!(self.n < MAX_ARGS, "more than {MAX_ARGS} kernel arguments");
        self.words[self.n] = v.to_word();
        self.n += 1;
        self
    }

    /// Enqueues the kernel on the stream.
    ///
    /// # Safety
    /// The arguments must be the kernel's, in order and of its types, and every
    /// address must be valid for what the kernel does with it.
    pub(crate) unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        let mut params: [*mut c_void; MAX_ARGS] = [std::ptr::null_mut(); MAX_ARGS];
        for (p, w) in params.iter_mut().zip(self.words.iter_mut()).take(self.n) {
            *p = (w as *mut u64).cast();
        }
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let pdl = pdl_enabled() && !SUSPENDED.with(Cell::get);
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if pdl { &mut attr } else { std::ptr::null_mut() },
            numAttrs: u32::from(pdl),
        };
        // SAFETY: `params` points at `self.n` words that live until the call
        // returns (the driver copies them); the caller vouches for their meaning.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
            .result()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_hold_each_scalar_in_its_low_bytes() {
        assert_eq!((-2i32).to_word(), 0xFFFF_FFFE);
        assert_eq!(7u32.to_word(), 7);
        assert_eq!((-1i64).to_word(), u64::MAX);
        assert_eq!(1.5f32.to_word(), 1.5f32.to_bits() as u64);
        assert_eq!(0xDEAD_BEEF_0000_0001u64.to_word(), 0xDEAD_BEEF_0000_0001);
    }

    /// Every kernel must wait for the kernel before it (see common.cu); a kernel
    /// added without `pdl_wait` would race once launched with the attribute.
    #[test]
    fn every_kernel_waits_for_the_one_before() {
        let sources = [
            ("gemv.cu", super::super::GEMV_SRC),
            ("packed.cu", super::super::PACKED_SRC),
            ("mma.cu", super::super::MMA_SRC),
            ("decode.cu", super::super::DECODE_SRC),
        ];
        let mut kernels = 0;
        for (file, src) in sources {
            let starts: Vec<usize> = src.match_indices("__global__").map(|(i, _)| i).collect();
            for (j, &s) in starts.iter().enumerate() {
                let end = starts.get(j + 1).copied().unwrap_or(src.len());
                let body = &src[s..end];
                // HINTED_ENTRY: an L2 hint (common.cu), then PDL_ENTRY.
                let waits = body.contains("PDL_ENTRY(") || body.contains("HINTED_ENTRY(");
                assert!(
                    waits,
                    "{file}: kernel at byte {s} has no pdl_wait: {}",
                    &body[..body.len().min(120)]
                );
                kernels += 1;
            }
        }
        assert!(kernels >= 25, "found only {kernels} kernels");
    }
}
