//! The CUDA backend: fused dequantise-GEMV kernels over the file's blocks, run on
//! an NVIDIA GPU through cudarc.
//!
//! - The kernels are CUDA C (`gemv.cu`, embedded in the binary), compiled by NVRTC
//!   on first use for the device's architecture and cached on disk
//!   ([`compile::cache_dir`]); the driver and NVRTC are loaded at run time, so a
//!   binary built without CUDA runs anywhere and [`CudaBackend::new`] says why
//!   when there is no GPU.
//! - Each weight matrix is uploaded once, in its quantised layout (rows padded to
//!   16 bytes), the first time it is multiplied; later products of the same bytes
//!   reuse the device copy.
//! - Batches of 1..=16 activation rows run one fused GEMV each; longer batches
//!   run it over slices of 16 rows. The repacked formats' products of 8 rows
//!   or more (4 for Q8_0 on 16-bit codes and Q4_K/Q6_K) run instead on int8
//!   tensor cores (`mma.cu`: mma.sync m16n8k32 over every row at once, the
//!   CPU's integer sums per block of 32; K split across blocks when few tiles
//!   cover the device). `QUERN_CUDA_MMA=0` keeps every product on the GEMV
//!   kernels; `QUERN_CUDA_MMA_MIN`, `QUERN_CUDA_MMA_BN` (8, 16, 32, 64 tokens
//!   per block) and `QUERN_CUDA_MMA_SPLIT` (splits of K) are tuning knobs.
//! - The integer block formats (Q8_0, Q4_0/1, Q5_0/1, Q2_K..Q6_K) multiply
//!   quantised activations with dp4a; the float formats and IQ4_NL/IQ4_XS multiply
//!   f32 activations. `QUERN_CUDA_FLOAT_ACTS=1` puts every format on f32
//!   activations. The repacked formats ([`packed`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//!   Q4_K, Q6_K) get their activations as the CPU backend quantises them for the
//!   same weights (16-bit codes for Q8_0, one scale per 256 for Q4_K/Q6_K, 8 bits
//!   per 32 otherwise), so both backends form the same integer sums; the others
//!   8-bit codes per 32.

pub mod bench;
pub mod compile;
pub mod decode;
mod error;
mod fold;
pub mod l2hint;
pub mod launch;
pub mod packed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use launch::Launch;
use quern_formats::GgmlType;

use crate::backend::{check_matmul, Backend, WeightView};
use crate::error::RuntimeError;
use crate::precision::{act_bits, uses_16bit_acts};
pub use compile::Toolchain;
pub use error::CudaError;
use error::DriverContext;

/// Prepended to every module: programmatic-dependent-launch helpers.
const COMMON_SRC: &str = include_str!("common.cu");
const GEMV_SRC: &str = include_str!("gemv.cu");
const PACKED_SRC: &str = include_str!("packed.cu");
const MMA_SRC: &str = include_str!("mma.cu");
const DECODE_SRC: &str = include_str!("decode.cu");

/// Warps per thread block, and rows per warp for each entry of [`BATCHES`], by
/// default: one row per warp leaves the most warps in flight for small batches,
/// four share each activation load among more rows for large ones (measured on
/// an H200, BENCHMARKS.md). `QUERN_CUDA_GEMV_WARPS` (1, 2, 4, 8) and
/// `QUERN_CUDA_GEMV_ROWS` (one value for all batches, or five, comma-separated)
/// override them, for tuning runs.
const WARPS: usize = 4;
const ROWS_PER_WARP: [usize; 5] = [1, 1, 2, 4, 4];

/// Rows per thread block of the repacked formats' kernels (`packed.cu`) for each
/// entry of [`BATCHES`], and units each thread loads before it multiplies.
/// `QUERN_CUDA_MMV_ROWS` (one value or five), `QUERN_CUDA_MMV_UNROLL` (1, 2, 4,
/// for every format) and `QUERN_CUDA_MMV_WARPS` (1..8; by default from the row
/// length) override them.
const MMV_ROWS: [usize; 5] = [2, 2, 2, 2, 2];
const MMV_UNROLL: usize = 2;

/// Units per thread per step of the block kernel for `ty` and batch entry
/// `bi` (of [`BATCHES`]) when `QUERN_CUDA_MMV_UNROLL` does not fix it: Q4_K's
/// batch-1 kernel takes 1 (twice the threads per row, half the registers
/// each), which together with its bound of 3 blocks ([`mmv_min_blocks`]) no
/// longer spills and is 3-7 % faster on the large shapes of an H200; at batch
/// 2 one unit was up to 17 % slower, so the others keep 2 (BENCHMARKS.md,
/// eleventh slice).
fn default_mmv_unroll(ty: GgmlType, bi: usize) -> usize {
    if ty == GgmlType::Q4K && bi == 0 {
        1
    } else {
        MMV_UNROLL
    }
}

/// Which kernel family multiplies the repacked formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKernel {
    /// `mmv_*`: a block splits each of its rows' units across all its threads,
    /// a barrier per block (default: the fastest measured, BENCHMARKS.md).
    Block,
    /// `mmw_*` / `mmwf_*` (`QUERN_CUDA_MMV_KERNEL=warp`): independent warps,
    /// each over R rows at a time; at small batches of the 32-value formats the
    /// activations are quantised inside the kernel. Slower than `Block` on the
    /// H200 at batch 1 (BENCHMARKS.md), kept for tuning runs.
    Warp,
    /// `mmp_*` (`QUERN_CUDA_MMV_KERNEL=pipe`; sm_90 and later, batches of up
    /// to 4): weight rows staged in shared memory by bulk asynchronous copies,
    /// several stages in flight per block. Not yet measured on a GPU, so not
    /// the default.
    Pipe,
}

/// The pipelined kernels' defaults: bytes of weights per stage it aims at,
/// stages in flight per block, blocks per SM (`QUERN_CUDA_MMP_STAGE_KB`,
/// `QUERN_CUDA_MMP_STAGES`, `QUERN_CUDA_MMP_BPS` override them).
const MMP_STAGE_BYTES: usize = 16 * 1024;
const MMP_STAGES: usize = 4;
const MMP_BPS: usize = 2;
/// The most stages a pipelined kernel holds (`MMP_MAXST` in packed.cu).
const MMP_MAX_STAGES: usize = 8;
/// Batch variants the pipelined kernels have (`mmp_b1`, `mmp_b2`, `mmp_b4`).
const MMP_BATCHES: usize = 3;
/// Threads per block of the pipelined kernels.
const MMP_THREADS: usize = 256;

/// One pipelined launch's shape: rows per stage, stages, warps per row, blocks
/// and dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipePlan {
    pub rows_per_stage: usize,
    pub stages: usize,
    pub warps_per_row: usize,
    pub blocks: usize,
    pub smem: usize,
}

fn pow2_floor(v: usize) -> usize {
    if v == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - v.leading_zeros())
    }
}

/// The pipelined kernel's shape for `rows` rows of `row_bytes` bytes (all
/// regions) and `units` units each, `batch` tokens (the compiled variant's),
/// on `sms` SMs with `smem_block` bytes of shared memory per block at most and
/// `smem_sm` per SM; None when two stages of one row group do not fit.
#[allow(clippy::too_many_arguments)]
pub fn pipe_plan(
    g: &Geometry,
    rows: usize,
    row_bytes: usize,
    units: usize,
    batch: usize,
    sms: usize,
    smem_block: usize,
    smem_sm: usize,
) -> Option<PipePlan> {
    let warps = MMP_THREADS / 32;
    // Rows multiplied at once (8 / warps per row): as many as fit in a stage,
    // but at least one unit per thread.
    let wpr = g.mmp_wpr.unwrap_or_else(|| {
        let slots = pow2_floor(g.mmp_stage / row_bytes.max(1)).clamp(1, warps);
        (warps / slots).min(pow2_floor((units / 32).max(1)))
    });
    let wpr = wpr.clamp(1, warps);
    let slots = warps / wpr;
    let per_slot = (g.mmp_stage / (row_bytes.max(1) * slots)).max(1);
    let mut rps = (slots * per_slot).min(rows.max(1));
    let bps = g.mmp_bps.max(1);
    // Each block also holds 1 KiB the driver reserves and the static barriers.
    let budget = smem_block.min((smem_sm / bps).saturating_sub(2048));
    let red = |rps: usize, st: usize| st * wpr * rps * batch * 4;
    let fits = |rps: usize, st: usize| st * rps * row_bytes + red(rps, st) <= budget;
    while rps > 1 && !fits(rps, 2) {
        rps -= 1;
    }
    if !fits(rps, 2) {
        return None;
    }
    let mut stages = g.mmp_stages.clamp(2, MMP_MAX_STAGES);
    while stages > 2 && !fits(rps, stages) {
        stages -= 1;
    }
    let groups = rows.div_ceil(rps);
    Some(PipePlan {
        rows_per_stage: rps,
        stages,
        warps_per_row: wpr,
        blocks: groups.min(g.mmp_blocks.unwrap_or(sms * bps)).max(1),
        smem: stages * rps * row_bytes + red(rps, stages),
    })
}

/// The warp kernels' rows per warp step and units per lane per step for each
/// entry of [`BATCHES`], by format: 16-byte units (Q4_0, Q4_1, Q5_0, Q5_1) take
/// more units per step than 32- and 48-byte ones, so that a lane has about
/// 128 bytes in flight at batch 1.
fn mmw_defaults(ty: GgmlType) -> ([usize; 5], [usize; 5]) {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            ([2, 2, 2, 1, 1], [4, 2, 2, 2, 1])
        }
        _ => ([2, 2, 2, 1, 1], [2, 2, 1, 1, 1]),
    }
}
/// `QUERN_CUDA_MMW_B1="Q4_0:2x4 Q4_K:1x2"`: batch-1 rows per warp × units per
/// lane for some formats (tuning runs pick one per format).
fn mmw_b1_override(ty: GgmlType) -> Option<(usize, usize)> {
    let v = std::env::var("QUERN_CUDA_MMW_B1").ok()?;
    v.split([' ', ',', ';']).find_map(|part| {
        let (name, geo) = part.trim().split_once(':')?;
        if !name.eq_ignore_ascii_case(ty.name()) {
            return None;
        }
        let (r, u) = geo.split_once('x')?;
        let (r, u) = (r.parse::<usize>().ok()?, u.parse::<usize>().ok()?);
        ((1..=4).contains(&r) && (1..=4).contains(&u)).then_some((r, u))
    })
}

/// Warps per block of the warp kernels.
const MMW_WARPS: usize = 8;

