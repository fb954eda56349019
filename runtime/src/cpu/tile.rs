//! AVX2 kernels over four weight rows at once against four tokens (prefill),
//! reading each row's blocks in place from the file. (The bodies are generic
//! over the token count; one token, tried for decode, was slower than the
//! one-row kernels when the weights stream from memory.)
//!
//! One row at a time, every 32-value block costs a horizontal reduction of its
//! products and a float scale-and-add of its own. Four rows share that work: the
//! activation codes are loaded once for the four, `hadd` folds the four rows'
//! partial sums into one register (lane r: row r; low and high 128-bit halves:
//! the block's first and second 16 values), and one conversion and one fused
//! multiply-add scale all four, with the rows' four scales side by side in a
//! vector. With four tokens the weights are also unpacked once for the four.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use quern_quant::q4_0::BlockQ4_0;
use quern_quant::q4_1::BlockQ4_1;
use quern_quant::q5_0::BlockQ5_0;
use quern_quant::q5_1::BlockQ5_1;
use quern_quant::q8_0::BlockQ8_0;

use quern_quant::q4_k::BlockQ4K;
use quern_quant::q6_k::BlockQ6K;

use super::act::{ActQ16, ActQ8, ActQ8K};
use super::avx2::bit_bytes;

/// How far ahead of the current block each row is prefetched in decode.
const PREFETCH_BYTES: usize = 512;

/// The two 128-bit halves of `v` added: lane r holds row r's sum.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fold(v: __m256) -> [f32; 4] {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    std::mem::transmute::<__m128, [f32; 4]>(s)
}

/// Four f16 values (raw bits) as f32 lanes 0..3, repeated in lanes 4..7.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves_twice(h: [[u8; 2]; 4]) -> __m256 {
    let v = _mm_setr_epi16(
        i16::from_le_bytes(h[0]),
        i16::from_le_bytes(h[1]),
        i16::from_le_bytes(h[2]),
        i16::from_le_bytes(h[3]),
        0,
        0,
        0,
        0,
    );
    _mm256_cvtph_ps(_mm_unpacklo_epi64(v, v))
}

/// A 32-value legacy block as unsigned codes `u` (code j in byte j) with
/// `w = d u + c`: `c = k d` for a fixed `k`, or a stored minimum.
trait Legacy: bytemuck::Pod {
    /// `Some(k)`: `c = k d`; `None`: `c` is [`Legacy::m`].
    const K: Option<f32>;
    unsafe fn codes(&self) -> __m256i;
    fn d(&self) -> [u8; 2];
    fn m(&self) -> [u8; 2];
}

/// The 32 nibbles of a block, low nibbles first, without a cross-lane shuffle:
/// the 16 bytes go to both halves, and the upper half is shifted by four.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr() as *const __m128i));
    _mm256_and_si256(
        _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)),
        _mm256_set1_epi8(15),
    )
}

/// The fifth bits of a Q5 block as 16 in byte j where bit j of `qh` is set.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
    _mm256_and_si256(bit_bytes(u32::from_le_bytes(qh)), _mm256_set1_epi8(16))
}

/// `Legacy` for each block type: `K`, the codes, and the stored minimum (zero
/// where `K` gives the offset).
macro_rules! legacy {
    ($($block:ty, $k:expr, |$b:ident| $codes:expr, |$bm:ident| $m:expr;)*) => {$(
        impl Legacy for $block {
            const K: Option<f32> = $k;
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn codes(&self) -> __m256i {
                let $b = self;
                $codes
            }
            fn d(&self) -> [u8; 2] {
                self.d
            }
            fn m(&self) -> [u8; 2] {
                let $bm = self;
                $m
            }
        }
    )*};
}

