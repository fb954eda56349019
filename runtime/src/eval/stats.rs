//! Means with standard errors and percentiles, as llama-perplexity reports them:
//! the standard error of a mean is `sqrt(var / (n - 1))` with the population
//! variance, and a percentile interpolates linearly between the two sorted
//! values around `fraction × (n - 1)`.

/// Mean and standard error of the mean (0 for fewer than two samples).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MeanError {
    pub mean: f64,
    pub error: f64,
}

/// Running sums for a mean and its standard error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moments {
    n: u64,
    sum: f64,
    sum2: f64,
}

impl Moments {
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum2 += x * x;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        self.sum / self.n as f64
    }

    pub fn mean_error(&self) -> MeanError {
        let mean = self.mean();
        let error = if self.n < 2 {
            0.0
        } else {
            let var = (self.sum2 / self.n as f64 - mean * mean).max(0.0);
            (var / (self.n - 1) as f64).sqrt()
        };
        MeanError { mean, error }
    }

    /// Root mean square.
    pub fn rms(&self) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        (self.sum2 / self.n as f64).sqrt()
    }
}

/// A share of `hits` in `n` trials and its binomial standard error.
pub fn proportion(hits: u64, n: u64) -> MeanError {
    if n == 0 {
        return MeanError {
            mean: f64::NAN,
            error: 0.0,
        };
    }
    let p = hits as f64 / n as f64;
    let error = if n < 2 {
        0.0
    } else {
        (p * (1.0 - p) / (n - 1) as f64).sqrt()
    };
    MeanError { mean: p, error }
}

/// The `fraction` percentile (0..=1) of `sorted` (ascending, not empty).
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[n - 1];
    }
    let pos = fraction * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let w = pos - lo as f64;
    (1.0 - w) * sorted[lo] + w * sorted[hi]
}

/// Sorts ascending; NaN (which the callers never produce) sorts last.
pub fn sort(values: &mut [f64]) {
    values.sort_by(|a, b| a.total_cmp(b));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error() {
        let mut m = Moments::default();
        for x in [1.0, 2.0, 3.0, 4.0] {
            m.push(x);
        }
        let me = m.mean_error();
        assert_eq!(me.mean, 2.5);
        // population variance 1.25, / (n-1) = 0.41667
        assert!((me.error - (1.25f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.rms() - 7.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn percentiles_interpolate() {
        let v = [0.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile(&v, 0.5), 20.0);
        assert_eq!(percentile(&v, 0.99), 39.6);
        assert_eq!(percentile(&v, 1.0), 40.0);
        assert_eq!(percentile(&v, 0.0), 0.0);
        assert_eq!(percentile(&[3.0], 0.9), 3.0);
    }

    #[test]
    fn proportions() {
        let p = proportion(3, 4);
        assert_eq!(p.mean, 0.75);
        assert!((p.error - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(proportion(5, 5).error, 0.0);
    }
}
