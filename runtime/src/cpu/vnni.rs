//! x86-64 kernels for CPUs with AVX-512 F/BW/VL and VNNI (checked at run time
//! by `cpu::hardware`): `vpdpbusd` multiplies 64 unsigned weight codes by 64
//! signed 8-bit activation codes and adds each group of four products into an
//! i32 lane in one instruction (AVX2 needs `maddubs` + `madd` per 32 values),
//! and `vpdpwssd` does the same for i16 pairs (Q8_0 weights against 16-bit
//! activation codes, and the K-quants' integer sub-block scales).
//!
//! Every format here stores (or is rewritten as) unsigned codes `u` with a
//! signed offset, so `dpbusd`'s unsigned × signed operand order needs no sign
//! trick: the offset meets the activations' block sums outside the integer
//! product (as in `avx2.rs`).
//!
//! Decode (one weight row against one token) puts two 32-value blocks in one
//! 512-bit register; prefill (`*_4x4`) puts two rows' blocks in one register
//! against a token's codes broadcast to both halves, four rows × four tokens
//! per call, and the K-quants run one row against four tokens (`*_row_x4`) with
//! the row's codes and scales unpacked once for the four.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use quern_quant::q4_0::BlockQ4_0;
use quern_quant::q4_1::BlockQ4_1;
use quern_quant::q4_k::BlockQ4K;
use quern_quant::q5_0::BlockQ5_0;
use quern_quant::q5_1::BlockQ5_1;
use quern_quant::q6_k::BlockQ6K;
use quern_quant::q8_0::BlockQ8_0;

use super::act::{ActQ16, ActQ8, ActQ8K};
use super::tile::k_scales_mins;

/// How far ahead of the current block the weight stream is prefetched (as in
/// `avx2.rs`).
const PREFETCH_BYTES: usize = 2048;

/// One IEEE half to f32 (F16C).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f16(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

/// `s0` in lanes 0..8, `s1` in lanes 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn two(s0: f32, s1: f32) -> __m512 {
    _mm512_mask_mov_ps(_mm512_set1_ps(s0), 0xff00, _mm512_set1_ps(s1))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Two 32-byte activation blocks side by side.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn acts2(a0: &ActQ8, a1: &ActQ8) -> __m512i {
    let lo = _mm256_loadu_si256(a0.qs.as_ptr() as *const __m256i);
    let hi = _mm256_loadu_si256(a1.qs.as_ptr() as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// A legacy 32-value block as unsigned codes `u` (0..=31) with `w = d u + c`:
/// `c = k d` for a fixed `k`, or a stored minimum `m`.
trait Legacy: bytemuck::Pod {
    /// `Some(k)`: `c = k d`; `None`: `c` is [`Legacy::m`].
    const K: Option<f32>;
    /// Whether the block has a fifth bit per value.
    const QH: bool;
    fn qs(&self) -> &[u8; 16];
    /// Bit j: the fifth bit of value j (zero without one).
    fn qh(&self) -> u32;
    fn d(&self) -> [u8; 2];
    fn m(&self) -> [u8; 2];
}

macro_rules! legacy {
    ($($block:ty, $k:expr, $qh:expr, |$b:ident| $h:expr, |$bm:ident| $m:expr;)*) => {$(
        impl Legacy for $block {
            const K: Option<f32> = $k;
            const QH: bool = $qh;
            #[inline(always)]
            fn qs(&self) -> &[u8; 16] {
                &self.qs
            }
            #[inline(always)]
            fn qh(&self) -> u32 {
                let $b = self;
                $h
            }
            #[inline(always)]
            fn d(&self) -> [u8; 2] {
                self.d
            }
            #[inline(always)]
            fn m(&self) -> [u8; 2] {
                let $bm = self;
                $m
            }
        }
    )*};
}

legacy! {
    BlockQ4_0, Some(-8.0), false, |_b| 0, |_b| [0, 0];
    BlockQ4_1, None, false, |_b| 0, |b| b.m;
    BlockQ5_0, Some(-16.0), true, |b| u32::from_le_bytes(b.qh), |_b| [0, 0];
    BlockQ5_1, None, true, |b| u32::from_le_bytes(b.qh), |b| b.m;
}

/// The offset `c` of a block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn offset<B: Legacy>(b: &B, d: f32) -> f32 {
    match B::K {
        Some(k) => k * d,
        None => f16(b.m()),
    }
}

/// The codes of two blocks, `b0`'s 32 in bytes 0..32 and `b1`'s in 32..64
/// (each block's low nibbles first, then its high nibbles, then the fifth
/// bits added where the format has them).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn codes2<B: Legacy>(b0: &B, b1: &B) -> __m512i {
    let q0 = _mm_loadu_si128(b0.qs().as_ptr() as *const __m128i);
    let q1 = _mm_loadu_si128(b1.qs().as_ptr() as *const __m128i);
    let v = _mm512_castsi256_si512(_mm256_set_m128i(q1, q0));
    // 128-bit lanes [q0, q0, q1, q1]; the odd ones shifted by a nibble.
    let v = _mm512_shuffle_i64x2::<0x50>(v, v);
    let u = _mm512_and_si512(
        _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)),
        _mm512_set1_epi8(15),
    );
    if B::QH {
        let k = b0.qh() as u64 | (b1.qh() as u64) << 32;
        _mm512_mask_add_epi8(u, k, u, _mm512_set1_epi8(16))
    } else {
        u
    }
}

/// The codes of one block (32 bytes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn codes1<B: Legacy>(b: &B) -> __m256i {
    let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.qs().as_ptr() as *const __m128i));
    let u = _mm256_and_si256(
        _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)),
        _mm256_set1_epi8(15),
    );
    if B::QH {
        _mm256_mask_add_epi8(u, b.qh(), u, _mm256_set1_epi8(16))
    } else {
        u
    }
}

