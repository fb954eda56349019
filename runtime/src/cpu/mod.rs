//! The CPU backend: fused dequantise-and-dot kernels over the file's blocks,
//! activations quantised to 8 bits for the integer formats, and a spinning
//! worker pool ([`pool::Pool`]) that splits each product into chunks of rows
//! (and, for prefill, blocks of tokens) taken dynamically, so a thread that the
//! OS descheduled does not hold the others back.
//!
//! Instruction sets ([`Isa`], detected at run time, capped by `QUERN_CPU_ISA`):
//! portable Rust; AVX2 (`avx2.rs` one-row kernels, `tile.rs` four-row prefill
//! tiles); AVX-512 VNNI (`vnni.rs`), whose fastest kernels take sixteen rows at
//! once with one row per 32-bit lane (`vpdpbusd` / `vpdpwssd` against
//! broadcast activation codes), so the per-block float scaling that bounds the
//! narrower kernels is shared sixteen ways (`QUERN_CPU_WIDE=0` switches those
//! off, for comparison).

pub mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod float_tile;
pub mod pool;
pub mod portable;
#[cfg(target_arch = "x86_64")]
mod tile;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::sync::atomic::{AtomicUsize, Ordering};

use quern_formats::GgmlType;

use crate::backend::{check_matmul, Backend, WeightView};
use crate::error::RuntimeError;
use crate::precision::{act_bits, uses_16bit_acts, ActBits};
use act::{quantize_q16, quantize_q8, quantize_q8k, ActQ16, ActQ8, ActQ8K};
use pool::Pool;

type FloatDot = unsafe fn(&[u8], &[f32]) -> f32;
#[cfg(target_arch = "x86_64")]
use float_tile::FloatTile;
/// No float tiles off x86-64 (the portable kernels go one row at a time).
#[cfg(not(target_arch = "x86_64"))]
type FloatTile = unsafe fn([&[u8]; 3], [&[f32]; 4]) -> [[f32; 4]; 3];
type Q8Dot = Dot<ActQ8>;
type Q8KDot = Dot<ActQ8K>;
/// One weight row against four activation rows at once (prefill).
type Q8Dot4 = Dot4<ActQ8>;
type Q8KDot4 = Dot4<ActQ8K>;
/// Either width of kernel over activations of block type `A`.
type Dot<A> = unsafe fn(&[u8], &[A]) -> f32;
type Dot4<A> = unsafe fn(&[u8], [&[A]; 4]) -> [f32; 4];
/// Four weight rows against `T` activation rows: `out[t][r]`.
type Tile<A, const T: usize> = unsafe fn(&[&[u8]; 4], &[&[A]; T]) -> [[f32; 4]; T];

/// Sixteen-row kernels (one token, and `vnni::WIDE_TOKENS` tokens) of a
/// legacy format on AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum WideKernels {
    Q8(vnni::Wide1<ActQ8>, vnni::WideT<ActQ8>),
    /// The flag: whether decode (fewer tokens than `vnni::WIDE_TOKENS`) uses
    /// them too; Q6_K's, gathering 53 words per row and super-block, are
    /// slower there than the one-row kernel.
    Q8K(vnni::Wide1<ActQ8K>, vnni::WideT<ActQ8K>, bool),
    /// Q8_0, prefill only (decode streams 34 bytes per 32 products; the
    /// one-row kernel keeps up with memory there).
    Q16(vnni::Wide1<ActQ16>, vnni::WideT<ActQ16>),
}
#[cfg(not(target_arch = "x86_64"))]
type WideKernels = ();

/// Four weight rows against four tokens (prefill). Decode keeps the one-row
/// kernels: four-row ones against one token were faster on cached weights
/// (`kernel_speed`) but slower streaming a model from memory (BENCHMARKS.md).
type Tiles<A> = Tile<A, 4>;

/// How one weight format meets the activations.
#[derive(Clone, Copy)]
enum Kernel {
    /// Float weights against float activations (and a prefill tile of
    /// `float_tile::ROWS` rows × `float_tile::TOKENS` tokens).
    Float(FloatDot, Option<FloatTile>),
    /// 32-value integer formats against [`ActQ8`] activations.
    Q8(Q8Dot, Option<Q8Dot4>, Option<Tiles<ActQ8>>),
    /// Q8_0 (and, under 16-bit activations, the 4- and 5-bit formats)
    /// against [`ActQ16`] activations.
    Q16(Dot<ActQ16>, Option<Dot4<ActQ16>>, Option<Tiles<ActQ16>>),
    /// 256-value K-quants against [`ActQ8K`] activations.
    Q8K(Q8KDot, Option<Q8KDot4>, Option<Tiles<ActQ8K>>),
}

/// Which instruction set the kernels use, in increasing order: each level's
/// CPUs also run the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (and AVX2): `vpdpbusd`/`vpdpwssd` integer
    /// kernels for the hottest formats, the AVX2 ones for the rest.
    Avx512Vnni,
}

