//! Percentiles over raw samples (microseconds).

/// Nearest-rank percentile (`p` in 0..=100) of an ascending-sorted slice.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // (the epsilon keeps 99.9% of 1000 at rank 999 despite float rounding)
    let rank = (p * sorted.len() as f64 / 100.0 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Summary of a latency sample set, in milliseconds.
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
    /// Sorts `samples_us` in place and summarises them.
    pub fn from_us(samples_us: &mut [u32]) -> Option<Summary> {
        if samples_us.is_empty() {
            return None;
        }
        samples_us.sort_unstable();
        let ms = |v: Option<u32>| v.unwrap_or(0) as f64 / 1000.0;
        let sum: u64 = samples_us.iter().map(|&v| v as u64).sum();
        Some(Summary {
            count: samples_us.len(),
            p50: ms(percentile(samples_us, 50.0)),
            p90: ms(percentile(samples_us, 90.0)),
            p99: ms(percentile(samples_us, 99.0)),
            p999: ms(percentile(samples_us, 99.9)),
            max: ms(samples_us.last().copied()),
            mean: sum as f64 / samples_us.len() as f64 / 1000.0,
        })
    }

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

/// A uniform random sample of at most `cap` values from a stream of any
/// length (Algorithm R), plus the exact count and maximum: percentiles of
/// tens of millions of latencies in bounded memory.
pub struct Reservoir {
    pub cap: usize,
    pub samples: Vec<u32>,
    pub seen: u64,
    pub max: u32,
    rng: crate::ws::XorShift,
}

impl Reservoir {
    pub fn new(cap: usize, seed: u64) -> Reservoir {
        Reservoir {
            cap,
            samples: Vec::with_capacity(cap.min(1 << 16)),
            seen: 0,
            max: 0,
            rng: crate::ws::XorShift::new(seed),
        }
    }

    pub fn add(&mut self, v: u32) {
        self.seen += 1;
        self.max = self.max.max(v);
        if self.samples.len() < self.cap {
            self.samples.push(v);
        } else {
            let j = self.rng.next_u64() % self.seen;
            if (j as usize) < self.cap {
                self.samples[j as usize] = v;
            }
        }
    }

    /// Percentiles of the sample; `count` and `max` are exact.
    pub fn summary(&mut self) -> Option<Summary> {
        let mut s = Summary::from_us(&mut self.samples)?;
        s.count = self.seen as usize;
        s.max = self.max as f64 / 1000.0;
        Some(s)
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.9), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.9), Some(7));
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.9), Some(999));
        assert_eq!(percentile(&v, 50.0), Some(500));
    }

    #[test]
    fn reservoir_is_bounded_and_exact_where_it_says() {
        let mut r = Reservoir::new(1000, 7);
        for v in 0..100_000u32 {
            r.add(v);
        }
        assert_eq!(r.samples.len(), 1000);
        let s = r.summary().unwrap();
        assert_eq!(s.count, 100_000);
        assert_eq!(s.max, 99.999);
        // uniform sample: the median is near the middle
        assert!((s.p50 - 50.0).abs() < 7.0, "{}", s.p50);
        let mut r = Reservoir::new(10, 1);
        assert!(r.summary().is_none());
        r.add(5);
        assert_eq!(r.summary().unwrap().count, 1);
    }

    #[test]
    fn summary_sorts_and_converts() {
        let mut v = vec![3000, 1000, 2000, 4000];
        let s = Summary::from_us(&mut v).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50, 2.0);
        assert_eq!(s.max, 4.0);
        assert_eq!(s.mean, 2.5);
        assert!(Summary::from_us(&mut []).is_none());
    }
}
