//! Shared pieces of the 32-value "legacy" formats (Q4_0, Q4_1, Q5_0, Q5_1), whose
//! quantisers must match gguf-py's numpy code bit for bit (without an imatrix).

use crate::block::{f16_bytes, f16_value, BlockFormat};
use crate::fit::{block_weights, clamp_fast, fit_affine, fit_symmetric, round_fast};

/// The signed value of largest magnitude (the first one on ties, like numpy's argmax).
/// Two passes, the first in eight independent lanes so it vectorises (a single
/// running "best" is a serial chain of compares); inputs are finite (the
/// pipeline rejects NaN/Inf before quantising).
#[inline(always)]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let amax = absmax(x);
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// Largest magnitude of a block, in eight independent lanes so it vectorises.
#[inline(always)]
pub(crate) fn absmax(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            // A compare-select is one `maxps`; `f32::max`'s NaN rule costs
            // three instructions. Same result: a NaN never replaces a lane.
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    tail.iter()
        .fold(lanes.iter().fold(0f32, |a, &b| a.max(b)), |a, v| {
            a.max(v.abs())
        })
}

/// Quantises `src` block by block with `block` (one 32-value block to its
/// encoding), the loop compiled for AVX2 + FMA where the CPU has them: the
/// unweighted legacy quantisers are light arithmetic over every value, and
/// twice the vector width is most of their time on such machines.
#[inline]
pub(crate) fn map_blocks<B>(src: &[f32], dst: &mut [B], block: impl Fn(&[f32; 32]) -> B) {
    #[inline(always)]
    fn each<B>(src: &[f32], dst: &mut [B], block: &impl Fn(&[f32; 32]) -> B) {
        for (x, b) in src.chunks_exact(32).zip(dst.iter_mut()) {
            if let Ok(x) = <&[f32; 32]>::try_from(x) {
                *b = block(x);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn each_avx2<B>(src: &[f32], dst: &mut [B], block: &impl Fn(&[f32; 32]) -> B) {
            each(src, dst, block)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features `each_avx2` is compiled for.
            return unsafe { each_avx2(src, dst, &block) };
        }
    }
    each(src, dst, &block)
}

/// Minimum and maximum of a block, in eight lanes (see [`signed_absmax`]).
#[inline(always)]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let first = x.first().copied().unwrap_or(0.0);
    let (mut lo, mut hi) = ([first; 8], [first; 8]);
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    let lo = tail
        .iter()
        .fold(lo.iter().fold(first, |a, &b| a.min(b)), |a, &v| a.min(v));
    let hi = tail
        .iter()
        .fold(hi.iter().fold(first, |a, &b| a.max(b)), |a, &v| a.max(v));
    (lo, hi)
}

/// `trunc(v)` as an unsigned code clamped to `max` (numpy: `trunc(...).astype(uint8).clip(0, max)`).
/// The saturating cast truncates by itself (one `cvttss2si`); `f32::trunc` would
/// be a libm call on the x86-64 baseline, which has no SSE4.1 `roundss`.
#[inline(always)]
pub(crate) fn trunc_code(v: f32, max: u8) -> u8 {
    (v as u8).min(max)
}

/// C's `roundf` (half away from zero) as an integer, without the libm call
/// `f32::round` makes on the x86-64 baseline. Exact: for |v| < 2^23 the
/// fraction `v - trunc(v)` is computed without rounding; larger values are
/// already integers.
#[cfg(test)]
pub(crate) fn round_half_away(v: f32) -> i32 {
    if v.abs() < 8_388_608.0 {
        let t = v as i32;
        let frac = v - t as f32;
        t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
    } else {
        v as i32
    }
}

/// [`round_half_away`] for Q8_0's codes (|v| <= 127 plus rounding): clamped
/// first, so the cast needs no out-of-range branch and the block vectorises.
/// Equal to `round_half_away(v) as i8` wherever |v| < 127.5.
#[inline(always)]
pub(crate) fn round_code_127(v: f32) -> i8 {
    let v = v.clamp(-127.49, 127.49);
    let t = v as i32;
    let frac = v - t as f32;
    (t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32) as i8
}

/// Reciprocal that maps a zero scale to zero.
#[inline(always)]
pub(crate) fn inv_or_zero(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Packs 32 four-bit codes: byte j holds code j (low nibble) and code j + 16 (high).
#[inline(always)]
pub(crate) fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4))
}