impl Isa {
    /// The level named `name` (`portable`, `avx2`, `avx512vnni` or `avx512`),
    /// as `QUERN_CPU_ISA` takes it.
    pub fn from_name(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512vnni" | "avx512" | "avx512_vnni" | "vnni" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }
}

pub struct CpuBackend {
    isa: Isa,
    pool: Pool,
    /// Whether the four-row kernels are used where a format has them.
    tiles: bool,
    /// Whether the sixteen-row kernels are used where a format has them.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    wide: bool,
    /// The activation codes of the 4- and 5-bit formats (`precision`).
    act_bits: ActBits,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The fastest kernels this CPU runs (at most the level `QUERN_CPU_ISA`
    /// names), on as many threads as rayon's global pool has (which `--threads`
    /// sets).
    pub fn new() -> Self {
        Self::with_isa(detect())
    }

    /// A backend restricted to `isa` (tests compare the paths); falls back to
    /// the best level below it that the CPU has.
    pub fn with_isa(isa: Isa) -> Self {
        let isa = isa.min(hardware());
        CpuBackend {
            isa,
            pool: Pool::new(rayon::current_num_threads()),
            tiles: std::env::var_os("QUERN_CPU_TILES").is_none_or(|v| v != "0"),
            wide: std::env::var_os("QUERN_CPU_WIDE").is_none_or(|v| v != "0"),
            act_bits: act_bits(),
        }
    }

    /// The same backend with the 4- and 5-bit formats on `bits`-bit
    /// activation codes (`precision`; made with the process's setting).
    pub fn with_act_bits(mut self, bits: ActBits) -> Self {
        self.act_bits = bits;
        self
    }

    pub fn act_bits(&self) -> ActBits {
        self.act_bits
    }

    /// Whether `ty` moves to 16-bit activation codes under this backend's
    /// setting (Q8_0 has them either way, with its own kernels).
    fn sixteen_bit(&self, ty: GgmlType) -> bool {
        ty != GgmlType::Q8_0 && uses_16bit_acts(ty, self.act_bits)
    }

    /// The same backend with the four-row kernels on or off (tests and
    /// benchmarks compare them with the one-row kernels).
    pub fn with_tiles(mut self, on: bool) -> Self {
        self.tiles = on;
        self
    }

    /// The same backend with the sixteen-row kernels (AVX-512 VNNI, legacy
    /// formats) on or off.
    pub fn with_wide(mut self, on: bool) -> Self {
        self.wide = on;
        self
    }

    /// The sixteen-row kernels for `ty`, where this backend uses them.
    fn wide_kernels(&self, ty: GgmlType) -> Option<WideKernels> {
        #[cfg(target_arch = "x86_64")]
        if self.wide && self.isa == Isa::Avx512Vnni && !self.sixteen_bit(ty) {
            return match ty {
                GgmlType::Q4_0 => Some(WideKernels::Q8(vnni::q4_0_wide1, vnni::q4_0_wide)),
                GgmlType::Q4_1 => Some(WideKernels::Q8(vnni::q4_1_wide1, vnni::q4_1_wide)),
                GgmlType::Q5_0 => Some(WideKernels::Q8(vnni::q5_0_wide1, vnni::q5_0_wide)),
                GgmlType::Q5_1 => Some(WideKernels::Q8(vnni::q5_1_wide1, vnni::q5_1_wide)),
                GgmlType::Q8_0 => Some(WideKernels::Q16(vnni::q8_0_wide1, vnni::q8_0_wide_t)),
                GgmlType::Q4K => Some(WideKernels::Q8K(vnni::q4_k_wide1, vnni::q4_k_wide_t, true)),
                GgmlType::Q6K => Some(WideKernels::Q8K(vnni::q6_k_wide1, vnni::q6_k_wide_t, false)),
                _ => None,
            };
        }
        let _ = ty;
        None
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Threads that share each product (the caller's included).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    fn kernel(&self, ty: GgmlType) -> Option<Kernel> {
        if self.sixteen_bit(ty) {
            return self.kernel_a16(ty);
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512Vnni {
            // The prefill leftovers (rows not in a group of four) keep the AVX2
            // one-row-four-token kernels of the legacy formats.
            let k = match ty {
                GgmlType::Q8_0 => Some(Kernel::Q16(
                    vnni::q8_0_row,
                    Some(avx2::q8_0_row_x4),
                    self.tiles(vnni::q8_0_4x4),
                )),
                GgmlType::Q4_0 => Some(Kernel::Q8(
                    vnni::q4_0_row,
                    Some(avx2::q4_0_row_x4),
                    self.tiles(vnni::q4_0_4x4),
                )),
                GgmlType::Q4_1 => Some(Kernel::Q8(
                    vnni::q4_1_row,
                    Some(avx2::q4_1_row_x4),
                    self.tiles(vnni::q4_1_4x4),
                )),
                GgmlType::Q5_0 => Some(Kernel::Q8(
                    vnni::q5_0_row,
                    Some(avx2::q5_0_row_x4),
                    self.tiles(vnni::q5_0_4x4),
                )),
                GgmlType::Q5_1 => Some(Kernel::Q8(
                    vnni::q5_1_row,
                    Some(avx2::q5_1_row_x4),
                    self.tiles(vnni::q5_1_4x4),
                )),
                // One row against four tokens (the row's codes and scales
                // unpacked once): no four-row tiles.
                GgmlType::Q4K => Some(Kernel::Q8K(vnni::q4_k_row, Some(vnni::q4_k_row_x4), None)),
                GgmlType::Q6K => Some(Kernel::Q8K(vnni::q6_k_row, Some(vnni::q6_k_row_x4), None)),
                _ => None,
            };
            if k.is_some() {
                return k;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa >= Isa::Avx2 {
            return Some(match ty {
                GgmlType::F32 => Kernel::Float(avx2::f32_row, Some(float_tile::f32_tile)),
                GgmlType::F16 => Kernel::Float(avx2::f16_row, Some(float_tile::f16_tile)),
                GgmlType::Bf16 => Kernel::Float(avx2::bf16_row, Some(float_tile::bf16_tile)),
                GgmlType::Q8_0 => Kernel::Q16(
                    avx2::q8_0_row,
                    Some(avx2::q8_0_row_x4),
                    self.tiles(tile::q8_0_4x4),
                ),
                GgmlType::Q4_0 => Kernel::Q8(
                    avx2::q4_0_row,
                    Some(avx2::q4_0_row_x4),
                    self.tiles(tile::q4_0_4x4),
                ),
                GgmlType::Q4_1 => Kernel::Q8(
                    avx2::q4_1_row,
                    Some(avx2::q4_1_row_x4),
                    self.tiles(tile::q4_1_4x4),
                ),
                GgmlType::Q5_0 => Kernel::Q8(
                    avx2::q5_0_row,
                    Some(avx2::q5_0_row_x4),
                    self.tiles(tile::q5_0_4x4),
                ),
                GgmlType::Q5_1 => Kernel::Q8(
                    avx2::q5_1_row,
                    Some(avx2::q5_1_row_x4),
                    self.tiles(tile::q5_1_4x4),
                ),
                GgmlType::Q4K => Kernel::Q8K(
                    avx2::q4_k_row,
                    Some(avx2::q4_k_row_x4),
                    self.tiles(tile::q4_k_4x4),
                ),
                GgmlType::Q6K => Kernel::Q8K(
                    avx2::q6_k_row,
                    Some(avx2::q6_k_row_x4),
                    self.tiles(tile::q6_k_4x4),
                ),
                GgmlType::Q5K => Kernel::Q8K(avx2::q5_k_row, Some(avx2::q5_k_row_x4), None),
                GgmlType::Q2K => Kernel::Q8K(avx2::q2_k_row, Some(avx2::q2_k_row_x4), None),
                GgmlType::Q3K => Kernel::Q8K(avx2::q3_k_row, Some(avx2::q3_k_row_x4), None),
                GgmlType::Iq4Nl => Kernel::Q8(avx2::iq4_nl_row, Some(avx2::iq4_nl_row_x4), None),
                GgmlType::Iq4Xs => Kernel::Q8(avx2::iq4_xs_row, Some(avx2::iq4_xs_row_x4), None),
                other => return portable_kernel(other),
            });
        }
        portable_kernel(ty)
    }

    /// The kernels of the formats that follow [`ActBits::Sixteen`] (AVX2
    /// where present, also on AVX-512 CPUs): one row against one token or,
    /// in prefill, four.
    fn kernel_a16(&self, ty: GgmlType) -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if self.isa >= Isa::Avx2 {
            let (one, four): (Dot<ActQ16>, Dot4<ActQ16>) = match ty {
                GgmlType::Q4_0 => (avx2::q4_0_row_a16, avx2::q4_0_row_a16_x4),
                GgmlType::Q4_1 => (avx2::q4_1_row_a16, avx2::q4_1_row_a16_x4),
                GgmlType::Q5_0 => (avx2::q5_0_row_a16, avx2::q5_0_row_a16_x4),
                GgmlType::Q5_1 => (avx2::q5_1_row_a16, avx2::q5_1_row_a16_x4),
                GgmlType::Q4K => (avx2::q4_k_row_a16, avx2::q4_k_row_a16_x4),
                GgmlType::Q6K => (avx2::q6_k_row_a16, avx2::q6_k_row_a16_x4),
                _ => return None,
            };
            return Some(Kernel::Q16(one, Some(four), None));
        }
        let one: Dot<ActQ16> = match ty {
            GgmlType::Q4_0 => portable::q4_0_row_a16,
            GgmlType::Q4_1 => portable::q4_1_row_a16,
            GgmlType::Q5_0 => portable::q5_0_row_a16,
            GgmlType::Q5_1 => portable::q5_1_row_a16,
            GgmlType::Q4K => portable::q4_k_row_a16,
            GgmlType::Q6K => portable::q6_k_row_a16,
            _ => return None,
        };
        Some(Kernel::Q16(one, None, None))
    }

    /// The four-row kernels, unless switched off (`QUERN_CPU_TILES=0`, to
    /// compare against the one-row kernels).
    fn tiles<A>(&self, four: Tiles<A>) -> Option<Tiles<A>> {
        self.tiles.then_some(four)
    }

    fn kernel_for(&self, w: &WeightView<'_>) -> Result<Kernel, RuntimeError> {
        self.kernel(w.ty).ok_or_else(|| RuntimeError::Shape {
            tensor: w.name.to_string(),
            what: format!("the cpu backend has no kernel for {}", w.ty),
        })
    }
}

fn portable_kernel(ty: GgmlType) -> Option<Kernel> {
    Some(match ty {
        GgmlType::F32 => Kernel::Float(portable::f32_row, None),
        GgmlType::F16 => Kernel::Float(portable::f16_row, None),
        GgmlType::Bf16 => Kernel::Float(portable::bf16_row, None),
        GgmlType::Q8_0 => Kernel::Q16(portable::q8_0_row, None, None),
        GgmlType::Q4_0 => Kernel::Q8(portable::q4_0_row, None, None),
        GgmlType::Q4_1 => Kernel::Q8(portable::q4_1_row, None, None),
        GgmlType::Q5_0 => Kernel::Q8(portable::q5_0_row, None, None),
        GgmlType::Q5_1 => Kernel::Q8(portable::q5_1_row, None, None),
        GgmlType::Q4K => Kernel::Q8K(portable::q4_k_row, None, None),
        GgmlType::Q6K => Kernel::Q8K(portable::q6_k_row, None, None),
        GgmlType::Q5K => Kernel::Q8K(portable::q5_k_row, None, None),
        GgmlType::Iq4Nl => Kernel::Q8(portable::iq4_nl_row, None, None),
        GgmlType::Iq4Xs => Kernel::Q8(portable::iq4_xs_row, None, None),
        GgmlType::Q2K => Kernel::Q8K(portable::q2_k_row, None, None),
        GgmlType::Q3K => Kernel::Q8K(portable::q3_k_row, None, None),
        _ => return None,
    })
}

/// Keeps freed heap memory mapped (glibc): the forward pass allocates its
/// activation buffers afresh per layer, and above glibc's default threshold
/// each one is a new `mmap` whose pages the kernel zeroes again on first touch
/// (7% of a 2-thread prefill in `perf`, on the workers writing the outputs).
/// With allocations up to 32 MiB served from the heap and no trimming, the
/// pages are reused. Called once by the CLI; a no-op off glibc.
pub fn keep_heap_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the
    // threads that allocate start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The fastest instruction set this CPU has kernels for.
pub fn hardware() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            return Isa::Avx512Vnni;
        }
        return Isa::Avx2;
    }
    Isa::Portable
}

/// The instruction set [`CpuBackend::new`] uses: [`hardware`]'s, or the lower
/// level `QUERN_CPU_ISA` names (`portable`, `avx2`, `avx512vnni`) to compare the
/// paths; a name it does not know is ignored with a notice.
pub fn detect() -> Isa {
    let hw = hardware();
    match std::env::var("QUERN_CPU_ISA") {
        Ok(v) if !v.is_empty() => match Isa::from_name(&v) {
            Some(isa) => isa.min(hw),
            None => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "notice: QUERN_CPU_ISA={v} is not one of portable, avx2, avx512vnni; using {hw:?}"
                    )
                });
                hw
            }
        },
        _ => hw,
    }
}