/// One legacy row against one token: two blocks per `dpbusd`, four per
/// iteration in two accumulators. No overflow: a lane sums four products of
/// at most 31 · 127.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn legacy_row<B: Legacy>(w: &[u8], a: &[ActQ8]) -> f32 {
    let base = w.as_ptr();
    let bytes = std::mem::size_of::<B>();
    let w: &[B] = bytemuck::cast_slice(w);
    let nb = w.len();
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut off = [0f32; 2];
    let mut i = 0;
    while i + 4 <= nb {
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(i * bytes + PREFETCH_BYTES) as *const i8);
        for h in 0..2 {
            let j = i + 2 * h;
            let (b0, b1) = (w.get_unchecked(j), w.get_unchecked(j + 1));
            let (a0, a1) = (a.get_unchecked(j), a.get_unchecked(j + 1));
            let dp = _mm512_dpbusd_epi32(zero, codes2(b0, b1), acts2(a0, a1));
            let (d0, d1) = (f16(b0.d()), f16(b1.d()));
            acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), two(d0 * a0.d, d1 * a1.d), acc[h]);
            off[h] += offset(b0, d0) * a0.s + offset(b1, d1) * a1.s;
        }
        i += 4;
    }
    if i + 2 <= nb {
        let (b0, b1) = (w.get_unchecked(i), w.get_unchecked(i + 1));
        let (a0, a1) = (a.get_unchecked(i), a.get_unchecked(i + 1));
        let dp = _mm512_dpbusd_epi32(zero, codes2(b0, b1), acts2(a0, a1));
        let (d0, d1) = (f16(b0.d()), f16(b1.d()));
        acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), two(d0 * a0.d, d1 * a1.d), acc[0]);
        off[0] += offset(b0, d0) * a0.s + offset(b1, d1) * a1.s;
        i += 2;
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + off[0] + off[1];
    if i < nb {
        let (b, at) = (w.get_unchecked(i), a.get_unchecked(i));
        let q = _mm256_loadu_si256(at.qs.as_ptr() as *const __m256i);
        let dp = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes1(b), q);
        let d = f16(b.d());
        sum += hsum256(_mm256_cvtepi32_ps(dp)) * d * at.d + offset(b, d) * at.s;
    }
    sum
}

/// Four legacy rows against `T` tokens: rows 0 and 1 share one register (a
/// block each), rows 2 and 3 another, against the token's 32 codes
/// broadcast to both halves; the codes are unpacked once for the `T`
/// tokens. `out[t][r]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn legacy_tile<B: Legacy, const T: usize>(
    w: &[&[u8]; 4],
    a: &[&[ActQ8]; T],
) -> [[f32; 4]; T] {
    let rows: [&[B]; 4] = std::array::from_fn(|r| bytemuck::cast_slice(w[r]));
    let nb = rows[0].len();
    let zero = _mm512_setzero_si512();
    let pick = [
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
    ];
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    for i in 0..nb {
        let b: [&B; 4] = std::array::from_fn(|r| rows[r].get_unchecked(i));
        let u = [codes2(b[0], b[1]), codes2(b[2], b[3])];
        let h = |x: [u8; 2]| i16::from_le_bytes(x);
        let dm = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_setr_epi16(
            h(b[0].d()),
            h(b[1].d()),
            h(b[2].d()),
            h(b[3].d()),
            h(b[0].m()),
            h(b[1].m()),
            h(b[2].m()),
            h(b[3].m()),
        )));
        let d = [
            _mm512_permutexvar_ps(pick[0], dm),
            _mm512_permutexvar_ps(pick[1], dm),
        ];
        // The offset once per row and block: an eighth in each of its 8 lanes.
        let c = match B::K {
            Some(k) => {
                let k = _mm512_set1_ps(k / 8.0);
                [_mm512_mul_ps(d[0], k), _mm512_mul_ps(d[1], k)]
            }
            None => {
                let k = _mm512_set1_ps(1.0 / 8.0);
                let four = _mm512_set1_epi32(4);
                [
                    _mm512_mul_ps(
                        _mm512_permutexvar_ps(_mm512_add_epi32(pick[0], four), dm),
                        k,
                    ),
                    _mm512_mul_ps(
                        _mm512_permutexvar_ps(_mm512_add_epi32(pick[1], four), dm),
                        k,
                    ),
                ]
            }
        };
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let q = _mm512_broadcast_i64x4(_mm256_loadu_si256(at.qs.as_ptr() as *const __m256i));
            let (ad, asum) = (_mm512_set1_ps(at.d), _mm512_set1_ps(at.s));
            for p in 0..2 {
                let dp = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, u[p], q));
                acc[t][p] = _mm512_fmadd_ps(dp, _mm512_mul_ps(d[p], ad), acc[t][p]);
                acc[t][p] = _mm512_fmadd_ps(c[p], asum, acc[t][p]);
            }
        }
    }
    std::array::from_fn(|t| {
        let half = |v: __m512, k: usize| {
            let v = _mm512_castps_pd(v);
            hsum256(_mm256_castpd_ps(if k == 0 {
                _mm512_castpd512_pd256(v)
            } else {
                _mm512_extractf64x4_pd::<1>(v)
            }))
        };
        [
            half(acc[t][0], 0),
            half(acc[t][0], 1),
            half(acc[t][1], 0),
            half(acc[t][1], 1),
        ]
    })
}

