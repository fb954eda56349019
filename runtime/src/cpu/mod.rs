//! The CPU backend: fused dequantise-and-dot kernels over the file's blocks,
//! activations quantised to 8 bits for the integer formats, rayon across rows.

pub mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod portable;

use quern_formats::GgmlType;
use rayon::prelude::*;

use crate::backend::{check_matmul, Backend, WeightView};
use crate::error::RuntimeError;
use act::{quantize_q8, quantize_q8k, ActQ8, ActQ8K};

type FloatDot = unsafe fn(&[u8], &[f32]) -> f32;
type Q8Dot = unsafe fn(&[u8], &[ActQ8]) -> f32;
type Q8KDot = unsafe fn(&[u8], &[ActQ8K]) -> f32;
/// One weight row against four activation rows at once (prefill).
type Q8Dot4 = unsafe fn(&[u8], [&[ActQ8]; 4]) -> [f32; 4];

/// How one weight format meets the activations.
#[derive(Clone, Copy)]
enum Kernel {
    /// Float weights against float activations.
    Float(FloatDot),
    /// 32-value integer formats against [`ActQ8`] activations.
    Q8(Q8Dot),
    /// 256-value K-quants against [`ActQ8K`] activations.
    Q8K(Q8KDot),
    /// Rarer formats: one block expanded at a time, float dot.
    Fallback(GgmlType),
}

/// Which instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
}

pub struct CpuBackend {
    isa: Isa,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The fastest kernels this CPU runs.
    pub fn new() -> Self {
        CpuBackend { isa: detect() }
    }

    /// A backend restricted to `isa` (tests compare the paths); falls back to
    /// portable when the CPU lacks it.
    pub fn with_isa(isa: Isa) -> Self {
        let isa = if isa == Isa::Avx2 && detect() != Isa::Avx2 {
            Isa::Portable
        } else {
            isa
        };
        CpuBackend { isa }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn kernel(&self, ty: GgmlType) -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 {
            return Some(match ty {
                GgmlType::F32 => Kernel::Float(avx2::f32_row),
                GgmlType::F16 => Kernel::Float(avx2::f16_row),
                GgmlType::Bf16 => Kernel::Float(avx2::bf16_row),
                GgmlType::Q8_0 => Kernel::Q8(avx2::q8_0_row),
                GgmlType::Q4_0 => Kernel::Q8(avx2::q4_0_row),
                GgmlType::Q4_1 => Kernel::Q8(avx2::q4_1_row),
                GgmlType::Q5_0 => Kernel::Q8(avx2::q5_0_row),
                GgmlType::Q5_1 => Kernel::Q8(avx2::q5_1_row),
                GgmlType::Q4K => Kernel::Q8K(avx2::q4_k_row),
                GgmlType::Q6K => Kernel::Q8K(avx2::q6_k_row),
                other => return portable_kernel(other),
            });
        }
        portable_kernel(ty)
    }
}

impl CpuBackend {
    fn kernel_x4(&self, ty: GgmlType) -> Option<Q8Dot4> {
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 && ty == GgmlType::Q8_0 {
            return Some(avx2::q8_0_row_x4);
        }
        let _ = ty;
        None
    }
}

fn portable_kernel(ty: GgmlType) -> Option<Kernel> {
    Some(match ty {
        GgmlType::F32 => Kernel::Float(portable::f32_row),
        GgmlType::F16 => Kernel::Float(portable::f16_row),
        GgmlType::Bf16 => Kernel::Float(portable::bf16_row),
        GgmlType::Q8_0 => Kernel::Q8(portable::q8_0_row),
        GgmlType::Q4_0 => Kernel::Q8(portable::q4_0_row),
        GgmlType::Q4_1 => Kernel::Q8(portable::q4_1_row),
        GgmlType::Q5_0 => Kernel::Q8(portable::q5_0_row),
        GgmlType::Q5_1 => Kernel::Q8(portable::q5_1_row),
        GgmlType::Q4K => Kernel::Q8K(portable::q4_k_row),
        GgmlType::Q6K => Kernel::Q8K(portable::q6_k_row),
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q5K | GgmlType::Iq4Nl | GgmlType::Iq4Xs => {
            Kernel::Fallback(ty)
        }
        _ => return None,
    })
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        return Isa::Avx2;
    }
    Isa::Portable
}

