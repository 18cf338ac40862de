//! A latency histogram with real quantile estimates, for canary analysis:
//! lock-free to record, and mergeable (counts add), so windows are
//! differences and a fleet's histograms are sums.
//!
//! # Layout
//! Log-linear, like HDR histograms: values in microseconds, exact below
//! 64 µs, then 32 linear sub-buckets per power of two, so a bucket is at
//! most 1/32 of its value wide (≤ 3.2%), up to 2^29 µs (about 9 minutes); slower
//! values count in the last bucket. A quantile is interpolated inside its
//! bucket. The Prometheus buckets (`stats::BUCKETS`) are far coarser: they
//! bound a quantile only to within 2.5×, which is why a canary with the
//! same latency as stable could read as "25 ms vs 10 ms".

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are counted exactly, one bucket per microsecond.
const EXACT: u64 = 2 * SUB;
/// The highest power of two counted: values up to 2^29 µs (about 9
/// minutes) have buckets of their own.
const MAX_EXPONENT: u32 = 28;
/// Buckets in all: the exact ones, then `SUB` per power of two from
/// 2^(SUB_BITS + 1) up to 2^MAX_EXPONENT.
pub const BUCKETS: usize = EXACT as usize + ((MAX_EXPONENT - SUB_BITS) as usize) * SUB as usize;

/// The bucket of a value in microseconds.
fn index(micros: u64) -> usize {
    if micros < EXACT {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros();
    if exponent > MAX_EXPONENT {
        return BUCKETS - 1;
    }
    let shift = exponent - SUB_BITS;
    let mantissa = (micros >> shift) - SUB;
    EXACT as usize + (exponent - SUB_BITS - 1) as usize * SUB as usize + mantissa as usize
}

/// The lowest value of a bucket and its width, in microseconds.
fn bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < EXACT {
        return (index, 1);
    }
    let octave = (index - EXACT) / SUB;
    let mantissa = (index - EXACT) % SUB;
    let shift = octave + 1;
    ((SUB + mantissa) << shift, 1 << shift)
}

/// Counts of latencies, recorded lock-free.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> HistogramCounts {
        HistogramCounts {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A point-in-time copy of a [`LatencyHistogram`]: windows are
/// differences ([`since`](Self::since)), fleets are sums
/// ([`merge`](Self::merge)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramCounts {
    counts: Box<[u64]>,
}

impl Default for HistogramCounts {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
        }
    }
}

impl HistogramCounts {
    /// What was recorded between `earlier` and `self`.
    pub fn since(&self, earlier: &HistogramCounts) -> HistogramCounts {
        HistogramCounts {
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter())
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// Adds `other`'s counts (another replica's, say) to these.
    pub fn merge(&mut self, other: &HistogramCounts) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Latencies counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency, in ms, under which a share `q` (0..=1) of the counted
    /// ones fall, interpolated inside its bucket; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // The rank of the wanted value, 1-based, as in "the 95th of 100".
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0);
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let (low, width) = bounds(i);
                // Values spread evenly over the bucket: the k-th of n sits
                // k/n of the way across.
                let within = (rank - below as f64) / n as f64;
                return Some((low as f64 + width as f64 * within) / 1000.0);
            }
            below += n;
        }
        None
    }

    /// Latencies certainly slower than `threshold_ms`: those in buckets
    /// that start at or above it (a bucket straddling it counts as not
    /// slower, so a check built on this never blames a canary for the
    /// histogram's resolution).
    pub fn slower_than_ms(&self, threshold_ms: f64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(i, _)| bounds(i).0 as f64 / 1000.0 >= threshold_ms)
            .map(|(_, &n)| n)
            .sum()
    }

    /// The counts, bucket by bucket (for sharing with other replicas).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Counts read back from [`counts`](Self::counts); `None` when the
    /// length is not this layout's.
    pub fn from_counts(counts: Vec<u64>) -> Option<Self> {
        (counts.len() == BUCKETS).then(|| Self {
            counts: counts.into_boxed_slice(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slower_than_counts_only_buckets_wholly_above_the_threshold() {
        let histogram = LatencyHistogram::default();
        for ms in [1, 5, 9, 20, 40] {
            histogram.record(Duration::from_millis(ms));
        }
        let counts = histogram.snapshot();
        assert_eq!(counts.slower_than_ms(10.0), 2);
        assert_eq!(counts.slower_than_ms(0.0), 5);
        assert_eq!(counts.slower_than_ms(100.0), 0);
        // 9 ms shares its bucket with values just above 9 ms: not counted.
        assert_eq!(counts.slower_than_ms(9.001), 2);
    }

    #[test]
    fn every_value_falls_inside_its_bucket_and_buckets_are_narrow() {
        let mut previous = 0;
        for micros in (0..200_000u64).chain([1 << 27, (1 << 28) - 1, (1 << 29) - 1]) {
            let i = index(micros);
            let (low, width) = bounds(i);
            assert!(
                low <= micros && micros < low + width,
                "{micros} in {i}: {low}+{width}"
            );
            assert!(
                width == 1 || width * 32 <= low,
                "{micros}: width {width} of {low}"
            );
            assert!(i >= previous, "buckets grow with the value");
            previous = i;
        }
        assert_eq!(index((1 << 29) - 1), BUCKETS - 1);
        assert_eq!(
            index(1 << 29),
            BUCKETS - 1,
            "slower values count in the last bucket"
        );
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_few_percent_not_a_bucket_bound() {
        let h = LatencyHistogram::default();
        // 1..=1000 ms, evenly.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let counts = h.snapshot();
        for (q, exact) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let estimate = counts.quantile_ms(q).unwrap();
            assert!(
                (estimate - exact).abs() / exact < 0.035,
                "q{q}: {estimate} vs {exact}"
            );
        }
    }

    #[test]
    fn one_latency_for_stable_and_canary_reads_the_same() {
        // The false rollback: both versions at ~10.4 ms.
        let (stable, canary) = (LatencyHistogram::default(), LatencyHistogram::default());
        for i in 0..1000u64 {
            stable.record(Duration::from_micros(10_000 + i % 800));
            canary.record(Duration::from_micros(10_000 + (i * 7) % 800));
        }
        let (s, c) = (
            stable.snapshot().quantile_ms(0.95).unwrap(),
            canary.snapshot().quantile_ms(0.95).unwrap(),
        );
        assert!((c / s - 1.0).abs() < 0.05, "canary {c} vs stable {s}");
    }

    #[test]
    fn windows_are_differences_and_replicas_merge() {
        let h = LatencyHistogram::default();
        for _ in 0..100 {
            h.record(Duration::from_millis(1));
        }
        let before = h.snapshot();
        for _ in 0..100 {
            h.record(Duration::from_millis(100));
        }
        let window = h.snapshot().since(&before);
        assert_eq!(window.total(), 100);
        let p50 = window.quantile_ms(0.5).unwrap();
        assert!((97.0..=103.0).contains(&p50), "{p50}");

        let mut fleet = before.clone();
        fleet.merge(&window);
        assert_eq!(fleet.total(), 200);
        assert!(fleet.quantile_ms(0.25).unwrap() < 1.1);
        assert!(fleet.quantile_ms(0.75).unwrap() > 97.0);
        let back = HistogramCounts::from_counts(fleet.counts().to_vec()).unwrap();
        assert_eq!(back, fleet);
        assert!(HistogramCounts::from_counts(vec![1, 2]).is_none());
        assert_eq!(HistogramCounts::default().quantile_ms(0.5), None);
    }
}