macro_rules! legacy_kernels {
    ($($one:ident, $tile:ident, $block:ty;)*) => {$(
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $one(w: &[u8], a: &[ActQ8]) -> f32 {
            legacy_row::<$block>(w, a)
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $tile(w: &[&[u8]; 4], a: &[&[ActQ8]; 4]) -> [[f32; 4]; 4] {
            legacy_tile::<$block, 4>(w, a)
        }
    )*};
}

legacy_kernels! {
    q4_0_row, q4_0_4x4, BlockQ4_0;
    q4_1_row, q4_1_4x4, BlockQ4_1;
    q5_0_row, q5_0_4x4, BlockQ5_0;
    q5_1_row, q5_1_4x4, BlockQ5_1;
}

/// Q8_0 against 16-bit activation codes: the block's 32 weights widened to
/// i16 meet the 32 codes in one `dpwssd` (no overflow: a lane sums two
/// products of at most 127 · 32767). The per-block scales `d_w · d_a` are
/// formed sixteen blocks at a time (two gathers, one conversion, one
/// multiply) and reach each block's fused multiply-add as an embedded
/// broadcast, so a block costs four vector operations rather than eight (the
/// scalar half-to-float, multiply and broadcast per block were half of them,
/// and decode needs the compute well ahead of memory to stream at its rate).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q8_0_row(w: &[u8], a: &[ActQ16]) -> f32 {
    const B: usize = std::mem::size_of::<BlockQ8_0>();
    const A: usize = std::mem::size_of::<ActQ16>();
    let base = w.as_ptr();
    let w: &[BlockQ8_0] = bytemuck::cast_slice(w);
    let nb = w.len().min(a.len());
    let ap = a.as_ptr() as *const u8;
    let zero = _mm512_setzero_si512();
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let widx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(B as i32));
    let aidx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(A as i32));
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut scale = [0f32; 16];
    let mut i = 0;
    while i + 16 <= nb {
        let p = base.add(i * B);
        let q = ap.add(i * A);
        // Bytes 0..2 of each block are its f16 scale (the gather reads 4 of the
        // block's 34 bytes); each activation block's f32 scale follows its codes.
        let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32::<1>(
            widx,
            p as *const _,
        )));
        let da = _mm512_i32gather_ps::<1>(aidx, q.add(64) as *const _);
        _mm512_storeu_ps(scale.as_mut_ptr(), _mm512_mul_ps(dw, da));
        let block = |j: usize, acc: __m512| {
            let wq = _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(j * B + 2) as *const __m256i));
            let aq = _mm512_loadu_si512(q.add(j * A) as *const _);
            let dot = _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(zero, wq, aq));
            _mm512_fmadd_ps(dot, _mm512_set1_ps(*scale.get_unchecked(j)), acc)
        };
        // Four blocks (136 bytes) per step, one accumulator each; three
        // prefetches cover the step's lines.
        for j in (0..16).step_by(4) {
            for l in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(
                    p.wrapping_add(j * B + PREFETCH_BYTES + 64 * l) as *const i8
                );
            }
            acc[0] = block(j, acc[0]);
            acc[1] = block(j + 1, acc[1]);
            acc[2] = block(j + 2, acc[2]);
            acc[3] = block(j + 3, acc[3]);
        }
        i += 16;
    }
    while i < nb {
        let (b, at) = (w.get_unchecked(i), a.get_unchecked(i));
        let wq = _mm512_cvtepi8_epi16(_mm256_loadu_si256(b.qs.as_ptr() as *const __m256i));
        let aq = _mm512_loadu_si512(at.qs.as_ptr() as *const _);
        let dot = _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(zero, wq, aq));
        acc[i % 4] = _mm512_fmadd_ps(dot, _mm512_set1_ps(f16(b.d) * at.d), acc[i % 4]);
        i += 1;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ))
}

/// Four Q8_0 rows against `T` tokens: each row's weights widened once.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_tile<const T: usize>(w: &[&[u8]; 4], a: &[&[ActQ16]; T]) -> [[f32; 4]; T] {
    let rows: [&[BlockQ8_0]; 4] = std::array::from_fn(|r| bytemuck::cast_slice(w[r]));
    let nb = rows[0].len();
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); 4]; T];
    for i in 0..nb {
        let b: [&BlockQ8_0; 4] = std::array::from_fn(|r| rows[r].get_unchecked(i));
        let wq: [__m512i; 4] = std::array::from_fn(|r| {
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(b[r].qs.as_ptr() as *const __m256i))
        });
        let d: [__m512; 4] = std::array::from_fn(|r| _mm512_set1_ps(f16(b[r].d)));
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let aq = _mm512_loadu_si512(at.qs.as_ptr() as *const _);
            let ad = _mm512_set1_ps(at.d);
            for r in 0..4 {
                let p = _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(zero, wq[r], aq));
                acc[t][r] = _mm512_fmadd_ps(_mm512_mul_ps(p, ad), d[r], acc[t][r]);
            }
        }
    }
    std::array::from_fn(|t| std::array::from_fn(|r| _mm512_reduce_add_ps(acc[t][r])))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q8_0_4x4(w: &[&[u8]; 4], a: &[&[ActQ16]; 4]) -> [[f32; 4]; 4] {
    q8_0_tile::<4>(w, a)
}

