//! Weighted least-squares searches for one sub-block's scale (and minimum).
//!
//! Each search rounds the values with a range of candidate inverse scales, fits the
//! optimal float scale (and offset) to the resulting integer codes by weighted least
//! squares, keeps the candidate with the smallest weighted error, then alternates
//! re-rounding and re-fitting (Lloyd steps) while the error falls. Weights are the
//! caller's importance, or ones. Sub-blocks are fixed-size arrays (16 or 32 values)
//! so passes over them have known lengths and no bounds checks, which lets the
//! compiler vectorise them; per-candidate sums are f32 (exact enough to rank
//! candidates) and the closed-form fits are solved in f64.

/// Candidates span the nominal code range ± `SPREAD` codes in `2 * HALF_STEPS` steps,
/// of which every `*_STRIDE`-th is tried: affine fits with few levels (Q2_K), with
/// many; symmetric fits mapping the extreme to the negative end, to the positive end.
/// The Lloyd steps and the integer-scale neighbours recover what a coarse sweep
/// misses: on the tests' matrices, trying every step cost 2-3x the time for under
/// 1% of error (and for most formats under 0.1%).
const SPREAD: f32 = 1.2;
const HALF_STEPS: usize = 12;
const LLOYD_ITERS: usize = 2;
const AFFINE_STRIDE: [usize; 2] = [4, 6];
const SYM_STRIDE_FEW: [usize; 2] = [6, 6];
const SYM_STRIDE_MANY: [usize; 2] = [8, 24];
const GRID_STRIDE: usize = 2;

/// Independent partial sums per pass: one chain of floating-point adds does not
/// vectorise (the compiler may not reassociate it), eight lanes do.
const LANES: usize = 8;

/// Round to nearest (ties to even) without a libm call, so loops vectorise. Exact for
/// |v| < 2^22; callers clamp afterwards, which keeps larger inputs at the range ends.
#[inline(always)]
pub(crate) fn round_fast(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// `v` limited to `lo..=hi` (a NaN input ends up at `hi`, a valid code). Written as
/// selects, which map onto the processor's min/max instructions, rather than
/// `f32::clamp`, whose NaN rules cost extra instructions.
#[inline(always)]
pub(crate) fn clamp_fast(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v > lo { v } else { lo };
    if v < hi {
        v
    } else {
        hi
    }
}

/// Sub-block `j` of `L` values of `x` as an array.
#[inline(always)]
pub(crate) fn sub<const L: usize>(x: &[f32], j: usize) -> &[f32; L] {
    <&[f32; L]>::try_from(&x[j * L..(j + 1) * L]).expect("sub-block of L values")
}

/// Sums `f(i)` over `i in 0..N` (`N` a multiple of eight) in eight lanes, in f32.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `l` indexes the lanes of K accumulators
pub(crate) fn lane_sums<const N: usize, const K: usize>(f: impl Fn(usize) -> [f32; K]) -> [f32; K] {
    const { assert!(N.is_multiple_of(LANES)) };
    let mut acc = [[0f32; LANES]; K];
    for c in 0..N / LANES {
        for l in 0..LANES {
            let v = f(c * LANES + l);
            for k in 0..K {
                acc[k][l] += v[k];
            }
        }
    }
    acc.map(|a| ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])))
}

/// `f(i)` for every `i in 0..N`, as its own pass: a plain map with no reduction in it
/// is what the loop vectoriser handles best.
#[inline(always)]
pub(crate) fn map<const N: usize>(f: impl Fn(usize) -> f32) -> [f32; N] {
    let mut out = [0f32; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = f(i);
    }
    out
}

/// `x ≈ scale * q - min`, `q` in `0..=nmax`, `scale >= 0`, `min >= 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Affine {
    pub scale: f32,
    pub min: f32,
}

/// A sub-block with the products its searches reuse.
struct Weighted<const N: usize> {
    x: [f32; N],
    w: [f32; N],
    /// `w * x`.
    wx: [f32; N],
}

