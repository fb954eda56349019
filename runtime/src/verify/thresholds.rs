//! The CI gate: limits on the output figures, checked for sense before any work
//! and against the figures after it.

use serde::Serialize;

use super::error::VerifyError;
use crate::eval::OutputSummary;

/// Limits; each is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Thresholds {
    /// Largest acceptable mean KL divergence.
    pub max_kld: Option<f64>,
    /// Smallest acceptable top-1 agreement (0..=1).
    pub min_top1: Option<f64>,
    /// Largest acceptable PPL(artifact) / PPL(reference).
    pub max_ppl_ratio: Option<f64>,
}

/// A limit the figures crossed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    pub threshold: &'static str,
    pub limit: f64,
    pub value: f64,
}

impl Thresholds {
    pub fn any(&self) -> bool {
        self.max_kld.is_some() || self.min_top1.is_some() || self.max_ppl_ratio.is_some()
    }

    /// Rejects limits no figure could meet sensibly.
    pub fn validate(&self) -> Result<(), VerifyError> {
        let bad = |name, value, why| Err(VerifyError::BadThreshold { name, value, why });
        if let Some(v) = self.max_kld {
            if !v.is_finite() || v < 0.0 {
                return bad("--max-kld", v, "must be a finite number ≥ 0");
            }
        }
        if let Some(v) = self.min_top1 {
            if !(0.0..=1.0).contains(&v) {
                return bad("--min-top1", v, "must be between 0 and 1");
            }
        }
        if let Some(v) = self.max_ppl_ratio {
            if !v.is_finite() || v <= 0.0 {
                return bad("--max-ppl-ratio", v, "must be a finite number > 0");
            }
        }
        Ok(())
    }

    /// The limits `s` crosses (a NaN figure crosses every limit on it).
    pub fn check(&self, s: &OutputSummary) -> Vec<Violation> {
        let mut v = Vec::new();
        let mut over = |threshold, limit: Option<f64>, value: f64, upper: bool| {
            if let Some(limit) = limit {
                let ok = if upper {
                    value <= limit
                } else {
                    value >= limit
                };
                if !ok {
                    v.push(Violation {
                        threshold,
                        limit,
                        value,
                    });
                }
            }
        };
        over("max_kld", self.max_kld, s.kld.mean, true);
        over("min_top1", self.min_top1, s.top1_agreement.value, false);
        over("max_ppl_ratio", self.max_ppl_ratio, s.ppl_ratio, true);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{compare_position, Accumulator};

    fn summary() -> OutputSummary {
        let mut acc = Accumulator::new(0);
        let s = compare_position(&[0.0, 1.0, 2.0], &[0.0, 2.0, 1.0], 1);
        acc.push(0, 0, 1, &s);
        acc.finish().unwrap()
    }

    #[test]
    fn nonsense_is_rejected() {
        for t in [
            Thresholds {
                max_kld: Some(-0.1),
                ..Default::default()
            },
            Thresholds {
                max_kld: Some(f64::NAN),
                ..Default::default()
            },
            Thresholds {
                min_top1: Some(1.5),
                ..Default::default()
            },
            Thresholds {
                min_top1: Some(-0.5),
                ..Default::default()
            },
            Thresholds {
                max_ppl_ratio: Some(0.0),
                ..Default::default()
            },
            Thresholds {
                max_ppl_ratio: Some(-2.0),
                ..Default::default()
            },
        ] {
            assert!(t.validate().is_err(), "{t:?}");
        }
        let ok = Thresholds {
            max_kld: Some(0.0),
            min_top1: Some(1.0),
            max_ppl_ratio: Some(1.0),
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn crossing_is_reported() {
        let s = summary();
        assert!(s.kld.mean > 0.1 && s.top1_agreement.value == 0.0 && s.ppl_ratio < 1.0);
        let t = Thresholds {
            max_kld: Some(0.1),
            min_top1: Some(0.5),
            max_ppl_ratio: Some(2.0),
        };
        let v = t.check(&s);
        assert_eq!(
            v.iter().map(|v| v.threshold).collect::<Vec<_>>(),
            ["max_kld", "min_top1"]
        );
        let loose = Thresholds {
            max_kld: Some(10.0),
            min_top1: Some(0.0),
            max_ppl_ratio: Some(1.0),
        };
        assert!(loose.check(&s).is_empty());
        assert!(Thresholds::default().check(&s).is_empty());
    }
}