/// Q4_K, one row against `T` tokens. Per 64 values (two sub-blocks: one
/// 32-byte load, low and high nibbles) one `dpbusd` against 64 contiguous
/// activation codes; its i32 lanes (at most 4 · 15 · 127, an i16) meet the
/// sub-blocks' 6-bit scales, spread as `(scale, 0)` i16 pairs, in one
/// `dpwssd`. The minimums meet the activation group sums in one `madd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_k_rows<const T: usize>(w: &[u8], a: [&[ActQ8K]; T]) -> [f32; T] {
    let base = w.as_ptr();
    let w: &[BlockQ4K] = bytemuck::cast_slice(w);
    let zero = _mm512_setzero_si512();
    let low = _mm256_set1_epi8(15);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut mins = [_mm256_setzero_ps(); T];
    for (i, b) in w.iter().enumerate() {
        if T == 1 {
            // Every line of the 144-byte block (one prefetch per block left
            // half of them to the hardware: 4-7 % slower decode).
            for l in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(
                    base.wrapping_add(i * 144 + PREFETCH_BYTES + 64 * l) as *const i8
                );
            }
        }
        let (sc, m) = k_scales_mins(&b.scales);
        let sc32 = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64));
        let m = _mm_cvtsi64_si128(m as i64);
        // Each minimum twice, for the two 16-value group sums of its sub-block.
        let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
        let mut isum = [zero; T];
        for g in 0..4 {
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            let u = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let j = 2 * g as i32;
            let idx = _mm512_setr_epi32(
                j,
                j,
                j,
                j,
                j,
                j,
                j,
                j,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
                j + 1,
            );
            let s = _mm512_permutexvar_epi32(idx, sc32);
            for t in 0..T {
                let at = a[t].get_unchecked(i);
                let av = _mm512_loadu_si512(at.qs.as_ptr().add(g * 64) as *const _);
                let dp = _mm512_dpbusd_epi32(zero, u, av);
                isum[t] = _mm512_dpwssd_epi32(isum[t], dp, s);
            }
        }
        let (d, dmin) = (f16(b.d), f16(b.dmin));
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let bs = _mm256_loadu_si256(at.bsums.as_ptr() as *const __m256i);
            let ms = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, m16));
            acc[t] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(isum[t]),
                _mm512_set1_ps(d * at.d),
                acc[t],
            );
            mins[t] = _mm256_fmadd_ps(ms, _mm256_set1_ps(dmin * at.d), mins[t]);
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]) - hsum256(mins[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    q4_k_rows::<1>(w, [a])[0]
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4_k_row_x4(w: &[u8], a: [&[ActQ8K]; 4]) -> [f32; 4] {
    q4_k_rows::<4>(w, a)
}

/// Q6_K, one row against `T` tokens: per 128 values one 64-byte load of the
/// low bits gives values 0..64 (low nibbles) and 64..128 (high nibbles) in
/// order; the two high bits come from the 32 bytes of `qh` in both halves,
/// rotated per 64-bit lane into bits 4..6. Codes u = 0..63 go through
/// `dpbusd` (a lane at most 4 · 63 · 127 = 32004, an i16), then `dpwssd` by
/// the signed scales as `(scale, 0)` pairs; the offset of 32 comes back from
/// the activation group sums.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_rows<const T: usize>(w: &[u8], a: [&[ActQ8K]; T]) -> [f32; T] {
    let base = w.as_ptr();
    let w: &[BlockQ6K] = bytemuck::cast_slice(w);
    let zero = _mm512_setzero_si512();
    let low = _mm512_set1_epi8(15);
    let top = _mm512_set1_epi8(0x30);
    let rot_lo = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2);
    let rot_hi = _mm512_setr_epi64(0, 0, 0, 0, 62, 62, 62, 62);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut offs = [_mm256_setzero_ps(); T];
    for (i, b) in w.iter().enumerate() {
        if T == 1 {
            // Every line of the 210-byte block.
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(
                    base.wrapping_add(i * 210 + PREFETCH_BYTES + 64 * l) as *const i8
                );
            }
        }
        let sc8 = _mm_loadu_si128(b.scales.as_ptr() as *const __m128i);
        let sc32 = _mm512_and_si512(_mm512_cvtepi8_epi32(sc8), _mm512_set1_epi32(0xffff));
        let wide = _mm256_cvtepi8_epi16(sc8);
        let mut isum = [zero; T];
        for g in 0..2 {
            let ql = _mm512_loadu_si512(b.ql.as_ptr().add(g * 64) as *const _);
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                b.qh.as_ptr().add(g * 32) as *const __m256i
            ));
            let u_lo = _mm512_or_si512(
                _mm512_and_si512(ql, low),
                _mm512_and_si512(_mm512_rolv_epi64(qh, rot_lo), top),
            );
            let u_hi = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), low),
                _mm512_and_si512(_mm512_rolv_epi64(qh, rot_hi), top),
            );
            // Lane l of the 64 values at 128 g + 64 h has scale 8 g + 4 h + l / 4.
            let s = |h: i32| {
                let k = 8 * g as i32 + 4 * h;
                let idx = _mm512_setr_epi32(
                    k,
                    k,
                    k,
                    k,
                    k + 1,
                    k + 1,
                    k + 1,
                    k + 1,
                    k + 2,
                    k + 2,
                    k + 2,
                    k + 2,
                    k + 3,
                    k + 3,
                    k + 3,
                    k + 3,
                );
                _mm512_permutexvar_epi32(idx, sc32)
            };
            let (s_lo, s_hi) = (s(0), s(1));
            for t in 0..T {
                let at = a[t].get_unchecked(i);
                let p = at.qs.as_ptr().add(g * 128);
                let a_lo = _mm512_loadu_si512(p as *const _);
                let a_hi = _mm512_loadu_si512(p.add(64) as *const _);
                isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_dpbusd_epi32(zero, u_lo, a_lo), s_lo);
                isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_dpbusd_epi32(zero, u_hi, a_hi), s_hi);
            }
        }
        let d = f16(b.d);
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let bs = _mm256_loadu_si256(at.bsums.as_ptr() as *const __m256i);
            let o = _mm256_cvtepi32_ps(_mm256_madd_epi16(wide, bs));
            let dd = d * at.d;
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(dd), acc[t]);
            offs[t] = _mm256_fmadd_ps(o, _mm256_set1_ps(dd), offs[t]);
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]) - 32.0 * hsum256(offs[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q6_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    q6_k_rows::<1>(w, [a])[0]
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q6_k_row_x4(w: &[u8], a: [&[ActQ8K]; 4]) -> [f32; 4] {
    q6_k_rows::<4>(w, a)
}

/// Where a legacy block keeps its parts, for the sixteen-row kernels that
/// gather one 32-bit word per row.
trait Layout: Legacy {
    /// Byte offset of the 16 bytes of nibbles.
    const QS: usize;
    /// Byte offset of the four bytes of fifth bits (when `QH`).
    const QH_AT: usize;
}

impl Layout for BlockQ4_0 {
    const QS: usize = 2;
    const QH_AT: usize = 0;
}
impl Layout for BlockQ4_1 {
    const QS: usize = 4;
    const QH_AT: usize = 0;
}
impl Layout for BlockQ5_0 {
    const QS: usize = 6;
    const QH_AT: usize = 2;
}
impl Layout for BlockQ5_1 {
    const QS: usize = 8;
    const QH_AT: usize = 4;
}

/// Rows per call of the sixteen-row kernels.
pub const WIDE_ROWS: usize = 16;
/// Tokens per call of the sixteen-row prefill kernels: each gathered weight
/// block serves this many tokens. 16 rather than 8 measured 8–30 % more prefill
/// GMAC/s (`kernel_speed`, 2048×2048, every wide format) with the sixteen
/// accumulators still in registers beside the unpacked codes.
pub const WIDE_TOKENS: usize = 16;

/// Byte `m` of each 32-bit lane of `qh` in all four of that lane's bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn spread_byte(qh: __m512i, m: u32) -> __m512i {
    let ctl: [u32; 16] = std::array::from_fn(|d| ((d % 4) as u32 * 4 + m) * 0x0101_0101);
    _mm512_shuffle_epi8(qh, _mm512_loadu_si512(ctl.as_ptr() as *const _))
}

/// The bytes b of `spread` (from [`spread_byte`]) whose bit b of the low
/// (`high` false) or high nibble is set, as a byte mask: the fifth bits of
/// four consecutive values in each lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nibble_mask(spread: __m512i, high: bool) -> __mmask64 {
    let bits = if high { 0x8040_2010u32 } else { 0x0804_0201u32 };
    _mm512_test_epi8_mask(spread, _mm512_set1_epi32(bits as i32))
}