/// Activations in the form a kernel reads, token-major.
enum Acts<'a> {
    Float(&'a [f32]),
    Q8(Vec<ActQ8>),
    Q16(Vec<ActQ16>),
    Q8K(Vec<ActQ8K>),
}

/// The activations every kernel in `kernels` needs, each prepared once.
struct Prepared<'a> {
    float: Acts<'a>,
    q8: Option<Acts<'a>>,
    q16: Option<Acts<'a>>,
    q8k: Option<Acts<'a>>,
}

impl<'a> Prepared<'a> {
    fn new(kernels: &[Kernel], x: &'a [f32], isa: Isa) -> Prepared<'a> {
        let need_q8 = kernels.iter().any(|k| matches!(k, Kernel::Q8(..)));
        let need_q8k = kernels.iter().any(|k| matches!(k, Kernel::Q8K(..)));
        let need_q16 = kernels.iter().any(|k| matches!(k, Kernel::Q16(..)));
        // The same codes either way; AVX-512 avoids a libm call per value.
        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::type_complexity)]
        let (quantize_q8, quantize_q16, quantize_q8k): (
            fn(&[f32], &mut Vec<ActQ8>),
            fn(&[f32], &mut Vec<ActQ16>),
            fn(&[f32], &mut Vec<ActQ8K>),
        ) = if isa == Isa::Avx512Vnni {
            (
                // SAFETY: `isa` is at most what `hardware` found.
                |x, v| unsafe { vnni::quantize_q8(x, v) },
                |x, v| unsafe { vnni::quantize_q16(x, v) },
                |x, v| unsafe { vnni::quantize_q8k(x, v) },
            )
        } else {
            (quantize_q8, quantize_q16, quantize_q8k)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa;
        Prepared {
            float: Acts::Float(x),
            q8: need_q8.then(|| {
                let mut v = Vec::new();
                quantize_q8(x, &mut v);
                Acts::Q8(v)
            }),
            q16: need_q16.then(|| {
                let mut v = Vec::new();
                quantize_q16(x, &mut v);
                Acts::Q16(v)
            }),
            q8k: need_q8k.then(|| {
                let mut v = Vec::new();
                quantize_q8k(x, &mut v);
                Acts::Q8K(v)
            }),
        }
    }