/// Inverse of [`pack_nibbles`].
pub(crate) fn unpack_nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|i| {
        if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        }
    })
}

/// Bit 4 of each of 32 codes, bit j of a little-endian u32.
#[inline(always)]
pub(crate) fn pack_fifth_bits(q: &[u8; 32]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &c)| acc | (((c >> 4) as u32 & 1) << j));
    bits.to_le_bytes()
}

/// Inverse of [`pack_fifth_bits`] merged with the low nibbles.
pub(crate) fn unpack_five_bit(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let bits = u32::from_le_bytes(qh);
    let lo = unpack_nibbles(qs);
    std::array::from_fn(|j| lo[j] | ((((bits >> j) & 1) as u8) << 4))
}

/// With an importance vector (an imatrix's mean squared activations), each
/// block of a 32-value format is refitted to minimise the importance-weighted
/// squared error, `Σ w (x - x̂)²`, by the same scale searches the K-quants use;
/// the block keeps whichever of the refit and the reference rounding (already
/// in `dst`) has the smaller weighted error, so an imatrix never makes a block
/// worse on that measure. Without importance `dst` stays the reference bytes.
pub(crate) fn refine_weighted<F: BlockFormat>(
    src: &[f32],
    importance: Option<&[f32]>,
    dst: &mut [F::Block],
    fit: impl Fn(&[f32; 32], &[f32; 32]) -> F::Block,
) {
    let Some(imp) = importance.filter(|w| w.len() == src.len()) else {
        return;
    };
    let mut wbuf = [0f32; 256];
    for ((x, iw), b) in src.chunks_exact(32).zip(imp.chunks_exact(32)).zip(dst) {
        let w: &[f32; 32] = block_weights(Some(iw), 32, &mut wbuf)
            .try_into()
            .expect("32 weights");
        let x: &[f32; 32] = x.try_into().expect("32 values");
        let refit = fit(x, w);
        if weighted_error::<F>(x, w, &refit) < weighted_error::<F>(x, w, b) {
            *b = refit;
        }
    }
}

/// `Σ w (x - x̂)²` of one block.
pub(crate) fn weighted_error<F: BlockFormat>(x: &[f32; 32], w: &[f32; 32], b: &F::Block) -> f64 {
    let mut y = [0f32; 32];
    F::dequantize_row(std::slice::from_ref(b), &mut y);
    x.iter()
        .zip(&y)
        .zip(w)
        .map(|((&a, &b), &w)| w as f64 * ((a - b) as f64).powi(2))
        .sum()
}

/// Symmetric codes `0..=nneg + npos` (value `d · (q - nneg)`) for the weighted
/// fit: the scale from the search, rounded to f16, then every value rounded to
/// the nearest code of that stored scale.
pub(crate) fn weighted_signed(
    x: &[f32; 32],
    w: &[f32; 32],
    nneg: i32,
    npos: i32,
) -> ([u8; 2], [u8; 32]) {
    let d = f16_bytes(fit_symmetric::<32>(x, w, nneg, npos));
    let id = inv_or_zero(f16_value(d));
    let (lo, hi) = (-nneg as f32, npos as f32);
    let q =
        std::array::from_fn(|i| (clamp_fast(round_fast(x[i] * id), lo, hi) + nneg as f32) as u8);
    (d, q)
}

