//! Super-block quantisation shared by the K-quants and IQ4_XS: fit every sub-block's
//! float scale, choose the super-block scale, then pick each sub-block's integer scale
//! among its neighbours by the error it actually gives once the codes are re-rounded.

use crate::block::{f16_bytes, f16_value};
use crate::fit::{fit_affine, fit_grid, fit_symmetric, round_fast, signed_absmax, GridLookup};

pub(crate) const QK_K: usize = 256;

/// Result of an asymmetric super-block: `x ≈ d*ls[j]*q - dmin*lm[j]`.
#[derive(Clone, Copy)]
pub(crate) struct AffineSuper {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub ls: [u8; 16],
    pub lm: [u8; 16],
    pub q: [u8; QK_K],
}

/// Integer candidates next to `v / unit`, within `0..=max` (just 0 when `unit` is 0).
fn unsigned_neighbours(v: f32, unit: f32, max: u8) -> [u8; 2] {
    if unit <= 0.0 || v <= 0.0 {
        return [0, 0];
    }
    let r = v / unit;
    // r > 0, so truncation is floor (and saturates for huge ratios).
    let lo = (r as u32).min(max as u32);
    let hi = (lo + u32::from((lo as f32) < r)).min(max as u32);
    [lo as u8, hi as u8]
}

/// Re-rounds one sub-block for a fixed scale and minimum; returns its weighted error.
fn round_affine_sub(x: &[f32], w: &[f32], s: f32, m: f32, nmax: u8, q: &mut [u8]) -> f64 {
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    round_and_score(x, w, q, |x| {
        let c = round_fast((x + m) * inv).clamp(0.0, nmax as f32);
        (c as u8, s * c - m)
    })
}

/// Writes each value's code and sums the weighted squared error of its reconstruction,
/// in eight lanes so the loop vectorises.
#[inline(always)]
fn round_and_score<T: Copy>(
    x: &[f32],
    w: &[f32],
    q: &mut [T],
    code: impl Fn(f32) -> (T, f32),
) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let mut rest = 0f64;
    let (mut xc, mut wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let mut qc = q.chunks_exact_mut(LANES);
    for ((xs, ws), qs) in (&mut xc).zip(&mut wc).zip(&mut qc) {
        for l in 0..LANES {
            let (c, y) = code(xs[l]);
            qs[l] = c;
            acc[l] += ws[l] * (y - xs[l]) * (y - xs[l]);
        }
    }
    let tail = xc.remainder().iter().zip(wc.remainder());
    for ((&x, &w), q) in tail.zip(qc.into_remainder()) {
        let (c, y) = code(x);
        *q = c;
        rest += (w * (y - x) * (y - x)) as f64;
    }
    rest + acc.iter().map(|&v| v as f64).sum::<f64>()
}

/// Quantises 256 values in `nsub` sub-blocks with codes `0..=nmax` and unsigned
/// integer scales and minimums `0..=smax`.
pub(crate) fn quantize_affine(
    x: &[f32],
    w: &[f32],
    nsub: usize,
    nmax: u8,
    smax: u8,
) -> AffineSuper {
    let len = QK_K / nsub;
    let mut fits = [(0f32, 0f32); 16];
    for (j, f) in fits.iter_mut().enumerate().take(nsub) {
        let a = fit_affine(&x[j * len..(j + 1) * len], &w[j * len..(j + 1) * len], nmax);
        *f = (a.scale, a.min);
    }
    let max_s = fits.iter().fold(0f32, |m, f| m.max(f.0));
    let max_m = fits.iter().fold(0f32, |m, f| m.max(f.1));
    let mut out = AffineSuper {
        d: [0; 2],
        dmin: [0; 2],
        ls: [0; 16],
        lm: [0; 16],
        q: [0; QK_K],
    };
    let mut trial = AffineSuper { ..out };
    // The super-block scales map the largest sub-block scale (minimum) to the top
    // integer; a slightly finer or coarser grid can suit the other sub-blocks better,
    // so a few are tried (the scale first, then the minimum given the best scale).
    let mut best = f64::INFINITY;
    let mut best_ts = 0.0;
    for (ts, tm) in [(0.0, 0.0), (-0.5, 0.0), (0.5, 0.0), (1.0, 0.0)] {
        let err = assign_affine(
            x,
            w,
            &fits[..nsub],
            max_s / (smax as f32 - ts),
            max_m / (smax as f32 - tm),
            nmax,
            smax,
            &mut trial,
        );
        if err < best {
            (best, best_ts) = (err, ts);
            std::mem::swap(&mut out, &mut trial);
        }
    }
    for tm in [-0.5, 0.5, 1.0] {
        let err = assign_affine(
            x,
            w,
            &fits[..nsub],
            max_s / (smax as f32 - best_ts),
            max_m / (smax as f32 - tm),
            nmax,
            smax,
            &mut trial,
        );
        if err < best {
            best = err;
            std::mem::swap(&mut out, &mut trial);
        }
    }
    out
}

