//! Latency distributions: an HDR histogram of microseconds (bounded memory
//! however many samples, exact count, 3 significant digits everywhere else).

use hdrhistogram::Histogram;

/// Microsecond samples. 3 significant digits: 0.1% relative error, exact
/// up to 2,048 µs; a few tens of KiB whatever the sample count (a 5M-delivery
/// run used to keep 20 MB of raw samples and sort them).
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        // auto-resizing, so no value is ever out of range
        Hist(Histogram::new(3).expect("3 significant digits is a valid precision"))
    }

    pub fn record_us(&mut self, us: u64) {
        // `record` grows an auto-resizing histogram; `saturating_record`
        // would clamp to the current top instead
        if self.0.record(us).is_err() {
            self.0.saturating_record(us);
        }
    }

    /// Time from `from` to `to`, in microseconds.
    pub fn record_between(&mut self, from: std::time::Instant, to: std::time::Instant) {
        self.record_us(to.saturating_duration_since(from).as_micros().min(u64::MAX as u128) as u64);
    }

    /// Adds every sample of `other` (both auto-resize, so this cannot fail).
    pub fn merge(&mut self, other: &Hist) {
        let _ = self.0.add(&other.0);
    }

    /// Percentiles in milliseconds; None without samples.
    pub fn summary(&self) -> Option<Summary> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        Some(Summary {
            count: self.0.len() as usize,
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: self.0.max() as f64 / 1000.0,
            mean: self.0.mean() / 1000.0,
        })
    }
}

/// Summary of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "p999_ms": round3(self.p999),
            "max_ms": round3(self.max),
            "mean_ms": round3(self.mean),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (ms, n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Hist {
        let mut h = Hist::new();
        for v in values {
            h.record_us(v);
        }
        h
    }

    #[test]
    fn percentiles_are_exact_for_small_values() {
        // below 2,048 µs a 3-digit histogram has one bucket per microsecond
        let s = hist(1..=1000).summary().unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.p999, s.max), (0.5, 0.9, 0.99, 0.999, 1.0));
        let s = hist([7]).summary().unwrap();
        assert_eq!((s.count, s.p50, s.p999, s.max), (1, 0.007, 0.007, 0.007));
        assert!(Hist::new().summary().is_none());
    }

    #[test]
    fn large_values_within_a_thousandth_and_count_exact() {
        let s = hist(0..100_000).summary().unwrap();
        assert_eq!(s.count, 100_000);
        assert!((s.max - 99.999).abs() <= 99.999 * 0.001, "{}", s.max);
        assert!((s.p50 - 50.0).abs() <= 50.0 * 0.001, "{}", s.p50);
        // values beyond any preset range are recorded, not dropped
        let s = hist([u32::MAX as u64 * 10]).summary().unwrap();
        assert!(s.max > 4.0e7, "{}", s.max);
    }

    #[test]
    fn merge_adds_samples_and_mean_converts() {
        let mut a = hist([1500, 500]);
        a.merge(&hist([2000, 1000]));
        let s = a.summary().unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50, 1.0);
        assert_eq!(s.max, 2.0);
        assert_eq!(s.mean, 1.25);
    }
}
