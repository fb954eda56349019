//! AVX2 kernels over four weight rows at once, against one token (decode) or
//! four (prefill), reading each row's blocks in place from the file.
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

use super::act::{ActQ16, ActQ8};
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
    fn m(&self) -> [u8; 2] {
        [0, 0]
    }
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

impl Legacy for BlockQ4_0 {
    const K: Option<f32> = Some(-8.0);
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn codes(&self) -> __m256i {
        nibbles(&self.qs)
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
}

impl Legacy for BlockQ4_1 {
    const K: Option<f32> = None;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn codes(&self) -> __m256i {
        nibbles(&self.qs)
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn m(&self) -> [u8; 2] {
        self.m
    }
}

impl Legacy for BlockQ5_0 {
    const K: Option<f32> = Some(-16.0);
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn codes(&self) -> __m256i {
        _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh))
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
}

impl Legacy for BlockQ5_1 {
    const K: Option<f32> = None;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn codes(&self) -> __m256i {
        _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh))
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn m(&self) -> [u8; 2] {
        self.m
    }
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
    ($($one:ident, $four:ident, $block:ty;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $one(w: &[&[u8]; 4], a: &[&[ActQ8]; 1]) -> [[f32; 4]; 1] {
            legacy_tile::<$block, 1>(w, a)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $four(w: &[&[u8]; 4], a: &[&[ActQ8]; 4]) -> [[f32; 4]; 4] {
            legacy_tile::<$block, 4>(w, a)
        }
    )*};
}

legacy_tiles! {
    q4_0_4x1, q4_0_4x4, BlockQ4_0;
    q4_1_4x1, q4_1_4x4, BlockQ4_1;
    q5_0_4x1, q5_0_4x4, BlockQ5_0;
    q5_1_4x1, q5_1_4x4, BlockQ5_1;
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_4x1(w: &[&[u8]; 4], a: &[&[ActQ16]; 1]) -> [[f32; 4]; 1] {
    q8_0_tile::<1>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_4x4(w: &[&[u8]; 4], a: &[&[ActQ16]; 4]) -> [[f32; 4]; 4] {
    q8_0_tile::<4>(w, a)
}
