//! x86-64 kernels for CPUs with AVX2, FMA and F16C (checked at run time by
//! `CpuBackend::new`). The hottest formats have hand-written intrinsics; the rest
//! are the portable bodies recompiled with AVX2 enabled, which lets the compiler
//! vectorise their integer loops 32 lanes wide.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use quern_quant::block::f16_value;
use quern_quant::iq4_nl::{BlockIq4Nl, GRID as IQ4_GRID};
use quern_quant::iq4_xs::BlockIq4Xs;
use quern_quant::q2_k::BlockQ2K;
use quern_quant::q3_k::BlockQ3K;
use quern_quant::q4_0::BlockQ4_0;
use quern_quant::q4_1::BlockQ4_1;
use quern_quant::q4_k::{scale_min, BlockQ4K};
use quern_quant::q5_0::BlockQ5_0;
use quern_quant::q5_1::BlockQ5_1;
use quern_quant::q5_k::BlockQ5K;
use quern_quant::q6_k::BlockQ6K;
use quern_quant::q8_0::BlockQ8_0;

use super::act::{ActQ16, ActQ8, ActQ8K};
use super::portable;

/// One IEEE half to f32 with the F16C instruction (the `half` crate checks the
/// CPU on every call, which costs more than the conversion in these loops).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Eight i32 sums of products of 32 signed bytes, as floats. `maddubs` wants an
/// unsigned left operand, so the sign of `w` moves onto `a` first (|w| * sign(w)a).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8(w: __m256i, a: __m256i) -> __m256 {
    let aw = _mm256_sign_epi8(w, w);
    let sa = _mm256_sign_epi8(a, w);
    let p16 = _mm256_maddubs_epi16(aw, sa);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Unsigned 4-bit codes of a legacy block, code j in byte j (low nibbles first).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
    let v = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let lo = _mm_and_si128(v, _mm_set1_epi8(15));
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), _mm_set1_epi8(15));
    _mm256_set_m128i(hi, lo)
}

/// How far ahead of the current block the weight stream is prefetched: decode
/// reads each weight once, and one core alone does not keep enough loads in flight
/// to use the memory bandwidth.
const PREFETCH_BYTES: usize = 1024;

/// Σ w a of a Q8_0 block and 16-bit activation codes as eight i32 lanes (no
/// overflow: |w a + w' a'| ≤ 2 · 127 · 32767).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_q16_dot(wq: &[i8; 32], a: &ActQ16) -> __m256i {
    let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wq.as_ptr() as *const __m128i));
    let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wq.as_ptr().add(16) as *const __m128i));
    let a0 = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
    let a1 = _mm256_loadu_si256(a.qs.as_ptr().add(16) as *const __m256i);
    _mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_row(w: &[u8], a: &[ActQ16]) -> f32 {
    let base = w.as_ptr();
    let w: &[BlockQ8_0] = bytemuck::cast_slice(w);
    // Two accumulators halve the dependency chain through the fused multiply-add.
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (i, (b, a)) in w.chunks_exact(2).zip(a.chunks_exact(2)).enumerate() {
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(i * 68 + PREFETCH_BYTES) as *const i8);
        let p0 = _mm256_cvtepi32_ps(q8_q16_dot(&b[0].qs, &a[0]));
        let p1 = _mm256_cvtepi32_ps(q8_q16_dot(&b[1].qs, &a[1]));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(b[0].d) * a[0].d), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(b[1].d) * a[1].d), p1, acc1);
    }
    if w.len() % 2 == 1 {
        let (b, a) = (&w[w.len() - 1], &a[w.len() - 1]);
        let p = _mm256_cvtepi32_ps(q8_q16_dot(&b.qs, a));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(b.d) * a.d), p, acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// One Q8_0 weight row against four activation rows (prefill): each weight block