legacy! {
    BlockQ4_0, Some(-8.0), |b| nibbles(&b.qs), |_b| [0, 0];
    BlockQ4_1, None, |b| nibbles(&b.qs), |b| b.m;
    BlockQ5_0, Some(-16.0), |b| _mm256_or_si256(nibbles(&b.qs), fifth_bits(b.qh)), |_b| [0, 0];
    BlockQ5_1, None, |b| _mm256_or_si256(nibbles(&b.qs), fifth_bits(b.qh)), |b| b.m;
}

/// The four rows' scales `d` in lanes 0..3 and 4..7, and their offsets `c` in
/// lanes 0..3 (zero above: the offset meets each activation block's whole sum
/// once, in the low half).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_scales<B: Legacy>(b: [&B; 4]) -> (__m256, __m256) {
    match B::K {
        Some(k) => {
            let d8 = halves_twice([b[0].d(), b[1].d(), b[2].d(), b[3].d()]);
            let c8 = _mm256_mul_ps(d8, _mm256_setr_ps(k, k, k, k, 0.0, 0.0, 0.0, 0.0));
            (d8, c8)
        }
        None => {
            let h = |x: [u8; 2]| i16::from_le_bytes(x);
            let v = _mm256_cvtph_ps(_mm_setr_epi16(
                h(b[0].d()),
                h(b[1].d()),
                h(b[2].d()),
                h(b[3].d()),
                h(b[0].m()),
                h(b[1].m()),
                h(b[2].m()),
                h(b[3].m()),
            ));
            (
                _mm256_permute2f128_ps::<0x00>(v, v),
                _mm256_permute2f128_ps::<0x81>(v, v),
            )
        }
    }
}

/// Σ u q of four rows' codes against one activation block: lane r (and r + 4)
/// holds row r's sum over the block's first (second) 16 values. No overflow:
/// after `maddubs` a lane is at most 2 · 31 · 127, after two `hadd`s 8 · 31 · 127
/// = 31496 < 2^15.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn udot4(u: &[__m256i; 4], q: __m256i) -> __m256i {
    let p0 = _mm256_maddubs_epi16(u[0], q);
    let p1 = _mm256_maddubs_epi16(u[1], q);
    let p2 = _mm256_maddubs_epi16(u[2], q);
    let p3 = _mm256_maddubs_epi16(u[3], q);
    let h = _mm256_hadd_epi16(_mm256_hadd_epi16(p0, p1), _mm256_hadd_epi16(p2, p3));
    _mm256_madd_epi16(h, _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_tile<B: Legacy, const T: usize>(
    w: &[&[u8]; 4],
    a: &[&[ActQ8]; T],
) -> [[f32; 4]; T] {
    let rows: [&[B]; 4] = std::array::from_fn(|r| bytemuck::cast_slice(w[r]));
    let nb = rows[0].len();
    let bytes = std::mem::size_of::<B>();
    let mut acc = [_mm256_setzero_ps(); T];
    // Decode: the offsets in their own accumulator, so two chains interleave.
    let mut off = _mm256_setzero_ps();
    for i in 0..nb {
        let b: [&B; 4] = std::array::from_fn(|r| rows[r].get_unchecked(i));
        if T == 1 {
            for row in w {
                _mm_prefetch::<_MM_HINT_T0>(
                    row.as_ptr().wrapping_add(i * bytes + PREFETCH_BYTES) as *const i8
                );
            }
        }
        let u = [b[0].codes(), b[1].codes(), b[2].codes(), b[3].codes()];
        let (d8, c8) = legacy_scales(b);
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let q = _mm256_loadu_si256(at.qs.as_ptr() as *const __m256i);
            let s = _mm256_cvtepi32_ps(udot4(&u, q));
            acc[t] = _mm256_fmadd_ps(s, _mm256_mul_ps(d8, _mm256_set1_ps(at.d)), acc[t]);
            if T == 1 {
                off = _mm256_fmadd_ps(c8, _mm256_set1_ps(at.s), off);
            } else {
                acc[t] = _mm256_fmadd_ps(c8, _mm256_set1_ps(at.s), acc[t]);
            }
        }
    }
    if T == 1 {
        acc[0] = _mm256_add_ps(acc[0], off);
    }
    std::array::from_fn(|t| fold(acc[t]))
}

