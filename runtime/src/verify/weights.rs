//! Tensor-by-tensor comparison of an artifact's weights with the reference's:
//! the pairing (and the first mismatch, if any), error statistics per tensor,
//! and their summaries per storage type.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use super::error::VerifyError;
use super::progress::Progress;
use super::source::{TensorMeta, TensorSource};

/// Sums over one tensor pair, from which every statistic follows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorSums {
    pub n: u64,
    /// Σ r², Σ a², Σ r·a, Σ (a - r)².
    pub ref2: f64,
    pub art2: f64,
    pub dot: f64,
    pub err2: f64,
    pub max_abs: f64,
}

impl ErrorSums {
    pub fn of(reference: &[f32], artifact: &[f32]) -> ErrorSums {
        debug_assert_eq!(reference.len(), artifact.len());
        const PART: usize = 1 << 16;
        reference
            .par_chunks(PART)
            .zip(artifact.par_chunks(PART))
            .map(|(r, a)| {
                let mut s = ErrorSums::default();
                for (&r, &a) in r.iter().zip(a) {
                    let (r, a) = (r as f64, a as f64);
                    let e = a - r;
                    s.ref2 += r * r;
                    s.art2 += a * a;
                    s.dot += r * a;
                    s.err2 += e * e;
                    s.max_abs = s.max_abs.max(e.abs());
                }
                s.n = r.len() as u64;
                s
            })
            .reduce(ErrorSums::default, |x, y| x.add(&y))
    }

    pub fn add(&self, o: &ErrorSums) -> ErrorSums {
        ErrorSums {
            n: self.n + o.n,
            ref2: self.ref2 + o.ref2,
            art2: self.art2 + o.art2,
            dot: self.dot + o.dot,
            err2: self.err2 + o.err2,
            max_abs: self.max_abs.max(o.max_abs),
        }
    }

    pub fn stats(&self) -> TensorStats {
        let finite = |x: f64| x.is_finite().then_some(x);
        TensorStats {
            rel_rms_error: if self.err2 == 0.0 {
                Some(0.0)
            } else {
                finite((self.err2 / self.ref2).sqrt())
            },
            max_abs_error: self.max_abs,
            cosine: if self.ref2 > 0.0 && self.art2 > 0.0 {
                Some((self.dot / (self.ref2.sqrt() * self.art2.sqrt())).clamp(-1.0, 1.0))
            } else {
                None
            },
            snr_db: if self.err2 == 0.0 {
                None
            } else {
                finite(10.0 * (self.ref2 / self.err2).log10())
            },
        }
    }
}

/// Error statistics of one tensor (or a group of tensors, from their summed squares).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TensorStats {
    /// `‖a - r‖ / ‖r‖`; `None` when the reference is zero and the artifact is not.
    pub rel_rms_error: Option<f64>,
    pub max_abs_error: f64,
    /// `r·a / (‖r‖ ‖a‖)`; `None` when either side is all zeros.
    pub cosine: Option<f64>,
    /// `10 log10(Σ r² / Σ (a - r)²)`; `None` when there is no error at all (infinite SNR).
    pub snr_db: Option<f64>,
}

/// One compared tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorComparison {
    /// GGUF name.
    pub tensor: String,
    pub reference_name: String,
    pub artifact_name: String,
    pub reference_type: String,
    pub artifact_type: String,
    pub shape: Vec<u64>,
    pub elements: u64,
    pub artifact_bytes: u64,
    #[serde(flatten)]
    pub stats: TensorStats,
    #[serde(skip)]
    pub sums: ErrorSums,
}

/// All tensors of one artifact storage type together.
#[derive(Debug, Clone, Serialize)]
pub struct TypeSummary {
    #[serde(rename = "type")]
    pub ty: String,
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    /// Over every element of these tensors together.
    #[serde(flatten)]
    pub stats: TensorStats,
    /// The lowest per-tensor SNR and cosine among them.
    pub min_snr_db: Option<f64>,
    pub min_cosine: Option<f64>,
    pub worst_tensor: String,
}