/// Activation rows from which the repacked formats' products run on the int8
/// tensor-core kernels (`mmq_*`, mma.cu) by default, by the activations they
/// take (measured on an H200, BENCHMARKS.md): 8 for the 32-value formats on
/// 8-bit codes (their GEMV kernels are faster at 4 rows), 4 for Q8_0 on 16-bit
/// codes and for Q4_K/Q6_K (the tensor-core kernels are as fast or faster at 4).
const MMA_MIN: usize = 8;
const MMA_MIN_WIDE: usize = 4;
/// Tokens per block of each tensor-core kernel (`mmq_n8` .. `mmq_n64`).
const MMA_BN: [usize; 4] = [8, 16, 32, 64];
/// Weight rows per block of the tensor-core kernels (`MQ_BM`).
const MMA_BM: usize = 64;
/// Threads per block of the tensor-core kernels (`MQ_THREADS`).
const MMA_THREADS: u32 = 128;
/// Values of K per step of the tensor-core kernels (`MQ_KT`).
const MMA_KT: usize = 256;
/// Blocks per SM the tensor-core kernels' K split aims at: each block's steps
/// are a serial chain of loads (latency-bound when few blocks cover the
/// device), so products with fewer than [`MMA_SPLIT_BELOW`] row × token tiles
/// per SM split K into pieces of at least [`MMA_MIN_STEPS`] steps and add them
/// up; products with more are not split (measured on an H200: 8B prefill of 512
/// tokens 3 % faster with no split than with the split at 4 blocks per SM for
/// every product; Q4_0 4096×4096 at batch 16 2.2× faster with it).
const MMA_TARGET_BLOCKS: usize = 4;
const MMA_SPLIT_BELOW: usize = 2;
const MMA_MIN_STEPS: usize = 2;

/// (splits, steps per split) of K for a tensor-core launch of `tiles` row ×
/// token tiles over K of `steps` steps, on `sms` SMs.
fn mma_split(tiles: usize, steps: usize, sms: usize, fixed: Option<usize>) -> (usize, usize) {
    let want = fixed.unwrap_or_else(|| {
        if tiles >= sms * MMA_SPLIT_BELOW {
            return 1;
        }
        (sms * MMA_TARGET_BLOCKS)
            .div_ceil(tiles.max(1))
            .min(steps / MMA_MIN_STEPS)
    });
    let ksteps = steps.div_ceil(want.clamp(1, steps.max(1)));
    (steps.div_ceil(ksteps.max(1)).max(1), ksteps.max(1))
}

/// Dynamic shared memory of a tensor-core kernel with `bn` tokens per block
/// (`mmq_smem` in mma.cu): the weight tile's codes (64 rows of 68 words) and
/// per-block scales (64 × 9 float pairs and ints), then two steps of
/// activation codes (`bn` rows of 68 words; twice for 16-bit codes) and their
/// scales (`bn` × 9 float pairs).
fn mmq_smem_bytes(bn: usize, q16: bool) -> usize {
    let (rw, kbp) = (68, 9);
    MMA_BM * rw * 4
        + MMA_BM * kbp * 8
        + MMA_BM * kbp * 4
        + 2 * bn * rw * 4 * if q16 { 2 } else { 1 }
        + 2 * bn * kbp * 8
}

/// The kernels' launch geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub warps: usize,
    /// Per entry of the compiled batch sizes (1, 2, 4, 8, 16).
    pub rows_per_warp: [usize; 5],
    /// Repacked formats: rows per block for each batch size.
    pub mmv_rows: [usize; 5],
    /// Repacked formats: units per thread per step, when fixed for every
    /// format (else per format, [`Geometry::mmv_unroll_for`]).
    pub mmv_unroll: Option<usize>,
    /// Repacked formats: warps per block, when fixed.
    pub mmv_warps: Option<usize>,
    /// Repacked formats: the kernel family (`QUERN_CUDA_MMV_KERNEL=block|warp|pipe`).
    pub packed_kernel: PackedKernel,
    /// Pipelined kernels: weight bytes per stage aimed at, stages, blocks per
    /// SM, warps per row when fixed (`QUERN_CUDA_MMP_WPR`: 1, 2, 4, 8), and
    /// whether the first copies go out before the wait for the previous kernel
    /// (`QUERN_CUDA_MMP_EARLY=1`).
    pub mmp_stage: usize,
    pub mmp_stages: usize,
    pub mmp_bps: usize,
    pub mmp_wpr: Option<usize>,
    pub mmp_early: bool,
    /// Block kernels: each block prefetches its rows' weights into L2 before
    /// the wait for the previous kernel (`QUERN_CUDA_PREFETCH=1`).
    pub mmv_prefetch: bool,
    /// Pipelined kernels: at most this many blocks (`QUERN_CUDA_MMP_BLOCKS`;
    /// tests use it so that each block walks many row groups).
    pub mmp_blocks: Option<usize>,
    /// Warp kernels: rows per warp step and units per lane per step for each
    /// batch size, when set (`QUERN_CUDA_MMW_ROWS`, `QUERN_CUDA_MMW_UNITS`: one
    /// value or five); by default per format ([`mmw_defaults`]).
    pub mmw_rows: Option<[usize; 5]>,
    pub mmw_units: Option<[usize; 5]>,
    /// Warp kernels: warps per block (`QUERN_CUDA_MMW_WARPS`, 1..8).
    pub mmw_warps: usize,
    /// Warp kernels with in-kernel activation quantisation: at most this many
    /// blocks per SM (`QUERN_CUDA_MMW_BPS`; by default as many as fit).
    pub mmw_blocks_per_sm: Option<usize>,
    /// Whether small batches quantise their activations inside the warp kernel
    /// (`QUERN_CUDA_MMW_FUSE=0`: a quantiser launch first, as the block kernels).
    pub mmw_fuse: bool,
    /// Fused warp kernels: float4 loads per lane the staging issues at once
    /// (`QUERN_CUDA_MMW_STAGE`: 2, 4, 8, 16; default 8).
    pub mmw_stage: Option<usize>,
    /// Repacked formats: products of at least this many activation rows run on
    /// the int8 tensor-core kernels (`mmq_*`, mma.cu) instead of the GEMV ones,
    /// when fixed (`QUERN_CUDA_MMA_MIN`; by default by format, [`MMA_MIN`]).
    pub mma_min: Option<usize>,
    /// `QUERN_CUDA_MMA=0`: never the tensor-core kernels.
    pub mma_off: bool,
    /// Tokens per block of the tensor-core kernels, when fixed
    /// (`QUERN_CUDA_MMA_BN`: 8, 16, 32, 64; by default from the batch).
    pub mma_bn: Option<usize>,
    /// Splits of K of the tensor-core kernels, when fixed (`QUERN_CUDA_MMA_SPLIT`;
    /// by default enough for [`MMA_TARGET_BLOCKS`] blocks per SM).
    pub mma_split: Option<usize>,
}

fn env_list(name: &str, ok: impl Fn(&usize) -> bool) -> Option<[usize; 5]> {
    let v = std::env::var(name).ok()?;
    let vals: Vec<usize> = v
        .split(',')
        .map(|p| p.trim().parse::<usize>().ok().filter(&ok))
        .collect::<Option<_>>()?;
    match vals.len() {
        1 => Some([vals[0]; 5]),
        5 => Some([vals[0], vals[1], vals[2], vals[3], vals[4]]),
        _ => None,
    }
}

impl Geometry {
    /// Units per thread per step of `ty`'s block kernel for batch entry `bi`
    /// (of [`BATCHES`]).
    pub fn mmv_unroll_for(&self, ty: GgmlType, bi: usize) -> usize {
        self.mmv_unroll
            .unwrap_or_else(|| default_mmv_unroll(ty, bi))
    }

    /// The warp kernels' rows per warp step and units per lane per step for
    /// each batch size of `ty`: the format's defaults, then the environment's.
    pub fn mmw_geometry(&self, ty: GgmlType) -> ([usize; 5], [usize; 5]) {
        let (dr, du) = mmw_defaults(ty);
        let (mut r, mut u) = (self.mmw_rows.unwrap_or(dr), self.mmw_units.unwrap_or(du));
        if let Some((r1, u1)) = mmw_b1_override(ty) {
            r[0] = r1;
            u[0] = u1;
        }
        (r, u)
    }

    fn from_env() -> Geometry {
        let ok = |v: &usize| [1, 2, 4, 8].contains(v);
        let warps = std::env::var("QUERN_CUDA_GEMV_WARPS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(ok)
            .unwrap_or(WARPS);
        let rows = env_list("QUERN_CUDA_GEMV_ROWS", ok).unwrap_or(ROWS_PER_WARP);
        let mmv_rows = env_list("QUERN_CUDA_MMV_ROWS", ok).unwrap_or(MMV_ROWS);
        let mmv_unroll = std::env::var("QUERN_CUDA_MMV_UNROLL")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|v| [1, 2, 4].contains(v));
        let mmv_warps = std::env::var("QUERN_CUDA_MMV_WARPS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|v| (1..=8).contains(v));
        let packed_kernel = match std::env::var("QUERN_CUDA_MMV_KERNEL").as_deref() {
            Ok("warp") => PackedKernel::Warp,
            Ok("pipe") => PackedKernel::Pipe,
            _ => PackedKernel::Block,
        };
        let small = |v: &usize| (1..=4).contains(v);
        let env_usize = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        Geometry {
            warps,
            rows_per_warp: rows,
            mmv_rows,
            mmv_unroll,
            mmv_warps,
            packed_kernel,
            mmp_stage: env_usize("QUERN_CUDA_MMP_STAGE_KB")
                .filter(|v| (1..=96).contains(v))
                .map_or(MMP_STAGE_BYTES, |v| v * 1024),
            mmp_stages: env_usize("QUERN_CUDA_MMP_STAGES")
                .filter(|v| (2..=MMP_MAX_STAGES).contains(v))
                .unwrap_or(MMP_STAGES),
            mmp_bps: env_usize("QUERN_CUDA_MMP_BPS")
                .filter(|v| (1..=8).contains(v))
                .unwrap_or(MMP_BPS),
            mmp_wpr: env_usize("QUERN_CUDA_MMP_WPR").filter(|v| [1, 2, 4, 8].contains(v)),
            mmp_early: std::env::var("QUERN_CUDA_MMP_EARLY").as_deref() == Ok("1"),
            mmv_prefetch: std::env::var("QUERN_CUDA_PREFETCH").as_deref() == Ok("1"),
            mmp_blocks: env_usize("QUERN_CUDA_MMP_BLOCKS").filter(|v| *v > 0),
            mmw_rows: env_list("QUERN_CUDA_MMW_ROWS", small),
            mmw_units: env_list("QUERN_CUDA_MMW_UNITS", small),
            mmw_warps: env_usize("QUERN_CUDA_MMW_WARPS")
                .filter(|v| (1..=8).contains(v))
                .unwrap_or(MMW_WARPS),
            mmw_blocks_per_sm: env_usize("QUERN_CUDA_MMW_BPS").filter(|v| *v > 0),
            mmw_fuse: std::env::var("QUERN_CUDA_MMW_FUSE").as_deref() != Ok("0"),
            mmw_stage: env_usize("QUERN_CUDA_MMW_STAGE").filter(|v| [2, 4, 8, 16].contains(v)),
            mma_min: env_usize("QUERN_CUDA_MMA_MIN").filter(|v| *v > 0),
            mma_off: std::env::var("QUERN_CUDA_MMA").as_deref() == Ok("0"),
            mma_bn: env_usize("QUERN_CUDA_MMA_BN").filter(|v| MMA_BN.contains(v)),
            mma_split: env_usize("QUERN_CUDA_MMA_SPLIT").filter(|v| *v > 0),
        }
    }
}
/// The batch sizes compiled; a batch runs in the smallest one that holds it.
const BATCHES: [usize; 5] = [1, 2, 4, 8, 16];
/// The most activation rows one launch takes.
pub const MAX_BATCH: usize = 16;

/// The compiled kernel variant (index into `BATCHES`) for a launch of `nt`
/// tokens: the smallest batch size that holds them.
fn batch_variant(nt: usize) -> usize {
    BATCHES
        .iter()
        .position(|&b| b >= nt)
        .unwrap_or(BATCHES.len() - 1)
}

/// The number `gemv.cu` knows a format by (`QFMT`).
fn format_id(ty: GgmlType) -> Option<u32> {
    Some(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Bf16 => 2,
        GgmlType::Q4_0 => 3,
        GgmlType::Q4_1 => 4,
        GgmlType::Q5_0 => 5,
        GgmlType::Q5_1 => 6,
        GgmlType::Q8_0 => 7,
        GgmlType::Q2K => 8,
        GgmlType::Q3K => 9,
        GgmlType::Q4K => 10,
        GgmlType::Q5K => 11,
        GgmlType::Q6K => 12,
        GgmlType::Iq4Nl => 13,
        GgmlType::Iq4Xs => 14,
        _ => return None,
    })
}

