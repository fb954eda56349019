//! AWQ's per-input-channel scale search.
//!
//! For linears sharing one input `x` (q/k/v after the attention norm, …), the
//! search tries `s = mean|x|^α` for α on a grid over [0, 1) and keeps the `s`
//! whose fake-quantised weights `Q(W·diag(s))·diag(s)⁻¹` reproduce the linears'
//! float outputs best. Multiplying the weights' columns by `s` and dividing the
//! input by `s` (folded into the preceding norm or linear) is exact in float;
//! only the rounding changes: channels with large activations get finer steps.
//!
//! The loss is the mean squared error of the linears' outputs on the
//! calibration tokens, `Σ_r Δ_r G Δ_rᵀ / (tokens · rows)` with `Δ` the weight
//! error and `G = XᵀX` the tokens' Gram matrix, so it costs `rows × in²` per
//! candidate whatever the number of tokens. AutoAWQ measures the error at the
//! output of the module holding the linears (the whole attention for q/k/v, the
//! whole MLP for gate/up); quern measures it at the linears' own outputs, which
//! is the same for o (after v) and down (after up) and a simplification for the
//! other two groups.
//!
//! The scales are normalised as AutoAWQ does (divided by `√(max·min)`), and the
//! unscaled weights (`s = 1`) are always a candidate, so the search never
//! returns scales that do worse than plain rounding on its own loss.

use super::gemm::quadratic_form_sum;
use super::{AwqSearchError, FakeQuant};

/// One linear of a group sharing an input.
#[derive(Debug, Clone, Copy)]
pub struct Linear<'a> {
    /// `rows × in` row-major (Hugging Face orientation).
    pub weight: &'a [f32],
    pub rows: usize,
    /// Per-input-column importance (an imatrix's mean squared activations) for
    /// importance-weighted fake quantisers, before scaling.
    pub importance: Option<&'a [f32]>,
    /// The format the linear will be stored in (a mix may store q/k/v differently).
    pub fake_quant: FakeQuant,
}

/// The activation statistics of one shared input.
#[derive(Debug, Clone, Copy)]
pub struct InputStats<'a> {
    /// Mean |x| per input channel over all calibration tokens.
    pub mean_abs: &'a [f32],
    /// `in × in` Gram matrix `Σ_t x_t x_tᵀ` of the loss tokens.
    pub gram: &'a [f32],
    /// How many tokens `gram` sums.
    pub tokens: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ScaleOptions {
    /// Grid points for α (α = i / grid, i = 0..grid); AutoAWQ uses 20.
    pub grid: usize,
    /// AutoAWQ's `duo_scaling`: `s = mean|x|^α / mean|ŵ|^(1-α)` with `ŵ` the
    /// weights normalised per group; off: the paper's `s = mean|x|^α`.
    pub duo: bool,
}