/// is widened to 16 bits once for the four.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_row_x4(w: &[u8], a: [&[ActQ16]; 4]) -> [f32; 4] {
    let w: &[BlockQ8_0] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, b) in w.iter().enumerate() {
        let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.qs.as_ptr() as *const __m128i));
        let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.qs.as_ptr().add(16) as *const __m128i));
        let d = f16(b.d);
        for t in 0..4 {
            let at = &a[t][i];
            let a0 = _mm256_loadu_si256(at.qs.as_ptr() as *const __m256i);
            let a1 = _mm256_loadu_si256(at.qs.as_ptr().add(16) as *const __m256i);
            let p = _mm256_add_epi32(_mm256_madd_epi16(w0, a0), _mm256_madd_epi16(w1, a1));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * at.d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_row(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len() / 2);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(w.as_ptr().add(2 * i) as *const __m128i);
        let xv = _mm256_loadu_ps(x.as_ptr().add(i));
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(h), xv, acc);
        i += 8;
    }
    let mut sum = hsum(acc);
    while i < n {
        sum += f16_value([w[2 * i], w[2 * i + 1]]) * x[i];
        i += 1;
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_row(w: &[u8], x: &[f32]) -> f32 {
    portable::f32_row(w, x)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bf16_row(w: &[u8], x: &[f32]) -> f32 {
    portable::bf16_row(w, x)
}

/// Q4_K: per 64 values, one 32-byte load gives two sub-blocks (low and high
/// nibbles); `madd` by the broadcast 6-bit scale folds the scale into the pair sums.
/// The minimums meet the activation group sums outside the vector loop.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    let w: &[BlockQ4K] = bytemuck::cast_slice(w);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(15);
    for (b, a) in w.iter().zip(a) {
        let mut sumi = _mm256_setzero_si256();
        let mut summ = 0i32;
        for g in 0..4 {
            let (sc0, m0) = scale_min(&b.scales, 2 * g);
            let (sc1, m1) = scale_min(&b.scales, 2 * g + 1);
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            let q0 = _mm256_and_si256(q, low);
            let q1 = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            let a0 = _mm256_loadu_si256(a.qs.as_ptr().add(g * 64) as *const __m256i);
            let a1 = _mm256_loadu_si256(a.qs.as_ptr().add(g * 64 + 32) as *const __m256i);
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, a0), _mm256_set1_epi16(sc0 as i16));
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, a1), _mm256_set1_epi16(sc1 as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
            summ += m0 as i32 * (a.bsums[4 * g] as i32 + a.bsums[4 * g + 1] as i32)
                + m1 as i32 * (a.bsums[4 * g + 2] as i32 + a.bsums[4 * g + 3] as i32);
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16(b.d) * a.d),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
        mins += f16(b.dmin) * a.d * summ as f32;
    }
    hsum(acc) - mins
}

/// Q6_K's unsigned 6-bit codes of values g·128 + sub·32 .. + 32 (half `g`,
/// quarter `sub`), value j in byte j: low nibbles from `ql`, top two bits from
/// the half's 32 bytes of `qh` (already loaded).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_codes32(b: &BlockQ6K, qh: __m256i, g: usize, sub: usize) -> __m256i {
    let ql = _mm256_loadu_si256(b.ql.as_ptr().add(g * 64 + (sub % 2) * 32) as *const __m256i);
    let lo = _mm256_and_si256(
        _mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (sub / 2) as i32)),
        _mm256_set1_epi8(15),
    );
    let hi = _mm256_and_si256(
        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * sub as i32)),
        _mm256_set1_epi8(3),
    );
    _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi))
}

/// Q6_K: unsigned 6-bit codes u go through `maddubs` as they are; the offset of 32
/// comes back as `32 * scale * Σa` from the activation group sums.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    let w: &[BlockQ6K] = bytemuck::cast_slice(w);
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (b, a) in w.iter().zip(a) {
        let mut sumi = _mm256_setzero_si256();
        for g in 0..2 {
            let qh = _mm256_loadu_si256(b.qh.as_ptr().add(g * 32) as *const __m256i);
            for sub in 0..4 {
                let u = q6_k_codes32(b, qh, g, sub);
                let av =
                    _mm256_loadu_si256(a.qs.as_ptr().add(g * 128 + sub * 32) as *const __m256i);
                let s = g * 8 + sub * 2;
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16(b.scales[s + 1] as i16),
                    _mm_set1_epi16(b.scales[s] as i16),
                );
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, av), scales);
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        let offset: i32 = (0..16)
            .map(|s| b.scales[s] as i32 * a.bsums[s] as i32)
            .sum::<i32>()
            * 32;
        let d = f16(b.d) * a.d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        offsets += d * offset as f32;
    }
    hsum(acc) - offsets
}

/// 0xFF in byte j where bit j of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn bit_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Byte j of the result looks at byte j / 8 of `bits` (lanes are 16 bytes wide,
    // and every lane holds all four bytes after the broadcast).
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let spread = _mm256_and_si256(_mm256_shuffle_epi8(v, pick), mask);
    _mm256_cmpeq_epi8(spread, mask)
}