    fn for_kernel(&self, k: Kernel) -> &Acts<'a> {
        match k {
            Kernel::Q8(..) => self.q8.as_ref().unwrap_or(&self.float),
            Kernel::Q8K(..) => self.q8k.as_ref().unwrap_or(&self.float),
            Kernel::Q16(..) => self.q16.as_ref().unwrap_or(&self.float),
            _ => &self.float,
        }
    }
}

/// Tokens one work item covers in prefill: their 8-bit activations stay in the
/// L2 cache while a chunk of weight rows streams past.
const TOKEN_BLOCK: usize = 64;

/// The output slice as a pointer that work items write disjoint elements of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every (row, token) element is written by exactly one work item.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One product split into work items of `rows_per_item` rows × `TOKEN_BLOCK`
/// tokens.
struct Task<'a> {
    w: WeightView<'a>,
    kernel: Kernel,
    acts: &'a Acts<'a>,
    out: OutPtr,
    n_tokens: usize,
    rows_per_item: usize,
    /// An F32 product in prefill, given to `matrixmultiply`: its work items
    /// cover all tokens (so each weight block is packed once), not `TOKEN_BLOCK`.
    sgemm: bool,
    /// Sixteen-row kernels, which take the item's rows sixteen at a time.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    wide: Option<WideKernels>,
    items: usize,
}