/// Words at `off` and `off + 4` of sixteen rows (`stride` bytes apart from
/// `p`; `idx8`: the first eight rows' offsets), lane r = row r: two 8-byte
/// gathers of eight rows each, split by two permutes. Half the gathered
/// elements of two 4-byte gathers, whose element loads bound the sixteen-row
/// kernels in decode.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gather_pair(
    idx8: __m256i,
    p: *const u8,
    stride: usize,
    off: usize,
) -> (__m512i, __m512i) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let top = _mm512_i32gather_epi64::<1>(idx8, p.add(off) as *const _);
    let bottom = _mm512_i32gather_epi64::<1>(idx8, p.add(8 * stride + off) as *const _);
    (
        _mm512_permutex2var_epi32(top, even, bottom),
        _mm512_permutex2var_epi32(top, odd, bottom),
    )
}

/// The first eight rows' byte offsets for [`gather_pair`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows8(stride: usize) -> __m256i {
    _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(stride as i32),
    )
}

/// Sixteen legacy rows (`stride` bytes apart from `base`, `nb` blocks each)
/// against `T` tokens: `out[t][r]`. Lane r of every register is row r: per
/// block, one gather per 32-bit word gives each row's scale and four nibble
/// words (values 4k..4k+4 in the low nibbles, 16+4k.. in the high), so
/// `dpbusd` against the token's matching four codes broadcast adds each
/// row's block product in its own lane, and one conversion and two fused
/// multiply-adds scale all sixteen rows (the per-block float work that
/// dominates the one- and four-row kernels, shared sixteen ways).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn legacy_wide<B: Layout, const T: usize>(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ8]; T],
) -> [[f32; WIDE_ROWS]; T] {
    let bytes = std::mem::size_of::<B>();
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride as i32),
    );
    let idx8 = rows8(stride);
    let low = _mm512_set1_epi8(15);
    let sixteen = _mm512_set1_epi8(16);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let p = base.add(i * bytes);
        // Once per 64-byte line of each row (blocks are 18 to 24 bytes).
        if T == 1 && (i * bytes) % 64 < bytes {
            for r in 0..WIDE_ROWS {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(r * stride + 1024) as *const i8);
            }
        }
        // The scale (and minimum) word, and for Q5 the fifth bits: with them,
        // the first 8 bytes of each row's block through 8-byte gathers (Q5_1:
        // d m | qh; Q5_0: d qh0 qh1 | qh2 qh3 ..).
        let (dm, qh) = if B::QH {
            let (e, o) = gather_pair(idx8, p, stride, 0);
            let qh = match B::QH_AT {
                4 => o,
                _ => _mm512_or_si512(_mm512_srli_epi32::<16>(e), _mm512_slli_epi32::<16>(o)),
            };
            (e, qh)
        } else {
            (_mm512_i32gather_epi32::<1>(idx, p as *const _), zero)
        };
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
        let mut u = [zero; 8];
        let sp = if B::QH {
            std::array::from_fn(|m| spread_byte(qh, m as u32))
        } else {
            [zero; 4]
        };
        // The 16 code bytes of each row: words 2h and 2h + 1 of the codes.
        let mut qw = [zero; 4];
        for h in 0..2 {
            (qw[2 * h], qw[2 * h + 1]) = gather_pair(idx8, p, stride, B::QS + 8 * h);
        }
        for k in 0..4 {
            let q = qw[k];
            u[k] = _mm512_and_si512(q, low);
            u[4 + k] = _mm512_and_si512(_mm512_srli_epi32::<4>(q), low);
            if B::QH {
                // Values 4k.. take bits 4k.. of qh (byte k / 2), values 16 + 4k..
                // bits 16 + 4k.. (byte 2 + k / 2).
                let high = k % 2 == 1;
                let (lo, hi) = (
                    nibble_mask(sp[k / 2], high),
                    nibble_mask(sp[2 + k / 2], high),
                );
                u[k] = _mm512_mask_add_epi8(u[k], lo, u[k], sixteen);
                u[4 + k] = _mm512_mask_add_epi8(u[4 + k], hi, u[4 + k], sixteen);
            }
        }
        let m = if B::K.is_none() {
            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dm)))
        } else {
            _mm512_setzero_ps()
        };
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let q = at.qs.as_ptr() as *const i32;
            // Two chains of four, so successive `dpbusd`s overlap.
            let mut s0 = zero;
            let mut s1 = zero;
            for k in 0..4 {
                s0 = _mm512_dpbusd_epi32(s0, u[k], _mm512_set1_epi32(q.add(k).read_unaligned()));
                s1 = _mm512_dpbusd_epi32(
                    s1,
                    u[4 + k],
                    _mm512_set1_epi32(q.add(4 + k).read_unaligned()),
                );
            }
            let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            acc[t] = match B::K {
                // d (ad Σuq + k as): w = d (u + k).
                Some(k) => _mm512_fmadd_ps(
                    _mm512_fmadd_ps(s, _mm512_set1_ps(at.d), _mm512_set1_ps(k * at.s)),
                    d,
                    acc[t],
                ),
                // d ad Σuq + m as.
                None => _mm512_fmadd_ps(
                    m,
                    _mm512_set1_ps(at.s),
                    _mm512_fmadd_ps(_mm512_mul_ps(s, _mm512_set1_ps(at.d)), d, acc[t]),
                ),
            };
        }
    }
    std::array::from_fn(|t| std::mem::transmute::<__m512, [f32; WIDE_ROWS]>(acc[t]))
}

/// Sixteen rows (`base`, row stride in bytes, blocks per row) against one
/// token (decode) and against [`WIDE_TOKENS`] tokens of activations `A`.
pub type Wide1<A> = unsafe fn(*const u8, usize, usize, &[&[A]; 1]) -> [[f32; WIDE_ROWS]; 1];
pub type WideT<A> =
    unsafe fn(*const u8, usize, usize, &[&[A]; WIDE_TOKENS]) -> [[f32; WIDE_ROWS]; WIDE_TOKENS];

