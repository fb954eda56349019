//! Weighted least-squares searches for one sub-block's scale (and minimum).
//!
//! Each search rounds the values with a range of candidate inverse scales, fits the
//! optimal float scale (and offset) to the resulting integer codes by weighted least
//! squares, keeps the candidate with the smallest weighted error, then alternates
//! re-rounding and re-fitting (Lloyd steps) while the error falls. Weights are the
//! caller's importance, or ones. Per-candidate sums are f32 (vectorisable); the
//! closed-form errors are formed in f64.

/// Candidates span the nominal code range ± `SPREAD` codes in `2 * HALF_STEPS` steps.
const SPREAD: f32 = 1.2;
const HALF_STEPS: usize = 12;
const LLOYD_ITERS: usize = 4;

/// Round to nearest (ties to even) without a libm call, so loops vectorise. Exact for
/// |v| < 2^22; callers clamp afterwards, which keeps larger inputs at the range ends.
#[inline(always)]
pub(crate) fn round_fast(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// `x ≈ scale * q - min`, `q` in `0..=nmax`, `scale >= 0`, `min >= 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Affine {
    pub scale: f32,
    pub min: f32,
}

/// Sums `f(x, w)` over the values in eight independent lanes: floating-point sums in
/// one chain do not vectorise (the compiler may not reassociate them), lanes do.
#[inline(always)]
pub(crate) fn lane_sums<const K: usize>(
    x: &[f32],
    w: &[f32],
    f: impl Fn(f32, f32) -> [f32; K],
) -> [f64; K] {
    const LANES: usize = 8;
    let mut acc = [[0f32; LANES]; K];
    let (xc, wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for l in 0..LANES {
            let v = f(xs[l], ws[l]);
            for k in 0..K {
                acc[k][l] += v[k];
            }
        }
    }
    let mut out = [0f64; K];
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = a.iter().map(|&v| v as f64).sum();
    }
    for (&x, &w) in xr.iter().zip(wr) {
        let v = f(x, w);
        for k in 0..K {
            out[k] += v[k] as f64;
        }
    }
    out
}

/// Weighted sums of the data that do not depend on the codes.
struct DataSums {
    sw: f64,
    sx: f64,
    sx2: f64,
}

fn data_sums(x: &[f32], w: &[f32]) -> DataSums {
    let [sw, sx, sx2] = lane_sums(x, w, |x, w| [w, w * x, w * x * x]);
    DataSums { sw, sx, sx2 }
}

/// Rounds with `q = round((x - offset) * iscale)` clamped to `0..=nmax` and returns the
/// best `(error, scale, offset)` for those codes, offset constrained to `<= 0`.
fn affine_candidate(
    x: &[f32],
    w: &[f32],
    d: &DataSums,
    iscale: f32,
    offset: f32,
    nmax: f32,
) -> (f64, f32, f32) {
    let [sq, sq2, sqx] = lane_sums(x, w, |x, w| {
        let q = round_fast((x - offset) * iscale).clamp(0.0, nmax);
        [w * q, w * q * q, w * q * x]
    });
    let det = d.sw * sq2 - sq * sq;
    if det > 0.0 {
        let scale = (d.sw * sqx - sq * d.sx) / det;
        let off = (sq2 * d.sx - sq * sqx) / det;
        if off <= 0.0 && scale >= 0.0 {
            // At the least-squares optimum the residual is Σwx² - β·(Xᵀ W x).
            let err = d.sx2 - scale * sqx - off * d.sx;
            return (err, scale as f32, off as f32);
        }
    }
    if sq2 > 0.0 && sqx > 0.0 {
        (d.sx2 - sqx * sqx / sq2, (sqx / sq2) as f32, 0.0)
    } else {
        (d.sx2, 0.0, 0.0)
    }
}

/// Fits an asymmetric sub-block (Q2_K, Q4_K, Q5_K).
pub(crate) fn fit_affine(x: &[f32], w: &[f32], nmax: u8) -> Affine {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        return Affine {
            scale: 0.0,
            min: -lo,
        };
    }
    let d = data_sums(x, w);
    let nmaxf = nmax as f32;
    let mut best = (f64::INFINITY, 0f32, lo);
    for step in 0..=2 * HALF_STEPS {
        let levels = nmaxf - SPREAD + SPREAD * step as f32 / HALF_STEPS as f32;
        // Few levels give few distinct roundings: a coarser sweep finds them all.
        if levels <= 0.0 || (nmax <= 3 && step % 2 == 1) {
            continue;
        }
        let cand = affine_candidate(x, w, &d, levels / (hi - lo), lo, nmaxf);
        if cand.0 < best.0 {
            best = cand;
        }
    }
    for _ in 0..LLOYD_ITERS {
        let (err, scale, offset) = best;
        if scale <= 0.0 {
            break;
        }
        let cand = affine_candidate(x, w, &d, 1.0 / scale, offset, nmaxf);
        if cand.0 >= err {
            break;
        }
        best = cand;
    }
    Affine {
        scale: best.1,
        min: -best.2,
    }
}

/// The value of largest magnitude, sign kept.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    x.iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// `(Σ w q x, Σ w q²)` for codes from `code(x)`; the gain `sqx² / sq2` is what the
/// optimal scale removes from the error, so the search maximises it.
#[inline(always)]
fn gain_sums(x: &[f32], w: &[f32], code: impl Fn(f32) -> f32) -> (f64, f64) {
    let [sqx, sq2] = lane_sums(x, w, |x, w| {
        let q = code(x);
        [w * q * x, w * q * q]
    });
    (sqx, sq2)
}