/// Q8_0 weights against 16-bit activation codes: per row, two `madd`s give
/// eight i32 lanes; two levels of `hadd` fold the four rows into one register
/// (no overflow: a lane sums 32 products of at most 127 · 32767).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_tile<const T: usize>(w: &[&[u8]; 4], a: &[&[ActQ16]; T]) -> [[f32; 4]; T] {
    let rows: [&[BlockQ8_0]; 4] = std::array::from_fn(|r| bytemuck::cast_slice(w[r]));
    let nb = rows[0].len();
    let mut acc = [_mm256_setzero_ps(); T];
    for i in 0..nb {
        let b: [&BlockQ8_0; 4] = std::array::from_fn(|r| rows[r].get_unchecked(i));
        if T == 1 {
            for row in w {
                _mm_prefetch::<_MM_HINT_T0>(
                    row.as_ptr().wrapping_add(i * 34 + PREFETCH_BYTES) as *const i8
                );
            }
        }
        let wide: [[__m256i; 2]; 4] = std::array::from_fn(|r| {
            let p = b[r].qs.as_ptr();
            [
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i)),
            ]
        });
        let d8 = halves_twice([b[0].d, b[1].d, b[2].d, b[3].d]);
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let a0 = _mm256_loadu_si256(at.qs.as_ptr() as *const __m256i);
            let a1 = _mm256_loadu_si256(at.qs.as_ptr().add(16) as *const __m256i);
            let s: [__m256i; 4] = std::array::from_fn(|r| {
                _mm256_add_epi32(
                    _mm256_madd_epi16(wide[r][0], a0),
                    _mm256_madd_epi16(wide[r][1], a1),
                )
            });
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
            acc[t] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(h),
                _mm256_mul_ps(d8, _mm256_set1_ps(at.d)),
                acc[t],
            );
        }
    }
    std::array::from_fn(|t| fold(acc[t]))
}

macro_rules! legacy_tiles {
    ($($four:ident, $block:ty;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $four(w: &[&[u8]; 4], a: &[&[ActQ8]; 4]) -> [[f32; 4]; 4] {
            legacy_tile::<$block, 4>(w, a)
        }
    )*};
}

legacy_tiles! {
    q4_0_4x4, BlockQ4_0;
    q4_1_4x4, BlockQ4_1;
    q5_0_4x4, BlockQ5_0;
    q5_1_4x4, BlockQ5_1;
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_4x4(w: &[&[u8]; 4], a: &[&[ActQ16]; 4]) -> [[f32; 4]; 4] {
    q8_0_tile::<4>(w, a)
}

/// A K-quant block's eight 6-bit sub-block scales and minimums (Q4_K's packing)
/// as eight bytes each, byte j for sub-block j: the first four sit in the low six
/// bits of bytes 0..4 (scales) and 4..8 (minimums), the last four take their low
/// nibbles from bytes 8..12 and their top two bits from the first eight bytes.
#[inline]
pub(super) fn k_scales_mins(q: &[u8; 12]) -> (u64, u64) {
    let w = |k: usize| u32::from_le_bytes([q[k], q[k + 1], q[k + 2], q[k + 3]]);
    let (w0, w1, w2) = (w(0), w(4), w(8));
    let sc_lo = w0 & 0x3f3f_3f3f;
    let m_lo = w1 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        m_lo as u64 | (m_hi as u64) << 32,
    )
}

/// Four rows' eight bytes (one per sub-block) transposed: byte `4 j + r` of the
/// first result is row r's byte j for j < 4, of the second for j ≥ 4.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_4x8(s: [u64; 4]) -> (__m128i, __m128i) {
    let a = _mm_set_epi64x(s[1] as i64, s[0] as i64);
    let b = _mm_set_epi64x(s[3] as i64, s[2] as i64);
    let l = _mm_unpacklo_epi8(a, b);
    let h = _mm_unpackhi_epi8(a, b);
    (_mm_unpacklo_epi8(l, h), _mm_unpackhi_epi8(l, h))
}

