//! One scored position: the reference's and the artifact's next-token
//! distributions compared, in f64.
//!
//! With `r`, `a` the two logit rows, `Z = Σ exp(x - max x)` and
//! `lse = max x + ln Z`, the KL divergence of the artifact from the reference is
//! `Σ p_i (log p_i - log q_i) = Σ p_i (r_i - a_i) - (lse_r - lse_a)`; one pass over
//! the vocabulary after the maxima gives it, and it is exactly 0 for equal rows.

/// What one position contributes to the figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionScore {
    /// `-ln p_reference(target)`.
    pub nll_ref: f64,
    /// `-ln p_artifact(target)`.
    pub nll_art: f64,
    /// `KL(reference ‖ artifact)` over the whole vocabulary.
    pub kld: f64,
    /// The two most likely tokens (the lowest id on a tie).
    pub top_ref: u32,
    pub top_art: u32,
}

impl PositionScore {
    pub fn p_ref(&self) -> f64 {
        (-self.nll_ref).exp()
    }

    pub fn p_art(&self) -> f64 {
        (-self.nll_art).exp()
    }

    /// `p_artifact(target) - p_reference(target)` (llama.cpp's Δp).
    pub fn delta_p(&self) -> f64 {
        self.p_art() - self.p_ref()
    }

    pub fn same_top(&self) -> bool {
        self.top_ref == self.top_art
    }
}

/// Largest value and its first index.
fn max_arg(x: &[f32]) -> (f64, u32) {
    let mut best = f32::NEG_INFINITY;
    let mut arg = 0u32;
    for (i, &v) in x.iter().enumerate() {
        if v > best {
            best = v;
            arg = i as u32;
        }
    }
    (best as f64, arg)
}

/// Compares the logits both models give at one position whose next token is
/// `target`. The rows must have the same length (the vocabulary) and `target`
/// must index them; callers check both.
pub fn compare_position(reference: &[f32], artifact: &[f32], target: u32) -> PositionScore {
    debug_assert_eq!(reference.len(), artifact.len());
    let (m_r, top_ref) = max_arg(reference);
    let (m_a, top_art) = max_arg(artifact);
    let (mut z_r, mut z_a, mut s) = (0f64, 0f64, 0f64);
    for (&r, &a) in reference.iter().zip(artifact) {
        let (r, a) = (r as f64, a as f64);
        let e_r = (r - m_r).exp();
        z_r += e_r;
        z_a += (a - m_a).exp();
        s += e_r * (r - a);
    }
    let lse_r = m_r + z_r.ln();
    let lse_a = m_a + z_a.ln();
    let t = target as usize;
    PositionScore {
        nll_ref: lse_r - reference[t] as f64,
        nll_art: lse_a - artifact[t] as f64,
        kld: s / z_r - (lse_r - lse_a),
        top_ref,
        top_art,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(x: &[f32]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect()
    }

    #[test]
    fn identical_rows_give_zero_divergence_and_agree() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32) * 0.13 - 5.0)
            .collect();
        let s = compare_position(&row, &row, 17);
        assert_eq!(s.kld, 0.0);
        assert_eq!(s.nll_ref, s.nll_art);
        assert!(s.same_top());
        assert_eq!(s.delta_p(), 0.0);
    }

    #[test]
    fn matches_the_textbook_definitions() {
        let r = [1.0f32, 2.0, 0.5, -1.0, 3.0];
        let a = [1.5f32, 1.0, 0.0, 0.0, 2.5];
        let (p, q) = (softmax(&r), softmax(&a));
        let kld: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        let s = compare_position(&r, &a, 1);
        assert!((s.kld - kld).abs() < 1e-12, "{} vs {kld}", s.kld);
        assert!((s.nll_ref + p[1].ln()).abs() < 1e-12);
        assert!((s.nll_art + q[1].ln()).abs() < 1e-12);
        assert!((s.delta_p() - (q[1] - p[1])).abs() < 1e-12);
        assert_eq!((s.top_ref, s.top_art), (4, 4));
    }

    #[test]
    fn shifted_logits_are_the_same_distribution() {
        let r = [0.3f32, -2.0, 4.0, 1.0];
        let a: Vec<f32> = r.iter().map(|v| v + 100.0).collect();
        let s = compare_position(&r, &a, 0);
        assert!(s.kld.abs() < 1e-9, "{}", s.kld);
    }

    #[test]
    fn different_top_tokens_are_counted() {
        let s = compare_position(&[0.0, 5.0, 1.0], &[0.0, 1.0, 5.0], 2);
        assert!(!s.same_top());
        assert!(s.kld > 1.0);
        assert!(s.delta_p() > 0.5);
    }
}