/// Affine codes `0..=nmax` (value `d · q + m`) for the weighted fit.
pub(crate) fn weighted_affine(
    x: &[f32; 32],
    w: &[f32; 32],
    nmax: u8,
) -> ([u8; 2], [u8; 2], [u8; 32]) {
    let a = fit_affine::<32>(x, w, nmax);
    let (d, m) = (f16_bytes(a.scale), f16_bytes(-a.min));
    let (id, mq) = (inv_or_zero(f16_value(d)), f16_value(m));
    let q =
        std::array::from_fn(|i| clamp_fast(round_fast((x[i] - mq) * id), 0.0, nmax as f32) as u8);
    (d, m, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_away_is_roundf() {
        let mut vals = vec![
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.49999997,
            -0.49999997,
            126.5,
            -127.5,
            8_388_607.5,
            8_388_608.0,
            -16_777_217.0,
            1e30,
            f32::NAN,
        ];
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Values around every half-integer up to ±300, and raw bit patterns.
            vals.push((x % 1_200_000) as f32 / 2000.0 - 300.0);
            vals.push(f32::from_bits(x));
        }
        for v in vals {
            let want = v.round();
            let want = if want.is_nan() { 0 } else { want as i32 };
            assert_eq!(round_half_away(v), want, "{v:e}");
        }
    }

    /// The two-pass versions pick what a single scan picks, ties and signs included.
    #[test]
    fn absmax_and_min_max_match_a_scan() {
        let mut x = 0x9e37_79b9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for len in [1usize, 7, 8, 31, 32, 33, 256] {
            for _ in 0..500 {
                // Few distinct magnitudes, so ties between +v and -v are common.
                let v: Vec<f32> = (0..len)
                    .map(|_| (next() % 9) as f32 * if next() % 2 == 0 { 1.0 } else { -1.0 })
                    .collect();
                let mut best = v[0];
                for &e in &v {
                    if e.abs() > best.abs() {
                        best = e;
                    }
                }
                assert_eq!(signed_absmax(&v).to_bits(), best.to_bits(), "{v:?}");
                let lo = v.iter().copied().fold(v[0], f32::min);
                let hi = v.iter().copied().fold(v[0], f32::max);
                assert_eq!(min_max(&v), (lo, hi), "{v:?}");
            }
        }
    }

    #[test]
    fn round_code_127_is_roundf_in_range() {
        for i in 0..=1_000_000 {
            let v = -127.49 + i as f32 * (2.0 * 127.49 / 1_000_000.0);
            assert_eq!(round_code_127(v) as i32, round_half_away(v), "{v}");
        }
        for v in [
            126.5f32, -126.5, 0.5, -0.5, 127.0, -127.0, 127.000015, 0.49999997,
        ] {
            assert_eq!(
                round_code_127(v) as i32,
                round_half_away(v).clamp(-127, 127),
                "{v}"
            );
        }
    }

    #[test]
    fn trunc_code_is_numpy_trunc_then_clip() {
        for i in 0..4000 {
            let v = i as f32 * 0.0071 - 1.0;
            assert_eq!(trunc_code(v, 15), (v.trunc().max(0.0) as u8).min(15), "{v}");
        }
    }

    /// An imatrix lowers every 32-value format's importance-weighted error
    /// (never raises it, block by block), most where the importance is uneven.
    #[test]
    fn importance_lowers_the_weighted_error_of_every_legacy_format() {
        use crate::q4_0::Q4_0;
        use crate::q4_1::Q4_1;
        use crate::q5_0::Q5_0;
        use crate::q5_1::Q5_1;

        fn check<F: BlockFormat>(x: &[f32], imp: &[f32]) -> f64 {
            let blocks = x.len() / 32;
            let mut plain = vec![<F::Block as bytemuck::Zeroable>::zeroed(); blocks];
            let mut weighted = plain.clone();
            F::quantize_row(x, None, &mut plain);
            F::quantize_row(x, Some(imp), &mut weighted);
            let (mut e_plain, mut e_weighted) = (0f64, 0f64);
            let mut wbuf = [0f32; 256];
            for (i, (p, q)) in plain.iter().zip(&weighted).enumerate() {
                let xb: &[f32; 32] = x[i * 32..][..32].try_into().unwrap();
                let w: &[f32; 32] = block_weights(Some(&imp[i * 32..][..32]), 32, &mut wbuf)
                    .try_into()
                    .unwrap();
                let (a, b) = (weighted_error::<F>(xb, w, p), weighted_error::<F>(xb, w, q));
                assert!(b <= a, "{:?} block {i}: {b} > {a}", F::TYPE);
                e_plain += a;
                e_weighted += b;
            }
            e_weighted / e_plain
        }

        let mut state = 0x1234_5678_9ABC_DEF1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let n = 32 * 64;
        let x: Vec<f32> = (0..n).map(|_| (next() - 0.5) * 0.2).collect();
        // Heavy-tailed importance: a few columns carry most of the activation energy.
        let imp: Vec<f32> = (0..n)
            .map(|_| {
                let u = next();
                if u < 0.1 {
                    50.0 * next()
                } else {
                    0.01 + next()
                }
            })
            .collect();
        for (ty, ratio) in [
            ("Q4_0", check::<Q4_0>(&x, &imp)),
            ("Q4_1", check::<Q4_1>(&x, &imp)),
            ("Q5_0", check::<Q5_0>(&x, &imp)),
            ("Q5_1", check::<Q5_1>(&x, &imp)),
        ] {
            assert!(
                ratio < 0.8,
                "{ty}: weighted error ratio {ratio:.3}, expected a clear gain"
            );
        }
    }
}