/// A legacy block as unsigned codes `u` (0..=31) with `w = d * u + c` per value:
/// the product with [`ActQ8`] activations is `d * a.d * Σ u q + c * a.s`.
trait Unsigned: bytemuck::Pod {
    unsafe fn decode(&self) -> (__m256i, f32, f32);
}

impl Unsigned for BlockQ4_0 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> (__m256i, f32, f32) {
        let d = f16(self.d);
        (unpack_nibbles(&self.qs), d, -8.0 * d)
    }
}

impl Unsigned for BlockQ4_1 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> (__m256i, f32, f32) {
        (unpack_nibbles(&self.qs), f16(self.d), f16(self.m))
    }
}

impl Unsigned for BlockQ5_0 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> (__m256i, f32, f32) {
        let hi = _mm256_and_si256(bit_bytes(u32::from_le_bytes(self.qh)), _mm256_set1_epi8(16));
        let d = f16(self.d);
        (_mm256_or_si256(unpack_nibbles(&self.qs), hi), d, -16.0 * d)
    }
}

impl Unsigned for BlockQ5_1 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> (__m256i, f32, f32) {
        let hi = _mm256_and_si256(bit_bytes(u32::from_le_bytes(self.qh)), _mm256_set1_epi8(16));
        (
            _mm256_or_si256(unpack_nibbles(&self.qs), hi),
            f16(self.d),
            f16(self.m),
        )
    }
}

/// Σ u q of unsigned codes and signed activations as eight i32 lanes (no
/// saturation: |u q + u' q'| ≤ 2 · 31 · 127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn udot(u: __m256i, a: &ActQ8) -> __m256 {
    let q = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(
        _mm256_maddubs_epi16(u, q),
        _mm256_set1_epi16(1),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_row<B: Unsigned>(w: &[u8], a: &[ActQ8]) -> f32 {
    let base = w.as_ptr();
    let bytes = std::mem::size_of::<B>();
    let w: &[B] = bytemuck::cast_slice(w);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut off = 0f32;
    let mut i = 0;
    while i + 2 <= w.len() {
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(i * bytes + PREFETCH_BYTES) as *const i8);
        let (u0, d0, c0) = w[i].decode();
        let (u1, d1, c1) = w[i + 1].decode();
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[i].d), udot(u0, &a[i]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a[i + 1].d), udot(u1, &a[i + 1]), acc1);
        off += c0 * a[i].s + c1 * a[i + 1].s;
        i += 2;
    }
    if i < w.len() {
        let (u0, d0, c0) = w[i].decode();
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[i].d), udot(u0, &a[i]), acc0);
        off += c0 * a[i].s;
    }
    hsum(_mm256_add_ps(acc0, acc1)) + off
}

/// One weight row against four activation rows: each block decoded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_row_x4<B: Unsigned>(w: &[u8], a: [&[ActQ8]; 4]) -> [f32; 4] {
    let w: &[B] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut off = [0f32; 4];
    for (i, b) in w.iter().enumerate() {
        let (u, d, c) = b.decode();
        for t in 0..4 {
            let at = &a[t][i];
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * at.d), udot(u, at), acc[t]);
            off[t] += c * at.s;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + off[t])
}