impl Task<'_> {
    /// Tokens per work item.
    fn token_block(&self) -> usize {
        if self.sgemm {
            self.n_tokens
        } else {
            TOKEN_BLOCK
        }
    }

    /// Computes work item `item`.
    ///
    /// # Safety
    /// The kernel's instruction set is present; lengths were checked by
    /// `check_matmul`; `out` has `n_tokens * w.rows` elements.
    unsafe fn run(&self, item: usize) {
        let row_chunks = self.w.rows.div_ceil(self.rows_per_item);
        let (rc, tb) = (item % row_chunks, item / row_chunks);
        let r0 = rc * self.rows_per_item;
        let r1 = (r0 + self.rows_per_item).min(self.w.rows);
        let t0 = tb * self.token_block();
        let t1 = (t0 + self.token_block()).min(self.n_tokens);
        let cols = self.w.cols;
        let rows = self.w.rows;
        let put = |r: usize, t: usize, v: f32| *self.out.0.add(t * rows + r) = v;
        let mut r0 = r0;
        if let (Kernel::Float(one, Some(tile)), Acts::Float(x)) = (self.kernel, self.acts) {
            if self.sgemm && sgemm_f32(&self.w, x, r0, r1, t0, t1, self.out) {
                return;
            }
            r0 = float_tiles(&self.w, x, r0, r1, t0, t1, one, tile, put);
        }
        #[cfg(target_arch = "x86_64")]
        match (self.wide, self.acts) {
            (Some(WideKernels::Q8(one, many)), Acts::Q8(a)) => {
                r0 = wide_rows(&self.w, a, 32, r0, r1, t0, t1, one, many, put)
            }
            (Some(WideKernels::Q16(one, many)), Acts::Q16(a)) if t1 - t0 >= vnni::WIDE_TOKENS => {
                r0 = wide_rows(&self.w, a, 32, r0, r1, t0, t1, one, many, put)
            }
            (Some(WideKernels::Q8K(one, many, decode)), Acts::Q8K(a))
                if decode || t1 - t0 >= vnni::WIDE_TOKENS =>
            {
                r0 = wide_rows(&self.w, a, 256, r0, r1, t0, t1, one, many, put)
            }
            _ => {}
        }
        // Groups of four rows where the format has four-row kernels.
        let mut r = r0;
        while r + 4 <= r1 {
            let group = [
                self.w.row(r),
                self.w.row(r + 1),
                self.w.row(r + 2),
                self.w.row(r + 3),
            ];
            let put4 = |t: usize, v: [f32; 4]| {
                for (k, v) in v.into_iter().enumerate() {
                    put(r + k, t, v);
                }
            };
            match (self.kernel, self.acts) {
                _ if t1 - t0 < 4 => break,
                (Kernel::Q8(one, _, Some(tl)), Acts::Q8(a)) => {
                    tiled4(&group, a, cols / 32, t0, t1, tl, one, put4)
                }
                (Kernel::Q16(one, _, Some(tl)), Acts::Q16(a)) => {
                    tiled4(&group, a, cols / 32, t0, t1, tl, one, put4)
                }
                (Kernel::Q8K(one, _, Some(tl)), Acts::Q8K(a)) => {
                    tiled4(&group, a, cols / 256, t0, t1, tl, one, put4)
                }
                _ => break,
            }
            r += 4;
        }
        for r in r..r1 {
            let row = self.w.row(r);
            match (self.kernel, self.acts) {
                (Kernel::Float(f, _), Acts::Float(x)) => {
                    for t in t0..t1 {
                        put(r, t, f(row, &x[t * cols..(t + 1) * cols]));
                    }
                }
                (Kernel::Q8(one, four, _), Acts::Q8(a)) => {
                    tiled(row, a, cols / 32, t0, t1, one, four, |t, v| put(r, t, v))
                }
                (Kernel::Q16(one, four, _), Acts::Q16(a)) => {
                    tiled(row, a, cols / 32, t0, t1, one, four, |t, v| put(r, t, v))
                }
                (Kernel::Q8K(one, four, _), Acts::Q8K(a)) => {
                    tiled(row, a, cols / 256, t0, t1, one, four, |t, v| put(r, t, v))
                }
                _ => {
                    for t in t0..t1 {
                        put(r, t, f32::NAN);
                    }
                }
            }
        }
    }
}