/// Byte-shuffle pattern that spreads the four bytes `4 k .. 4 k + 4` of a
/// transposed register into i16 lanes `[r0, r0, r1, r1, r2, r2, r3, r3]`, in
/// both halves (zero high bytes: the values are unsigned).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn spread_pattern(k: usize) -> __m256i {
    let z = -128i8;
    let b = |r: usize| (4 * k + r) as i8;
    let half = [
        b(0),
        z,
        b(0),
        z,
        b(1),
        z,
        b(1),
        z,
        b(2),
        z,
        b(2),
        z,
        b(3),
        z,
        b(3),
        z,
    ];
    let v = _mm_loadu_si128(half.as_ptr() as *const __m128i);
    _mm256_set_m128i(v, v)
}

/// Σ_j m_j · (Σ of activation codes in sub-block j) for each of four rows, from
/// the rows' minimums as eight i16 and the activation's sixteen group sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn k_min_sums(mins: &[__m128i; 4], bsums: &[i16; 16]) -> __m128i {
    let lo = _mm_loadu_si128(bsums.as_ptr() as *const __m128i);
    let hi = _mm_loadu_si128(bsums.as_ptr().add(8) as *const __m128i);
    // Sums of 32 codes: at most 32 · 127, an i16.
    let b32 = _mm_hadd_epi16(lo, hi);
    let x: [__m128i; 4] = std::array::from_fn(|r| _mm_madd_epi16(mins[r], b32));
    _mm_hadd_epi32(_mm_hadd_epi32(x[0], x[1]), _mm_hadd_epi32(x[2], x[3]))
}

/// Q4_K, four rows: per 32-value sub-block the four rows' products fold into one
/// register as in [`udot4`] (at most 8 · 15 · 127 per i16 lane), and one `madd`
/// by the rows' integer sub-block scales, spread to match, gives i32 lanes that
/// add up over the super-block; the minimums meet the activation group sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_tile<const T: usize>(w: &[&[u8]; 4], a: &[&[ActQ8K]; T]) -> [[f32; 4]; T] {
    let rows: [&[BlockQ4K]; 4] = std::array::from_fn(|r| bytemuck::cast_slice(w[r]));
    let nb = rows[0].len();
    let low = _mm256_set1_epi8(15);
    let pats = [
        spread_pattern(0),
        spread_pattern(1),
        spread_pattern(2),
        spread_pattern(3),
    ];
    let mut acc = [_mm256_setzero_ps(); T];
    for i in 0..nb {
        let b: [&BlockQ4K; 4] = std::array::from_fn(|r| rows[r].get_unchecked(i));
        let sm: [(u64, u64); 4] = std::array::from_fn(|r| k_scales_mins(&b[r].scales));
        let (sc_lo, sc_hi) = transpose_4x8([sm[0].0, sm[1].0, sm[2].0, sm[3].0]);
        let sc = [
            _mm256_set_m128i(sc_lo, sc_lo),
            _mm256_set_m128i(sc_hi, sc_hi),
        ];
        let mins: [__m128i; 4] =
            std::array::from_fn(|r| _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sm[r].1 as i64)));
        let d8 = halves_twice([b[0].d, b[1].d, b[2].d, b[3].d]);
        let dmin8 = halves_twice([b[0].dmin, b[1].dmin, b[2].dmin, b[3].dmin]);
        let mut isum = [_mm256_setzero_si256(); T];
        for g in 0..4 {
            let q: [__m256i; 4] = std::array::from_fn(|r| {
                _mm256_loadu_si256(b[r].qs.as_ptr().add(g * 32) as *const __m256i)
            });
            for h in 0..2 {
                let j = 2 * g + h;
                let u: [__m256i; 4] = std::array::from_fn(|r| {
                    if h == 0 {
                        _mm256_and_si256(q[r], low)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q[r]), low)
                    }
                });
                let scp = _mm256_shuffle_epi8(sc[j / 4], pats[j % 4]);
                for t in 0..T {
                    let at = a[t].get_unchecked(i);
                    let av = _mm256_loadu_si256(at.qs.as_ptr().add(j * 32) as *const __m256i);
                    let p0 = _mm256_maddubs_epi16(u[0], av);
                    let p1 = _mm256_maddubs_epi16(u[1], av);
                    let p2 = _mm256_maddubs_epi16(u[2], av);
                    let p3 = _mm256_maddubs_epi16(u[3], av);
                    let hs =
                        _mm256_hadd_epi16(_mm256_hadd_epi16(p0, p1), _mm256_hadd_epi16(p2, p3));
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(hs, scp));
                }
            }
        }
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let ad = _mm256_set1_ps(at.d);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d8, ad), acc[t]);
            // Minimums in the low half only (the halves are added at the end).
            let m = _mm256_zextsi128_si256(k_min_sums(&mins, &at.bsums));
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(dmin8, ad), acc[t]);
        }
    }
    std::array::from_fn(|t| fold(acc[t]))
}

