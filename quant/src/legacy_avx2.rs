//! AVX2 block loops for the two lightest quantisers, Q8_0 and Q4_0, where a
//! whole-model run is bound by them and by I/O (llama-quantize's own are scalar).
//! Bit for bit the same as the portable code (`q8_0.rs`, `q4_0.rs`): the same
//! f32 operations in the same order (multiply, then add: never fused), the same
//! tie rule for the signed maximum; the tests below compare them block by block.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::block::f16_bytes;
use crate::legacy::inv_or_zero;
use crate::q4_0::BlockQ4_0;
use crate::q8_0::BlockQ8_0;

/// Whether the CPU runs this module's code.
#[inline]
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// The block's four vectors and their magnitudes' maximum. The running
/// maximum is always `max_ps`'s second operand (a > m ? a : m), so a NaN never
/// replaces it, as in [`crate::legacy::absmax`].
#[inline(always)]
unsafe fn load_absmax(x: &[f32; 32]) -> ([__m256; 4], f32) {
    let p = x.as_ptr();
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut m = _mm256_setzero_ps();
    for v in v {
        m = _mm256_max_ps(_mm256_and_ps(v, mask), m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m1 = _mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1));
    (v, _mm_cvtss_f32(m1))
}

/// Q8_0 blocks of `src` into `dst` (as many as both hold).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    // Codes pack as [q0 0-3, q1 0-3, q2 0-3, q3 0-3 | q0 4-7, ...] in 32-bit groups.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let (hi, lo) = (_mm256_set1_ps(127.49), _mm256_set1_ps(-127.49));
    let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    for (x, b) in src.chunks_exact(32).zip(dst.iter_mut()) {
        let Ok(x) = <&[f32; 32]>::try_from(x) else {
            continue;
        };
        let (v, amax) = load_absmax(x);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(inv_or_zero(d));
        // round half away from zero, as `round_code_127`.
        let q = v.map(|v| {
            let p = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, id), lo), hi);
            let t = _mm256_cvttps_epi32(p);
            let frac = _mm256_sub_ps(p, _mm256_cvtepi32_ps(t));
            let up = _mm256_castps_si256(_mm256_cmp_ps(frac, half, _CMP_GE_OQ));
            let down = _mm256_castps_si256(_mm256_cmp_ps(frac, neg_half, _CMP_LE_OQ));
            // A true mask is -1: subtracting it adds one.
            _mm256_add_epi32(_mm256_sub_epi32(t, up), down)
        });
        let w01 = _mm256_packs_epi32(q[0], q[1]);
        let w23 = _mm256_packs_epi32(q[2], q[3]);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
        b.d = f16_bytes(d);
        _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), bytes);
    }
}

/// Q4_0 blocks of `src` into `dst` (as many as both hold).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    let offset = _mm256_set1_ps(8.5);
    let (zero, fifteen) = (_mm256_setzero_si256(), _mm256_set1_epi32(15));
    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (x, b) in src.chunks_exact(32).zip(dst.iter_mut()) {
        let Ok(x) = <&[f32; 32]>::try_from(x) else {
            continue;
        };
        let (v, amax) = load_absmax(x);
        let amax_v = _mm256_set1_ps(amax);
        // The first value whose magnitude is the maximum (numpy's argmax).
        let mut hits = 0u32;
        for (i, v) in v.iter().enumerate() {
            let eq = _mm256_cmp_ps(_mm256_and_ps(*v, mask), amax_v, _CMP_EQ_OQ);
            hits |= (_mm256_movemask_ps(eq) as u32) << (8 * i);
        }
        let signed = if hits == 0 {
            0.0
        } else {
            x[hits.trailing_zeros() as usize]
        };
        let d = signed / -8.0;
        let id = _mm256_set1_ps(inv_or_zero(d));
        // trunc(x * id + 8.5) clamped to 0..=15, as `trunc_code`.
        let q = v.map(|v| {
            let t = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, id), offset));
            _mm256_min_epi32(_mm256_max_epi32(t, zero), fifteen)
        });
        // Byte j holds code j (low nibble) and code j + 16 (high).
        let lo = _mm256_or_si256(q[0], _mm256_slli_epi32(q[2], 4));
        let hi = _mm256_or_si256(q[1], _mm256_slli_epi32(q[3], 4));
        let w = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0b11_01_10_00);
        let bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0b11_01_10_00);
        b.d = f16_bytes(d);
        _mm_storeu_si128(b.qs.as_mut_ptr().cast(), _mm256_castsi256_si128(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockFormat;
    use crate::q4_0::Q4_0;
    use crate::q8_0::Q8_0;

    /// Blocks of every kind the tie and rounding rules care about.
    fn blocks() -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut out = Vec::new();
        for k in 0..4000 {
            let mut b: Vec<f32> = (0..32).map(|_| next() * 0.04).collect();
            match k % 8 {
                0 => b[(k / 8) % 32] *= 40.0,              // an outlier
                1 => b.iter_mut().for_each(|v| *v = 0.25), // all equal
                2 => b.iter_mut().for_each(|v| *v = 0.0),  // all zero
                3 => {
                    // +a and -a tie: the first one decides the sign
                    b[3] = -0.5;
                    b[20] = 0.5;
                }
                4 => {
                    b[7] = 0.5;
                    b[9] = -0.5;
                }
                5 => b.iter_mut().for_each(|v| *v = (*v * 64.0).round() / 64.0), // exact halves
                6 => b[31] = -3.0,
                _ => {}
            }
            out.extend(b);
        }
        out
    }

    /// `fast` writes the same bytes as `portable` for every test block.
    fn assert_same<B: bytemuck::Pod>(
        portable: fn(&[f32], &mut [B]),
        fast: unsafe fn(&[f32], &mut [B]),
    ) {
        let src = blocks();
        let mut want = vec![B::zeroed(); src.len() / 32];
        let mut got = want.clone();
        portable(&src, &mut want);
        // SAFETY: callers check `available()` first.
        unsafe { fast(&src, &mut got) };
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let x = &src[i * 32..i * 32 + 32];
            assert_eq!(
                bytemuck::bytes_of(w),
                bytemuck::bytes_of(g),
                "block {i}: {x:?}"
            );
        }
    }

    #[test]
    fn q8_0_matches_the_portable_code_bit_for_bit() {
        if available() {
            assert_same(Q8_0::quantize_row_portable, quantize_q8_0);
        }
    }

    #[test]
    fn q4_0_matches_the_portable_code_bit_for_bit() {
        if !available() {
            return;
        }
        assert_same(Q4_0::quantize_row_portable, quantize_q4_0);
        // And through the public entry point, which dispatches here.
        let src = blocks();
        let mut want = vec![
            BlockQ4_0 {
                d: [0; 2],
                qs: [0; 16]
            };
            src.len() / 32
        ];
        let mut via = want.clone();
        Q4_0::quantize_row_portable(&src, &mut want);
        Q4_0::quantize_row(&src, None, &mut via);
        assert!(via
            .iter()
            .zip(&want)
            .all(|(a, b)| (a.d, a.qs) == (b.d, b.qs)));
    }
}