/// Activations in the form a kernel reads.
enum Acts<'a> {
    Float(&'a [f32]),
    Q8(Vec<ActQ8>),
    Q8K(Vec<ActQ8K>),
}

/// Output rows one rayon task computes: enough work to amortise the task, few
/// enough that two threads share a 576-row matrix evenly.
const ROWS_PER_TASK: usize = 16;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn supports(&self, ty: GgmlType) -> bool {
        self.kernel(ty).is_some()
    }

    fn matmul(
        &self,
        w: &WeightView<'_>,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        check_matmul(w, x, n_tokens, out)?;
        let kernel = self.kernel(w.ty).ok_or_else(|| RuntimeError::Shape {
            tensor: w.name.to_string(),
            what: format!("the cpu backend has no kernel for {}", w.ty),
        })?;
        let acts = match kernel {
            Kernel::Float(_) | Kernel::Fallback(_) => Acts::Float(x),
            Kernel::Q8(_) => {
                let mut v = Vec::new();
                quantize_q8(x, &mut v);
                Acts::Q8(v)
            }
            Kernel::Q8K(_) => {
                let mut v = Vec::new();
                quantize_q8k(x, &mut v);
                Acts::Q8K(v)
            }
        };
        let cols = w.cols;
        let dot = |r: usize, t: usize| -> f32 {
            let row = w.row(r);
            // SAFETY: an AVX2 kernel is only chosen when `detect` found AVX2, FMA and
            // F16C; lengths were checked by `check_matmul`.
            unsafe {
                match (kernel, &acts) {
                    (Kernel::Float(f), Acts::Float(x)) => f(row, &x[t * cols..(t + 1) * cols]),
                    (Kernel::Fallback(ty), Acts::Float(x)) => {
                        portable::fallback_row(ty, row, &x[t * cols..(t + 1) * cols])
                    }
                    (Kernel::Q8(f), Acts::Q8(a)) => {
                        let nb = cols / 32;
                        f(row, &a[t * nb..(t + 1) * nb])
                    }
                    (Kernel::Q8K(f), Acts::Q8K(a)) => {
                        let nb = cols / 256;
                        f(row, &a[t * nb..(t + 1) * nb])
                    }
                    _ => f32::NAN,
                }
            }
        };
        if n_tokens == 1 {
            out.par_chunks_mut(ROWS_PER_TASK)
                .enumerate()
                .for_each(|(c, o)| {
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = dot(c * ROWS_PER_TASK + i, 0);
                    }
                });
            return Ok(());
        }
        // Row-major per weight row so each row is read once for every token while it
        // is still in cache; then transposed into token-major `out`.
        let x4 = self.kernel_x4(w.ty);
        let mut tmp = vec![0f32; w.rows * n_tokens];
        tmp.par_chunks_mut(ROWS_PER_TASK * n_tokens)
            .enumerate()
            .for_each(|(c, o)| {
                for (i, orow) in o.chunks_exact_mut(n_tokens).enumerate() {
                    let r = c * ROWS_PER_TASK + i;
                    let mut t = 0;
                    if let (Some(f), Acts::Q8(a)) = (x4, &acts) {
                        let nb = cols / 32;
                        let row = w.row(r);
                        while t + 4 <= n_tokens {
                            let s = |k: usize| &a[(t + k) * nb..(t + k + 1) * nb];
                            // SAFETY: only chosen on CPUs with AVX2, FMA and F16C.
                            let v = unsafe { f(row, [s(0), s(1), s(2), s(3)]) };
                            orow[t..t + 4].copy_from_slice(&v);
                            t += 4;
                        }
                    }
                    for (t, v) in orow.iter_mut().enumerate().skip(t) {
                        *v = dot(r, t);
                    }
                }
            });
        for (r, trow) in tmp.chunks_exact(n_tokens).enumerate() {
            for (t, &v) in trow.iter().enumerate() {
                out[t * w.rows + r] = v;
            }
        }
        Ok(())
    }
}