macro_rules! wide_kernels {
    ($($one:ident, $many:ident, $block:ty;)*) => {$(
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $one(
            base: *const u8,
            stride: usize,
            nb: usize,
            a: &[&[ActQ8]; 1],
        ) -> [[f32; WIDE_ROWS]; 1] {
            legacy_wide::<$block, 1>(base, stride, nb, a)
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $many(
            base: *const u8,
            stride: usize,
            nb: usize,
            a: &[&[ActQ8]; WIDE_TOKENS],
        ) -> [[f32; WIDE_ROWS]; WIDE_TOKENS] {
            legacy_wide::<$block, WIDE_TOKENS>(base, stride, nb, a)
        }
    )*};
}

wide_kernels! {
    q4_0_wide1, q4_0_wide, BlockQ4_0;
    q4_1_wide1, q4_1_wide, BlockQ4_1;
    q5_0_wide1, q5_0_wide, BlockQ5_0;
    q5_1_wide1, q5_1_wide, BlockQ5_1;
}

/// Q4_K, sixteen rows against `T` tokens, lane r = row r as in
/// [`legacy_wide`]: per super-block one gather per 32-bit word of each row
/// (scales, minimums, 128 bytes of nibbles). The 6-bit sub-block scales and
/// minimums unpack lane-wise (Q4_K's packing, as `tile::k_scales_mins`);
/// per sub-block, eight `dpbusd`s against the token's codes broadcast four
/// at a time give each row's integer sum (at most 32 · 15 · 127), which one
/// conversion and one fused multiply-add scale by `d · scale`; the
/// minimums meet the activation group sums as i16 pairs in `dpwssd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_k_wide<const T: usize>(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ8K]; T],
) -> [[f32; WIDE_ROWS]; T] {
    let idx8 = rows8(stride);
    let low = _mm512_set1_epi8(15);
    let zero = _mm512_setzero_si512();
    let m6 = _mm512_set1_epi32(0x3f3f_3f3f);
    let m4 = _mm512_set1_epi32(0x0f0f_0f0f);
    let m2 = _mm512_set1_epi32(0x0303_0303);
    let byte = _mm512_set1_epi32(0xff);
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let p = base.add(i * 144);
        if T == 1 {
            for r in 0..WIDE_ROWS {
                // Two blocks ahead, three lines: all of a 144-byte block.
                for l in 0..3 {
                    _mm_prefetch::<_MM_HINT_T0>(
                        p.wrapping_add(r * stride + 288 + 64 * l) as *const i8
                    );
                }
            }
        }
        let (dd, w0) = gather_pair(idx8, p, stride, 0);
        let (w1, w2) = gather_pair(idx8, p, stride, 8);
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
        // Bytes j of `sc[h]` / `mn[h]`: scale / minimum of sub-block 4 h + j.
        let sc = [
            _mm512_and_si512(w0, m6),
            _mm512_or_si512(
                _mm512_and_si512(w2, m4),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w0), m2)),
            ),
        ];
        let mn = [
            _mm512_and_si512(w1, m6),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(w2), m4),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w1), m2)),
            ),
        ];
        // Minimums as i16 pairs (sub-blocks 2q, 2q + 1) per lane.
        let mpair: [__m512i; 4] = std::array::from_fn(|q| {
            let x = mn[q / 2];
            let x = if q % 2 == 0 {
                x
            } else {
                _mm512_srli_epi32::<16>(x)
            };
            _mm512_or_si512(
                _mm512_and_si512(x, byte),
                _mm512_slli_epi32::<8>(_mm512_and_si512(x, _mm512_set1_epi32(0xff00))),
            )
        });
        let mut sb = [_mm512_setzero_ps(); T];
        for g in 0..4 {
            let mut q = [zero; 8];
            for h in 0..4 {
                (q[2 * h], q[2 * h + 1]) = gather_pair(idx8, p, stride, 16 + 32 * g + 8 * h);
            }
            let lo: [__m512i; 8] = std::array::from_fn(|k| _mm512_and_si512(q[k], low));
            let hi: [__m512i; 8] =
                std::array::from_fn(|k| _mm512_and_si512(_mm512_srli_epi32::<4>(q[k]), low));
            let scale = |j: usize| {
                let x = sc[j / 4];
                let x = match j % 4 {
                    0 => x,
                    1 => _mm512_srli_epi32::<8>(x),
                    2 => _mm512_srli_epi32::<16>(x),
                    _ => _mm512_srli_epi32::<24>(x),
                };
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_and_si512(x, byte)))
            };
            let (s0, s1) = (scale(2 * g), scale(2 * g + 1));
            for t in 0..T {
                let aq = a[t].get_unchecked(i).qs.as_ptr().add(64 * g) as *const i32;
                // Four chains of four, so successive `dpbusd`s overlap.
                let mut x = [zero; 4];
                for k in 0..4 {
                    for (c, xc) in x.iter_mut().enumerate() {
                        let (w, off) = if c < 2 { (&lo, 0) } else { (&hi, 8) };
                        let kk = 4 * (c % 2) + k;
                        *xc = _mm512_dpbusd_epi32(
                            *xc,
                            w[kk],
                            _mm512_set1_epi32(aq.add(off + kk).read_unaligned()),
                        );
                    }
                }
                let x0 = _mm512_add_epi32(x[0], x[1]);
                let x1 = _mm512_add_epi32(x[2], x[3]);
                sb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(x0), s0, sb[t]);
                sb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(x1), s1, sb[t]);
            }
        }
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            // Sums of the 32 codes of each sub-block, as i16 pairs.
            let bs = _mm_hadd_epi16(
                _mm_loadu_si128(at.bsums.as_ptr() as *const __m128i),
                _mm_loadu_si128(at.bsums.as_ptr().add(8) as *const __m128i),
            );
            let bs = _mm512_broadcast_i32x4(bs);
            let mut ms = zero;
            for (q, mp) in mpair.iter().enumerate() {
                let b = _mm512_permutexvar_epi32(_mm512_set1_epi32(q as i32), bs);
                ms = _mm512_dpwssd_epi32(ms, *mp, b);
            }
            let v = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(ms), sb[t]);
            acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(at.d), acc[t]);
        }
    }
    std::array::from_fn(|t| std::mem::transmute::<__m512, [f32; WIDE_ROWS]>(acc[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4_k_wide1(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ8K]; 1],
) -> [[f32; WIDE_ROWS]; 1] {
    q4_k_wide::<1>(base, stride, nb, a)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4_k_wide_t(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ8K]; WIDE_TOKENS],
) -> [[f32; WIDE_ROWS]; WIDE_TOKENS] {
    q4_k_wide::<WIDE_TOKENS>(base, stride, nb, a)
}

