//! Latency over time: measured requests bucketed by their due time (p50/p99, ok, errors).
//!
//! # How it works
//! Each connection keeps its own [`Timeline`] (no sharing on the request path) and they are
//! merged at the end. A request lands in the bucket of its *due* time, not of its completion,
//! so a stall at 5 s shows up at 5 s in every request it delayed, consistently with the
//! coordinated-omission correction. Bucket histograms use 2 significant figures and grow on
//! demand, so a long run with short buckets stays small in memory (a few KiB per bucket).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are clamped into 1 µs ..= 60 s, as in the main histogram.
const LOW_US: u64 = 1;
const HIGH_US: u64 = 60_000_000;

/// What happened to the requests due in one bucket.
#[derive(Clone, Debug, Default)]
struct BucketTally {
    /// 2xx latencies in µs; allocated on the first one.
    latency: Option<Histogram<u32>>,
    /// Every other outcome: non-2xx, transport, timeout, unfinished.
    errors: u64,
}

impl BucketTally {
    fn merge(&mut self, other: BucketTally) {
        self.errors += other.errors;
        match (&mut self.latency, other.latency) {
            (Some(mine), Some(theirs)) => mine.add(&theirs).expect("auto-resizing histograms"),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// Records into an auto-resizing histogram (growing it as needed); `saturating_record` alone
/// would clamp to its current top instead.
pub(crate) fn record_growing(hist: &mut Histogram<u32>, value: u64) {
    if hist.record(value).is_err() {
        hist.saturating_record(value);
    }
}

/// Per-bucket tallies of measured requests, by due time since `origin`.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Start of the measured window: bucket 0 starts here.
    origin: Instant,
    bucket: Duration,
    buckets: Vec<BucketTally>,
}

impl Timeline {
    /// # Panics
    /// If `bucket` is zero.
    pub fn new(origin: Instant, bucket: Duration) -> Self {
        assert!(!bucket.is_zero(), "timeline buckets must be longer than 0");
        Timeline {
            origin,
            bucket,
            buckets: Vec::new(),
        }
    }

    pub fn bucket(&self) -> Duration {
        self.bucket
    }

    fn slot(&mut self, due: Instant) -> &mut BucketTally {
        let offset = due.saturating_duration_since(self.origin);
        let index = (offset.as_nanos() / self.bucket.as_nanos()) as usize;
        if index >= self.buckets.len() {
            self.buckets.resize_with(index + 1, BucketTally::default);
        }
        &mut self.buckets[index]
    }

    /// A 2xx response to the request due at `due`, `latency_us` after it was due.
    pub fn ok(&mut self, due: Instant, latency_us: u64) {
        let hist = self
            .slot(due)
            .latency
            .get_or_insert_with(|| Histogram::new(2).expect("2 significant figures is valid"));
        record_growing(hist, latency_us.clamp(LOW_US, HIGH_US));
    }

    /// Any other outcome for the request due at `due`.
    pub fn error(&mut self, due: Instant) {
        self.slot(due).errors += 1;
    }

    pub fn merge(&mut self, other: Timeline) {
        if other.buckets.len() > self.buckets.len() {
            self.buckets
                .resize_with(other.buckets.len(), BucketTally::default);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            mine.merge(theirs);
        }
    }

    /// The series, with empty buckets up to at least `window` so a quiet end still shows.
    pub fn finish(&self, window: Duration) -> Vec<Bucket> {
        let covering = window.as_nanos().div_ceil(self.bucket.as_nanos()) as usize;
        let empty = BucketTally::default();
        (0..self.buckets.len().max(covering))
            .map(|i| {
                let b = self.buckets.get(i).unwrap_or(&empty);
                let at = |q: f64| b.latency.as_ref().map(|h| h.value_at_quantile(q));
                let ok = b.latency.as_ref().map_or(0, |h| h.len());
                Bucket {
                    t_s: (self.bucket * i as u32).as_secs_f64(),
                    sent: ok + b.errors,
                    ok,
                    errors: b.errors,
                    p50_us: at(0.50),
                    p99_us: at(0.99),
                    max_us: b.latency.as_ref().map(|h| h.max()),
                }
            })
            .collect()
    }
}

/// One bucket of the series in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// Bucket start, in seconds from the start of the measured window.
    pub t_s: f64,
    /// Measured requests due in this bucket: `ok + errors`.
    pub sent: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Non-2xx, transport errors, timeouts and unfinished requests.
    pub errors: u64,
    /// Percentiles of the 2xx latencies (2 significant figures); `null` with no 2xx.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

/// The series as it appears in the JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineReport {
    /// Bucket width in seconds.
    pub bucket_s: f64,
    pub buckets: Vec<Bucket>,
}

impl TimelineReport {
    /// The buckets that start within `[from, to)` seconds of the measured window.
    pub fn slice(&self, from: f64, to: f64) -> TimelineReport {
        // A small tolerance, so float rounding never drops a bucket at a step boundary.
        let eps = self.bucket_s * 1e-6;
        TimelineReport {
            bucket_s: self.bucket_s,
            buckets: self
                .buckets
                .iter()
                .filter(|b| b.t_s >= from - eps && b.t_s < to - eps)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn buckets_by_due_time() {
        let origin = Instant::now();
        let mut t = Timeline::new(origin, ms(100));
        // Due at 0..99 ms: bucket 0, whatever the latency.
        for i in 0..100 {
            t.ok(origin + ms(i), 1_000 + i * 10);
        }
        // Due at 250 ms: bucket 2; a slow one still lands where it was due.
        t.ok(origin + ms(250), 5_000_000);
        t.error(origin + ms(299));
        t.error(origin + ms(300));
        let series = t.finish(ms(500));
        assert_eq!(series.len(), 5);
        assert_eq!(series[0].ok, 100);
        assert_eq!(series[0].sent, 100);
        let p50 = series[0].p50_us.unwrap();
        assert!((1_480..=1_510).contains(&p50), "p50 {p50}");
        assert!(series[0].p99_us.unwrap() >= 1_970);
        assert_eq!(series[1].sent, 0);
        assert_eq!(series[1].p50_us, None);
        assert_eq!((series[2].ok, series[2].errors), (1, 1));
        assert!(series[2].p99_us.unwrap() >= 4_950_000);
        assert_eq!((series[3].ok, series[3].errors), (0, 1));
        assert!((series[4].t_s - 0.4).abs() < 1e-9);
    }

    #[test]
    fn merges_and_extends() {
        let origin = Instant::now();
        let mut a = Timeline::new(origin, ms(1000));
        let mut b = Timeline::new(origin, ms(1000));
        a.ok(origin, 100);
        b.ok(origin + ms(10), 200);
        b.error(origin + ms(2500));
        // Late responses past the nominal window extend the series.
        b.ok(origin + ms(3100), 50);
        a.merge(b);
        let series = a.finish(ms(2000));
        assert_eq!(series.len(), 4);
        assert_eq!(series[0].ok, 2);
        assert_eq!(series[0].max_us, Some(200));
        assert_eq!(series[2].errors, 1);
        assert_eq!(series[3].ok, 1);
        let report = TimelineReport {
            bucket_s: 1.0,
            buckets: series,
        };
        let slice = report.slice(1.0, 3.0);
        assert_eq!(slice.buckets.len(), 2);
        assert_eq!(slice.buckets[0].t_s, 1.0);
    }

    #[test]
    fn clamps_out_of_range_latencies() {
        let origin = Instant::now();
        let mut t = Timeline::new(origin, ms(10));
        t.ok(origin, 0);
        t.ok(origin, u64::MAX);
        let series = t.finish(ms(10));
        assert_eq!(series[0].ok, 2);
        assert!(series[0].max_us.unwrap() >= HIGH_US);
    }
}