macro_rules! unsigned_kernels {
    ($($one:ident, $four:ident, $block:ty;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $one(w: &[u8], a: &[ActQ8]) -> f32 {
            unsigned_row::<$block>(w, a)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $four(w: &[u8], a: [&[ActQ8]; 4]) -> [f32; 4] {
            unsigned_row_x4::<$block>(w, a)
        }
    )*};
}

unsigned_kernels! {
    q4_0_row, q4_0_row_x4, BlockQ4_0;
    q4_1_row, q4_1_row_x4, BlockQ4_1;
    q5_0_row, q5_0_row_x4, BlockQ5_0;
    q5_1_row, q5_1_row_x4, BlockQ5_1;
}

// The 4- and 5-bit formats against 16-bit activation codes (`precision`): the
// codes widened to i16 and multiplied pairwise with `madd_epi16`.

/// Σ u q of 32 unsigned byte codes (code j in byte j) and 16-bit activation
/// codes, as eight i32 lanes (|u q + u' q'| ≤ 2 · 63 · 32767).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn udot16(u: __m256i, q: &[i16; 32]) -> __m256i {
    let u0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u));
    let u1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(u));
    let a0 = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
    let a1 = _mm256_loadu_si256(q.as_ptr().add(16) as *const __m256i);
    _mm256_add_epi32(_mm256_madd_epi16(u0, a0), _mm256_madd_epi16(u1, a1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_row_a16<B: Unsigned>(w: &[u8], a: &[ActQ16]) -> f32 {
    let base = w.as_ptr();
    let bytes = std::mem::size_of::<B>();
    let w: &[B] = bytemuck::cast_slice(w);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut off = 0f32;
    let mut i = 0;
    while i + 2 <= w.len() {
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(i * bytes + PREFETCH_BYTES) as *const i8);
        let (u0, d0, c0) = w[i].decode();
        let (u1, d1, c1) = w[i + 1].decode();
        let p0 = _mm256_cvtepi32_ps(udot16(u0, &a[i].qs));
        let p1 = _mm256_cvtepi32_ps(udot16(u1, &a[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[i].d), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a[i + 1].d), p1, acc1);
        off += c0 * a[i].s + c1 * a[i + 1].s;
        i += 2;
    }
    if i < w.len() {
        let (u0, d0, c0) = w[i].decode();
        let p0 = _mm256_cvtepi32_ps(udot16(u0, &a[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[i].d), p0, acc0);
        off += c0 * a[i].s;
    }
    hsum(_mm256_add_ps(acc0, acc1)) + off
}

/// The codes of [`udot16`] widened to i16 once, for several tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen(u: __m256i) -> (__m256i, __m256i) {
    (
        _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u)),
        _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(u)),
    )
}

/// Σ u q of widened codes and one token's 16-bit codes, eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn wdot16(u: (__m256i, __m256i), q: &[i16; 32]) -> __m256i {
    let a0 = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
    let a1 = _mm256_loadu_si256(q.as_ptr().add(16) as *const __m256i);
    _mm256_add_epi32(_mm256_madd_epi16(u.0, a0), _mm256_madd_epi16(u.1, a1))
}

/// One weight row against four tokens (prefill): each block decoded and
/// widened once for the four.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_row_a16_x4<B: Unsigned>(w: &[u8], a: [&[ActQ16]; 4]) -> [f32; 4] {
    let w: &[B] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut off = [0f32; 4];
    for (i, b) in w.iter().enumerate() {
        let (u, d, c) = b.decode();
        let uw = widen(u);
        for t in 0..4 {
            let at = &a[t][i];
            let p = _mm256_cvtepi32_ps(wdot16(uw, &at.qs));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * at.d), p, acc[t]);
            off[t] += c * at.s;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + off[t])
}

macro_rules! unsigned_kernels_a16 {
    ($($one:ident, $four:ident, $block:ty;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $one(w: &[u8], a: &[ActQ16]) -> f32 {
            unsigned_row_a16::<$block>(w, a)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $four(w: &[u8], a: [&[ActQ16]; 4]) -> [f32; 4] {
            unsigned_row_a16_x4::<$block>(w, a)
        }
    )*};
}

unsigned_kernels_a16! {
    q4_0_row_a16, q4_0_row_a16_x4, BlockQ4_0;
    q4_1_row_a16, q4_1_row_a16_x4, BlockQ4_1;
    q5_0_row_a16, q5_0_row_a16_x4, BlockQ5_0;
    q5_1_row_a16, q5_1_row_a16_x4, BlockQ5_1;
}

/// [`q4_k_row_a16`] against four tokens: nibbles and scales unpacked once.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_row_a16_x4(w: &[u8], a: [&[ActQ16]; 4]) -> [f32; 4] {
    let w: &[BlockQ4K] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    let low = _mm256_set1_epi8(15);
    for (i, b) in w.iter().enumerate() {
        let (d, dmin) = (f16(b.d), f16(b.dmin));
        let mut m = [0f32; 4];
        for g in 0..4 {
            let (sc0, m0) = scale_min(&b.scales, 2 * g);
            let (sc1, m1) = scale_min(&b.scales, 2 * g + 1);
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            let u0 = widen(_mm256_and_si256(q, low));
            let u1 = widen(_mm256_and_si256(_mm256_srli_epi16::<4>(q), low));
            let (f0, f1) = (d * sc0 as f32, d * sc1 as f32);
            for t in 0..4 {
                let (a0, a1) = (&a[t][8 * i + 2 * g], &a[t][8 * i + 2 * g + 1]);
                let p0 = _mm256_cvtepi32_ps(wdot16(u0, &a0.qs));
                let p1 = _mm256_cvtepi32_ps(wdot16(u1, &a1.qs));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(f0 * a0.d), p0, acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(f1 * a1.d), p1, acc[t]);
                m[t] += m0 as f32 * a0.s + m1 as f32 * a1.s;
            }
        }
        for t in 0..4 {
            mins[t] += dmin * m[t];
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - mins[t])
}