/// The signed byte `b` of each 32-bit lane of `x` as i32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn sbyte(x: __m512i, b: u32) -> __m512i {
    let up = _mm512_sll_epi32(x, _mm_cvtsi32_si128(24 - 8 * b as i32));
    _mm512_srai_epi32::<24>(up)
}

/// Q6_K, sixteen rows against `T` tokens, lane r = row r: per 128 values
/// and per 32-bit word c of the 32 low-bit bytes, one gather each of the
/// two low-bit words and the high-bit word gives four words of codes
/// u = 0..63 (the four 32-value quarters at offset 4c); four `dpbusd`s per
/// 16 values (a lane at most 16 · 63 · 127) meet one conversion and one
/// fused multiply-add by `d · scale`. The offset of 32 comes back from the
/// activation group sums against the scales as i16 pairs (`dpwssd`).
#[inline]
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_wide<const T: usize>(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ8K]; T],
) -> [[f32; WIDE_ROWS]; T] {
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride as i32),
    );
    let gather = |p: *const u8| _mm512_i32gather_epi32::<1>(idx, p as *const _);
    let idx8 = rows8(stride);
    let pair = |p: *const u8, off: usize| gather_pair(idx8, p, stride, off);
    let low = _mm512_set1_epi8(15);
    let top = _mm512_set1_epi8(0x30);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let p = base.add(i * 210);
        if T == 1 {
            for r in 0..WIDE_ROWS {
                for off in [420, 484, 548, 612] {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(r * stride + off) as *const i8);
                }
            }
        }
        // Bytes 206..210: the last two scales and d (reading at 208 would
        // pass the block's end).
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(gather(
            p.add(206),
        ))));
        let (s0, s1) = pair(p, 192);
        let (s2, s3) = pair(p, 200);
        let scw = [s0, s1, s2, s3];
        // Scales as i16 pairs (2q, 2q + 1), for the offset.
        let scpair: [__m512i; 8] = std::array::from_fn(|q| {
            let x = scw[q / 2];
            let (e0, e1) = if q % 2 == 0 {
                (sbyte(x, 0), sbyte(x, 1))
            } else {
                (sbyte(x, 2), sbyte(x, 3))
            };
            _mm512_or_si512(
                _mm512_and_si512(e0, _mm512_set1_epi32(0xffff)),
                _mm512_slli_epi32::<16>(e1),
            )
        });
        let dsc =
            |j: usize| _mm512_mul_ps(d, _mm512_cvtepi32_ps(sbyte(scw[j / 4], (j % 4) as u32)));
        let mut sb = [_mm512_setzero_ps(); T];
        for g in 0..2 {
            for h in 0..2 {
                // u[s][cc]: quarter s (values 128 g + 32 s + 4 c ..), c = 4 h + cc.
                let mut u = [[zero; 4]; 4];
                let (mut qas, mut qbs, mut qhs) = ([zero; 4], [zero; 4], [zero; 4]);
                for e in 0..2 {
                    let c = 4 * h + 2 * e;
                    (qas[2 * e], qas[2 * e + 1]) = pair(p, 64 * g + 4 * c);
                    (qbs[2 * e], qbs[2 * e + 1]) = pair(p, 64 * g + 32 + 4 * c);
                    (qhs[2 * e], qhs[2 * e + 1]) = pair(p, 128 + 32 * g + 4 * c);
                }
                for cc in 0..4 {
                    let (qa, qb, qh) = (qas[cc], qbs[cc], qhs[cc]);
                    u[0][cc] = _mm512_or_si512(
                        _mm512_and_si512(qa, low),
                        _mm512_and_si512(_mm512_slli_epi32::<4>(qh), top),
                    );
                    u[1][cc] = _mm512_or_si512(
                        _mm512_and_si512(qb, low),
                        _mm512_and_si512(_mm512_slli_epi32::<2>(qh), top),
                    );
                    u[2][cc] = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi32::<4>(qa), low),
                        _mm512_and_si512(qh, top),
                    );
                    u[3][cc] = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi32::<4>(qb), low),
                        _mm512_and_si512(_mm512_srli_epi32::<2>(qh), top),
                    );
                }
                let sc: [__m512; 4] = std::array::from_fn(|s| dsc(8 * g + 2 * s + h));
                for t in 0..T {
                    let aq = a[t].get_unchecked(i).qs.as_ptr().add(128 * g + 16 * h) as *const i32;
                    for s in 0..4 {
                        let mut x = zero;
                        for (cc, us) in u[s].iter().enumerate() {
                            let q = aq.add(8 * s + cc).read_unaligned();
                            x = _mm512_dpbusd_epi32(x, *us, _mm512_set1_epi32(q));
                        }
                        sb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), sc[s], sb[t]);
                    }
                }
            }
        }
        let d32 = _mm512_mul_ps(d, _mm512_set1_ps(32.0));
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let bs = at.bsums.as_ptr() as *const i32;
            let mut off = zero;
            for (q, sp) in scpair.iter().enumerate() {
                off = _mm512_dpwssd_epi32(off, *sp, _mm512_set1_epi32(bs.add(q).read_unaligned()));
            }
            let v = _mm512_fnmadd_ps(d32, _mm512_cvtepi32_ps(off), sb[t]);
            acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(at.d), acc[t]);
        }
    }
    std::array::from_fn(|t| std::mem::transmute::<__m512, [f32; WIDE_ROWS]>(acc[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q6_k_wide1(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ8K]; 1],
) -> [[f32; WIDE_ROWS]; 1] {
    q6_k_wide::<1>(base, stride, nb, a)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q6_k_wide_t(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ8K]; WIDE_TOKENS],
) -> [[f32; WIDE_ROWS]; WIDE_TOKENS] {
    q6_k_wide::<WIDE_TOKENS>(base, stride, nb, a)
}

