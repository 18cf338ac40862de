//! Request counters and latency histograms, kept in atomics on the hot
//! path and rendered by [`crate::metrics`] on scrape.
//!
//! Counters that live in a route or pool restart from zero when a reload
//! rebuilds it; Prometheus' `rate()` treats that as a counter reset.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Index of the [`BUCKETS`] bucket for `latency`; the last one for anything
/// slower (windowed histograms, which have no `+Inf`).
pub fn latency_bucket(latency: Duration) -> usize {
    let seconds = latency.as_secs_f64();
    BUCKETS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(BUCKETS.len() - 1)
}

/// Upper bound, in ms, of the [`BUCKETS`] bucket holding quantile `q` of
/// `counts` (one count per bucket); `None` when there are none.
pub fn bucket_quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (bound, n) in BUCKETS.iter().zip(counts) {
        seen += n;
        if seen >= wanted {
            return Some(bound * 1000.0);
        }
    }
    None
}

/// Requests of one route: by status class, and their latency.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Index 0..=4 for 1xx..5xx.
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Requests refused by load shedding.
    pub shed: AtomicU64,
    /// Requests refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Attempts after the first, hedges not included.
    pub retries: AtomicU64,
    /// Hedged second attempts started.
    pub hedges: AtomicU64,
    /// Answers served by a backend other than the version's first choice.
    pub failovers: AtomicU64,
    /// Requests whose attempt failed the same way on two endpoints: the
    /// request's fault (a query of death), so nothing was ejected.
    pub request_faults: AtomicU64,
    /// Answers from the gateway itself (the cascade's stage 1), by class.
    local_by_class: [AtomicU64; 5],
}

/// One version's answers (by status class) and latency, for canary
/// analysis: the rollout compares two of these over the same window.
#[derive(Debug, Default)]
pub struct VersionStats {
    by_class: [AtomicU64; 5],
    /// Fine enough for real quantiles (canary analysis compares them).
    latency: crate::core::histogram::LatencyHistogram,
    /// Cascade rows of this version's requests by who answered them:
    /// stage 1, stage 2, stage 1 standing in for stage 2.
    cascade_rows: [AtomicU64; 3],
}

/// A point-in-time copy of [`VersionStats`]; windows are differences.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionCounts {
    pub by_class: [u64; 5],
    pub latency: crate::core::histogram::HistogramCounts,
}

impl VersionStats {
    /// Counts one answer (an error the gateway gave counts by its status).
    pub fn record(&self, status: u16, latency: std::time::Duration) {
        if let Some(counter) = self.by_class.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(latency);
    }

    /// Counts a cascade answer's rows by the stage that answered them.
    pub fn record_cascade_rows(&self, counts: cascadia_cascade::StageCounts) {
        for (counter, n) in
            self.cascade_rows
                .iter()
                .zip([counts.local, counts.stage2, counts.degraded])
        {
            if n > 0 {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }

    /// Rows answered locally, by stage 2 and degraded, in that order.
    pub fn cascade_rows(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.cascade_rows[i].load(Ordering::Relaxed))
    }

    pub fn counts(&self) -> VersionCounts {
        VersionCounts {
            by_class: std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed)),
            latency: self.latency.snapshot(),
        }
    }
}

impl VersionCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &VersionCounts) -> VersionCounts {
        VersionCounts {
            by_class: std::array::from_fn(|i| self.by_class[i].saturating_sub(earlier.by_class[i])),
            latency: self.latency.since(&earlier.latency),
        }
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    /// Adds `other`'s counts (another replica's) to these.
    pub fn add(&mut self, other: &VersionCounts) {
        for (mine, theirs) in self.by_class.iter_mut().zip(other.by_class) {
            *mine = mine.saturating_add(theirs);
        }
        self.latency.merge(&other.latency);
    }

    /// Share of 5xx answers.
    pub fn error_rate(&self) -> f64 {
        let requests = self.requests();
        if requests == 0 {
            0.0
        } else {
            self.by_class[4] as f64 / requests as f64
        }
    }

    /// The latency (ms) at quantile `q`, estimated to within a few
    /// percent (not a bucket's bound).
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        self.latency.quantile_ms(q)
    }

    /// Answers certainly slower than `threshold_ms`.
    pub fn slower_than_ms(&self, threshold_ms: f64) -> u64 {
        self.latency.slower_than_ms(threshold_ms)
    }
}

/// Responses by status class, for one (route, version, backend).
#[derive(Debug, Default)]
pub struct ClassCounters([AtomicU64; 5]);

impl ClassCounters {
    /// Counts one response.
    pub fn record(&self, status: u16) {
        if let Some(counter) = self.0.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn render(&self, labels: &str, out: &mut String) {
        for (i, counter) in self.0.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "cascadia_upstream_responses_total{{{labels},status_class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
    }
}

impl RouteStats {
    /// Records one finished request (time to response headers).
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// (requests, 5xx responses) so far.
    pub fn totals(&self) -> (u64, u64) {
        let count = self
            .by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        (count, self.by_class[4].load(Ordering::Relaxed))
    }

    /// Histogram bucket counts so far (for deltas over a window).
    pub fn bucket_counts(&self) -> [u64; BUCKETS.len()] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    pub(crate) fn render(&self, route: &str, out: &mut String) {
        for (i, counter) in self.by_class.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "cascadia_requests_total{{route=\"{route}\",status_class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "cascadia_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "cascadia_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "cascadia_request_duration_seconds_count{{route=\"{route}\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "cascadia_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "cascadia_shed_total{{route=\"{route}\"}} {}",
            self.shed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "cascadia_rate_limited_total{{route=\"{route}\"}} {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
        for (name, counter) in [
            ("cascadia_retries_total", &self.retries),
            ("cascadia_hedges_total", &self.hedges),
            ("cascadia_failovers_total", &self.failovers),
            ("cascadia_request_faults_total", &self.request_faults),
        ] {
            let _ = writeln!(
                out,
                "{name}{{route=\"{route}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        for (i, counter) in self.local_by_class.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "cascadia_local_answers_total{{route=\"{route}\",status_class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
    }

    /// Counts an answer the gateway gave itself (stage 1).
    pub fn record_local(&self, status: u16) {
        if let Some(counter) = self
            .local_by_class
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_histograms_bucket_and_read_quantiles() {
        assert_eq!(latency_bucket(Duration::from_micros(300)), 0);
        assert_eq!(latency_bucket(Duration::from_millis(3)), 3);
        assert_eq!(
            latency_bucket(Duration::from_secs(60)),
            BUCKETS.len() - 1,
            "slower than the last bound lands in the last bucket"
        );
        let mut counts = [0u64; BUCKETS.len()];
        counts[0] = 98; // ≤ 0.5 ms
        counts[4] = 2; // ≤ 10 ms
        assert_eq!(bucket_quantile_ms(&counts, 0.5), Some(0.5));
        assert_eq!(bucket_quantile_ms(&counts, 0.99), Some(10.0));
        assert_eq!(bucket_quantile_ms(&[0; BUCKETS.len()], 0.99), None);
    }
}