/// A tensor one side has and the other has not (or that maps to no GGUF name).
#[derive(Debug, Clone, Serialize)]
pub struct NotCompared {
    pub side: &'static str,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightReport {
    pub compared: usize,
    pub elements: u64,
    pub artifact_bytes: u64,
    pub bits_per_weight: f64,
    #[serde(flatten)]
    pub overall: TensorStats,
    pub by_type: Vec<TypeSummary>,
    /// The tensors with the largest relative error, worst first.
    pub worst: Vec<String>,
    pub tensors: Vec<TensorComparison>,
    pub not_compared: Vec<NotCompared>,
}

/// A reference tensor and the artifact tensor compared with it.
#[derive(Debug, Clone)]
pub struct Pair<'a> {
    pub reference: &'a TensorMeta,
    pub artifact: &'a TensorMeta,
}

/// Matches the artifact's tensors to the reference's; the first architecture,
/// missing tensor or shape mismatch is an error. An untied artifact of a tied
/// reference has its `output.weight` compared with the reference's embeddings.
pub fn pair<'a>(
    reference: &'a TensorSource,
    artifact: &'a TensorSource,
) -> Result<(Vec<Pair<'a>>, Vec<NotCompared>), VerifyError> {
    if reference.arch() != artifact.arch() {
        return Err(VerifyError::ArchMismatch {
            reference: reference.path().to_path_buf(),
            reference_arch: reference.arch().to_string(),
            artifact: artifact.path().to_path_buf(),
            artifact_arch: artifact.arch().to_string(),
        });
    }
    let mut pairs = Vec::new();
    for r in reference.tensors() {
        let a = artifact
            .get(&r.key)
            .ok_or_else(|| VerifyError::MissingTensor {
                artifact: artifact.path().to_path_buf(),
                tensor: r.key.clone(),
                reference_name: r.name.clone(),
            })?;
        pairs.push(Pair {
            reference: r,
            artifact: a,
        });
    }
    let mut not_compared = Vec::new();
    for a in artifact.tensors() {
        if reference.get(&a.key).is_some() {
            continue;
        }
        match (a.key.as_str(), reference.get("token_embd.weight")) {
            ("output.weight", Some(embd)) => pairs.push(Pair {
                reference: embd,
                artifact: a,
            }),
            _ => not_compared.push(NotCompared {
                side: "artifact",
                name: a.name.clone(),
                reason: "not in the reference".into(),
            }),
        }
    }
    for p in &pairs {
        if p.reference.shape != p.artifact.shape {
            return Err(VerifyError::ShapeMismatch {
                tensor: p.artifact.key.clone(),
                reference_name: p.reference.name.clone(),
                reference_shape: p.reference.shape.clone(),
                artifact_name: p.artifact.name.clone(),
                artifact_shape: p.artifact.shape.clone(),
            });
        }
    }
    for (side, src) in [("reference", reference), ("artifact", artifact)] {
        for n in src.unmapped() {
            not_compared.push(NotCompared {
                side,
                name: n.clone(),
                reason: format!("not a tensor of a {} model", src.arch()),
            });
        }
    }
    Ok((pairs, not_compared))
}