/// `x` rounded half away from zero (as `f32::round`, which the scalar
/// quantisers use, so both give the same codes), as i32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn round_away(x: __m512) -> __m512i {
    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
    // Exact: |x| < 2^23 here, so x − trunc(x) has no rounding.
    let frac = _mm512_abs_ps(_mm512_sub_ps(x, t));
    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
    let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
    let one = _mm512_castsi512_ps(_mm512_or_si512(
        sign,
        _mm512_castps_si512(_mm512_set1_ps(1.0)),
    ));
    _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one))
}

/// The scale of a block whose largest magnitude is in `amax` lanes, and
/// its inverse (as `act::quantize_block`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales(amax: __m512, steps: f32) -> (f32, __m512) {
    let d = _mm512_reduce_max_ps(amax) / steps;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    (d, _mm512_set1_ps(id))
}

/// [`super::act::quantize_q8`] with AVX-512: the same codes and scales.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut Vec<ActQ8>) {
    out.clear();
    out.reserve(x.len() / 32);
    for c in x.chunks_exact(32) {
        let v0 = _mm512_loadu_ps(c.as_ptr());
        let v1 = _mm512_loadu_ps(c.as_ptr().add(16));
        let (d, id) = scales(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)), 127.0);
        let q0 = round_away(_mm512_mul_ps(v0, id));
        let q1 = round_away(_mm512_mul_ps(v1, id));
        let mut b = ActQ8 {
            qs: [0; 32],
            d,
            s: 0.0,
        };
        _mm_storeu_si128(b.qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(
            b.qs.as_mut_ptr().add(16) as *mut __m128i,
            _mm512_cvtepi32_epi8(q1),
        );
        b.s = d * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)) as f32;
        out.push(b);
    }
}

/// [`super::act::quantize_q8k`] with AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_q8k(x: &[f32], out: &mut Vec<ActQ8K>) {
    out.clear();
    out.reserve(x.len() / 256);
    for c in x.chunks_exact(256) {
        let v: [__m512; 16] = std::array::from_fn(|k| _mm512_loadu_ps(c.as_ptr().add(16 * k)));
        let amax = v.iter().fold(_mm512_setzero_ps(), |m, &x| {
            _mm512_max_ps(m, _mm512_abs_ps(x))
        });
        let (d, id) = scales(amax, 127.0);
        let mut b = ActQ8K {
            qs: [0; 256],
            d,
            bsums: [0; 16],
        };
        for (k, vk) in v.iter().enumerate() {
            let q = round_away(_mm512_mul_ps(*vk, id));
            _mm_storeu_si128(
                b.qs.as_mut_ptr().add(16 * k) as *mut __m128i,
                _mm512_cvtepi32_epi8(q),
            );
            b.bsums[k] = _mm512_reduce_add_epi32(q) as i16;
        }
        out.push(b);
    }
}

/// [`super::act::quantize_q16`] with AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_q16(x: &[f32], out: &mut Vec<ActQ16>) {
    out.clear();
    out.reserve(x.len() / 32);
    for c in x.chunks_exact(32) {
        let v0 = _mm512_loadu_ps(c.as_ptr());
        let v1 = _mm512_loadu_ps(c.as_ptr().add(16));
        let (d, id) = scales(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)), 32767.0);
        let mut b = ActQ16 {
            qs: [0; 32],
            d,
            s: 0.0,
        };
        let q0 = _mm512_cvtepi32_epi16(round_away(_mm512_mul_ps(v0, id)));
        let q1 = _mm512_cvtepi32_epi16(round_away(_mm512_mul_ps(v1, id)));
        _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, q0);
        _mm256_storeu_si256(b.qs.as_mut_ptr().add(16) as *mut __m256i, q1);
        b.s = super::act::code_sum_scaled(d, &b.qs);
        out.push(b);
    }
}

/// Q8_0 against 16-bit activation codes, sixteen rows against `T` tokens:
/// per block, word k of each row's 32 weights gathered (16 rows × 4
/// bytes) and widened to i16 as two registers of eight rows, each row's
/// two pairs `(w[4k], w[4k+1])`, `(w[4k+2], w[4k+3])` side by side, which
/// meet the token's four codes `a[4k..4k+4]` broadcast as 64 bits in one
/// `dpwssd`; after the block the pairs fold into lane = row (no overflow: a
/// lane sums 16 products of at most 127 · 32767).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_wide<const T: usize>(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ16]; T],
) -> [[f32; WIDE_ROWS]; T] {
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride as i32),
    );
    let gather = |p: *const u8| _mm512_i32gather_epi32::<1>(idx, p as *const _);
    let zero = _mm512_setzero_si512();
    // Lanes 2r and 2r + 1 of (lo, hi): row r's pairs (rows 8.. in hi).
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut acc = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let p = base.add(i * 34);
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(gather(p)));
        let mut w = [[zero; 2]; 8];
        for (k, wk) in w.iter_mut().enumerate() {
            let x = gather(p.add(2 + 4 * k));
            wk[0] = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(x));
            wk[1] = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(x));
        }
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let q = at.qs.as_ptr() as *const i64;
            let (mut lo, mut hi) = (zero, zero);
            for (k, wk) in w.iter().enumerate() {
                let av = _mm512_set1_epi64(q.add(k).read_unaligned());
                lo = _mm512_dpwssd_epi32(lo, wk[0], av);
                hi = _mm512_dpwssd_epi32(hi, wk[1], av);
            }
            let s = _mm512_add_epi32(
                _mm512_permutex2var_epi32(lo, even, hi),
                _mm512_permutex2var_epi32(lo, odd, hi),
            );
            acc[t] = _mm512_fmadd_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(at.d)),
                d,
                acc[t],
            );
        }
    }
    std::array::from_fn(|t| std::mem::transmute::<__m512, [f32; WIDE_ROWS]>(acc[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q8_0_wide1(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ16]; 1],
) -> [[f32; WIDE_ROWS]; 1] {
    q8_0_wide::<1>(base, stride, nb, a)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q8_0_wide_t(
    base: *const u8,
    stride: usize,
    nb: usize,
    a: &[&[ActQ16]; WIDE_TOKENS],
) -> [[f32; WIDE_ROWS]; WIDE_TOKENS] {
    q8_0_wide::<WIDE_TOKENS>(base, stride, nb, a)
}