/// Keeps the candidate with the largest gain; returns its scale.
struct GainSearch {
    gain: f64,
    scale: f32,
}

impl GainSearch {
    fn new() -> Self {
        GainSearch {
            gain: f64::NEG_INFINITY,
            scale: 0.0,
        }
    }

    /// Records the candidate; true when it improved on the best so far.
    fn offer(&mut self, (sqx, sq2): (f64, f64)) -> bool {
        if sq2 > 0.0 && sqx * sqx / sq2 > self.gain {
            self.gain = sqx * sqx / sq2;
            self.scale = (sqx / sq2) as f32;
            true
        } else {
            false
        }
    }
}

/// Fits a symmetric sub-block, codes in `-nneg..=npos` (Q3_K: 4, 3; Q6_K: 32, 31).
/// Returns the signed scale (`x ≈ scale * q`).
pub(crate) fn fit_symmetric(x: &[f32], w: &[f32], nneg: i32, npos: i32) -> f32 {
    let amax = signed_absmax(x);
    if amax == 0.0 {
        return 0.0;
    }
    let (lo, hi) = (-nneg as f32, npos as f32);
    let sums = |iscale: f32| gain_sums(x, w, |x| round_fast(x * iscale).clamp(lo, hi));
    let mut search = GainSearch::new();
    for step in 0..=2 * HALF_STEPS {
        let t = -SPREAD + SPREAD * step as f32 / HALF_STEPS as f32;
        // Map the extreme to the long negative end or, flipping the sign of the scale,
        // to the positive end. With few codes both are worth trying at a coarser step
        // (the Lloyd steps refine); with many, the sign flip needs only a coarse sweep.
        if nneg <= 8 && step % 2 == 1 {
            continue;
        }
        if nneg as f32 + t > 0.0 {
            search.offer(sums(-(nneg as f32 + t) / amax));
        }
        if (nneg <= 8 || step % 3 == 0) && npos as f32 + t > 0.0 {
            search.offer(sums((npos as f32 + t) / amax));
        }
    }
    for _ in 0..LLOYD_ITERS {
        if search.scale == 0.0 || !search.offer(sums(1.0 / search.scale)) {
            break;
        }
    }
    search.scale
}

/// Nearest-level lookup for a 16-level integer grid: indexed by `floor(2 v)`, since
/// midpoints between integer levels are multiples of one half.
pub(crate) struct GridLookup {
    pub levels: [f32; 16],
    table: Vec<u8>,
    origin: i32,
}

impl GridLookup {
    pub fn new(grid: &[i8; 16]) -> Self {
        let levels = grid.map(|v| v as f32);
        let lo = 2 * grid[0] as i32 - 2;
        let hi = 2 * grid[15] as i32 + 2;
        let table = (lo..=hi)
            .map(|k| {
                // Any value in [k/2, (k+1)/2) has the same nearest level as its centre.
                let v = (k as f32 + 0.5) / 2.0;
                (0..16)
                    .min_by(|&a, &b| (levels[a] - v).abs().total_cmp(&(levels[b] - v).abs()))
                    .unwrap_or(0) as u8
            })
            .collect();
        GridLookup {
            levels,
            table,
            origin: lo,
        }
    }

    #[inline(always)]
    pub fn nearest(&self, v: f32) -> usize {
        // Truncation is floor here: anything below the table's origin clamps to 0.
        let k = ((2.0 * v - self.origin as f32) as i32).clamp(0, self.table.len() as i32 - 1);
        self.table.get(k as usize).copied().unwrap_or(0) as usize
    }
}

/// Fits a scale for a non-linear grid of 16 levels (`x ≈ scale * levels[q]`).
pub(crate) fn fit_grid(x: &[f32], w: &[f32], grid: &GridLookup) -> f32 {
    let amax = signed_absmax(x);
    if amax == 0.0 {
        return 0.0;
    }
    let sums = |iscale: f32| gain_sums(x, w, |x| grid.levels[grid.nearest(x * iscale)]);
    let mut search = GainSearch::new();
    let (first, last) = (grid.levels[0], grid.levels[15]);
    for step in 0..=2 * HALF_STEPS {
        // Map the extreme onto either end of the grid, ±15%.
        let t = 0.85 + 0.15 * step as f32 / HALF_STEPS as f32;
        search.offer(sums(t * first / amax));
        search.offer(sums(t * last / amax));
    }
    for _ in 0..LLOYD_ITERS {
        if search.scale == 0.0 || !search.offer(sums(1.0 / search.scale)) {
            break;
        }
    }
    search.scale
}

/// Per-value weights for one block (at most 256 values) into `buf`: the caller's
/// importance, cleaned of negatives and NaNs and floored a little above zero so that
/// no value is ignored outright, or ones when there is none (or it is all zero).
pub(crate) fn block_weights<'a>(
    importance: Option<&[f32]>,
    n: usize,
    buf: &'a mut [f32; 256],
) -> &'a [f32] {
    let n = n.min(256);
    let out = &mut buf[..n];
    out.fill(1.0);
    if let Some(w) = importance.filter(|w| w.len() == n) {
        let clean = |v: f32| if v > 0.0 && v.is_finite() { v } else { 0.0 };
        let mean = w.iter().map(|&v| clean(v) as f64).sum::<f64>() / n.max(1) as f64;
        if mean > 0.0 {
            let floor = (mean * 1e-3) as f32;
            for (o, &v) in out.iter_mut().zip(w) {
                *o = clean(v) + floor;
            }
        }
    }
    out
}
