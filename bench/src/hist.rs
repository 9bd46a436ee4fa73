//! A lock-free log-linear latency histogram (about 3 % precision), shared by every task.
//!
//! One per run rather than one per connection: a per-connection HDR histogram would cost
//! tens of KiB each, and ten thousand connections would swamp the machine under test.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two (precision 1/32).
const SUB_BUCKETS: u64 = 32;
const SUB_BITS: u32 = 5;
/// Powers of two covered above the linear range: up to 2^40 µs, far beyond any run.
const BUCKETS_LEN: usize = (SUB_BUCKETS as usize) * 37;

/// Counts of values in microseconds.
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS_LEN).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

fn index_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = exponent - SUB_BITS;
    let mantissa = value >> shift; // in SUB_BUCKETS..2*SUB_BUCKETS
    let index = (u64::from(shift) + 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS);
    (index as usize).min(BUCKETS_LEN - 1)
}

/// The highest value that falls into bucket `index`.
fn upper_of(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let mantissa = index % SUB_BUCKETS + SUB_BUCKETS;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    /// Records one value (microseconds).
    pub fn record(&self, micros: u64) {
        self.counts[index_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
        self.sum.fetch_add(micros, Ordering::Relaxed);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The exact largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The mean of the recorded values (0 if none).
    pub fn mean(&self) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        self.sum.load(Ordering::Relaxed) as f64 / count as f64
    }

    /// The value at quantile `q` (0..=1), as the upper bound of its bucket (0 if empty).
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count.load(Ordering::Relaxed);
            if seen >= rank {
                return upper_of(index).min(self.max());
            }
        }
        self.max()
    }

    /// p50/p90/p99/p99.9/max/mean in milliseconds, as JSON.
    pub fn to_json_ms(&self) -> serde_json::Value {
        let ms = |us: u64| us as f64 / 1000.0;
        serde_json::json!({
            "count": self.count(),
            "p50_ms": ms(self.quantile(0.50)),
            "p90_ms": ms(self.quantile(0.90)),
            "p99_ms": ms(self.quantile(0.99)),
            "p999_ms": ms(self.quantile(0.999)),
            "max_ms": ms(self.max()),
            "mean_ms": self.mean() / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut previous = 0;
        for value in (0..1_000_000u64).step_by(7) {
            let index = index_of(value);
            assert!(index >= previous);
            previous = index;
            let upper = upper_of(index);
            assert!(upper >= value, "{value} > {upper}");
            assert!(upper - value <= value / 16 + 1, "{value} vs {upper}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        let p50 = h.quantile(0.5);
        assert!((500..=520).contains(&p50), "{p50}");
        assert!(h.quantile(0.99) >= 990);
    }
}