/// Every format the CUDA kernels multiply.
pub fn supported_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::all().filter(|t| format_id(*t).is_some())
}

/// Elements of a row one warp stages in shared memory at a time (`CH` in gemv.cu).
fn chunk_elems(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F32 => 512,
        GgmlType::F16 | GgmlType::Bf16 => 1024,
        _ => 2048,
    }
}

fn chunk_bytes(ty: GgmlType) -> usize {
    chunk_elems(ty) / ty.block_size() * ty.type_size()
}

/// Row length the kernels see: float rows are padded with zeros to a multiple of
/// 8 elements (block formats already are).
fn padded_cols(ty: GgmlType, cols: usize) -> usize {
    if ty.is_quantized() {
        cols
    } else {
        cols.div_ceil(8) * 8
    }
}

/// Whether `ty` takes the 8-bit-activation path (`gemvq_*` in gemv.cu): the
/// integer block formats, unless `QUERN_CUDA_FLOAT_ACTS=1` asks for float
/// activations everywhere (for comparisons).
fn int_path(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
    )
}

/// Whether the backend quantises the activations to 8 bits for `ty`.
pub fn quantises_activations(ty: GgmlType) -> bool {
    int_path(ty) && std::env::var("QUERN_CUDA_FLOAT_ACTS").as_deref() != Ok("1")
}

/// The form a weight's kernels take their activations in: which quantiser (if
/// any) fills the 8-bit buffer. Products of one input whose weights share a
/// kind can share one quantisation ([`CudaBackend::launch_gemv_act`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActKind {
    /// f32 activations, no quantiser.
    Float,
    /// 8-bit codes and a scale per 32 (`quantize_act`, gemv.cu).
    Q8,
    /// The repacked formats' activations (`quantize_act_ds`, packed.cu), as the
    /// CPU backend quantises them for the same weights: 8-bit codes with
    /// (d, d·Σq) per 32 (Q4_0, Q4_1, Q5_0, Q5_1)...
    Packed32,
    /// ... one scale per 256 (Q4_K, Q6_K) ...
    Packed256,
    /// ... or 16-bit codes per 32 (Q8_0).
    Packed16,
}

/// Whether Q8_0's repacked kernels take 16-bit activation codes (default, as the
/// CPU backend); `QUERN_CUDA_Q8_ACT=8`: 8-bit codes per 32, which batches of
/// 4-16 (prefill) multiply about twice as fast, at the cost of Q8_0's accuracy
/// and of agreement with the CPU backend (BENCHMARKS.md). Read when a module is
/// compiled and when a product is launched: set it before the backend is made.
fn q8_act16() -> bool {
    std::env::var("QUERN_CUDA_Q8_ACT").as_deref() != Ok("8")
}

/// The minimum-blocks bound of the batch-1 block kernel (packed.cu's
/// `MMV_MINB`) for `ty`, whose activations are 16-bit codes when `act16`;
/// None: the thread bound alone. Given a bound, ptxas spends registers up to
/// its cap (65536 / (n · 256)) on keeping more loads in flight: with 2 the
/// 4- to 6-bit formats on 8-bit codes multiply 5-18 % faster at batch 1 on an
/// H200, and Q4_K, at 1 unit per step ([`default_mmv_unroll`]), with 3
/// (BENCHMARKS.md, eleventh slice). Q8_0 (16-bit codes) gains on one shape
/// and loses on another, so it keeps none; batches of 2 lost with the bound,
/// so it is the batch-1 kernel's alone. `QUERN_CUDA_MMV_MINB=n` sets n for
/// every format (0: none), for tuning runs.
fn mmv_min_blocks(ty: GgmlType, act16: bool) -> Option<u32> {
    if let Ok(v) = std::env::var("QUERN_CUDA_MMV_MINB") {
        return v.trim().parse().ok().filter(|&n| n > 0);
    }
    if act16 {
        return None;
    }
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q6K => {
            Some(2)
        }
        GgmlType::Q4K => Some(3),
        _ => None,
    }
}

/// The activations the repacked kernels of `ty` read: under 16-bit
/// activations (`precision`, read when a module is compiled and a product
/// launched, like `QUERN_CUDA_Q8_ACT`) the 16-bit layout for all seven formats.
fn packed_act_kind(ty: GgmlType) -> ActKind {
    match ty {
        GgmlType::Q8_0 if q8_act16() => ActKind::Packed16,
        GgmlType::Q8_0 => ActKind::Packed32,
        t if uses_16bit_acts(t, act_bits()) => ActKind::Packed16,
        GgmlType::Q4K | GgmlType::Q6K => ActKind::Packed256,
        _ => ActKind::Packed32,
    }
}

/// The quantiser layout decode.cu's fused kernels (`rms_norm_q`, `silu_mul_q`,
/// `attn_combine_q`) write for products whose activations are of `kind`: the
/// layouts of `quantize_act_ds` (packed.cu), 1 = [`ActKind::Packed32`], 2 =
/// [`ActKind::Packed256`], 3 = [`ActKind::Packed16`]; None for the others
/// (their quantiser, if any, stays a launch of its own).
pub(crate) fn fused_act_mode(kind: ActKind) -> Option<i32> {
    match kind {
        ActKind::Packed32 => Some(1),
        ActKind::Packed256 => Some(2),
        ActKind::Packed16 => Some(3),
        ActKind::Float | ActKind::Q8 => None,
    }
}

/// Where the scale pairs of `n_tokens` rows of `k` quantised activations of a
/// repacked `kind` start in the activation buffer (the codes start at 0), as
/// the repacked and tensor-core launches read them.
pub(crate) fn act_scales_offset(kind: ActKind, n_tokens: usize, k: usize) -> usize {
    (code_bytes(kind) * n_tokens * k).div_ceil(16) * 16
}

/// Bytes per activation code of `kind`.
fn code_bytes(kind: ActKind) -> usize {
    if kind == ActKind::Packed16 {
        2
    } else {
        1
    }
}

/// How the GPU quantises the activations that meet weights of `ty`, as
/// (values per scale, largest code), when it does (tests bound the rounding
/// with it).
pub fn act_quantisation(ty: GgmlType) -> Option<(usize, u32)> {
    if !quantises_activations(ty) {
        return None;
    }
    Some(if packed::use_packed(ty) {
        match packed_act_kind(ty) {
            ActKind::Packed16 => (32, 32767),
            ActKind::Packed256 => (256, 127),
            _ => (32, 127),
        }
    } else {
        (32, 127)
    })
}

impl DeviceWeight {
    pub fn act_kind(&self) -> ActKind {
        if self.packed.is_some() {
            packed_act_kind(self.ty)
        } else if quantises_activations(self.ty) {
            ActKind::Q8
        } else {
            ActKind::Float
        }
    }
}

/// Bytes of quantised activations (codes of up to 2 bytes, then per 32 a scale
/// or a scale pair) the GEMV of `n_tokens` rows of `k` values needs, for every
/// kernel family.
pub fn act_bytes(k: usize, n_tokens: usize) -> usize {
    (2 * n_tokens * k).div_ceil(16) * 16 + n_tokens * k / 32 * 8
}

/// One format's compiled kernels.
struct GemvModule {
    /// One per entry of [`BATCHES`], float activations.
    funcs: Vec<CudaFunction>,
    /// The same on 8-bit activations, with the kernel that makes them.
    qfuncs: Option<(Vec<CudaFunction>, CudaFunction)>,
    /// The repacked layout's kernels (8-bit activations), with their quantiser.
    pfuncs: Option<(Vec<CudaFunction>, CudaFunction)>,
    /// The repacked layout's warp kernels: one per entry of [`BATCHES`] on
    /// quantised activations, then the fused ones for the first [`FUSED_BATCHES`].
    wfuncs: Vec<CudaFunction>,
    wffuncs: Vec<CudaFunction>,
    /// Blocks per SM of each fused kernel at the largest staged size, as measured
    /// by the occupancy calculator (at most [`MMW_FUSED_SMEM`] bytes each).
    wf_occupancy: Vec<u32>,
    /// Dynamic shared memory of each batch size's kernels.
    smem: Vec<u32>,
    /// The repacked layout's int8 tensor-core kernels, one per entry of
    /// [`MMA_BN`], with their dynamic shared memory.
    mfuncs: Vec<(CudaFunction, u32)>,
    /// The pipelined kernels (`mmp_b1`, `mmp_b2`, `mmp_b4`) on devices with
    /// bulk copies; empty otherwise.
    ppfuncs: Vec<CudaFunction>,
}

/// Batch sizes (entries of [`BATCHES`]) with fused warp kernels.
const FUSED_BATCHES: usize = 3;
/// The most shared memory a fused warp kernel stages (within the 48 KB every
/// launch may use without opting in).
const MMW_FUSED_SMEM: usize = 48 * 1024;

/// Shared-memory bytes the fused warp kernels stage for `nt` tokens of `k`
/// values (`stage_bytes` in packed.cu).
fn stage_bytes(nt: usize, k: usize) -> usize {
    (nt * k).div_ceil(16) * 16 + nt * (k / 32) * 8
}

/// A weight matrix on the device, rows `stride` bytes apart.
pub struct DeviceWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Row length the kernel walks ([`padded_cols`]).
    k: usize,
    stride: usize,
    /// The repacked layout ([`packed`]), when the matrix is in it.
    packed: Option<packed::PackedLayout>,
    /// Shared by the matrices that are rows of one upload ([`Self::rows_view`]).
    buf: Arc<CudaSlice<u8>>,
    /// Where this matrix's data starts in `buf` (the code region's first row;
    /// the layout's offsets count from there).
    offset: usize,
}

impl DeviceWeight {
    /// Bytes the matrix occupies in its file layout (what one product must read).
    pub fn file_bytes(&self) -> usize {
        self.rows * (self.cols / self.ty.block_size() * self.ty.type_size())
    }

    /// Bytes on the device (rows padded).
    pub fn device_bytes(&self) -> usize {
        match &self.packed {
            Some(l) => self.rows * (l.q_stride + l.s_stride + l.d_stride),
            None => self.rows * self.stride,
        }
    }

