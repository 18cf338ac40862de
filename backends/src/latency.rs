//! An endpoint's recent latency distribution, for hedging ("hedge once the first
//! attempt is slower than 95% of recent ones").
//!
//! # How it works
//! Lock-free log-scale buckets (each 25% wider than the last, from 10 µs to
//! about a minute), so recording is one atomic add and a percentile is a
//! scan of 72 counters. Every [`WINDOW`] samples all buckets are halved, so
//! the distribution follows the backend as it changes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 72;
const GROWTH: f64 = 1.25;
const FIRST_BUCKET_US: f64 = 10.0;
/// Samples between halvings.
pub const WINDOW: u64 = 2_000;
/// Fewer samples than this give no percentile: too little to trust.
pub const MIN_SAMPLES: u64 = 20;

/// A decaying latency histogram.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU32; BUCKETS],
    since_halving: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            since_halving: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records one response time.
    pub fn record(&self, latency: Duration) {
        self.buckets[bucket(latency)].fetch_add(1, Ordering::Relaxed);
        if self.since_halving.fetch_add(1, Ordering::Relaxed) + 1 == WINDOW {
            // Exactly one recorder sees the count hit the window and halves.
            for b in &self.buckets {
                let _ = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v / 2));
            }
            self.since_halving.store(0, Ordering::Relaxed);
        }
    }

    /// The latency under which `percentile` % of recent responses came
    /// (the bucket's upper bound), or `None` with too few samples.
    pub fn percentile(&self, percentile: f64) -> Option<Duration> {
        Self::merged_percentile(std::iter::once(self), percentile)
    }

    /// The percentile over several histograms together (a pool's
    /// endpoints), or `None` with too few samples in all of them.
    pub fn merged_percentile<'a>(
        histograms: impl IntoIterator<Item = &'a LatencyHistogram>,
        percentile: f64,
    ) -> Option<Duration> {
        let mut counts = [0u32; BUCKETS];
        for histogram in histograms {
            for (count, bucket) in counts.iter_mut().zip(&histogram.buckets) {
                *count = count.saturating_add(bucket.load(Ordering::Relaxed));
            }
        }
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let wanted = (total as f64 * percentile / 100.0).ceil() as u64;
        let mut seen = 0u64;
        for (i, count) in counts.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= wanted {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

fn bucket(latency: Duration) -> usize {
    let micros = latency.as_secs_f64() * 1e6;
    if micros <= FIRST_BUCKET_US {
        return 0;
    }
    ((micros / FIRST_BUCKET_US).ln() / GROWTH.ln())
        .ceil()
        .min((BUCKETS - 1) as f64) as usize
}

fn upper_bound(bucket: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BUCKET_US * GROWTH.powi(bucket as i32) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_land_within_one_bucket() {
        let h = LatencyHistogram::default();
        for i in 1..=100u64 {
            h.record(Duration::from_millis(i));
        }
        let p95 = h.percentile(95.0).unwrap();
        assert!(
            p95 >= Duration::from_millis(95) && p95 <= Duration::from_millis(95 * 5 / 4),
            "{p95:?}"
        );
        let p50 = h.percentile(50.0).unwrap();
        assert!(
            p50 >= Duration::from_millis(50) && p50 <= Duration::from_micros(62_500),
            "{p50:?}"
        );
    }

    #[test]
    fn too_few_samples_give_nothing() {
        let h = LatencyHistogram::default();
        for _ in 0..(MIN_SAMPLES - 1) {
            h.record(Duration::from_millis(1));
        }
        assert_eq!(h.percentile(95.0), None);
        h.record(Duration::from_millis(1));
        assert!(h.percentile(95.0).is_some());
    }

    #[test]
    fn old_samples_fade() {
        let h = LatencyHistogram::default();
        for _ in 0..WINDOW {
            h.record(Duration::from_millis(100));
        }
        // After the halving, a full window of fast samples outweighs them.
        for _ in 0..WINDOW - 1 {
            h.record(Duration::from_millis(1));
        }
        assert!(h.percentile(50.0).unwrap() < Duration::from_millis(2));
    }
}