/// Byte-shuffle pattern for Q6_K's signed scales: i16 lanes `[r0 × 4, r1 × 4]`
/// (`pair = 0`) or `[r2 × 4, r3 × 4]` (`pair = 1`) of scale `4 k + half` in the
/// low half and `4 k + half + 1` in the upper, each byte in the high byte of its
/// lane (an arithmetic shift by 8 then sign-extends it).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q6_pattern(k: usize, pair: usize) -> __m256i {
    let z = -128i8;
    let lane = |k: usize| -> [i8; 16] {
        let b = |r: usize| (4 * k + r) as i8;
        let (r0, r1) = (2 * pair, 2 * pair + 1);
        [
            z,
            b(r0),
            z,
            b(r0),
            z,
            b(r0),
            z,
            b(r0),
            z,
            b(r1),
            z,
            b(r1),
            z,
            b(r1),
            z,
            b(r1),
        ]
    };
    let (lo, hi) = (lane(k), lane(k + 1));
    _mm256_set_m128i(
        _mm_loadu_si128(hi.as_ptr() as *const __m128i),
        _mm_loadu_si128(lo.as_ptr() as *const __m128i),
    )
}

/// Q6_K, four rows: codes u = 0..63 (offset 32 added back from the activation
/// group sums). After `maddubs` an i16 lane is at most 2 · 63 · 127, so only one
/// `hadd` fits before the scales: `madd` by `[r0 × 4, r1 × 4]`-spread scales per
/// pair of rows, then an i32 `hadd` folds the pairs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_tile<const T: usize>(w: &[&[u8]; 4], a: &[&[ActQ8K]; T]) -> [[f32; 4]; T] {
    let rows: [&[BlockQ6K]; 4] = std::array::from_fn(|r| bytemuck::cast_slice(w[r]));
    let nb = rows[0].len();
    let low = _mm256_set1_epi8(15);
    let three = _mm256_set1_epi8(3);
    // Patterns for scale pairs at offset 0 and 2 within a group of four.
    let pats = [
        [q6_pattern(0, 0), q6_pattern(0, 1)],
        [q6_pattern(2, 0), q6_pattern(2, 1)],
    ];
    let mut acc = [_mm256_setzero_ps(); T];
    for i in 0..nb {
        let b: [&BlockQ6K; 4] = std::array::from_fn(|r| rows[r].get_unchecked(i));
        // The rows' 16 scales transposed: register k holds scales 4k..4k+4, byte
        // 4 (s − 4k) + r for row r.
        let s: [__m128i; 4] =
            std::array::from_fn(|r| _mm_loadu_si128(b[r].scales.as_ptr() as *const __m128i));
        let (a01, a01h) = (_mm_unpacklo_epi8(s[0], s[1]), _mm_unpackhi_epi8(s[0], s[1]));
        let (a23, a23h) = (_mm_unpacklo_epi8(s[2], s[3]), _mm_unpackhi_epi8(s[2], s[3]));
        let tr = [
            _mm_unpacklo_epi16(a01, a23),
            _mm_unpackhi_epi16(a01, a23),
            _mm_unpacklo_epi16(a01h, a23h),
            _mm_unpackhi_epi16(a01h, a23h),
        ];
        // Row r's scales as sixteen i16, for the offset term.
        let wide: [__m256i; 4] = std::array::from_fn(|r| _mm256_cvtepi8_epi16(s[r]));
        let d8 = halves_twice([b[0].d, b[1].d, b[2].d, b[3].d]);
        let mut isum = [_mm256_setzero_si256(); T];
        for g in 0..2 {
            for sub in 0..4 {
                let u: [__m256i; 4] = std::array::from_fn(|r| {
                    let ql = _mm256_loadu_si256(
                        b[r].ql.as_ptr().add(g * 64 + (sub % 2) * 32) as *const __m256i
                    );
                    let qh = _mm256_loadu_si256(b[r].qh.as_ptr().add(g * 32) as *const __m256i);
                    let lo = if sub / 2 == 0 {
                        _mm256_and_si256(ql, low)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low)
                    };
                    let hi = _mm256_and_si256(
                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * sub as i32)),
                        three,
                    );
                    _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi))
                });
                let sidx = g * 8 + sub * 2;
                let t4 = tr[sidx / 4];
                let t256 = _mm256_set_m128i(t4, t4);
                let p = &pats[(sidx % 4) / 2];
                let sc01 = _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(t256, p[0]));
                let sc23 = _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(t256, p[1]));
                for t in 0..T {
                    let at = a[t].get_unchecked(i);
                    let av = _mm256_loadu_si256(
                        at.qs.as_ptr().add(g * 128 + sub * 32) as *const __m256i
                    );
                    let h01 = _mm256_hadd_epi16(
                        _mm256_maddubs_epi16(u[0], av),
                        _mm256_maddubs_epi16(u[1], av),
                    );
                    let h23 = _mm256_hadd_epi16(
                        _mm256_maddubs_epi16(u[2], av),
                        _mm256_maddubs_epi16(u[3], av),
                    );
                    let x = _mm256_hadd_epi32(
                        _mm256_madd_epi16(h01, sc01),
                        _mm256_madd_epi16(h23, sc23),
                    );
                    isum[t] = _mm256_add_epi32(isum[t], x);
                }
            }
        }
        for t in 0..T {
            let at = a[t].get_unchecked(i);
            let bs = _mm256_loadu_si256(at.bsums.as_ptr() as *const __m256i);
            let o: [__m256i; 4] = std::array::from_fn(|r| _mm256_madd_epi16(wide[r], bs));
            let off =
                _mm256_hadd_epi32(_mm256_hadd_epi32(o[0], o[1]), _mm256_hadd_epi32(o[2], o[3]));
            // Σ sc (u − 32) a = Σ sc u a − 32 Σ sc · bsum, in i32 (both well
            // inside: |Σ sc u a| ≤ 256 · 128 · 63 · 127).
            let total = _mm256_sub_epi32(isum[t], _mm256_slli_epi32::<5>(off));
            acc[t] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(total),
                _mm256_mul_ps(d8, _mm256_set1_ps(at.d)),
                acc[t],
            );
        }
    }
    std::array::from_fn(|t| fold(acc[t]))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_4x4(w: &[&[u8]; 4], a: &[&[ActQ8K]; 4]) -> [[f32; 4]; 4] {
    q4_k_tile::<4>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_4x4(w: &[&[u8]; 4], a: &[&[ActQ8K]; 4]) -> [[f32; 4]; 4] {
    q6_k_tile::<4>(w, a)
}