/// Fewest tokens for which an F32 block goes to `matrixmultiply` (it packs both
/// operands, which pays off only over several tokens).
const SGEMM_MIN_TOKENS: usize = 8;

/// F32 weights in prefill: rows `r0..r1` against tokens `t0..t1` as one
/// `matrixmultiply` product, whose kernels are chosen at run time (AVX-512 where
/// present, twice the FMA width of the AVX2 tiles). `false` (nothing written)
/// when the weights are not 4-byte aligned in the file's memory map.
///
/// # Safety
/// As [`Task::run`]: `x` holds `t1` token rows of `w.cols` values and `out` has
/// room for `t1 × w.rows` values, of which this writes the block's.
unsafe fn sgemm_f32(
    w: &WeightView<'_>,
    x: &[f32],
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    out: OutPtr,
) -> bool {
    let wp = w.row(r0).as_ptr();
    if !(wp as usize).is_multiple_of(std::mem::align_of::<f32>()) {
        return false;
    }
    let (cols, rows) = (w.cols, w.rows);
    // out[t][r] = Σ_k x[t][k] · w[r][k]: A = the tokens (row stride `cols`),
    // B = the weight rows read transposed (column stride `cols`).
    matrixmultiply::sgemm(
        t1 - t0,
        cols,
        r1 - r0,
        1.0,
        x.as_ptr().add(t0 * cols),
        cols as isize,
        1,
        wp as *const f32,
        1,
        cols as isize,
        0.0,
        out.0.add(t0 * rows + r0),
        rows as isize,
        1,
    );
    true
}

/// Rows `r0..r1` sixteen at a time against tokens `t0..t1`, `WIDE_TOKENS` at a
/// time and the rest one by one; returns the first row left undone.
///
/// # Safety
/// As [`Task::run`]; the kernels' instruction set is present.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn wide_rows<A>(
    w: &WeightView<'_>,
    a: &[A],
    block: usize,
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    one: vnni::Wide1<A>,
    many: vnni::WideT<A>,
    put: impl Fn(usize, usize, f32),
) -> usize {
    const R: usize = vnni::WIDE_ROWS;
    const T: usize = vnni::WIDE_TOKENS;
    let nb = w.cols / block;
    let stride = w.row_bytes();
    let act = |t: usize| &a[t * nb..(t + 1) * nb];
    let mut r = r0;
    while r + R <= r1 {
        let base = w.row(r).as_ptr();
        let mut t = t0;
        while t + T <= t1 {
            let acts: [&[A]; T] = std::array::from_fn(|k| act(t + k));
            let v = many(base, stride, nb, &acts);
            for (k, vt) in v.iter().enumerate() {
                for (j, &x) in vt.iter().enumerate() {
                    put(r + j, t + k, x);
                }
            }
            t += T;
        }
        for t in t..t1 {
            let v = one(base, stride, nb, &[act(t)]);
            for (j, &x) in v[0].iter().enumerate() {
                put(r + j, t, x);
            }
        }
        r += R;
    }
    r
}

/// Float prefill: rows `r0..` three at a time against tokens `t0..t1` four at a
/// time (the leftover tokens one by one); returns the first row left undone.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn float_tiles(
    w: &WeightView<'_>,
    x: &[f32],
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    one: FloatDot,
    tile: FloatTile,
    put: impl Fn(usize, usize, f32),
) -> usize {
    const R: usize = 3;
    const T: usize = 4;
    let cols = w.cols;
    let act = |t: usize| &x[t * cols..(t + 1) * cols];
    let mut r = r0;
    while r + R <= r1 {
        let rows = [w.row(r), w.row(r + 1), w.row(r + 2)];
        let mut t = t0;
        while t + T <= t1 {
            let v = tile(rows, [act(t), act(t + 1), act(t + 2), act(t + 3)]);
            for (k, vr) in v.iter().enumerate() {
                for (j, &vt) in vr.iter().enumerate() {
                    put(r + k, t + j, vt);
                }
            }
            t += T;
        }
        for t in t..t1 {
            for (k, row) in rows.iter().enumerate() {
                put(r + k, t, one(row, act(t)));
            }
        }
        r += R;
    }
    r
}

