//! Prefill for float weights (F32, BF16, F16) on AVX2: three weight rows against
//! four tokens at once. Each step of eight columns loads (and widens) three
//! weight vectors and four activation vectors for twelve FMAs into twelve
//! accumulators, where one row against one token needs two loads per FMA; the
//! widening of bf16/f16 weights is shared by the four tokens.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Weight rows per tile.
pub const ROWS: usize = 3;
/// Tokens per tile.
pub const TOKENS: usize = 4;

/// `ROWS` weight rows (raw bytes) against `TOKENS` activation rows: the twelve dot
/// products, `out[r][t]`.
pub type FloatTile = unsafe fn([&[u8]; ROWS], [&[f32]; TOKENS]) -> [[f32; TOKENS]; ROWS];

/// Eight weights widened to f32.
trait Lanes {
    /// Bytes per weight.
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    fn one(b: &[u8]) -> f32;
}

struct F32;
struct Bf16;
struct F16;

impl Lanes for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    fn one(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Lanes for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // bf16 is the top half of an f32.
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    fn one(b: &[u8]) -> f32 {
        f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
    }
}

impl Lanes for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    fn one(b: &[u8]) -> f32 {
        quern_quant::block::f16_value([b[0], b[1]])
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

// Indexing by row and token keeps the twelve accumulators in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<L: Lanes>(w: [&[u8]; ROWS], x: [&[f32]; TOKENS]) -> [[f32; TOKENS]; ROWS] {
    let n = x
        .iter()
        .map(|r| r.len())
        .chain(w.iter().map(|r| r.len() / L::BYTES))
        .min()
        .unwrap_or(0);
    let mut acc = [[_mm256_setzero_ps(); TOKENS]; ROWS];
    let mut i = 0;
    while i + 8 <= n {
        let wv = [
            L::load8(w[0].as_ptr().add(i * L::BYTES)),
            L::load8(w[1].as_ptr().add(i * L::BYTES)),
            L::load8(w[2].as_ptr().add(i * L::BYTES)),
        ];
        for t in 0..TOKENS {
            let xv = _mm256_loadu_ps(x[t].as_ptr().add(i));
            for r in 0..ROWS {
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        i += 8;
    }
    let mut out = [[0f32; TOKENS]; ROWS];
    for r in 0..ROWS {
        for t in 0..TOKENS {
            let mut s = hsum(acc[r][t]);
            for j in i..n {
                s += L::one(&w[r][j * L::BYTES..]) * x[t][j];
            }
            out[r][t] = s;
        }
    }
    out
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_tile(w: [&[u8]; ROWS], x: [&[f32]; TOKENS]) -> [[f32; TOKENS]; ROWS] {
    tile::<F32>(w, x)
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bf16_tile(w: [&[u8]; ROWS], x: [&[f32]; TOKENS]) -> [[f32; TOKENS]; ROWS] {
    tile::<Bf16>(w, x)
}

/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_tile(w: [&[u8]; ROWS], x: [&[f32]; TOKENS]) -> [[f32; TOKENS]; ROWS] {
    tile::<F16>(w, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tile` against f32 sums of the same (encoded, then decoded) weights.
    #[allow(clippy::needless_range_loop)]
    fn check<L: Lanes>(tile: FloatTile, enc: impl Fn(f32) -> Vec<u8>) {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        for n in [8, 29, 64, 77] {
            let val = |s: usize, i: usize| ((s * 131 + i * 17) % 23) as f32 / 7.0 - 1.5;
            let rows: Vec<Vec<u8>> = (0..ROWS)
                .map(|r| (0..n).flat_map(|i| enc(val(r, i))).collect())
                .collect();
            let xs: Vec<Vec<f32>> = (0..TOKENS)
                .map(|t| (0..n).map(|i| val(t + 9, i)).collect())
                .collect();
            assert_eq!(rows[0].len(), n * L::BYTES);
            let w = |r: usize, i: usize| L::one(&rows[r][i * L::BYTES..]);
            // SAFETY: the features were checked above.
            let got = unsafe {
                tile(
                    [&rows[0], &rows[1], &rows[2]],
                    [&xs[0], &xs[1], &xs[2], &xs[3]],
                )
            };
            for r in 0..ROWS {
                for t in 0..TOKENS {
                    let want: f32 = (0..n).map(|i| w(r, i) * xs[t][i]).sum();
                    assert!(
                        (got[r][t] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "n {n} row {r} token {t}: {} vs {want}",
                        got[r][t]
                    );
                }
            }
        }
    }

    #[test]
    fn tiles_are_the_dot_products() {
        check::<F32>(f32_tile, |v| v.to_le_bytes().to_vec());
        check::<Bf16>(bf16_tile, |v| {
            half::bf16::from_f32(v).to_le_bytes().to_vec()
        });
        check::<F16>(f16_tile, |v| half::f16::from_f32(v).to_le_bytes().to_vec());
    }
}