/// Stores `d` and `dmin` as f16 and picks each sub-block's integer scale and minimum
/// among the neighbours of its float fit by the error after re-rounding; returns the
/// total weighted error.
#[allow(clippy::too_many_arguments)]
fn assign_affine(
    x: &[f32],
    w: &[f32],
    fits: &[(f32, f32)],
    d: f32,
    dmin: f32,
    nmax: u8,
    smax: u8,
    out: &mut AffineSuper,
) -> f64 {
    let len = QK_K / fits.len();
    out.d = f16_bytes(d);
    out.dmin = f16_bytes(dmin);
    let (dq, dminq) = (f16_value(out.d), f16_value(out.dmin));
    let mut trial = [0u8; 32];
    let mut total = 0f64;
    for (j, fit) in fits.iter().enumerate() {
        let (xs, ws) = (&x[j * len..(j + 1) * len], &w[j * len..(j + 1) * len]);
        let mut best = f64::INFINITY;
        for ls in unsigned_neighbours(fit.0, dq, smax) {
            for lm in unsigned_neighbours(fit.1, dminq, smax) {
                // Same float arithmetic as the dequantiser.
                let (s, m) = (dq * ls as f32, dminq * lm as f32);
                let err = round_affine_sub(xs, ws, s, m, nmax, &mut trial[..len]);
                if err < best {
                    best = err;
                    out.ls[j] = ls;
                    out.lm[j] = lm;
                    out.q[j * len..(j + 1) * len].copy_from_slice(&trial[..len]);
                }
            }
        }
        total += best;
    }
    total
}

/// Result of a symmetric super-block: `x ≈ d*ls[j]*q`, `q` in `-nneg..=npos`.
pub(crate) struct SymmetricSuper {
    pub d: [u8; 2],
    pub ls: [i8; 16],
    pub q: [i8; QK_K],
}

fn signed_neighbours(v: f32, unit: f32, lo: i32, hi: i32) -> [i32; 2] {
    if unit == 0.0 {
        return [0, 0];
    }
    let r = v / unit;
    [
        (r.floor() as i32).clamp(lo, hi),
        (r.ceil() as i32).clamp(lo, hi),
    ]
}

fn round_symmetric_sub(x: &[f32], w: &[f32], s: f32, nneg: i32, npos: i32, q: &mut [i8]) -> f64 {
    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
    let (lo, hi) = (-nneg as f32, npos as f32);
    round_and_score(x, w, q, |x| {
        let c = round_fast(x * inv).clamp(lo, hi);
        (c as i8, s * c)
    })
}

/// Quantises 256 values in 16 sub-blocks of 16 with codes `-nneg..=npos` and signed
/// integer scales in `-sneg..=spos` (Q3_K: 6-bit, Q6_K: 8-bit).
pub(crate) fn quantize_symmetric(
    x: &[f32],
    w: &[f32],
    nneg: i32,
    npos: i32,
    sneg: i32,
    spos: i32,
) -> SymmetricSuper {
    const LEN: usize = 16;
    let mut scales = [0f32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        *s = fit_symmetric(
            &x[j * LEN..(j + 1) * LEN],
            &w[j * LEN..(j + 1) * LEN],
            nneg,
            npos,
        );
    }
    // The largest scale maps to the long negative end of the integer range.
    let d = f16_bytes(signed_absmax(&scales) / -(sneg as f32));
    let dq = f16_value(d);
    let mut out = SymmetricSuper {
        d,
        ls: [0; 16],
        q: [0; QK_K],
    };
    let mut trial = [0i8; LEN];
    for j in 0..16 {
        let (xs, ws) = (&x[j * LEN..(j + 1) * LEN], &w[j * LEN..(j + 1) * LEN]);
        let mut best = f64::INFINITY;
        for ls in signed_neighbours(scales[j], dq, -sneg, spos) {
            let err = round_symmetric_sub(xs, ws, dq * ls as f32, nneg, npos, &mut trial);
            if err < best {
                best = err;
                out.ls[j] = ls as i8;
                out.q[j * LEN..(j + 1) * LEN].copy_from_slice(&trial);
            }
        }
    }
    out
}

/// Nearest grid codes for `x` at scale `s`; returns the weighted error.
pub(crate) fn round_grid(x: &[f32], w: &[f32], s: f32, grid: &GridLookup, q: &mut [u8]) -> f64 {
    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
    round_and_score(x, w, q, |x| {
        let c = grid.nearest(x * inv);
        (c as u8, s * grid.levels[c])
    })
}

/// Result of a grid super-block (IQ4_XS): `x ≈ d*ls[j]*grid[q]`, `ls` in `-32..=31`.
pub(crate) struct GridSuper {
    pub d: [u8; 2],
    pub ls: [i8; 8],
    pub q: [u8; QK_K],
}

pub(crate) fn quantize_grid_super(x: &[f32], w: &[f32], grid: &GridLookup) -> GridSuper {
    const LEN: usize = 32;
    let mut scales = [0f32; 8];
    for (j, s) in scales.iter_mut().enumerate() {
        *s = fit_grid(&x[j * LEN..(j + 1) * LEN], &w[j * LEN..(j + 1) * LEN], grid);
    }
    let d = f16_bytes(signed_absmax(&scales) / -32.0);
    let dq = f16_value(d);
    let mut out = GridSuper {
        d,
        ls: [0; 8],
        q: [0; QK_K],
    };
    let mut trial = [0u8; LEN];
    for j in 0..8 {
        let (xs, ws) = (&x[j * LEN..(j + 1) * LEN], &w[j * LEN..(j + 1) * LEN]);
        let mut best = f64::INFINITY;
        for ls in signed_neighbours(scales[j], dq, -32, 31) {
            let err = round_grid(xs, ws, dq * ls as f32, grid, &mut trial);
            if err < best {
                best = err;
                out.ls[j] = ls as i8;
                out.q[j * LEN..(j + 1) * LEN].copy_from_slice(&trial);
            }
        }
    }
    out
}
