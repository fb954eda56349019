//! Super-block quantisation shared by the K-quants and IQ4_XS: fit every sub-block's
//! float scale, choose the super-block scale, then pick each sub-block's integer scale
//! among its neighbours by the error it actually gives once the codes are re-rounded.
//!
//! Trials only score; codes are written once, for the winning scales.

use crate::block::{f16_bytes, f16_value};
use crate::fit::{
    clamp_fast, fit_affine, fit_grid, fit_symmetric, lane_sums, round_fast, signed_absmax, sub,
    GridLookup,
};

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

#[inline(always)]
fn inverse(s: f32) -> f32 {
    if s != 0.0 {
        1.0 / s
    } else {
        0.0
    }
}

/// Weighted error of one sub-block re-rounded for a fixed scale and minimum, with the
/// same float arithmetic as the dequantiser.
#[inline(always)]
fn affine_error<const L: usize>(x: &[f32; L], w: &[f32; L], s: f32, m: f32, nmax: f32) -> f32 {
    let inv = inverse(s);
    let [e] = lane_sums::<L, 1>(|i| {
        let q = clamp_fast(round_fast((x[i] + m) * inv), 0.0, nmax);
        let r = s * q - m - x[i];
        [w[i] * r * r]
    });
    e
}

/// Sub-block scales and minimums chosen for one pair of super-block scales.
struct AffineTrial {
    d: [u8; 2],
    dmin: [u8; 2],
    ls: [u8; 16],
    lm: [u8; 16],
    err: f64,
}

/// Quantises 256 values in sub-blocks of `L` with codes `0..=nmax` and unsigned
/// integer scales and minimums `0..=smax`.
pub(crate) fn quantize_affine<const L: usize>(
    x: &[f32],
    w: &[f32],
    nmax: u8,
    smax: u8,
) -> AffineSuper {
    let nsub = QK_K / L;
    let mut fits = [(0f32, 0f32); 16];
    for (j, f) in fits.iter_mut().enumerate().take(nsub) {
        let a = fit_affine(sub::<L>(x, j), sub::<L>(w, j), nmax);
        *f = (a.scale, a.min);
    }
    let max_s = fits.iter().fold(0f32, |m, f| m.max(f.0));
    let max_m = fits.iter().fold(0f32, |m, f| m.max(f.1));
    // The super-block scales map the largest sub-block scale (minimum) to the top
    // integer; a slightly coarser grid can suit the other sub-blocks better, so a few
    // are tried (the scale first, then the minimum given the best scale). Finer grids
    // and more steps were measured to buy too little to pay for their passes.
    let trial = |ts: f32, tm: f32| {
        assign_affine::<L>(
            x,
            w,
            &fits[..nsub],
            max_s / (smax as f32 - ts),
            max_m / (smax as f32 - tm),
            nmax,
            smax,
        )
    };
    let mut best = trial(0.0, 0.0);
    let mut best_ts = 0.0;
    for ts in [0.5, 1.0] {
        let t = trial(ts, 0.0);
        if t.err < best.err {
            (best, best_ts) = (t, ts);
        }
    }
    for tm in [0.5, 1.0] {
        let t = trial(best_ts, tm);
        if t.err < best.err {
            best = t;
        }
    }
    let (dq, dminq) = (f16_value(best.d), f16_value(best.dmin));
    let mut q = [0u8; QK_K];
    for j in 0..nsub {
        let (s, m) = (dq * best.ls[j] as f32, dminq * best.lm[j] as f32);
        let inv = inverse(s);
        for (o, &v) in q[j * L..(j + 1) * L].iter_mut().zip(sub::<L>(x, j)) {
            *o = clamp_fast(round_fast((v + m) * inv), 0.0, nmax as f32) as u8;
        }
    }
    AffineSuper {
        d: best.d,
        dmin: best.dmin,
        ls: best.ls,
        lm: best.lm,
        q,
    }
}