impl<const N: usize> Weighted<N> {
    #[inline(always)]
    fn new(x: &[f32; N], w: &[f32; N]) -> Self {
        Weighted {
            x: *x,
            w: *w,
            wx: std::array::from_fn(|i| w[i] * x[i]),
        }
    }
}

/// Weighted sums of the data that do not depend on the codes.
struct DataSums {
    sw: f64,
    sx: f64,
    sx2: f64,
}

/// Rounds with `q = round((x - offset) * iscale)` clamped to `0..=nmax` and returns the
/// best `(error, scale, offset)` for those codes, offset constrained to `<= 0`.
#[inline(always)]
fn affine_candidate<const N: usize>(
    s: &Weighted<N>,
    d: &DataSums,
    iscale: f32,
    offset: f32,
    nmax: f32,
) -> (f64, f32, f32) {
    let [sq, sq2, sqx] = lane_sums::<N, 3>(|i| {
        let q = clamp_fast(round_fast((s.x[i] - offset) * iscale), 0.0, nmax);
        let wq = s.w[i] * q;
        [wq, wq * q, s.wx[i] * q]
    })
    .map(f64::from);
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
pub(crate) fn fit_affine<const N: usize>(x: &[f32; N], w: &[f32; N], nmax: u8) -> Affine {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        return Affine {
            scale: 0.0,
            min: -lo,
        };
    }
    let s = Weighted::new(x, w);
    let [sw, sx, sx2] = lane_sums::<N, 3>(|i| [s.w[i], s.wx[i], s.wx[i] * s.x[i]]).map(f64::from);
    let d = DataSums { sw, sx, sx2 };
    let nmaxf = nmax as f32;
    let mut best = (f64::INFINITY, 0f32, lo);
    let inv_range = 1.0 / (hi - lo);
    // Few levels give few distinct roundings: a coarser sweep finds them all.
    let stride = AFFINE_STRIDE[usize::from(nmax > 3)];
    for step in (0..=2 * HALF_STEPS).step_by(stride) {
        let levels = nmaxf - SPREAD + SPREAD * step as f32 / HALF_STEPS as f32;
        if levels <= 0.0 {
            continue;
        }
        let cand = affine_candidate(&s, &d, levels * inv_range, lo, nmaxf);
        if cand.0 < best.0 {
            best = cand;
        }
    }
    for _ in 0..LLOYD_ITERS {
        let (err, scale, offset) = best;
        if scale <= 0.0 {
            break;
        }
        let cand = affine_candidate(&s, &d, 1.0 / scale, offset, nmaxf);
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
fn gain_sums<const N: usize>(s: &Weighted<N>, code: impl Fn(&[f32; N]) -> [f32; N]) -> (f64, f64) {
    let q = code(&s.x);
    let [sqx, sq2] = lane_sums::<N, 2>(|i| [s.wx[i] * q[i], s.w[i] * q[i] * q[i]]);
    (sqx as f64, sq2 as f64)
}

/// Keeps the candidate with the largest gain; returns its scale.
struct GainSearch {
    sqx: f64,
    sq2: f64,
}

impl GainSearch {
    fn new() -> Self {
        GainSearch { sqx: 0.0, sq2: 0.0 }
    }

    fn scale(&self) -> f32 {
        if self.sq2 > 0.0 {
            (self.sqx / self.sq2) as f32
        } else {
            0.0
        }
    }

    /// Records the candidate; true when it improved on the best so far. Gains are
    /// compared cross-multiplied: no division on the path from one offer to the next.
    #[inline(always)]
    fn offer(&mut self, (sqx, sq2): (f64, f64)) -> bool {
        if sq2 > 0.0 && (self.sq2 == 0.0 || sqx * sqx * self.sq2 > self.sqx * self.sqx * sq2) {
            (self.sqx, self.sq2) = (sqx, sq2);
            true
        } else {
            false
        }
    }
}

/// Up to 32 candidate inverse scales, listed before any is scored so that the scoring
/// loop is a tight one over independent passes.
struct Candidates {
    iscale: [f32; 32],
    len: usize,
}

impl Candidates {
    fn new() -> Self {
        Candidates {
            iscale: [0.0; 32],
            len: 0,
        }
    }

    #[inline(always)]
    fn push(&mut self, iscale: f32) {
        if self.len < self.iscale.len() {
            self.iscale[self.len] = iscale;
            self.len += 1;
        }
    }

    /// Offers every candidate's sums to `search`.
    #[inline(always)]
    fn score(&self, search: &mut GainSearch, sums: impl Fn(f32) -> (f64, f64)) {
        for &is in &self.iscale[..self.len] {
            search.offer(sums(is));
        }
    }
}

/// Fits a symmetric sub-block, codes in `-nneg..=npos` (Q3_K: 4, 3; Q6_K: 32, 31).
/// Returns the signed scale (`x ≈ scale * q`).
pub(crate) fn fit_symmetric<const N: usize>(
    x: &[f32; N],
    w: &[f32; N],
    nneg: i32,
    npos: i32,
) -> f32 {
    let amax = signed_absmax(x);
    if amax == 0.0 {
        return 0.0;
    }
    let s = Weighted::new(x, w);
    let (lo, hi) = (-nneg as f32, npos as f32);
    let sums = |iscale: f32| {
        gain_sums(&s, |x| {
            map::<N>(|i| clamp_fast(round_fast(x[i] * iscale), lo, hi))
        })
    };
    // Map the extreme to the long negative end or, flipping the sign of the scale, to
    // the positive end. With few codes both are worth trying at the same step (the
    // Lloyd steps refine); with many, the sign flip needs only a coarser sweep.
    let strides = if nneg <= 8 {
        SYM_STRIDE_FEW
    } else {
        SYM_STRIDE_MANY
    };
    let inv = 1.0 / amax;
    let mut cands = Candidates::new();
    for (end, sign, stride) in [(nneg, -1.0, strides[0]), (npos, 1.0, strides[1])] {
        for step in (0..=2 * HALF_STEPS).step_by(stride) {
            let levels = end as f32 - SPREAD + SPREAD * step as f32 / HALF_STEPS as f32;
            if levels > 0.0 {
                cands.push(sign * levels * inv);
            }
        }
    }
    let mut search = GainSearch::new();
    cands.score(&mut search, sums);
    lloyd(&mut search, sums)
}

/// Lloyd steps: re-round with the best scale so far while that improves the fit.
#[inline(always)]
fn lloyd(search: &mut GainSearch, sums: impl Fn(f32) -> (f64, f64)) -> f32 {
    for _ in 0..LLOYD_ITERS {
        let scale = search.scale();
        if scale == 0.0 || !search.offer(sums(1.0 / scale)) {
            break;
        }
    }
    search.scale()
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
pub(crate) fn fit_grid<const N: usize>(x: &[f32; N], w: &[f32; N], grid: &GridLookup) -> f32 {
    let amax = signed_absmax(x);
    if amax == 0.0 {
        return 0.0;
    }
    let s = Weighted::new(x, w);
    let sums = |iscale: f32| {
        gain_sums(&s, |x| {
            map::<N>(|i| grid.levels[grid.nearest(x[i] * iscale)])
        })
    };
    let (first, last) = (grid.levels[0], grid.levels[15]);
    let inv = 1.0 / amax;
    let mut cands = Candidates::new();
    for step in (0..=2 * HALF_STEPS).step_by(GRID_STRIDE) {
        // Map the extreme onto either end of the grid, ±15%.
        let t = 0.85 + 0.15 * step as f32 / HALF_STEPS as f32;
        cands.push(t * first * inv);
        cands.push(t * last * inv);
    }
    let mut search = GainSearch::new();
    cands.score(&mut search, sums);
    lloyd(&mut search, sums)
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