/// Compares every pair (in parallel), reporting each finished tensor's elements.
pub fn compare(
    reference: &TensorSource,
    artifact: &TensorSource,
    pairs: &[Pair<'_>],
    not_compared: Vec<NotCompared>,
    worst: usize,
    progress: &dyn Progress,
) -> Result<WeightReport, VerifyError> {
    let tensors: Vec<TensorComparison> = pairs
        .par_iter()
        .map(|p| {
            let r = reference.load(p.reference)?;
            let a = artifact.load(p.artifact)?;
            let sums = ErrorSums::of(&r, &a);
            progress.advance(p.reference.n_elements());
            Ok(TensorComparison {
                tensor: p.artifact.key.clone(),
                reference_name: p.reference.name.clone(),
                artifact_name: p.artifact.name.clone(),
                reference_type: p.reference.storage.clone(),
                artifact_type: p.artifact.storage.clone(),
                shape: p.artifact.shape.clone(),
                elements: p.artifact.n_elements(),
                artifact_bytes: p.artifact.bytes,
                stats: sums.stats(),
                sums,
            })
        })
        .collect::<Result<_, VerifyError>>()?;
    Ok(summarise(tensors, not_compared, worst))
}

fn bpw(bytes: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    }
}

/// Sort key: the relative error, with "infinite" (zero reference) worst.
fn badness(t: &TensorComparison) -> f64 {
    t.stats.rel_rms_error.unwrap_or(f64::INFINITY)
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The per-type and overall figures of a set of compared tensors.
pub fn summarise(
    tensors: Vec<TensorComparison>,
    not_compared: Vec<NotCompared>,
    worst: usize,
) -> WeightReport {
    let mut groups: BTreeMap<&str, Vec<&TensorComparison>> = BTreeMap::new();
    for t in &tensors {
        groups.entry(t.artifact_type.as_str()).or_default().push(t);
    }
    let by_type = groups
        .into_iter()
        .map(|(ty, ts)| {
            let sums = ts
                .iter()
                .fold(ErrorSums::default(), |acc, t| acc.add(&t.sums));
            let bytes = ts.iter().map(|t| t.artifact_bytes).sum();
            let worst = ts
                .iter()
                .max_by(|a, b| badness(a).total_cmp(&badness(b)))
                .map(|t| t.tensor.clone())
                .unwrap_or_default();
            TypeSummary {
                ty: ty.to_string(),
                tensors: ts.len(),
                elements: sums.n,
                bytes,
                bits_per_weight: bpw(bytes, sums.n),
                stats: sums.stats(),
                min_snr_db: ts.iter().fold(None, |m, t| min_opt(m, t.stats.snr_db)),
                min_cosine: ts.iter().fold(None, |m, t| min_opt(m, t.stats.cosine)),
                worst_tensor: worst,
            }
        })
        .collect();
    let overall = tensors
        .iter()
        .fold(ErrorSums::default(), |acc, t| acc.add(&t.sums));
    let artifact_bytes = tensors.iter().map(|t| t.artifact_bytes).sum();
    let mut order: Vec<&TensorComparison> = tensors.iter().collect();
    order.sort_by(|a, b| badness(b).total_cmp(&badness(a)));
    let worst = order.iter().take(worst).map(|t| t.tensor.clone()).collect();
    WeightReport {
        compared: tensors.len(),
        elements: overall.n,
        artifact_bytes,
        bits_per_weight: bpw(artifact_bytes, overall.n),
        overall: overall.stats(),
        by_type,
        worst,
        tensors,
        not_compared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn identical_tensors() {
        let r = noise(1000, 1);
        let s = ErrorSums::of(&r, &r).stats();
        assert_eq!(s.rel_rms_error, Some(0.0));
        assert_eq!(s.max_abs_error, 0.0);
        assert!((s.cosine.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(s.snr_db, None, "no error: infinite SNR");
    }

    #[test]
    fn known_scaling_error() {
        // a = 1.1 r: relative error 0.1 exactly, SNR 20 dB, cosine 1, max |e| = 0.1 max |r|.
        let r = noise(4096, 2);
        let a: Vec<f32> = r.iter().map(|v| v * 1.1).collect();
        let s = ErrorSums::of(&r, &a).stats();
        assert!((s.rel_rms_error.unwrap() - 0.1).abs() < 1e-6, "{s:?}");
        assert!((s.snr_db.unwrap() - 20.0).abs() < 1e-4, "{s:?}");
        assert!((s.cosine.unwrap() - 1.0).abs() < 1e-9);
        let max_r = r.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        assert!((s.max_abs_error - 0.1 * max_r).abs() < 1e-6);
    }

    #[test]
    fn known_additive_noise() {
        // Uniform [-1,1) has variance 1/3; noise of amplitude 0.01 has variance 1e-4/3:
        // SNR = 10 log10(1e4) = 40 dB, relative error 0.01, cosine ≈ 1 - 0.5e-4.
        let n = 1 << 18;
        let r = noise(n, 3);
        let e = noise(n, 4);
        let a: Vec<f32> = r.iter().zip(&e).map(|(r, e)| r + 0.01 * e).collect();
        let s = ErrorSums::of(&r, &a).stats();
        assert!((s.snr_db.unwrap() - 40.0).abs() < 0.1, "{s:?}");
        assert!((s.rel_rms_error.unwrap() - 0.01).abs() < 2e-4, "{s:?}");
        assert!((s.cosine.unwrap() - (1.0 - 0.5e-4)).abs() < 1e-5, "{s:?}");
        assert!(s.max_abs_error <= 0.01 + 1e-6 && s.max_abs_error > 0.009);
    }

    #[test]
    fn zero_reference_and_orthogonal_tensors() {
        let zero = vec![0f32; 8];
        let one = vec![1f32; 8];
        let s = ErrorSums::of(&zero, &one).stats();
        assert_eq!(s.rel_rms_error, None);
        assert_eq!(s.cosine, None);
        let s = ErrorSums::of(&[1.0, 0.0], &[0.0, 1.0]).stats();
        assert_eq!(s.cosine, Some(0.0));
        assert!((s.rel_rms_error.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert!((s.snr_db.unwrap() + 3.0103).abs() < 1e-3);
    }

    fn comparison(name: &str, ty: &str, r: &[f32], a: &[f32], bytes: u64) -> TensorComparison {
        let sums = ErrorSums::of(r, a);
        TensorComparison {
            tensor: name.into(),
            reference_name: name.into(),
            artifact_name: name.into(),
            reference_type: "BF16".into(),
            artifact_type: ty.into(),
            shape: vec![r.len() as u64],
            elements: r.len() as u64,
            artifact_bytes: bytes,
            stats: sums.stats(),
            sums,
        }
    }

    #[test]
    fn per_type_summary_pools_squares_and_ranks_the_worst() {
        let r = noise(1024, 5);
        let small: Vec<f32> = r.iter().map(|v| v * 1.01).collect();
        let big: Vec<f32> = r.iter().map(|v| v * 1.2).collect();
        let ts = vec![
            comparison("a", "Q4_K", &r, &small, 576),
            comparison("b", "Q4_K", &r, &big, 576),
            comparison("c", "Q8_0", &r, &r, 1088),
        ];
        let w = summarise(ts, Vec::new(), 2);
        assert_eq!(w.compared, 3);
        assert_eq!(w.worst, vec!["b".to_string(), "a".to_string()]);
        let q4 = w.by_type.iter().find(|t| t.ty == "Q4_K").unwrap();
        assert_eq!(q4.tensors, 2);
        assert_eq!(q4.bits_per_weight, 4.5);
        assert_eq!(q4.worst_tensor, "b");
        // Pooled: sqrt((0.01² + 0.2²) / 2).
        let expect = ((0.01f64.powi(2) + 0.2f64.powi(2)) / 2.0).sqrt();
        assert!((q4.stats.rel_rms_error.unwrap() - expect).abs() < 1e-6);
        assert!((q4.min_snr_db.unwrap() - 20.0 * (1.0f64 / 0.2).log10()).abs() < 1e-4);
        let q8 = w.by_type.iter().find(|t| t.ty == "Q8_0").unwrap();
        assert_eq!(q8.stats.rel_rms_error, Some(0.0));
        assert_eq!(q8.bits_per_weight, 8.5);
    }
}
