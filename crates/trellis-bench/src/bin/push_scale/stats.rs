//! Percentiles of small samples.

use serde::Serialize;

/// Nearest-rank percentiles (p99 of 50 samples is the largest of them).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Leaves out NaNs (missing values).
    pub fn of(mut values: Vec<f64>) -> Summary {
        values.retain(|v| !v.is_nan());
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let rank = |p: f64| values[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            n,
            min: values[0],
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: values[n - 1],
            mean: values.iter().sum::<f64>() / n as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn nearest_rank() {
        let s = Summary::of((1..=50).map(f64::from).chain([f64::NAN]).collect());
        assert_eq!((s.n, s.min, s.p50, s.p90, s.p99, s.max), (50, 1.0, 25.0, 45.0, 50.0, 50.0));
        let s = Summary::of((1..=200).map(f64::from).collect());
        assert_eq!((s.p50, s.p99), (100.0, 198.0));
        assert_eq!(Summary::of(Vec::new()).n, 0);
    }
}
