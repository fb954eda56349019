//! Scored positions accumulated into the figures `quern verify` reports, named as
//! llama-perplexity's KL-divergence mode names them: PPL of each model (± error),
//! `ln(PPL(artifact)/PPL(reference))`, KLD and Δp distributions, "same top p".

use serde::Serialize;

use super::logits::PositionScore;
use super::stats::{percentile, proportion, sort, MeanError, Moments};

/// A value with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub error: f64,
}

impl From<MeanError> for Estimate {
    fn from(m: MeanError) -> Self {
        Estimate {
            value: m.mean,
            error: m.error,
        }
    }
}

/// The spread of a per-token figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distribution {
    pub mean: f64,
    /// Standard error of the mean.
    pub error: f64,
    pub rms: f64,
    pub min: f64,
    pub p01: f64,
    pub p05: f64,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Distribution {
    fn of(mut values: Vec<f64>, m: &Moments) -> Distribution {
        sort(&mut values);
        let me = m.mean_error();
        let p = |f| percentile(&values, f);
        Distribution {
            mean: me.mean,
            error: me.error,
            rms: m.rms(),
            min: p(0.0),
            p01: p(0.01),
            p05: p(0.05),
            median: p(0.5),
            p95: p(0.95),
            p99: p(0.99),
            p999: p(0.999),
            max: p(1.0),
        }
    }
}

/// One of the positions where the artifact lost the most probability on the right token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drop {
    pub chunk: usize,
    /// Position in the chunk whose logits were scored (the token is at `position + 1`).
    pub position: usize,
    pub token: u32,
    pub p_reference: f64,
    pub p_artifact: f64,
    /// The token's text; the accumulator leaves it empty for the caller, who
    /// holds the tokenizer, to fill.
    pub text: String,
}

impl Drop {
    pub fn delta_p(&self) -> f64 {
        self.p_artifact - self.p_reference
    }
}

/// Everything the outputs half of a report says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputSummary {
    pub scored_tokens: u64,
    pub ppl_reference: Estimate,
    pub ppl_artifact: Estimate,
    /// `PPL(artifact) / PPL(reference)`.
    pub ppl_ratio: f64,
    /// Mean of `ln p_ref(t) - ln p_art(t)` = `ln` of the ratio.
    pub ln_ppl_ratio: Estimate,
    /// `KL(reference ‖ artifact)` per scored token.
    pub kld: Distribution,
    /// Share of positions where both models' most likely token is the same.
    pub top1_agreement: Estimate,
    /// `p_artifact(t) - p_reference(t)` per scored token.
    pub delta_p: Distribution,
    /// The largest drops, largest first.
    pub largest_drops: Vec<Drop>,
}

/// Collects positions chunk by chunk; memory is a few numbers per scored token.
#[derive(Debug, Clone)]
pub struct Accumulator {
    nll_ref: Moments,
    nll_art: Moments,
    ln_ratio: Moments,
    kld: Vec<f64>,
    kld_m: Moments,
    dp: Vec<f64>,
    dp_m: Moments,
    same_top: u64,
    drops: Vec<Drop>,
    keep_drops: usize,
}

impl Accumulator {
    /// `keep_drops`: how many of the largest probability drops to keep.
    pub fn new(keep_drops: usize) -> Accumulator {
        Accumulator {
            nll_ref: Moments::default(),
            nll_art: Moments::default(),
            ln_ratio: Moments::default(),
            kld: Vec::new(),
            kld_m: Moments::default(),
            dp: Vec::new(),
            dp_m: Moments::default(),
            same_top: 0,
            drops: Vec::new(),
            keep_drops,
        }
    }

    pub fn push(&mut self, chunk: usize, position: usize, token: u32, s: &PositionScore) {
        self.nll_ref.push(s.nll_ref);
        self.nll_art.push(s.nll_art);
        self.ln_ratio.push(s.nll_art - s.nll_ref);
        self.kld.push(s.kld);
        self.kld_m.push(s.kld);
        let dp = s.delta_p();
        self.dp.push(dp);
        self.dp_m.push(dp);
        self.same_top += u64::from(s.same_top());
        if self.keep_drops > 0 && dp < 0.0 {
            self.drops.push(Drop {
                chunk,
                position,
                token,
                p_reference: s.p_ref(),
                p_artifact: s.p_art(),
                text: String::new(),
            });
            if self.drops.len() >= 2 * self.keep_drops {
                self.trim_drops();
            }
        }
    }