/// [`q6_k_row_a16`] against four tokens: codes unpacked and centred once.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_row_a16_x4(w: &[u8], a: [&[ActQ16]; 4]) -> [f32; 4] {
    let w: &[BlockQ6K] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); 4];
    let centre = _mm256_set1_epi16(32);
    for (i, b) in w.iter().enumerate() {
        let mut sacc = [_mm256_setzero_ps(); 4];
        for g in 0..2 {
            let qh = _mm256_loadu_si256(b.qh.as_ptr().add(g * 32) as *const __m256i);
            for sub in 0..4 {
                let (c0, c1) = widen(q6_k_codes32(b, qh, g, sub));
                let (c0, c1) = (_mm256_sub_epi16(c0, centre), _mm256_sub_epi16(c1, centre));
                let s = g * 8 + sub * 2;
                let (s0, s1) = (
                    _mm256_set1_ps(b.scales[s] as f32),
                    _mm256_set1_ps(b.scales[s + 1] as f32),
                );
                for t in 0..4 {
                    let aj = &a[t][8 * i + g * 4 + sub];
                    let a0 = _mm256_loadu_si256(aj.qs.as_ptr() as *const __m256i);
                    let a1 = _mm256_loadu_si256(aj.qs.as_ptr().add(16) as *const __m256i);
                    let p = _mm256_fmadd_ps(
                        s0,
                        _mm256_cvtepi32_ps(_mm256_madd_epi16(c0, a0)),
                        _mm256_mul_ps(s1, _mm256_cvtepi32_ps(_mm256_madd_epi16(c1, a1))),
                    );
                    sacc[t] = _mm256_fmadd_ps(_mm256_set1_ps(aj.d), p, sacc[t]);
                }
            }
        }
        let d = _mm256_set1_ps(f16(b.d));
        for t in 0..4 {
            acc[t] = _mm256_fmadd_ps(d, sacc[t], acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// Q4_K against 16-bit codes (a scale per 32 activations): each sub-block's
/// sums meet `d · scale · d_x` as one float.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let base = w.as_ptr();
    let w: &[BlockQ4K] = bytemuck::cast_slice(w);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(15);
    for (i, (b, a)) in w.iter().zip(a.chunks_exact(8)).enumerate() {
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(i * 144 + PREFETCH_BYTES) as *const i8);
        let (d, dmin) = (f16(b.d), f16(b.dmin));
        let mut m = 0f32;
        for g in 0..4 {
            let (sc0, m0) = scale_min(&b.scales, 2 * g);
            let (sc1, m1) = scale_min(&b.scales, 2 * g + 1);
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            let q0 = _mm256_and_si256(q, low);
            let q1 = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            let (a0, a1) = (&a[2 * g], &a[2 * g + 1]);
            let p0 = _mm256_cvtepi32_ps(udot16(q0, &a0.qs));
            let p1 = _mm256_cvtepi32_ps(udot16(q1, &a1.qs));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc0 as f32 * a0.d), p0, acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc1 as f32 * a1.d), p1, acc);
            m += m0 as f32 * a0.s + m1 as f32 * a1.s;
        }
        mins += dmin * m;
    }
    hsum(acc) - mins
}

