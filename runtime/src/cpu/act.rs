//! Activations quantised to 8 bits so the weight products can run in integers.
//!
//! These are our own in-memory layouts (f32 scales, precomputed sums), not ggml's
//! file blocks: they never leave the process, and f32 scales save a conversion in
//! the inner loop.

/// 32 activations for the 32-value formats: `x ≈ d * qs`, `s = d * Σ qs` (what the
/// offset of Q4_1 / Q5_1 weights multiplies).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct ActQ8 {
    pub qs: [i8; 32],
    pub d: f32,
    pub s: f32,
}

/// 256 activations for the K-quants: `x ≈ d * qs`, with the sum of each group of 16
/// codes (what the sub-block minimums multiply).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct ActQ8K {
    pub qs: [i8; 256],
    pub d: f32,
    pub bsums: [i16; 16],
}

/// Symmetric 8-bit codes of `x` into `qs`; returns the scale.
#[inline]
fn quantize_block(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    d
}

/// Quantises `x` (a multiple of 32 values) into `out` (cleared first).
pub fn quantize_q8(x: &[f32], out: &mut Vec<ActQ8>) {
    out.clear();
    out.extend(x.chunks_exact(32).map(|c| {
        let mut b = ActQ8 {
            qs: [0; 32],
            d: 0.0,
            s: 0.0,
        };
        b.d = quantize_block(c, &mut b.qs);
        b.s = b.d * b.qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
        b
    }));
}

/// Quantises `x` (a multiple of 256 values) into `out` (cleared first).
pub fn quantize_q8k(x: &[f32], out: &mut Vec<ActQ8K>) {
    out.clear();
    out.extend(x.chunks_exact(256).map(|c| {
        let mut b = ActQ8K {
            qs: [0; 256],
            d: 0.0,
            bsums: [0; 16],
        };
        b.d = quantize_block(c, &mut b.qs);
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b
    }));
}

/// 32 activations as 16-bit codes, for Q8_0 weights: 8-bit weights against
/// 8-bit activations would add the activations' rounding (the larger part of
/// Q8_0's error) to the weights'; 16-bit codes make it negligible at the same
/// instruction count (`madd_epi16` multiplies i16 pairs directly). The 4- and
/// 5-bit formats take them too under 16-bit activations (`precision`), and
/// read `s = d * Σ qs` as [`ActQ8`]'s (the GPU forms it the same way).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct ActQ16 {
    pub qs: [i16; 32],
    pub d: f32,
    pub s: f32,
}

/// `d * Σ qs` as both backends form it (the sum in integers, one rounding).
#[inline]
pub fn code_sum_scaled(d: f32, qs: &[i16; 32]) -> f32 {
    d * qs.iter().map(|&q| q as i32).sum::<i32>() as f32
}

/// Quantises `x` (a multiple of 32 values) into `out` (cleared first).
pub fn quantize_q16(x: &[f32], out: &mut Vec<ActQ16>) {
    out.clear();
    out.extend(x.chunks_exact(32).map(|c| {
        let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 32767.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let qs = std::array::from_fn(|i| (c[i] * id).round() as i16);
        ActQ16 {
            qs,
            d,
            s: code_sum_scaled(d, &qs),
        }
    }));
}