    fn trim_drops(&mut self) {
        self.drops
            .sort_by(|a, b| a.delta_p().total_cmp(&b.delta_p()));
        self.drops.truncate(self.keep_drops);
    }

    pub fn count(&self) -> u64 {
        self.kld_m.count()
    }

    /// Running perplexity of the reference so far.
    pub fn ppl_reference(&self) -> f64 {
        self.nll_ref.mean().exp()
    }

    pub fn ppl_artifact(&self) -> f64 {
        self.nll_art.mean().exp()
    }

    pub fn mean_kld(&self) -> f64 {
        self.kld_m.mean()
    }

    pub fn top1_agreement(&self) -> f64 {
        proportion(self.same_top, self.count()).mean
    }

    /// The figures; `None` when no position was pushed.
    pub fn finish(mut self) -> Option<OutputSummary> {
        if self.count() == 0 {
            return None;
        }
        self.trim_drops();
        let ppl = |m: &Moments| {
            let me = m.mean_error();
            let v = me.mean.exp();
            Estimate {
                value: v,
                error: v * me.error,
            }
        };
        let ln = self.ln_ratio.mean_error();
        Some(OutputSummary {
            scored_tokens: self.count(),
            ppl_reference: ppl(&self.nll_ref),
            ppl_artifact: ppl(&self.nll_art),
            ppl_ratio: ln.mean.exp(),
            ln_ppl_ratio: ln.into(),
            kld: Distribution::of(std::mem::take(&mut self.kld), &self.kld_m),
            top1_agreement: proportion(self.same_top, self.count()).into(),
            delta_p: Distribution::of(std::mem::take(&mut self.dp), &self.dp_m),
            largest_drops: self.drops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::logits::compare_position;

    #[test]
    fn a_model_against_itself() {
        let mut acc = Accumulator::new(3);
        for pos in 0..50u32 {
            let row: Vec<f32> = (0..64).map(|i| ((i * 7 + pos) % 13) as f32 * 0.4).collect();
            let s = compare_position(&row, &row, pos % 64);
            acc.push(0, pos as usize, pos % 64, &s);
        }
        let s = acc.finish().unwrap();
        assert_eq!(s.scored_tokens, 50);
        assert_eq!(s.kld.mean, 0.0);
        assert_eq!(s.kld.max, 0.0);
        assert_eq!(s.top1_agreement.value, 1.0);
        assert_eq!(s.ppl_ratio, 1.0);
        assert_eq!(s.ppl_reference.value, s.ppl_artifact.value);
        assert!(s.largest_drops.is_empty());
    }

    #[test]
    fn perplexity_and_drops() {
        // Uniform reference over 4 tokens: NLL ln 4 everywhere, PPL 4.
        let uniform = [0f32; 4];
        let mut acc = Accumulator::new(2);
        for (pos, art) in [
            [0f32, 0.0, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 5.0, 0.0],
        ]
        .iter()
        .enumerate()
        {
            let s = compare_position(&uniform, art, 0);
            acc.push(1, pos, 0, &s);
        }
        let s = acc.finish().unwrap();
        assert!((s.ppl_reference.value - 4.0).abs() < 1e-12);
        assert!(s.ppl_artifact.value > 4.0);
        assert!((s.ppl_ratio - s.ppl_artifact.value / s.ppl_reference.value).abs() < 1e-9);
        assert_eq!(s.largest_drops.len(), 2);
        assert_eq!(s.largest_drops[0].position, 2, "the largest drop first");
        assert!(s.largest_drops[0].delta_p() < s.largest_drops[1].delta_p());
        assert!((s.top1_agreement.value - 1.0 / 3.0).abs() < 1e-12);
        assert!(s.kld.max > s.kld.median && s.kld.min == 0.0);
    }

    #[test]
    fn nothing_pushed() {
        assert!(Accumulator::new(1).finish().is_none());
    }
}