impl Default for ScaleOptions {
    fn default() -> Self {
        ScaleOptions {
            grid: 20,
            duo: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScaleResult {
    /// Per input channel: multiply the weights' columns by it, divide the input.
    pub scales: Vec<f32>,
    /// The α chosen; `None` when no scaling beat the unscaled weights.
    pub alpha: Option<f32>,
    /// Mean squared output error with the chosen scales.
    pub loss: f64,
    /// Mean squared output error of the unscaled weights.
    pub loss_unscaled: f64,
}

/// Searches the scales for `linears` (all `n_in` inputs wide).
pub fn search_scale(
    linears: &[Linear],
    n_in: usize,
    stats: &InputStats,
    opts: &ScaleOptions,
) -> Result<ScaleResult, AwqSearchError> {
    check(linears, n_in, stats)?;
    let ones = vec![1f32; n_in];
    let loss_unscaled = group_loss(linears, n_in, stats, &ones)?;
    let mut best = ScaleResult {
        scales: ones,
        alpha: None,
        loss: loss_unscaled,
        loss_unscaled,
    };
    let w_mean = opts.duo.then(|| weight_mean(linears, n_in));
    for i in 0..opts.grid {
        let alpha = i as f32 / opts.grid as f32;
        let s = candidate(stats.mean_abs, w_mean.as_deref(), alpha);
        let loss = group_loss(linears, n_in, stats, &s)?;
        if loss < best.loss {
            best = ScaleResult {
                scales: s,
                alpha: Some(alpha),
                loss,
                loss_unscaled,
            };
        }
    }
    Ok(best)
}

fn check(linears: &[Linear], n_in: usize, stats: &InputStats) -> Result<(), AwqSearchError> {
    let bad = |what: String| Err(AwqSearchError::Shape { what });
    if stats.mean_abs.len() != n_in {
        return bad(format!(
            "{} mean |x| values for {n_in} inputs",
            stats.mean_abs.len()
        ));
    }
    if stats.gram.len() != n_in * n_in {
        return bad(format!(
            "Gram matrix of {} values for {n_in} inputs",
            stats.gram.len()
        ));
    }
    for (k, l) in linears.iter().enumerate() {
        if l.weight.len() != l.rows * n_in {
            return bad(format!(
                "linear {k}: {} weights, not {} × {n_in}",
                l.weight.len(),
                l.rows
            ));
        }
        if l.importance.is_some_and(|v| v.len() != n_in) {
            return bad(format!("linear {k}: importance is not {n_in} long"));
        }
    }
    Ok(())
}

/// `s = x^α` (or AutoAWQ's duo form), clamped, normalised by `√(max·min)`.
pub fn candidate(mean_abs: &[f32], w_mean: Option<&[f32]>, alpha: f32) -> Vec<f32> {
    let mut s: Vec<f32> = mean_abs
        .iter()
        .enumerate()
        .map(|(j, &x)| {
            let v = match w_mean {
                Some(w) => x.powf(alpha) / (w[j].powf(1.0 - alpha) + 1e-4),
                None => x.powf(alpha),
            };
            v.max(1e-4)
        })
        .collect();
    let (lo, hi) = s
        .iter()
        .fold((f32::INFINITY, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (lo as f64 * hi as f64).sqrt() as f32;
    for v in s.iter_mut() {
        *v /= norm;
        if !v.is_finite() || *v == 0.0 {
            *v = 1.0;
        }
    }
    s
}

/// Mean over rows of `|w| / max|w|` within each quantisation group, per column.
fn weight_mean(linears: &[Linear], n_in: usize) -> Vec<f32> {
    let group = match linears.first().map(|l| l.fake_quant) {
        None => 32,
        Some(FakeQuant::Awq4 { group }) => group,
        Some(FakeQuant::Ggml(_)) => 32,
    }
    .clamp(1, n_in.max(1));
    let mut sum = vec![0f64; n_in];
    let mut rows = 0usize;
    for l in linears {
        for row in l.weight.chunks_exact(n_in) {
            for (g, chunk) in row.chunks(group).enumerate() {
                let max = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6;
                for (j, v) in chunk.iter().enumerate() {
                    sum[g * group + j] += (v.abs() / max) as f64;
                }
            }
            rows += 1;
        }
    }
    sum.iter()
        .map(|v| (v / rows.max(1) as f64) as f32)
        .collect()
}

/// The weights `Q(W·diag(s))·diag(s)⁻¹` of one linear.
pub fn scaled_fake_quant(l: &Linear, n_in: usize, s: &[f32]) -> Result<Vec<f32>, AwqSearchError> {
    let mut w: Vec<f32> = l.weight.to_vec();
    for row in w.chunks_exact_mut(n_in) {
        for (v, &sj) in row.iter_mut().zip(s) {
            *v *= sj;
        }
    }
    // The scaled weights see inputs x/s: their importance is E[x²]/s².
    let imp: Option<Vec<f32>> = l
        .importance
        .map(|im| im.iter().zip(s).map(|(v, sj)| v / (sj * sj)).collect());
    l.fake_quant.apply(&mut w, n_in, imp.as_deref())?;
    for row in w.chunks_exact_mut(n_in) {
        for (v, &sj) in row.iter_mut().zip(s) {
            *v /= sj;
        }
    }
    Ok(w)
}

/// Mean squared output error of the group with scales `s`.
pub fn group_loss(
    linears: &[Linear],
    n_in: usize,
    stats: &InputStats,
    s: &[f32],
) -> Result<f64, AwqSearchError> {
    let mut total = 0f64;
    let mut rows = 0usize;
    for l in linears {
        let mut d = scaled_fake_quant(l, n_in, s)?;
        for (a, b) in d.iter_mut().zip(l.weight) {
            *a -= b;
        }
        total += quadratic_form_sum(&d, stats.gram, l.rows, n_in);
        rows += l.rows;
    }
    Ok(total / (stats.tokens.max(1) * rows.max(1)) as f64)
}

#[cfg(test)]
mod tests {
    use super::super::gemm::gram;
    use super::*;

    /// A layer whose input has a few channels 30× larger than the rest: the
    /// case AWQ is for.
    fn outlier_layer() -> (Vec<f32>, Vec<f32>, usize, usize, usize) {
        let mut rng = quern_formats::testutil::SplitMix(21);
        let (t, n_in, rows) = (256, 128, 32);
        let x: Vec<f32> = (0..t * n_in)
            .map(|i| {
                let v = rng.uniform() - 0.5;
                if i % n_in % 37 == 3 {
                    v * 30.0
                } else {
                    v
                }
            })
            .collect();
        let w: Vec<f32> = (0..rows * n_in).map(|_| rng.uniform() - 0.5).collect();
        (x, w, t, n_in, rows)
    }

    fn stats_of(x: &[f32], t: usize, n_in: usize) -> (Vec<f32>, Vec<f32>) {
        let mut mean = vec![0f32; n_in];
        for row in x.chunks_exact(n_in) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v.abs() / t as f32;
            }
        }
        (mean, gram(x, t, n_in))
    }

    #[test]
    fn finds_alpha_above_zero_for_an_outlier_channel_and_lowers_the_error() {
        let (x, w, t, n_in, rows) = outlier_layer();
        let (mean, g) = stats_of(&x, t, n_in);
        let stats = InputStats {
            mean_abs: &mean,
            gram: &g,
            tokens: t,
        };
        for fq in [
            FakeQuant::Awq4 { group: 64 },
            FakeQuant::Ggml(quern_formats::GgmlType::Q4_0),
        ] {
            let lin = [Linear {
                weight: &w,
                rows,
                importance: None,
                fake_quant: fq,
            }];
            let r = search_scale(&lin, n_in, &stats, &ScaleOptions::default()).expect("search");
            let alpha = r.alpha.expect("some scaling wins");
            assert!(alpha > 0.0, "{fq:?}: α = {alpha}");
            assert!(
                r.loss < 0.8 * r.loss_unscaled,
                "{fq:?}: {} vs {}",
                r.loss,
                r.loss_unscaled
            );
            // The loss is the real output error on the tokens.
            let wq = scaled_fake_quant(&lin[0], n_in, &r.scales).expect("fq");
            let mut direct = 0f64;
            for xt in x.chunks_exact(n_in) {
                for (wr, wo) in wq.chunks_exact(n_in).zip(w.chunks_exact(n_in)) {
                    let e: f64 = xt
                        .iter()
                        .zip(wr.iter().zip(wo))
                        .map(|(a, (b, c))| *a as f64 * (*b as f64 - *c as f64))
                        .sum();
                    direct += e * e;
                }
            }
            direct /= (t * rows) as f64;
            assert!(
                (direct - r.loss).abs() < 1e-3 * direct,
                "{direct} vs {}",
                r.loss
            );
        }
    }

    #[test]
    fn alpha_zero_is_the_unscaled_loss_and_duo_never_loses() {
        let (x, w, t, n_in, rows) = outlier_layer();
        let (mean, g) = stats_of(&x, t, n_in);
        let stats = InputStats {
            mean_abs: &mean,
            gram: &g,
            tokens: t,
        };
        assert!(candidate(&mean, None, 0.0).iter().all(|&v| v == 1.0));
        let lin = [Linear {
            weight: &w,
            rows,
            importance: None,
            fake_quant: FakeQuant::Awq4 { group: 64 },
        }];
        let opts = ScaleOptions {
            grid: 20,
            duo: true,
        };
        let r = search_scale(&lin, n_in, &stats, &opts).expect("search");
        assert!(r.loss <= r.loss_unscaled);
        assert!(search_scale(&lin, n_in + 1, &stats, &opts).is_err());
    }
}