/// Q6_K against 16-bit codes: codes centred (q − 32) as i16, each half of a
/// block of 32 under its own scale.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let base = w.as_ptr();
    let w: &[BlockQ6K] = bytemuck::cast_slice(w);
    let mut acc = _mm256_setzero_ps();
    let centre = _mm256_set1_epi16(32);
    for (i, (b, a)) in w.iter().zip(a.chunks_exact(8)).enumerate() {
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(i * 210 + PREFETCH_BYTES) as *const i8);
        let mut sacc = _mm256_setzero_ps();
        for g in 0..2 {
            let qh = _mm256_loadu_si256(b.qh.as_ptr().add(g * 32) as *const __m256i);
            for sub in 0..4 {
                let u = q6_k_codes32(b, qh, g, sub);
                let aj = &a[g * 4 + sub];
                let c0 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(u)), centre);
                let c1 = _mm256_sub_epi16(
                    _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(u)),
                    centre,
                );
                let a0 = _mm256_loadu_si256(aj.qs.as_ptr() as *const __m256i);
                let a1 = _mm256_loadu_si256(aj.qs.as_ptr().add(16) as *const __m256i);
                let s = g * 8 + sub * 2;
                let p = _mm256_fmadd_ps(
                    _mm256_set1_ps(b.scales[s] as f32),
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(c0, a0)),
                    _mm256_mul_ps(
                        _mm256_set1_ps(b.scales[s + 1] as f32),
                        _mm256_cvtepi32_ps(_mm256_madd_epi16(c1, a1)),
                    ),
                );
                sacc = _mm256_fmadd_ps(_mm256_set1_ps(aj.d), p, sacc);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b.d)), sacc, acc);
    }
    hsum(acc)
}

/// Q4_K against four activation rows (prefill): the nibbles and scales of each
/// 64-value group are unpacked once for the four.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_row_x4(w: &[u8], a: [&[ActQ8K]; 4]) -> [f32; 4] {
    let w: &[BlockQ4K] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    let low = _mm256_set1_epi8(15);
    for (i, b) in w.iter().enumerate() {
        let mut sumi = [_mm256_setzero_si256(); 4];
        let mut summ = [0i32; 4];
        for g in 0..4 {
            let (sc0, m0) = scale_min(&b.scales, 2 * g);
            let (sc1, m1) = scale_min(&b.scales, 2 * g + 1);
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            let q0 = _mm256_and_si256(q, low);
            let q1 = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            let (s0, s1) = (_mm256_set1_epi16(sc0 as i16), _mm256_set1_epi16(sc1 as i16));
            for t in 0..4 {
                let at = &a[t][i];
                let a0 = _mm256_loadu_si256(at.qs.as_ptr().add(g * 64) as *const __m256i);
                let a1 = _mm256_loadu_si256(at.qs.as_ptr().add(g * 64 + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, a0), s0);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, a1), s1);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p0, p1));
                summ[t] += m0 as i32 * (at.bsums[4 * g] as i32 + at.bsums[4 * g + 1] as i32)
                    + m1 as i32 * (at.bsums[4 * g + 2] as i32 + at.bsums[4 * g + 3] as i32);
            }
        }
        let (d, dmin) = (f16(b.d), f16(b.dmin));
        for t in 0..4 {
            let ad = a[t][i].d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ad), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            mins[t] += dmin * ad * summ[t] as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - mins[t])
}

/// Q6_K against four activation rows (prefill).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_row_x4(w: &[u8], a: [&[ActQ8K]; 4]) -> [f32; 4] {
    let w: &[BlockQ6K] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offsets = [0f32; 4];
    for (i, b) in w.iter().enumerate() {
        let mut sumi = [_mm256_setzero_si256(); 4];
        for g in 0..2 {
            let qh = _mm256_loadu_si256(b.qh.as_ptr().add(g * 32) as *const __m256i);
            for sub in 0..4 {
                let u = q6_k_codes32(b, qh, g, sub);
                let s = g * 8 + sub * 2;
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16(b.scales[s + 1] as i16),
                    _mm_set1_epi16(b.scales[s] as i16),
                );
                for t in 0..4 {
                    let av = _mm256_loadu_si256(
                        a[t][i].qs.as_ptr().add(g * 128 + sub * 32) as *const __m256i
                    );
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, av), scales);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        let d = f16(b.d);
        for t in 0..4 {
            let at = &a[t][i];
            let offset: i32 = (0..16)
                .map(|s| b.scales[s] as i32 * at.bsums[s] as i32)
                .sum::<i32>()
                * 32;
            let dd = d * at.d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            offsets[t] += dd * offset as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - offsets[t])
}

/// IQ4's 16 signed levels as bytes, in both lanes (for `shuffle_epi8`).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn iq4_grid() -> __m256i {
    let g = _mm_loadu_si128(IQ4_GRID.as_ptr() as *const __m128i);
    _mm256_set_m128i(g, g)
}