    /// A second device copy (benchmarks rotate copies to defeat the L2).
    pub fn duplicate(&self, stream: &Arc<CudaStream>) -> Result<DeviceWeight, CudaError> {
        Ok(DeviceWeight {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            k: self.k,
            stride: self.stride,
            packed: self.packed,
            buf: Arc::new(
                stream
                    .clone_dtod(&*self.buf)
                    .ctx("copying weights on the device")?,
            ),
            offset: self.offset,
        })
    }

    /// Rows `first..first + n` as a matrix of their own, on the same device
    /// memory. Every region of a layout is row by row (rows a stride apart),
    /// and the kernels address each region from the data pointer and the
    /// layout's offsets, so a view moves the pointer to its first code row and
    /// the other regions' offsets by what they moved less that.
    pub fn rows_view(&self, first: usize, n: usize) -> Option<DeviceWeight> {
        if n == 0 || first.checked_add(n)? > self.rows {
            return None;
        }
        let (packed, step) = match &self.packed {
            Some(l) => {
                let (v, step) = l.from_row(first);
                (Some(v), step)
            }
            None => (None, first * self.stride),
        };
        Some(DeviceWeight {
            ty: self.ty,
            rows: n,
            cols: self.cols,
            k: self.k,
            stride: self.stride,
            packed,
            buf: self.buf.clone(),
            offset: self.offset + step,
        })
    }
}

/// A single-token product's part in an RMSNorm folded into the products
/// around it (cuda/fold.rs): it reads the codes of the norm's input times its
/// weights and scales its outputs by 1 / sqrt(Σ parts / k + eps) (`parts`:
/// the device address of `n_parts` f64 sums of squares).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fold {
    pub parts: u64,
    pub n_parts: i32,
    pub eps: f32,
}

impl Fold {
    /// A product with no part in a fold.
    pub const NONE: Fold = Fold {
        parts: 0,
        n_parts: 0,
        eps: 0.0,
    };
}

/// The kernel family a repacked-format product runs on
/// ([`CudaBackend::packed_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The int8 tensor-core kernels (mma.cu).
    Mma,
    /// The warp kernels (`QUERN_CUDA_MMV_KERNEL=warp`).
    Warp,
    /// The pipelined kernels (`QUERN_CUDA_MMV_KERNEL=pipe`).
    Pipe(PipePlan),
    /// The block kernels (the default).
    Block,
}

/// Whether a product of `n_tokens` rows on `route` reads a [`Fold`]: only the
/// single-token block kernels do.
fn takes_fold(route: Option<Route>, n_tokens: usize) -> bool {
    n_tokens == 1 && route == Some(Route::Block)
}

/// The device address of `s` on `be`'s stream.
pub(crate) fn device_addr<T>(be: &CudaBackend, s: &CudaSlice<T>) -> u64 {
    let (p, _g) = s.device_ptr(be.stream());
    p
}

/// common.cu's `FoldOut`, as the device reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FoldOut {
    /// The residual (f32): `norm_fold_q` adds the update into it.
    pub x: u64,
    /// The norm's weights (f32).
    pub w: u64,
    /// The consumers' activation codes and their (d, d·Σq) pairs.
    pub xq: u64,
    pub xa: u64,
    /// One f64 sum of squares per group.
    pub parts: u64,
    /// The codes' layout (`fused_act_mode`).
    pub mode: i32,
    /// Rows per group: 256 for mode 2, else 32.
    pub group: i32,
}

const _: () = assert!(std::mem::size_of::<FoldOut>() == 48);

/// The leading arguments of every repacked-format kernel (packed.cu's mmv,
/// mmw and mmp, mma.cu's mmq): the code region and its row stride, the scale
/// and (Q6_K) d regions and theirs, then rows, units per row and row length.
fn region_args<'b, 'a>(
    b: &'b mut Launch<'a>,
    w: &DeviceWeight,
    l: &packed::PackedLayout,
    w_ptr: u64,
) -> &'b mut Launch<'a> {
    b.arg(&w_ptr)
        .arg(&(l.q_stride as i64))
        .arg(&(w_ptr + l.s_offset as u64))
        .arg(&(l.s_stride as i64))
        .arg(&(w_ptr + l.d_offset as u64))
        .arg(&(l.d_stride as i64))
        .arg(&(w.rows as i32))
        .arg(&(l.units as i32))
        .arg(&(w.k as i32))
}

/// Identifies a weight matrix by where its bytes are and a sample of them (32
/// spread 8-byte pieces, the first and last included), so a buffer freed and
/// reused for other data is not mistaken for the old one. Weights are taken to
/// stay unchanged while the backend holds their device copy (they come from a
/// read-only memory map); [`CudaBackend::clear_weights`] drops the copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WeightKey {
    ptr: usize,
    len: usize,
    sample: u64,
}

fn weight_key(data: &[u8]) -> WeightKey {
    const SAMPLES: usize = 32;
    let mut parts: Vec<&[u8]> = Vec::with_capacity(SAMPLES);
    if data.len() <= SAMPLES * 8 {
        parts.push(data);
    } else {
        // Evenly spread, the first and last 8 bytes included.
        for i in 0..SAMPLES {
            let at = i * (data.len() - 8) / (SAMPLES - 1);
            parts.push(&data[at..at + 8]);
        }
    }
    WeightKey {
        ptr: data.as_ptr() as usize,
        len: data.len(),
        sample: compile::fnv1a(&parts),
    }
}