/// Tokens `t0..t1` against four weight rows: four tokens at a time, the rest
/// one by one, each row by `one_row`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tiled4<A>(
    rows: &[&[u8]; 4],
    a: &[A],
    nb: usize,
    t0: usize,
    t1: usize,
    tiles: Tiles<A>,
    one_row: Dot<A>,
    mut put: impl FnMut(usize, [f32; 4]),
) {
    let act = |t: usize| &a[t * nb..(t + 1) * nb];
    let mut t = t0;
    while t + 4 <= t1 {
        let v = tiles(rows, &[act(t), act(t + 1), act(t + 2), act(t + 3)]);
        for (k, v) in v.into_iter().enumerate() {
            put(t + k, v);
        }
        t += 4;
    }
    while t < t1 {
        put(t, std::array::from_fn(|r| one_row(rows[r], act(t))));
        t += 1;
    }
}

/// Tokens `t0..t1` against one weight row: four at a time where the format has a
/// four-row kernel, the rest one by one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tiled<A>(
    row: &[u8],
    a: &[A],
    nb: usize,
    t0: usize,
    t1: usize,
    one: Dot<A>,
    four: Option<Dot4<A>>,
    mut put: impl FnMut(usize, f32),
) {
    let act = |t: usize| &a[t * nb..(t + 1) * nb];
    let mut t = t0;
    if let Some(f) = four {
        while t + 4 <= t1 {
            let v = f(row, [act(t), act(t + 1), act(t + 2), act(t + 3)]);
            for (k, v) in v.into_iter().enumerate() {
                put(t + k, v);
            }
            t += 4;
        }
    }
    while t < t1 {
        put(t, one(row, act(t)));
        t += 1;
    }
}

impl CpuBackend {
    /// Rows per work item: about sixteen items per thread for balance, at least
    /// a few rows so an item outweighs fetching it.
    fn rows_per_item(&self, rows: usize, n_tokens: usize, granule: usize) -> usize {
        let token_blocks = n_tokens.div_ceil(TOKEN_BLOCK);
        let want_items = self.pool.threads() * 16;
        let per = rows * token_blocks / want_items.max(1);
        // A multiple of the kernels' row group (four, or sixteen for the wide
        // kernels): they take whole groups.
        per.clamp(4, 256).next_multiple_of(granule)
    }