/// The 32 signed levels of a block of IQ4 nibbles (legacy order).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn iq4_levels(grid: __m256i, qs: &[u8; 16]) -> __m256i {
    _mm256_shuffle_epi8(grid, unpack_nibbles(qs))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_nl_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockIq4Nl] = bytemuck::cast_slice(w);
    let grid = iq4_grid();
    let mut acc = _mm256_setzero_ps();
    for (b, a) in w.iter().zip(a) {
        let wq = iq4_levels(grid, &b.qs);
        let aq = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b.d) * a.d), dot_i8(wq, aq), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_nl_row_x4(w: &[u8], a: [&[ActQ8]; 4]) -> [f32; 4] {
    let w: &[BlockIq4Nl] = bytemuck::cast_slice(w);
    let grid = iq4_grid();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, b) in w.iter().enumerate() {
        let wq = iq4_levels(grid, &b.qs);
        let d = f16(b.d);
        for t in 0..4 {
            let at = &a[t][i];
            let aq = _mm256_loadu_si256(at.qs.as_ptr() as *const __m256i);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * at.d), dot_i8(wq, aq), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// IQ4_XS against 32-value activation blocks: each of a super-block's eight
/// sub-blocks is an IQ4_NL block with scale `d * scale(j)`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_xs_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockIq4Xs] = bytemuck::cast_slice(w);
    let grid = iq4_grid();
    let mut acc = _mm256_setzero_ps();
    for (b, a) in w.iter().zip(a.chunks_exact(8)) {
        let d = f16(b.d);
        for (j, aj) in a.iter().enumerate() {
            let qs: &[u8; 16] = b.qs[j * 16..j * 16 + 16].try_into().unwrap_unchecked();
            let wq = iq4_levels(grid, qs);
            let aq = _mm256_loadu_si256(aj.qs.as_ptr() as *const __m256i);
            let s = d * b.scale(j) as f32 * aj.d;
            acc = _mm256_fmadd_ps(_mm256_set1_ps(s), dot_i8(wq, aq), acc);
        }
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_xs_row_x4(w: &[u8], a: [&[ActQ8]; 4]) -> [f32; 4] {
    let w: &[BlockIq4Xs] = bytemuck::cast_slice(w);
    let grid = iq4_grid();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, b) in w.iter().enumerate() {
        let d = f16(b.d);
        for j in 0..8 {
            let qs: &[u8; 16] = b.qs[j * 16..j * 16 + 16].try_into().unwrap_unchecked();
            let wq = iq4_levels(grid, qs);
            let dj = d * b.scale(j) as f32;
            for t in 0..4 {
                let at = &a[t][i * 8 + j];
                let aq = _mm256_loadu_si256(at.qs.as_ptr() as *const __m256i);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dj * at.d), dot_i8(wq, aq), acc[t]);
            }
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// Q5_K: Q4_K's layout plus a bit plane `qh` (bit j of byte l: the fifth bit of
/// value l of sub-block j).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    q5_k_rows::<1>(w, [a])[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_k_row_x4(w: &[u8], a: [&[ActQ8K]; 4]) -> [f32; 4] {
    q5_k_rows::<4>(w, a)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_rows<const T: usize>(w: &[u8], a: [&[ActQ8K]; T]) -> [f32; T] {
    let w: &[BlockQ5K] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut mins = [0f32; T];
    let low = _mm256_set1_epi8(15);
    let one = _mm256_set1_epi8(1);
    for (i, b) in w.iter().enumerate() {
        let qh = _mm256_loadu_si256(b.qh.as_ptr() as *const __m256i);
        let mut sumi = [_mm256_setzero_si256(); T];
        let mut summ = [0i32; T];
        for g in 0..4 {
            let (sc0, m0) = scale_min(&b.scales, 2 * g);
            let (sc1, m1) = scale_min(&b.scales, 2 * g + 1);
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            let h0 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)), one);
            let h1 = _mm256_and_si256(
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32 + 1)),
                one,
            );
            let q0 = _mm256_or_si256(_mm256_and_si256(q, low), _mm256_slli_epi16::<4>(h0));
            let q1 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), low),
                _mm256_slli_epi16::<4>(h1),
            );
            let (s0, s1) = (_mm256_set1_epi16(sc0 as i16), _mm256_set1_epi16(sc1 as i16));
            for t in 0..T {
                let at = &a[t][i];
                let a0 = _mm256_loadu_si256(at.qs.as_ptr().add(g * 64) as *const __m256i);
                let a1 = _mm256_loadu_si256(at.qs.as_ptr().add(g * 64 + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, a0), s0);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, a1), s1);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p0, p1));
                summ[t] += m0 as i32 * (at.bsums[4 * g] as i32 + at.bsums[4 * g + 1] as i32)
                    + m1 as i32 * (at.bsums[4 * g + 2] as i32 + at.bsums[4 * g + 3] as i32);
            }
        }
        let (d, dmin) = (f16(b.d), f16(b.dmin));
        for t in 0..T {
            let ad = a[t][i].d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ad), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            mins[t] += dmin * ad * summ[t] as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - mins[t])
}