/// Stores `d` and `dmin` as f16 and picks each sub-block's integer scale and minimum
/// among the neighbours of its float fit by the error after re-rounding.
#[allow(clippy::too_many_arguments)]
fn assign_affine<const L: usize>(
    x: &[f32],
    w: &[f32],
    fits: &[(f32, f32)],
    d: f32,
    dmin: f32,
    nmax: u8,
    smax: u8,
) -> AffineTrial {
    let mut out = AffineTrial {
        d: f16_bytes(d),
        dmin: f16_bytes(dmin),
        ls: [0; 16],
        lm: [0; 16],
        err: 0.0,
    };
    let (dq, dminq) = (f16_value(out.d), f16_value(out.dmin));
    for (j, fit) in fits.iter().enumerate() {
        let (xs, ws) = (sub::<L>(x, j), sub::<L>(w, j));
        let mut best = f32::INFINITY;
        let lss = unsigned_neighbours(fit.0, dq, smax);
        let lms = unsigned_neighbours(fit.1, dminq, smax);
        for (a, &ls) in lss.iter().enumerate() {
            for (b, &lm) in lms.iter().enumerate() {
                // Equal neighbours give equal errors: score each pair once.
                if (a == 1 && ls == lss[0]) || (b == 1 && lm == lms[0]) {
                    continue;
                }
                let (s, m) = (dq * ls as f32, dminq * lm as f32);
                let err = affine_error(xs, ws, s, m, nmax as f32);
                if err < best {
                    best = err;
                    out.ls[j] = ls;
                    out.lm[j] = lm;
                }
            }
        }
        out.err += best as f64;
    }
    out
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

/// Weighted error of one sub-block re-rounded at scale `s`.
#[inline(always)]
fn symmetric_error<const L: usize>(x: &[f32; L], w: &[f32; L], s: f32, lo: f32, hi: f32) -> f32 {
    let inv = inverse(s);
    let [e] = lane_sums::<L, 1>(|i| {
        let r = s * clamp_fast(round_fast(x[i] * inv), lo, hi) - x[i];
        [w[i] * r * r]
    });
    e
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
        *s = fit_symmetric(sub::<LEN>(x, j), sub::<LEN>(w, j), nneg, npos);
    }
    // The largest scale maps to the long negative end of the integer range.
    let d = f16_bytes(signed_absmax(&scales) / -(sneg as f32));
    let dq = f16_value(d);
    let mut out = SymmetricSuper {
        d,
        ls: [0; 16],
        q: [0; QK_K],
    };
    let (lo, hi) = (-nneg as f32, npos as f32);
    for (j, &scale) in scales.iter().enumerate() {
        let (xs, ws) = (sub::<LEN>(x, j), sub::<LEN>(w, j));
        let [a, b] = signed_neighbours(scale, dq, -sneg, spos);
        let ls = if a != b
            && symmetric_error(xs, ws, dq * b as f32, lo, hi)
                < symmetric_error(xs, ws, dq * a as f32, lo, hi)
        {
            b
        } else {
            a
        };
        out.ls[j] = ls as i8;
        let inv = inverse(dq * ls as f32);
        for (o, &v) in out.q[j * LEN..(j + 1) * LEN].iter_mut().zip(xs) {
            *o = clamp_fast(round_fast(v * inv), lo, hi) as i8;
        }
    }
    out
}

/// Weighted error of `L` values on the grid at scale `s`.
#[inline(always)]
fn grid_error<const L: usize>(x: &[f32; L], w: &[f32; L], s: f32, grid: &GridLookup) -> f32 {
    let inv = inverse(s);
    let [e] = lane_sums::<L, 1>(|i| {
        let r = s * grid.levels[grid.nearest(x[i] * inv)] - x[i];
        [w[i] * r * r]
    });
    e
}

/// Nearest grid codes for `x` at scale `s`.
pub(crate) fn grid_codes(x: &[f32], s: f32, grid: &GridLookup, q: &mut [u8]) {
    let inv = inverse(s);
    for (o, &v) in q.iter_mut().zip(x) {
        *o = grid.nearest(v * inv) as u8;
    }
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
        *s = fit_grid(sub::<LEN>(x, j), sub::<LEN>(w, j), grid);
    }
    let d = f16_bytes(signed_absmax(&scales) / -32.0);
    let dq = f16_value(d);
    let mut out = GridSuper {
        d,
        ls: [0; 8],
        q: [0; QK_K],
    };
    for (j, &scale) in scales.iter().enumerate() {
        let (xs, ws) = (sub::<LEN>(x, j), sub::<LEN>(w, j));
        let [a, b] = signed_neighbours(scale, dq, -32, 31);
        let ls = if a != b
            && grid_error(xs, ws, dq * b as f32, grid) < grid_error(xs, ws, dq * a as f32, grid)
        {
            b
        } else {
            a
        };
        out.ls[j] = ls as i8;
        grid_codes(xs, dq * ls as f32, grid, &mut out.q[j * LEN..(j + 1) * LEN]);
    }
    out
}