    fn run_tasks(&self, tasks: &[Task<'_>]) {
        let total: usize = tasks.iter().map(|t| t.items).sum();
        let run = |mut i: usize| {
            for t in tasks {
                if i < t.items {
                    // SAFETY: see `Task::run`; kernels come from `kernel`, which
                    // picks AVX2 or VNNI ones only when `hardware` found the features.
                    unsafe { t.run(i) };
                    break;
                }
                i -= t.items;
            }
        };
        // Three quarters of the items in one contiguous run per member, the
        // rest handed out one by one to whoever is free. Taking every item
        // from the shared counter moved its cache line between the cores once
        // per item, a visible share of a small model's products (tens of
        // microseconds each), and a contiguous run streams its rows in order.
        let threads = self.pool.threads();
        let fixed = total * 3 / 4 / threads;
        let next = AtomicUsize::new(fixed * threads);
        let work = |member: usize| {
            for i in member * fixed..(member + 1) * fixed {
                run(i);
            }
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                run(i);
            }
        };
        self.pool.run(&work);
    }
}

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
        self.matmul_many(std::slice::from_ref(w), x, n_tokens, &mut [out])
    }

    fn matmul_many(
        &self,
        ws: &[WeightView<'_>],
        x: &[f32],
        n_tokens: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<(), RuntimeError> {
        if ws.len() != outs.len() {
            return Err(RuntimeError::Shape {
                tensor: ws.first().map_or("", |w| w.name).to_string(),
                what: format!("{} weights but {} outputs", ws.len(), outs.len()),
            });
        }
        let mut kernels = Vec::with_capacity(ws.len());
        for (w, out) in ws.iter().zip(outs.iter()) {
            check_matmul(w, x, n_tokens, out)?;
            kernels.push(self.kernel_for(w)?);
        }
        if n_tokens == 0 {
            return Ok(());
        }
        let prepared = Prepared::new(&kernels, x, self.isa);
        let tasks: Vec<Task<'_>> = ws
            .iter()
            .zip(outs.iter_mut())
            .zip(&kernels)
            .map(|((w, out), &kernel)| {
                let wide = self.wide_kernels(w.ty);
                let granule = if wide.is_some() { 16 } else { 4 };
                let rows_per_item = self.rows_per_item(w.rows, n_tokens, granule);
                let sgemm = w.ty == GgmlType::F32
                    && n_tokens >= SGEMM_MIN_TOKENS
                    && matches!(kernel, Kernel::Float(_, Some(_)));
                let token_block = if sgemm { n_tokens } else { TOKEN_BLOCK };
                Task {
                    w: *w,
                    kernel,
                    acts: prepared.for_kernel(kernel),
                    out: OutPtr(out.as_mut_ptr()),
                    n_tokens,
                    rows_per_item,
                    sgemm,
                    wide,
                    items: w.rows.div_ceil(rows_per_item) * n_tokens.div_ceil(token_block),
                }
            })
            .collect();
        self.run_tasks(&tasks);
        Ok(())
    }

    fn parallel_for(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        });
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX-512 activation quantisers give exactly the scalar codes, ties
    /// (values at half a step) included.
    #[test]
    fn vnni_activation_codes_match_scalar() {
        if hardware() != Isa::Avx512Vnni {
            eprintln!("notice: no AVX-512 VNNI here; quantisers not compared");
            return;
        }
        let mut x: Vec<f32> = (0..4096)
            .map(|i| {
                ((i * 7919 % 1000) as f32 - 500.0) * 0.013 * if i % 41 == 0 { 9.0 } else { 1.0 }
            })
            .collect();
        // A block of exact half steps: amax 127 gives d = 1.
        for (i, v) in x[..256].iter_mut().enumerate() {
            *v = if i == 0 {
                127.0
            } else {
                (i as f32 % 60.0) - 30.5
            };
        }
        // And one of zeros (d = 0).
        x[512..768].iter_mut().for_each(|v| *v = 0.0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        quantize_q8(&x, &mut a);
        unsafe { vnni::quantize_q8(&x, &mut b) };
        assert_eq!(a.len(), b.len());
        for (u, v) in a.iter().zip(&b) {
            assert_eq!(
                (u.qs, u.d.to_bits(), u.s.to_bits()),
                (v.qs, v.d.to_bits(), v.s.to_bits())
            );
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        quantize_q8k(&x, &mut a);
        unsafe { vnni::quantize_q8k(&x, &mut b) };
        for (u, v) in a.iter().zip(&b) {
            assert_eq!(
                (u.qs, u.d.to_bits(), u.bsums),
                (v.qs, v.d.to_bits(), v.bsums)
            );
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        quantize_q16(&x, &mut a);
        unsafe { vnni::quantize_q16(&x, &mut b) };
        for (u, v) in a.iter().zip(&b) {
            assert_eq!((u.qs, u.d.to_bits()), (v.qs, v.d.to_bits()));
        }
    }
}

impl CpuBackend {
    /// Read bandwidth of main memory in bytes per second with this backend's
    /// threads: the best of `reps` passes summing a 512 MiB buffer (far larger
    /// than any cache), each thread reading its own contiguous share. Decode
    /// reads every weight once per token, so weight bytes over this figure is
    /// its floor.
    pub fn read_bandwidth(&self, reps: usize) -> f64 {
        const BYTES: usize = 512 << 20;
        let words = BYTES / 8;
        // Non-zero contents: a page of zeros can be shared and never read.
        let buf: Vec<u64> = (0..words as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let threads = self.pool.threads();
        let share = words.div_ceil(threads);
        let sink = AtomicUsize::new(0);
        let mut best = 0f64;
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            self.pool.run(&|m| {
                let part = &buf[(m * share).min(words)..((m + 1) * share).min(words)];
                let mut acc = [0u64; 8];
                for c in part.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] = acc[i].wrapping_add(c[i]);
                    }
                }
                let s = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
                sink.fetch_add(s as usize, Ordering::Relaxed);
            });
            best = best.max(BYTES as f64 / t.elapsed().as_secs_f64());
        }
        std::hint::black_box(sink.load(Ordering::Relaxed));
        best
    }

    /// Read bandwidth over `parts` themselves (a model's mapped weights) in
    /// bytes per second: the best of `reps` passes in which each thread sums
    /// its contiguous share of every part. Where the file's pages sit in
    /// memory (page cache, large folios) can make them faster to read than a
    /// fresh buffer, so a decode floor should take the larger of this and
    /// [`CpuBackend::read_bandwidth`].
    pub fn read_bandwidth_of(&self, parts: &[&[u8]], reps: usize) -> f64 {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return 0.0;
        }
        let threads = self.pool.threads();
        let sink = AtomicUsize::new(0);
        let mut best = 0f64;
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            self.pool.run(&|m| {
                let mut acc = [0u64; 8];
                for part in parts {
                    let share = part.len().div_ceil(threads);
                    let mine =
                        &part[(m * share).min(part.len())..((m + 1) * share).min(part.len())];
                    for c in mine.chunks_exact(64) {
                        for (i, a) in acc.iter_mut().enumerate() {
                            let w = u64::from_le_bytes(
                                c[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]),
                            );
                            *a = a.wrapping_add(w);
                        }
                    }
                }
                let s = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
                sink.fetch_add(s as usize, Ordering::Relaxed);
            });
            best = best.max(total as f64 / t.elapsed().as_secs_f64());
        }
        std::hint::black_box(sink.load(Ordering::Relaxed));
        best
    }
}