/// Q2_K: 2-bit codes u with a 4-bit scale and a 4-bit minimum per 16 values:
/// `Σ (d·sc·u − dmin·m) a = d Σ sc Σ u a − dmin Σ m·bsum`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q2_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    q2_k_rows::<1>(w, [a])[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q2_k_row_x4(w: &[u8], a: [&[ActQ8K]; 4]) -> [f32; 4] {
    q2_k_rows::<4>(w, a)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k_rows<const T: usize>(w: &[u8], a: [&[ActQ8K]; T]) -> [f32; T] {
    let w: &[BlockQ2K] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut mins = [0f32; T];
    let three = _mm256_set1_epi8(3);
    for (i, b) in w.iter().enumerate() {
        let mut sumi = [_mm256_setzero_si256(); T];
        for g in 0..2 {
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            for s in 0..4 {
                let u =
                    _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * s as i32)), three);
                let j = g * 8 + 2 * s;
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16((b.scales[j + 1] & 15) as i16),
                    _mm_set1_epi16((b.scales[j] & 15) as i16),
                );
                for t in 0..T {
                    let av = _mm256_loadu_si256(
                        a[t][i].qs.as_ptr().add(g * 128 + s * 32) as *const __m256i
                    );
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, av), scales);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        let (d, dmin) = (f16(b.d), f16(b.dmin));
        for t in 0..T {
            let at = &a[t][i];
            let m: i32 = (0..16)
                .map(|j| (b.scales[j] >> 4) as i32 * at.bsums[j] as i32)
                .sum();
            acc[t] = _mm256_fmadd_ps(
                _mm256_set1_ps(d * at.d),
                _mm256_cvtepi32_ps(sumi[t]),
                acc[t],
            );
            mins[t] += dmin * at.d * m as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - mins[t])
}

/// Q3_K: unsigned 3-bit codes u (two low bits in `qs`, the third in `hmask`)
/// with value `sc · (u − 4)` and a signed 6-bit scale per 16 values:
/// `d Σ sc Σ u a − 4 d Σ sc·bsum`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q3_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    q3_k_rows::<1>(w, [a])[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q3_k_row_x4(w: &[u8], a: [&[ActQ8K]; 4]) -> [f32; 4] {
    q3_k_rows::<4>(w, a)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k_rows<const T: usize>(w: &[u8], a: [&[ActQ8K]; T]) -> [f32; T] {
    let w: &[BlockQ3K] = bytemuck::cast_slice(w);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut offsets = [0f32; T];
    let three = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    for (i, b) in w.iter().enumerate() {
        let hm = _mm256_loadu_si256(b.hmask.as_ptr() as *const __m256i);
        let sc: [i32; 16] = std::array::from_fn(|j| b.scale(j));
        let mut sumi = [_mm256_setzero_si256(); T];
        for g in 0..2 {
            let q = _mm256_loadu_si256(b.qs.as_ptr().add(g * 32) as *const __m256i);
            for s in 0..4 {
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * s as i32)), three);
                let high = _mm256_and_si256(
                    _mm256_srl_epi16(hm, _mm_cvtsi32_si128((g * 4 + s) as i32)),
                    one,
                );
                let u = _mm256_or_si256(low, _mm256_slli_epi16::<2>(high));
                let j = g * 8 + 2 * s;
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16(sc[j + 1] as i16),
                    _mm_set1_epi16(sc[j] as i16),
                );
                for t in 0..T {
                    let av = _mm256_loadu_si256(
                        a[t][i].qs.as_ptr().add(g * 128 + s * 32) as *const __m256i
                    );
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, av), scales);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        let d = f16(b.d);
        for t in 0..T {
            let at = &a[t][i];
            let off: i32 = (0..16).map(|j| sc[j] * at.bsums[j] as i32).sum::<i32>() * 4;
            let dd = d * at.d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            offsets[t] += dd * off as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - offsets[t])
}