/// Device buffers for activations and outputs, grown as needed.
#[derive(Default)]
struct Scratch {
    x: Option<CudaSlice<f32>>,
    y: Option<CudaSlice<f32>>,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    toolchain: Toolchain,
    device_name: String,
    modules: Mutex<HashMap<ModKey, Arc<GemvModule>>>,
    weights: Mutex<HashMap<WeightKey, Arc<DeviceWeight>>>,
    scratch: Mutex<Scratch>,
    /// 8-bit activations for the integer formats' kernels.
    act_q8: Mutex<Option<CudaSlice<u8>>>,
    poison: AtomicBool,
    /// Whether Q5_0 uploads try the compact layout ([`Self::set_compact_q5_0`]).
    compact_q5_0: AtomicBool,
    /// Matrices uploaded in it.
    compact_uploads: AtomicUsize,
    geometry: Geometry,
    /// Streaming multiprocessors of the device.
    sm_count: usize,
    /// Whether the device has bulk asynchronous copies (sm_90 and later), which
    /// the pipelined kernels need.
    bulk_copies: bool,
    /// Shared memory per block (opt-in limit) and per SM.
    smem_block: usize,
    smem_sm: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudaBackend {
    /// Opens GPU `ordinal`. Fails with a one-line reason when the driver, NVRTC or
    /// a device is missing.
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        // cudarc panics when a library it needs cannot be loaded: look first.
        // SAFETY: only tries to dlopen the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NoNvrtc);
        }
        // Any panic left (a symbol missing from an older driver) becomes an error.
        std::panic::catch_unwind(|| Self::open(ordinal)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            Err(CudaError::Driver {
                what: "initialisation".into(),
                detail: msg,
            })
        })
    }

    fn open(ordinal: usize) -> Result<CudaBackend, CudaError> {
        cudarc::driver::result::init().map_err(|e| {
            CudaError::NoDevice(
                e.error_string()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("{:?}", e.0)),
            )
        })?;
        let count = CudaContext::device_count().ctx("counting devices")?;
        if count <= 0 || ordinal >= count as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} asked for, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).ctx("creating a context")?;
        // One stream, so cudarc's cross-stream event tracking only costs time.
        // SAFETY: nothing has been allocated on this context yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().ctx("creating a stream")?;
        let (major, minor) = ctx
            .compute_capability()
            .ctx("reading the compute capability")?;
        launch::configure(major);
        let mut driver_version = 0;
        // SAFETY: a plain out-parameter.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .ctx("reading the driver version")?;
        let toolchain = Toolchain {
            arch: format!("sm_{major}{minor}"),
            driver_version,
            nvrtc_version: compile::nvrtc_version(),
            include: compile::cuda_include_dir(),
        };
        let device_name = ctx.name().ctx("reading the device name")?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .ctx("reading the multiprocessor count")?
            .max(1) as usize;
        let attr = |a, what: &str| -> Result<usize, CudaError> {
            Ok(ctx.attribute(a).ctx(what)?.max(0) as usize)
        };
        use cudarc::driver::sys::CUdevice_attribute as A;
        let smem_block = attr(
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "reading the shared memory limit",
        )?;
        let smem_sm = attr(
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            "reading the shared memory per SM",
        )?;
        Ok(CudaBackend {
            ctx,
            stream,
            toolchain,
            device_name,
            modules: Mutex::new(HashMap::new()),
            weights: Mutex::new(HashMap::new()),
            scratch: Mutex::new(Scratch::default()),
            act_q8: Mutex::new(None),
            poison: AtomicBool::new(false),
            compact_q5_0: AtomicBool::new(packed::use_compact_q5_0()),
            compact_uploads: AtomicUsize::new(0),
            geometry: Geometry::from_env(),
            sm_count,
            bulk_copies: major >= 9,
            smem_block,
            smem_sm,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// When on, every output buffer is filled with NaN before a kernel writes it,
    /// so an output the kernel skips shows (tests turn this on).
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Whether outputs are poisoned before kernels write them ([`Self::set_poison`]).
    pub fn poisoning(&self) -> bool {
        self.poison.load(Ordering::Relaxed)
    }

    /// Whether later Q5_0 uploads take the compact 4-bit layout where the
    /// matrix fits it ([`packed::compact_q5_0`]: AWQ folders); on unless
    /// `QUERN_CUDA_Q5C=0`.
    pub fn set_compact_q5_0(&self, on: bool) {
        self.compact_q5_0.store(on, Ordering::Relaxed);
    }

    /// How many matrices were uploaded in the compact Q5_0 layout.
    pub fn compact_uploads(&self) -> usize {
        self.compact_uploads.load(Ordering::Relaxed)
    }

    /// Drops every uploaded weight matrix.
    pub fn clear_weights(&self) {
        lock(&self.weights).clear();
    }

    /// Compiles (or loads from the cache) the kernels for `ty`; returns whether it
    /// compiled.
    pub fn prepare_type(&self, ty: GgmlType) -> Result<bool, CudaError> {
        if lock(&self.modules).contains_key(&ModKey::plain(ty)) {
            return Ok(false);
        }
        let (_, compiled) = self.module(ModKey::plain(ty))?;
        Ok(compiled)
    }

    /// Compiles (or loads from the cache) the kernels `w`'s products use: its
    /// format's, or its layout's where that has its own (compact Q5_0), so
    /// that no compile happens later inside a captured or timed step.
    pub fn prepare_weight(&self, w: &DeviceWeight) -> Result<(), CudaError> {
        self.module(ModKey::of(w)).map(|_| ())
    }

    /// Compiles (or finds in the cache) the modules of several formats at once,
    /// one thread each: NVRTC takes seconds per module.
    pub fn prepare_types(&self, types: &[GgmlType]) -> Result<(), CudaError> {
        let todo: Vec<GgmlType> = {
            let have = lock(&self.modules);
            types
                .iter()
                .copied()
                .filter(|&t| !have.contains_key(&ModKey::plain(t)))
                .collect()
        };
        let images: Vec<Result<(ModKey, Vec<u8>), CudaError>> = std::thread::scope(|s| {
            let handles: Vec<_> = todo
                .iter()
                .map(|&ty| {
                    let key = ModKey::plain(ty);
                    s.spawn(move || self.module_image(key).map(|(b, _)| (key, b)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(CudaError::Compile {
                            module: "gemv".into(),
                            log: "the compiling thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        for r in images {
            let (key, cubin) = r?;
            self.load(key, cubin)?;
        }
        Ok(())
    }

    fn module_image(&self, key: ModKey) -> Result<(Vec<u8>, bool), CudaError> {
        let ty = key.ty;
        format_id(ty).ok_or(CudaError::Unsupported(ty))?;
        let g = self.geometry;
        let mut src = format!("#define WARPS {}\n", g.warps);
        if let Some(shift) = key.q5c {
            src.push_str(&format!("#define Q5C {shift}\n"));
        }
        for (b, r) in BATCHES.iter().zip(g.rows_per_warp) {
            src.push_str(&format!("#define RB{b} {r}\n"));
        }
        for (b, r) in BATCHES.iter().zip(g.mmv_rows) {
            src.push_str(&format!("#define MR{b} {r}\n"));
        }
        src.push_str(&format!(
            "#define MUN {}\n#define MUN1 {}\n",
            g.mmv_unroll_for(ty, 1),
            g.mmv_unroll_for(ty, 0)
        ));
        if !packed::use_slabs() {
            src.push_str("#define SLAB 0\n");
        }
        // Whether this format's repacked kernels read 16-bit activation codes.
        let act16 = packed::has_packed(ty) && packed_act_kind(ty) == ActKind::Packed16;
        if ty == GgmlType::Q8_0 && !q8_act16() {
            src.push_str("#define ACT_Q16 0\n");
        } else if ty != GgmlType::Q8_0 && act16 {
            src.push_str("#define ACT_Q16 1\n");
        }
        if let Some(p) = g.mmw_stage {
            src.push_str(&format!("#define STAGE_P {p}\n"));
        }
        if g.mmp_early {
            src.push_str("#define MMP_EARLY 1\n");
        }
        if g.mmv_prefetch {
            src.push_str("#define MMV_PREFETCH 1\n");
        }
        if let Some(n) = mmv_min_blocks(ty, act16) {
            // Guarded: QUERN_CUDA_DEFINES="MMV_MINB=n" (a -D option) wins.
            src.push_str(&format!("#ifndef MMV_MINB\n#define MMV_MINB {n}\n#endif\n"));
        }
        let (wr, wu) = g.mmw_geometry(ty);
        for ((b, r), u) in BATCHES.iter().zip(wr).zip(wu) {
            src.push_str(&format!("#define WR{b} {r}\n#define WU{b} {u}\n"));
        }
        src.push_str(&gemv_source(ty).unwrap_or_default());
        let (cubin, origin) = compile::cubin(&key.name(), &src, &self.toolchain)?;
        Ok((cubin, origin.compiled))
    }

    fn module(&self, key: ModKey) -> Result<(Arc<GemvModule>, bool), CudaError> {
        if let Some(m) = lock(&self.modules).get(&key) {
            return Ok((m.clone(), false));
        }
        let (cubin, compiled) = self.module_image(key)?;
        Ok((self.load(key, cubin)?, compiled))
    }

    fn load(&self, key: ModKey, cubin: Vec<u8>) -> Result<Arc<GemvModule>, CudaError> {
        let g = self.geometry;
        let ty = key.ty;
        let name = key.name();
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .ctx(&format!("loading module {name}"))?;
        // Two chunk buffers for each row of each warp.
        let smem: Vec<u32> = g
            .rows_per_warp
            .iter()
            .map(|r| (g.warps * 2 * r * chunk_bytes(ty)) as u32)
            .collect();
        let smem_bytes = smem.iter().copied().max().unwrap_or(0);
        let max_smem = self
            .ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .ctx("reading the shared memory limit")?;
        if smem_bytes as i64 > max_smem as i64 {
            return Err(CudaError::Driver {
                what: format!("sizing {name}"),
                detail: format!(
                    "{smem_bytes} bytes of shared memory per block ({} warps of up to {} rows) exceed the device's {max_smem}",
                    g.warps,
                    g.rows_per_warp.iter().max().unwrap_or(&1)
                ),
            });
        }
        let mut funcs = Vec::with_capacity(BATCHES.len());
        for b in BATCHES {
            let f = module
                .load_function(&format!("gemv_b{b}"))
                .ctx(&format!("finding gemv_b{b} in {name}"))?;
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_bytes as i32,
            )
            .ctx(&format!(
                "allowing {smem_bytes} bytes of shared memory for gemv_b{b}"
            ))?;
            funcs.push(f);
        }
        let qfuncs = if int_path(ty) {
            let mut q = Vec::with_capacity(BATCHES.len());
            for b in BATCHES {
                let f = module
                    .load_function(&format!("gemvq_b{b}"))
                    .ctx(&format!("finding gemvq_b{b} in {name}"))?;
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem_bytes as i32,
                )
                .ctx(&format!(
                    "allowing {smem_bytes} bytes of shared memory for gemvq_b{b}"
                ))?;
                q.push(f);
            }
            let quant = module
                .load_function("quantize_act")
                .ctx(&format!("finding quantize_act in {name}"))?;
            Some((q, quant))
        } else {
            None
        };
        let (mut wfuncs, mut wffuncs, mut wf_occupancy) = (Vec::new(), Vec::new(), Vec::new());
        let mut mfuncs = Vec::new();
        let mut ppfuncs = Vec::new();
        let pfuncs = if packed::has_packed(ty) {
            if self.bulk_copies && g.packed_kernel == PackedKernel::Pipe {
                // A device that refuses the shared memory keeps the block kernels.
                for b in &BATCHES[..MMP_BATCHES] {
                    let f = module
                        .load_function(&format!("mmp_b{b}"))
                        .ctx(&format!("finding mmp_b{b} in {name}"))?;
                    if f.set_attribute(
                        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        self.pipe_smem_limit() as i32,
                    )
                    .is_ok()
                    {
                        ppfuncs.push(f);
                    }
                }
            }
            let mut p = Vec::with_capacity(BATCHES.len());
            for b in BATCHES {
                p.push(
                    module
                        .load_function(&format!("mmv_b{b}"))
                        .ctx(&format!("finding mmv_b{b} in {name}"))?,
                );
                wfuncs.push(
                    module
                        .load_function(&format!("mmw_b{b}"))
                        .ctx(&format!("finding mmw_b{b} in {name}"))?,
                );
            }
            let threads = (g.mmw_warps * 32) as u32;
            for b in &BATCHES[..FUSED_BATCHES] {
                let f = module
                    .load_function(&format!("mmwf_b{b}"))
                    .ctx(&format!("finding mmwf_b{b} in {name}"))?;
                let occ = f
                    .occupancy_max_active_blocks_per_multiprocessor(threads, MMW_FUSED_SMEM, None)
                    .ctx(&format!("reading the occupancy of mmwf_b{b}"))?;
                wffuncs.push(f);
                wf_occupancy.push(occ.max(1));
            }
            let q16 = packed_act_kind(ty) == ActKind::Packed16;
            for bn in MMA_BN {
                let f = module
                    .load_function(&format!("mmq_n{bn}"))
                    .ctx(&format!("finding mmq_n{bn} in {name}"))?;
                let smem = mmq_smem_bytes(bn, q16);
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .ctx(&format!(
                    "allowing {smem} bytes of shared memory for mmq_n{bn}"
                ))?;
                mfuncs.push((f, smem as u32));
            }
            let quant = module
                .load_function("quantize_act_ds")
                .ctx(&format!("finding quantize_act_ds in {name}"))?;
            Some((p, quant))
        } else {
            None
        };
        let m = Arc::new(GemvModule {
            funcs,
            qfuncs,
            pfuncs,
            wfuncs,
            wffuncs,
            wf_occupancy,
            smem,
            mfuncs,
            ppfuncs,
        });
        lock(&self.modules).insert(key, m.clone());
        Ok(m)
    }

    /// Copies `w` to the device in its block layout, each row padded to a multiple
    /// of 16 bytes (float rows also to a multiple of 8 elements, with zeros).
    pub fn upload(&self, w: &WeightView<'_>) -> Result<DeviceWeight, CudaError> {
        format_id(w.ty).ok_or(CudaError::Unsupported(w.ty))?;
        if packed::use_packed(w.ty) {
            let compact = if w.ty == GgmlType::Q5_0 && self.compact_q5_0.load(Ordering::Relaxed) {
                packed::compact_q5_0(w.rows, w.cols, w.data)
            } else {
                None
            };
            if compact.is_some() {
                self.compact_uploads.fetch_add(1, Ordering::Relaxed);
            }
            if let Some((host, layout)) =
                compact.or_else(|| packed::repack(w.ty, w.rows, w.cols, w.data))
            {
                let buf = self.stream.clone_htod(&host).ctx(&format!(
                    "uploading {} ({} bytes)",
                    w.name,
                    w.data.len()
                ))?;
                return Ok(DeviceWeight {
                    ty: w.ty,
                    rows: w.rows,
                    cols: w.cols,
                    k: w.cols,
                    stride: layout.q_stride,
                    packed: Some(layout),
                    buf: Arc::new(buf),
                    offset: 0,
                });
            }
        }
        let row_bytes = w.row_bytes();
        let k = padded_cols(w.ty, w.cols);
        let kbytes = k / w.ty.block_size() * w.ty.type_size();
        let stride = kbytes.div_ceil(16) * 16;
        let buf = if stride == row_bytes {
            self.stream.clone_htod(w.data)
        } else {
            let mut host = vec![0u8; stride * w.rows];
            for (r, dst) in host.chunks_exact_mut(stride).enumerate() {
                dst[..row_bytes].copy_from_slice(w.row(r));
            }
            self.stream.clone_htod(&host)
        }
        .ctx(&format!("uploading {} ({} bytes)", w.name, w.data.len()))?;
        Ok(DeviceWeight {
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            k,
            stride,
            packed: None,
            buf: Arc::new(buf),
            offset: 0,
        })
    }

    /// One upload of matrices of one type and row length, their rows one after
    /// the other (as [`Self::upload`] of the stacked matrix), so that one launch
    /// multiplies them all; [`DeviceWeight::rows_view`] gives each back.
    pub fn upload_stacked(&self, parts: &[WeightView<'_>]) -> Result<DeviceWeight, CudaError> {
        let Some(first) = parts.first() else {
            return Err(CudaError::Stack("stacking no matrices".into()));
        };
        if let Some(odd) = parts
            .iter()
            .find(|p| p.ty != first.ty || p.cols != first.cols)
        {
            return Err(CudaError::Stack(format!(
                "cannot stack {} ({}, {} columns) on {} ({}, {} columns)",
                odd.name, odd.ty, odd.cols, first.name, first.ty, first.cols
            )));
        }
        let data: Vec<u8> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        let name = parts.iter().map(|p| p.name).collect::<Vec<_>>().join("+");
        self.upload(&WeightView {
            name: &name,
            ty: first.ty,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            data: &data,
        })
    }

    /// The device copy of `w`, uploaded on first use.
    pub fn weight(&self, w: &WeightView<'_>) -> Result<Arc<DeviceWeight>, CudaError> {
        let key = weight_key(w.data);
        if let Some(d) = lock(&self.weights).get(&key) {
            if d.ty == w.ty && d.rows == w.rows && d.cols == w.cols {
                return Ok(d.clone());
            }
        }
        let d = Arc::new(self.upload(w)?);
        lock(&self.weights).insert(key, d.clone());
        Ok(d)
    }

    /// Launches `y = W · x` for `n_tokens` rows of `x` (`w.k` floats apart) into `y`
    /// (`w.rows` floats apart); device addresses, nothing synchronised.
    ///
    /// # Safety
    /// `x_ptr` and `y_ptr` must point to at least `n_tokens * k` and
    /// `n_tokens * rows` floats of device memory of this context.
    pub unsafe fn launch_gemv_raw(
        &self,
        w: &DeviceWeight,
        w_ptr: u64,
        x_ptr: u64,
        y_ptr: u64,
        n_tokens: usize,
    ) -> Result<(), CudaError> {
        let mut act_guard = lock(&self.act_q8);
        let need = act_bytes(w.k, n_tokens);
        if act_guard.as_ref().is_none_or(|b| b.len() < need) {
            *act_guard = Some(
                self.stream
                    .alloc_zeros::<u8>(need.max(1 << 16))
                    .ctx("allocating 8-bit activations")?,
            );
        }
        let Some(buf) = act_guard.as_ref() else {
            unreachable!("just allocated");
        };
        let (act, _g) = buf.device_ptr(&self.stream);
        // SAFETY: the caller's promise, and `act` holds act_bytes(k, n_tokens).
        unsafe { self.launch_gemv_act(w, w_ptr, x_ptr, y_ptr, n_tokens, act, true, Fold::NONE) }
    }

    /// Which repacked-format kernels a product of `n_tokens` rows over `w`
    /// runs on (module `m`); None for the other formats' kernels.
    fn packed_route(&self, w: &DeviceWeight, m: &GemvModule, n_tokens: usize) -> Option<Route> {
        let layout = w.packed.as_ref()?;
        m.pfuncs.as_ref()?;
        Some(if self.use_mma(w.ty, n_tokens) && !m.mfuncs.is_empty() {
            Route::Mma
        } else if self.geometry.packed_kernel == PackedKernel::Warp {
            Route::Warp
        } else if let Some(plan) = self.pipe_plan_for(w, layout, n_tokens, m) {
            Route::Pipe(plan)
        } else {
            Route::Block
        })
    }

    /// Whether a product of `n_tokens` rows over `w` runs on the kernels that
    /// take a [`Fold`]: one token, a repacked format, the block kernels.
    pub fn can_fold(&self, w: &DeviceWeight, n_tokens: usize) -> bool {
        let Ok((m, _)) = self.module(ModKey::of(w)) else {
            return false;
        };
        takes_fold(self.packed_route(w, &m, n_tokens), n_tokens)
    }

    /// [`Self::launch_gemv_raw`] with the caller's buffer for the 8-bit
    /// activations, so that a captured graph owns every address it uses. With
    /// `quantise` false the activations' quantiser is not launched: `act` must
    /// already hold `x` quantised for this weight's [`ActKind`] (several
    /// products of one input share one quantisation). `fold`: the product's
    /// part in a folded RMSNorm ([`Fold::NONE`]: none; any other needs
    /// [`Self::can_fold`]).
    ///
    /// # Safety
    /// As [`Self::launch_gemv_raw`]; `act` must hold [`act_bytes`]`(k, n_tokens)`
    /// bytes of device memory that nothing else uses while the launches run;
    /// `fold`'s addresses must be what [`Fold`] says, device memory of this
    /// context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch_gemv_act(
        &self,
        w: &DeviceWeight,
        w_ptr: u64,
        x_ptr: u64,
        y_ptr: u64,
        n_tokens: usize,
        act: u64,
        quantise: bool,
        fold: Fold,
    ) -> Result<(), CudaError> {
        let (m, _) = self.module(ModKey::of(w))?;
        let route = self.packed_route(w, &m, n_tokens);
        if fold != Fold::NONE && !takes_fold(route, n_tokens) {
            return Err(CudaError::Fold(format!(
                "a {} product of {} rows over {n_tokens} tokens does not run on the single-token block kernels",
                w.ty, w.rows
            )));
        }
        if let (Some(route), Some(layout), Some(pf)) = (route, &w.packed, &m.pfuncs) {
            return match route {
                Route::Mma => {
                    self.launch_mma(w, layout, &m, w_ptr, x_ptr, y_ptr, n_tokens, act, quantise)
                }
                Route::Warp => {
                    self.launch_warp(w, layout, &m, w_ptr, x_ptr, y_ptr, n_tokens, act, quantise)
                }
                Route::Pipe(plan) => self.launch_pipe(
                    w, layout, &m, plan, w_ptr, x_ptr, y_ptr, n_tokens, act, quantise,
                ),
                Route::Block => self.launch_packed(
                    w, layout, pf, w_ptr, x_ptr, y_ptr, n_tokens, act, quantise, fold,
                ),
            };
        }
        let g = self.geometry;
        let cfg = |bi: usize| {
            let rows_per_block = g.warps * g.rows_per_warp[bi];
            LaunchConfig {
                grid_dim: (w.rows.div_ceil(rows_per_block) as u32, 1, 1),
                block_dim: ((g.warps * 32) as u32, 1, 1),
                shared_mem_bytes: m.smem[bi],
            }
        };
        let stride = w.stride as i64;
        let rows = w.rows as i32;
        let k = w.k as i32;
        let q8 = match &m.qfuncs {
            Some(q) if quantises_activations(w.ty) => Some(q),
            _ => None,
        };
        // The 8-bit activations: n*k codes, then n*k/32 scales (16-byte aligned).
        let (xq_ptr, xd_ptr) = if let Some((_, quant)) = q8.filter(|_| quantise) {
            let codes = (n_tokens * w.k).div_ceil(16) * 16;
            let (xq, xd) = (act, act + codes as u64);
            self.quantise_acts(quant, x_ptr, n_tokens, w.k, xq, xd)?;
            (xq, xd)
        } else if q8.is_some() {
            (act, act + ((n_tokens * w.k).div_ceil(16) * 16) as u64)
        } else {
            (0, 0)
        };
        let mut t0 = 0;
        while t0 < n_tokens {
            let nt = (n_tokens - t0).min(MAX_BATCH);
            let bi = batch_variant(nt);
            let yp = y_ptr + (t0 * w.rows * 4) as u64;
            let nt_i = nt as i32;
            let r = if let Some((qf, _)) = q8 {
                let xq = xq_ptr + (t0 * w.k) as u64;
                let xd = xd_ptr + (t0 * w.k / 32 * 4) as u64;
                Launch::new(&self.stream, &qf[bi])
                    .arg(&w_ptr)
                    .arg(&stride)
                    .arg(&rows)
                    .arg(&k)
                    .arg(&xq)
                    .arg(&xd)
                    .arg(&yp)
                    .arg(&nt_i)
                    .launch(cfg(bi))
            } else {
                let xp = x_ptr + (t0 * w.k * 4) as u64;
                Launch::new(&self.stream, &m.funcs[bi])
                    .arg(&w_ptr)
                    .arg(&stride)
                    .arg(&rows)
                    .arg(&k)
                    .arg(&xp)
                    .arg(&yp)
                    .arg(&nt_i)
                    .launch(cfg(bi))
            };
            r.map_err(|e| CudaError::driver(format!("launching the {} gemv", w.ty), e))?;
            t0 += nt;
        }
        Ok(())
    }

    /// The repacked formats' path of [`Self::launch_gemv_raw`]: the activations
    /// to 8 bits with (d, d·Σq) per block of 32, then one `mmv_b*` launch per 16
    /// tokens.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_packed(
        &self,
        w: &DeviceWeight,
        l: &packed::PackedLayout,
        (funcs, quant): &(Vec<CudaFunction>, CudaFunction),
        w_ptr: u64,
        x_ptr: u64,
        y_ptr: u64,
        n_tokens: usize,
        act: u64,
        quantise: bool,
        fold: Fold,
    ) -> Result<(), CudaError> {
        let g = self.geometry;
        // n*k codes, then a float pair per 32 (16-byte aligned).
        let cb = code_bytes(w.act_kind());
        let codes = act_scales_offset(w.act_kind(), n_tokens, w.k);
        let (xq, xa) = (act, act + codes as u64);
        if quantise {
            self.quantise_acts(quant, x_ptr, n_tokens, w.k, xq, xa)?;
        }
        let mut t0 = 0;
        while t0 < n_tokens {
            let nt = (n_tokens - t0).min(MAX_BATCH);
            let bi = batch_variant(nt);
            // Enough warps that each thread has about `unroll` units per row.
            let warps = g.mmv_warps.unwrap_or_else(|| {
                l.units
                    .div_ceil(32 * g.mmv_unroll_for(w.ty, bi))
                    .clamp(1, 8)
            });
            let yp = y_ptr + (t0 * w.rows * 4) as u64;
            let xqt = xq + (cb * t0 * w.k) as u64;
            let xat = xa + (t0 * w.k / 32 * 8) as u64;
            let nt_i = nt as i32;
            region_args(&mut Launch::new(&self.stream, &funcs[bi]), w, l, w_ptr)
                .arg(&xqt)
                .arg(&xat)
                .arg(&yp)
                .arg(&nt_i)
                .arg(&fold.parts)
                .arg(&fold.n_parts)
                .arg(&fold.eps)
                .launch(LaunchConfig {
                    grid_dim: (w.rows.div_ceil(g.mmv_rows[bi]) as u32, 1, 1),
                    block_dim: ((warps * 32) as u32, 1, 1),
                    shared_mem_bytes: 0,
                })
                .map_err(|e| CudaError::driver(format!("launching the {} gemv", w.ty), e))?;
            t0 += nt;
        }
        Ok(())
    }

    /// The pipelined kernels' shape for a product of `n_tokens` rows over `w`,
    /// when they take it: the chosen family on a device with bulk copies, at
    /// most 4 tokens, and two stages fit in shared memory.
    fn pipe_plan_for(
        &self,
        w: &DeviceWeight,
        l: &packed::PackedLayout,
        n_tokens: usize,
        m: &GemvModule,
    ) -> Option<PipePlan> {
        if self.geometry.packed_kernel != PackedKernel::Pipe
            || m.ppfuncs.len() < MMP_BATCHES
            || batch_variant(n_tokens) >= MMP_BATCHES
        {
            return None;
        }
        pipe_plan(
            &self.geometry,
            w.rows,
            l.q_stride + l.s_stride + l.d_stride,
            l.units,
            BATCHES[batch_variant(n_tokens)],
            self.sm_count,
            self.pipe_smem_limit(),
            self.smem_sm,
        )
    }

    /// The repacked formats' activations for `w` in `act` (codes, then their
    /// scale pairs): quantised from `x_ptr` first unless `quantise` is false.
    unsafe fn packed_acts(
        &self,
        w: &DeviceWeight,
        m: &GemvModule,
        x_ptr: u64,
        n_tokens: usize,
        act: u64,
        quantise: bool,
    ) -> Result<(u64, u64), CudaError> {
        let Some((_, quant)) = &m.pfuncs else {
            unreachable!("these kernels come with the repacked ones");
        };
        let codes = act_scales_offset(w.act_kind(), n_tokens, w.k);
        let (xq, xa) = (act, act + codes as u64);
        if quantise {
            // SAFETY: the caller's promise: act holds act_bytes(k, n_tokens).
            unsafe { self.quantise_acts(quant, x_ptr, n_tokens, w.k, xq, xa)? };
        }
        Ok((xq, xa))
    }

    /// Dynamic shared memory a pipelined kernel may ask for: the opt-in limit
    /// less its static barriers and a margin (the H200 refused the limit less
    /// the barriers alone).
    fn pipe_smem_limit(&self) -> usize {
        self.smem_block.saturating_sub(8 * 1024)
    }

    /// The pipelined kernels' path of [`Self::launch_gemv_raw`] (`mmp_*` in
    /// packed.cu): the activations' quantiser (unless `quantise` is false), then
    /// one launch for all `n_tokens` (at most 4).
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_pipe(
        &self,
        w: &DeviceWeight,
        l: &packed::PackedLayout,
        m: &GemvModule,
        plan: PipePlan,
        w_ptr: u64,
        x_ptr: u64,
        y_ptr: u64,
        n_tokens: usize,
        act: u64,
        quantise: bool,
    ) -> Result<(), CudaError> {
        let (xq, xa) = self.packed_acts(w, m, x_ptr, n_tokens, act, quantise)?;
        let nt = n_tokens as i32;
        let (rps, nst, wpr) = (
            plan.rows_per_stage as i32,
            plan.stages as i32,
            plan.warps_per_row as i32,
        );
        region_args(
            &mut Launch::new(&self.stream, &m.ppfuncs[batch_variant(n_tokens)]),
            w,
            l,
            w_ptr,
        )
        .arg(&xq)
        .arg(&xa)
        .arg(&y_ptr)
        .arg(&nt)
        .arg(&rps)
        .arg(&nst)
        .arg(&wpr)
        .launch(LaunchConfig {
            grid_dim: (plan.blocks as u32, 1, 1),
            block_dim: (MMP_THREADS as u32, 1, 1),
            shared_mem_bytes: plan.smem as u32,
        })
        .map_err(|e| CudaError::driver(format!("launching the {} pipelined gemv", w.ty), e))?;
        Ok(())
    }

    /// Whether a product of `n_tokens` activation rows over a repacked matrix of
    /// `ty` runs on the int8 tensor-core kernels: the same answer for every
    /// product of one input whose weights share an [`ActKind`], so products
    /// that share a quantisation agree on its form.
    pub fn use_mma(&self, ty: GgmlType, n_tokens: usize) -> bool {
        let g = &self.geometry;
        if g.mma_off || !packed::has_packed(ty) {
            return false;
        }
        let min = g.mma_min.unwrap_or(match packed_act_kind(ty) {
            ActKind::Packed16 | ActKind::Packed256 => MMA_MIN_WIDE,
            _ => MMA_MIN,
        });
        n_tokens >= min
    }

    /// The tensor-core path of [`Self::launch_gemv_raw`] (`mmq_*` in mma.cu):
    /// the activations' quantiser (unless `quantise` is false), then one launch
    /// over every token: blocks of 64 weight rows × 8..64 tokens.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_mma(
        &self,
        w: &DeviceWeight,
        l: &packed::PackedLayout,
        m: &GemvModule,
        w_ptr: u64,
        x_ptr: u64,
        y_ptr: u64,
        n_tokens: usize,
        act: u64,
        quantise: bool,
    ) -> Result<(), CudaError> {
        let (xq, xa) = self.packed_acts(w, m, x_ptr, n_tokens, act, quantise)?;
        let vi = match self.geometry.mma_bn {
            Some(bn) => MMA_BN.iter().position(|&b| b == bn).unwrap_or(3),
            None => MMA_BN.iter().position(|&b| b >= n_tokens).unwrap_or(3),
        };
        let (func, smem) = &m.mfuncs[vi];
        let bn = MMA_BN[vi];
        let nt = n_tokens as i32;
        let (bx, by) = (w.rows.div_ceil(MMA_BM), n_tokens.div_ceil(bn));
        let (splits, ksteps) = mma_split(
            bx * by,
            w.k.div_ceil(MMA_KT),
            self.sm_count,
            self.geometry.mma_split,
        );
        if splits > 1 {
            // The splits add their partial sums to y.
            // SAFETY: the caller's promise: y_ptr holds n_tokens * rows floats.
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    y_ptr,
                    0,
                    n_tokens * w.rows * 4,
                    self.stream.cu_stream(),
                )
            }
            .ctx("zeroing the split product's output")?;
        }
        let ksteps_i = ksteps as i32;
        region_args(&mut Launch::new(&self.stream, func), w, l, w_ptr)
            .arg(&xq)
            .arg(&xa)
            .arg(&y_ptr)
            .arg(&nt)
            .arg(&ksteps_i)
            .launch(LaunchConfig {
                grid_dim: (bx as u32, by as u32, splits as u32),
                block_dim: (MMA_THREADS, 1, 1),
                shared_mem_bytes: *smem,
            })
            .map_err(|e| CudaError::driver(format!("launching the {} mma product", w.ty), e))?;
        Ok(())
    }
    /// Launches the activation quantiser `quant` over `n_tokens × k` floats at
    /// `x_ptr` (one thread per value): codes to `xq`, scales to `xa`.
    ///
    /// # Safety
    /// The three are device buffers of this context large enough for
    /// `n_tokens × k` values in `quant`'s layout, and `k` is a multiple of 32.
    unsafe fn quantise_acts(
        &self,
        quant: &CudaFunction,
        x_ptr: u64,
        n_tokens: usize,
        k: usize,
        xq: u64,
        xa: u64,
    ) -> Result<(), CudaError> {
        let nblocks = (n_tokens * k / 32) as i64;
        let threads = 256u32;
        Launch::new(&self.stream, quant)
            .arg(&x_ptr)
            .arg(&nblocks)
            .arg(&xq)
            .arg(&xa)
            .launch(LaunchConfig {
                grid_dim: ((nblocks as u64 * 32).div_ceil(threads as u64) as u32, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            })
            .ctx("launching the activation quantiser")?;
        Ok(())
    }

    /// Whether a launch of `nt` tokens of `k` values takes the fused warp kernel
    /// (which quantises the activations itself and leaves `act` unwritten), for
    /// formats with 8-bit activations per 32 ([`ActKind::Packed32`]): the same
    /// answer for every product of one input, so products that share a
    /// quantisation all take it or none does.
    fn fused(&self, nt: usize, k: usize) -> bool {
        self.geometry.packed_kernel == PackedKernel::Warp
            && self.geometry.mmw_fuse
            && batch_variant(nt) < FUSED_BATCHES
            && stage_bytes(BATCHES[batch_variant(nt)], k) <= MMW_FUSED_SMEM
    }

    /// The warp kernels' path of [`Self::launch_gemv_raw`] (`mmw_*` in packed.cu):
    /// for batches whose activations fit in shared memory one fused launch that
    /// quantises them itself; otherwise the quantiser (unless `quantise` is false),
    /// then one launch per 16 tokens.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_warp(
        &self,
        w: &DeviceWeight,
        l: &packed::PackedLayout,
        m: &GemvModule,
        w_ptr: u64,
        x_ptr: u64,
        y_ptr: u64,
        n_tokens: usize,
        act: u64,
        quantise: bool,
    ) -> Result<(), CudaError> {
        let g = self.geometry;
        let Some((_, quant)) = &m.pfuncs else {
            unreachable!("warp kernels come with the repacked ones");
        };
        let rows_per_warp = g.mmw_geometry(w.ty).0;
        let cb = code_bytes(w.act_kind());
        let codes = act_scales_offset(w.act_kind(), n_tokens, w.k);
        let (xq, xa) = (act, act + codes as u64);
        let fused = w.act_kind() == ActKind::Packed32
            && self.fused(n_tokens.min(MAX_BATCH), w.k)
            && n_tokens <= MAX_BATCH;
        if quantise && !fused {
            self.quantise_acts(quant, x_ptr, n_tokens, w.k, xq, xa)?;
        }
        let warps = g.mmw_warps;
        let mut t0 = 0;
        while t0 < n_tokens {
            let nt = (n_tokens - t0).min(MAX_BATCH);
            let bi = batch_variant(nt);
            let groups = w.rows.div_ceil(rows_per_warp[bi]);
            let mut blocks = groups.div_ceil(warps);
            let (func, smem) = if fused {
                // Each block stages the activations once: no more blocks than fit
                // on the device at once (the warps then loop over the rows).
                let per_sm = m.wf_occupancy[bi] as usize;
                let per_sm = g.mmw_blocks_per_sm.map_or(per_sm, |c| c.min(per_sm));
                blocks = blocks.min(self.sm_count * per_sm);
                (&m.wffuncs[bi], stage_bytes(nt, w.k) as u32)
            } else {
                (&m.wfuncs[bi], 0)
            };
            let yp = y_ptr + (t0 * w.rows * 4) as u64;
            let xt = x_ptr + (t0 * w.k * 4) as u64;
            let xqt = xq + (cb * t0 * w.k) as u64;
            let xat = xa + (t0 * w.k / 32 * 8) as u64;
            let nt_i = nt as i32;
            region_args(&mut Launch::new(&self.stream, func), w, l, w_ptr)
                .arg(&xt)
                .arg(&xqt)
                .arg(&xat)
                .arg(&yp)
                .arg(&nt_i)
                .launch(LaunchConfig {
                    grid_dim: (blocks.max(1) as u32, 1, 1),
                    block_dim: ((warps * 32) as u32, 1, 1),
                    shared_mem_bytes: smem,
                })
                .map_err(|e| CudaError::driver(format!("launching the {} gemv", w.ty), e))?;
            t0 += nt;
        }
        Ok(())
    }

    /// The device address of a weight's data.
    pub fn weight_ptr(&self, w: &DeviceWeight) -> u64 {
        let (p, _g) = w.buf.device_ptr(&self.stream);
        p + w.offset as u64
    }

    fn matmul_device(
        &self,
        w: &WeightView<'_>,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
    ) -> Result<(), CudaError> {
        let dw = self.weight(w)?;
        let mut guard = lock(&self.scratch);
        let s = &mut *guard;
        let (nx, ny) = (n_tokens * dw.k, n_tokens * dw.rows);
        if s.x.as_ref().is_none_or(|b| b.len() < nx) {
            s.x = Some(
                self.stream
                    .alloc_zeros::<f32>(nx.max(4096))
                    .ctx("allocating activations")?,
            );
        }
        if s.y.as_ref().is_none_or(|b| b.len() < ny) {
            s.y = Some(
                self.stream
                    .alloc_zeros::<f32>(ny.max(4096))
                    .ctx("allocating outputs")?,
            );
        }
        let (Some(xb), Some(yb)) = (s.x.as_mut(), s.y.as_mut()) else {
            unreachable!("both buffers were just allocated");
        };
        {
            let mut xv = xb.slice_mut(0..nx);
            if dw.k == w.cols {
                self.stream.memcpy_htod(x, &mut xv)
            } else {
                let mut padded = vec![0f32; nx];
                for (d, s) in padded.chunks_exact_mut(dw.k).zip(x.chunks_exact(w.cols)) {
                    d[..w.cols].copy_from_slice(s);
                }
                self.stream.memcpy_htod(&padded, &mut xv)
            }
            .ctx("copying activations to the device")?;
        }
        let (xp, _gx) = xb.device_ptr(&self.stream);
        let (yp, _gy) = yb.device_ptr(&self.stream);
        if self.poison.load(Ordering::Relaxed) {
            // SAFETY: yp holds at least ny floats.
            unsafe {
                cudarc::driver::result::memset_d8_async(yp, 0xFF, ny * 4, self.stream.cu_stream())
            }
            .ctx("poisoning the output")?;
        }
        let wp = self.weight_ptr(&dw);
        // SAFETY: xb holds nx = n_tokens * k floats and yb ny = n_tokens * rows.
        unsafe { self.launch_gemv_raw(&dw, wp, xp, yp, n_tokens)? };
        self.stream
            .memcpy_dtoh(&yb.slice(0..ny), out)
            .ctx("copying outputs to the host")?;
        self.stream
            .synchronize()
            .ctx(&format!("running the {} gemv", w.ty))?;
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn supports(&self, ty: GgmlType) -> bool {
        format_id(ty).is_some()
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn matmul(
        &self,
        w: &WeightView<'_>,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        check_matmul(w, x, n_tokens, out)?;
        if n_tokens == 0 || w.rows == 0 {
            return Ok(());
        }
        self.matmul_device(w, x, n_tokens, out)
            .map_err(|source| RuntimeError::Cuda {
                tensor: w.name.to_string(),
                source,
            })
    }
}

fn module_name(ty: GgmlType) -> String {
    format!("quern_gemv_{}", ty.name().to_lowercase())
}

/// Which compiled module a weight's products use: its format's, or for Q5_0
/// matrices in the compact 4-bit layout ([`packed::compact_q5_0`]) that
/// layout's, one per group size (`q5c`: log2 of blocks per group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ModKey {
    ty: GgmlType,
    q5c: Option<u32>,
}

impl ModKey {
    fn plain(ty: GgmlType) -> ModKey {
        ModKey { ty, q5c: None }
    }

    fn of(w: &DeviceWeight) -> ModKey {
        ModKey {
            ty: w.ty,
            q5c: w.packed.and_then(|l| l.compact),
        }
    }

    fn name(&self) -> String {
        match self.q5c {
            Some(shift) => format!("{}_c{shift}", module_name(self.ty)),
            None => module_name(self.ty),
        }
    }
}

/// The source of the module for `ty`, as compiled.
pub fn gemv_source(ty: GgmlType) -> Option<String> {
    format_id(ty)
        .map(|id| format!("#define QFMT {id}\n{COMMON_SRC}\n{GEMV_SRC}\n{PACKED_SRC}\n{MMA_SRC}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block kernel's batch-1 geometry by format (the defaults measured on
    /// an H200, BENCHMARKS.md).
    #[test]
    fn batch_one_geometry_is_chosen_per_format() {
        // Units per step: 1 for Q4_K at batch 1, else 2.
        assert_eq!(default_mmv_unroll(GgmlType::Q4K, 0), 1);
        assert_eq!(default_mmv_unroll(GgmlType::Q4K, 1), 2);
        assert_eq!(default_mmv_unroll(GgmlType::Q8_0, 0), 2);
        assert_eq!(default_mmv_unroll(GgmlType::Q4_0, 0), 2);
        if std::env::var_os("QUERN_CUDA_MMV_MINB").is_none() {
            // Register bounds: 2 for the 4- to 6-bit formats on 8-bit codes,
            // 3 for Q4_K, none for Q8_0 or under 16-bit codes.
            assert_eq!(mmv_min_blocks(GgmlType::Q4_0, false), Some(2));
            assert_eq!(mmv_min_blocks(GgmlType::Q6K, false), Some(2));
            assert_eq!(mmv_min_blocks(GgmlType::Q4K, false), Some(3));
            assert_eq!(mmv_min_blocks(GgmlType::Q8_0, true), None);
            assert_eq!(mmv_min_blocks(GgmlType::Q4_0, true), None);
        }
    }

    /// Compiles every format's module for sm_90 where NVRTC is installed (no GPU
    /// is needed for that); elsewhere says so and passes.
    #[test]
    fn every_module_compiles_with_nvrtc() {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: NVRTC not found");
            return;
        }
        let tc = Toolchain {
            arch: "sm_90".into(),
            driver_version: 0,
            nvrtc_version: compile::nvrtc_version(),
            include: None,
        };
        for ty in supported_types() {
            let src = gemv_source(ty).expect("supported");
            let out = compile::compile_uncached(&format!("test_{ty}"), &src, &tc);
            match out {
                Ok(cubin) => assert!(cubin.len() > 1000, "{ty}: {} bytes of cubin", cubin.len()),
                Err(e) => panic!("{ty}: {e}"),
            }
        }
        // The repacked formats on 16-bit activation codes (`precision`), as
        // `module_image` defines it.
        for ty in supported_types().filter(|&t| packed::has_packed(t) && t != GgmlType::Q8_0) {
            let src = format!("#define ACT_Q16 1\n{}", gemv_source(ty).expect("supported"));
            if let Err(e) = compile::compile_uncached(&format!("test16_{ty}"), &src, &tc) {
                panic!("{ty} with 16-bit activations: {e}");
            }
        }
        // Q5_0's compact layout (groups of 1, 2 and 4 blocks), at 8 and 16 bits,
        // and the block kernels with a register cap (MMV_MINB).
        for shift in 0..=2 {
            for act in ["", "#define ACT_Q16 1\n"] {
                let src = format!(
                    "#define Q5C {shift}\n#define MMV_MINB 3\n{act}{}",
                    gemv_source(GgmlType::Q5_0).expect("supported")
                );
                if let Err(e) = compile::compile_uncached(&format!("test_q5c{shift}"), &src, &tc) {
                    panic!("Q5_0 compact, groups of 2^{shift} blocks ({act}): {e}");
                }
            }
        }
        // One unit per step under a bound of 3 blocks: Q4_K's default, and
        // Q8_0's lead (BENCHMARKS.md, eleventh slice).
        for ty in [GgmlType::Q4K, GgmlType::Q8_0] {
            let src = format!(
                "#define MUN 2\n#define MUN1 1\n#define MMV_MINB 3\n{}",
                gemv_source(ty).expect("supported")
            );
            if let Err(e) = compile::compile_uncached(&format!("test_minb_{ty}"), &src, &tc) {
                panic!("{ty}, one unit per step, MMV_MINB 3: {e}");
            }
        }
        // The decode module with its L2 hints after the wait (L2PF_LATE).
        let src = format!("#define L2PF_LATE 1\n{}", decode::decode_source());
        if let Err(e) = compile::compile_uncached("test_decode_late", &src, &tc) {
            panic!("decode with L2PF_LATE: {e}");
        }
        // The pipelined kernels with their first copies before the wait, and
        // the block kernels prefetching their weights.
        let src = format!(
            "#define MMP_EARLY 1\n#define MMV_PREFETCH 1\n{}",
            gemv_source(GgmlType::Q4K).expect("supported")
        );
        if let Err(e) = compile::compile_uncached("test_early", &src, &tc) {
            panic!("Q4_K with MMP_EARLY: {e}");
        }
        // The device-resident forward pass's kernels.
        match compile::compile_uncached("test_decode", &decode::decode_source(), &tc) {
            Ok(cubin) => assert!(cubin.len() > 1000, "decode: {} bytes of cubin", cubin.len()),
            Err(e) => panic!("decode: {e}"),
        }
    }

    /// Every pipelined plan fits its shared memory with at least two stages,
    /// uses all 8 warps (rows at once × warps per row), gives each thread a
    /// unit, and covers the rows; rows too long for two stages get none.
    #[test]
    fn pipe_plans_fit_and_cover_the_rows() {
        let g = Geometry::from_env();
        let (block, sm) = (227 * 1024, 228 * 1024);
        // (rows, units, row bytes) of 8B-shaped Q4_K, Q4_0, Q8_0 and Q6_K rows.
        let shapes = [
            (4096, 64, 2304),
            (14336, 64, 2304),
            (4096, 224, 8064),
            (1024, 128, 2304),
            (4096, 448, 8064 + 448 * 2),
            (4096, 128, 8704),
            (4096, 224, 11760),
            (3, 2, 48),
        ];
        for (rows, units, row_bytes) in shapes {
            for batch in [1, 2, 4] {
                let p =
                    pipe_plan(&g, rows, row_bytes, units, batch, 132, block, sm).expect("a plan");
                assert!(p.stages >= 2 && p.stages <= MMP_MAX_STAGES, "{p:?}");
                assert!(p.smem <= block.min(sm / g.mmp_bps), "{p:?}");
                assert!(p.smem >= p.stages * p.rows_per_stage * row_bytes, "{p:?}");
                assert!(
                    p.warps_per_row.is_power_of_two() && p.warps_per_row <= 8,
                    "{p:?}"
                );
                assert!(
                    32 * p.warps_per_row <= units.max(32),
                    "{p:?} for {units} units"
                );
                assert!(p.rows_per_stage >= 1 && p.rows_per_stage <= rows, "{p:?}");
                let groups = rows.div_ceil(p.rows_per_stage);
                assert!(p.blocks >= 1 && p.blocks <= groups, "{p:?}");
            }
        }
        assert_eq!(pipe_plan(&g, 16, 200 * 1024, 64, 1, 132, block, sm), None);
        assert_eq!(pow2_floor(7), 4);
        assert_eq!(pow2_floor(8), 8);
        assert_eq!(pow2_floor(1), 1);
    }

    #[test]
    fn chunks_are_whole_blocks_of_16_bytes() {
        for ty in supported_types() {
            assert_eq!(chunk_elems(ty) % ty.block_size(), 0, "{ty}");
            assert_eq!(chunk_bytes(ty) % 16, 0, "{ty}");
            assert_eq!(chunk_elems(ty) % 256, 0, "{ty}");
        }
        assert_eq!(supported_types().count(), 15);
    }

    #[test]
    fn mma_splits_cover_k_once() {
        for steps in [1, 2, 3, 7, 16, 56] {
            for tiles in [1, 16, 64, 224, 2000] {
                for fixed in [None, Some(1), Some(3), Some(100)] {
                    let (s, k) = mma_split(tiles, steps, 132, fixed);
                    assert!(s >= 1 && k >= 1);
                    // Every step in exactly one split, no split empty.
                    assert!(
                        s * k >= steps && (s - 1) * k < steps,
                        "{steps} {tiles} {fixed:?}"
                    );
                    if fixed.is_none() && s > 1 {
                        assert!(k >= MMA_MIN_STEPS);
                    }
                }
            }
        }
        // Few tiles: K split; many: not.
        assert!(mma_split(64, 16, 132, None).0 > 1);
        assert_eq!(mma_split(224, 16, 132, None), (3, 6));
        assert_eq!(mma_split(512, 16, 132, None).0, 1);
        assert_eq!(mma_split(2000, 16, 132, None).0, 1);
    }

    #[test]
    fn weight_key_sees_content_changes() {
        let mut a = vec![1u8; 4096];
        let k1 = weight_key(&a);
        a[4095] = 2;
        assert_ne!(k1, weight_key(&a));
        a[4095] = 1;
        assert_eq!(k1, weight_key(&a));
    }
}
