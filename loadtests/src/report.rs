//! Results: raw per-connection counts that merge, and the [`Report`] printed as text or JSON.

use std::fmt;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scenario::EventRecord;
use crate::timeline::TimelineReport;

/// Histogram range: 1 µs to 60 s, 3 significant figures. Longer values are clamped to 60 s.
const HIST_LOW_US: u64 = 1;
const HIST_HIGH_US: u64 = 60_000_000;
const HIST_SIGFIG: u8 = 3;

/// A latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Records `us` in `hist`, clamped into the histogram's range.
pub fn record_us(hist: &mut Histogram<u64>, us: u64) {
    hist.record(us.clamp(HIST_LOW_US, HIST_HIGH_US))
        .expect("value clamped into range");
}

/// What one connection saw of the measured requests.
#[derive(Debug)]
pub struct Tally {
    /// Latency of 2xx responses, from due time to the end of the body, in µs. Error
    /// responses are left out so that fast failures cannot pull the percentiles down.
    pub latency: Histogram<u64>,
    /// Responses of any status.
    pub completed: u64,
    /// Responses with a non-2xx status.
    pub status_errors: u64,
    /// Connect, I/O and protocol failures.
    pub transport_errors: u64,
    /// Requests with no response within `--timeout`.
    pub timeouts: u64,
    /// Requests still queued or in flight at the hard deadline (end of the window plus
    /// `--timeout`): never sent or never answered.
    pub unfinished: u64,
    /// When the last measured request finished, whatever its outcome.
    pub last_done: Option<Instant>,
    /// The first transport error's message, to help tell a refused connect from a reset.
    pub first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: new_histogram(),
            completed: 0,
            status_errors: 0,
            transport_errors: 0,
            timeouts: 0,
            unfinished: 0,
            last_done: None,
            first_error: None,
        }
    }
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms share bounds");
        self.completed += other.completed;
        self.status_errors += other.status_errors;
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.unfinished += other.unfinished;
        self.last_done = self.last_done.max(other.last_done);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Everything `cascadia-load` reports about one run, or one step of a stepped run.
/// Serialized as one JSON object (one line) per run or step.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `--label`, copied through so result files can be grouped.
    pub label: Option<String>,
    pub url: String,
    pub method: String,
    pub http2: bool,
    /// OIP gRPC `ModelInfer` (`--grpc`); success means `grpc-status: 0`.
    pub grpc: bool,
    pub connections: usize,
    /// The request body's size; with `--rows`, the mean over the distinct batches.
    pub body_bytes: usize,
    /// `--rows`: the file the bodies' rows came from; omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<String>,
    /// `--batch`: rows per request, with `--rows`; omitted otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// This step's rate.
    pub target_rps: f64,
    /// The run's warm-up, before the first step.
    pub warmup_s: f64,
    /// This step's measured time.
    pub duration_s: f64,
    /// Set only for `--rate-steps` runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepInfo>,
    /// Completed responses (any status) per second of the measured window. The window runs
    /// from the end of warm-up until the later of its nominal end and the last response.
    pub achieved_rps: f64,
    /// Measured requests scheduled: `rate × duration`.
    pub sent: u64,
    /// Measured requests that got a response, of any status.
    pub completed: u64,
    /// Measured requests that got a 2xx response.
    pub ok: u64,
    pub errors: Errors,
    /// 2xx latency from each request's due time, in µs.
    pub latency_us: Latency,
    /// How late the pacer handed requests to their connections, in µs. If this is large the
    /// generator, not the system under test, is the bottleneck.
    pub dispatch_lag_us: Lag,
    /// `--pid` processes over the measured window.
    pub processes: Vec<ProcessUsage>,
    /// The generator itself over the measured window.
    pub generator: ProcessUsage,
    /// Clock ticks per second used to convert `/proc` CPU times.
    pub clock_ticks_per_second: u64,
    /// Latency over time, by due time. A step's report holds the buckets that start in it
    /// (the last step also any after the window).
    pub timeline: TimelineReport,
    /// Scenario events that fell in this run or step; omitted without a scenario.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventRecord>,
}

/// Where a step sits in a stepped run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepInfo {
    /// 1-based.
    pub index: usize,
    pub count: usize,
    /// Start of the step, in seconds from the start of the measured window.
    pub start_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Errors {
    /// Non-2xx responses.
    pub status: u64,
    /// Connect, I/O and protocol failures.
    pub transport: u64,
    /// No response within `--timeout`.
    pub timeout: u64,
    /// Never sent or never answered by the end of the run.
    pub unfinished: u64,
    /// The first transport error message, if any.
    pub first_transport_error: Option<String>,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.status + self.transport + self.timeout + self.unfinished
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    /// The percentile SLOs are usually written in.
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Lag {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Lag {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Lag {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

/// CPU and memory of one process over the measured window.
#[derive(Debug, Serialize)]
pub struct ProcessUsage {
    pub pid: u32,
    /// Δ(utime + stime) over the window, in ms (resolution: one clock tick, usually 10 ms).
    pub cpu_ms: f64,
    /// `cpu_ms` per completed request, in µs. `None` when nothing completed.
    pub cpu_us_per_req: Option<f64>,
    /// Share of one CPU used over the window, in percent.
    pub cpu_percent: f64,
    /// `VmRSS` at the end of the window, in KiB.
    pub rss_kib: Option<u64>,
    /// Set when `/proc` could not be read at the end (for example, the process exited).
    pub error: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(step) = &self.step {
            writeln!(
                f,
                "step:         {}/{} from +{:.1}s",
                step.index, step.count, step.start_s
            )?;
        }
        if let Some(label) = &self.label {
            writeln!(f, "label:        {label}")?;
        }
        writeln!(
            f,
            "target:       {} {} ({}, {} connection{}, body {} B)",
            self.method,
            self.url,
            if self.grpc {
                "gRPC ModelInfer, h2"
            } else if self.http2 {
                "h2"
            } else {
                "http/1.1"
            },
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            self.body_bytes,
        )?;
        if let (Some(file), Some(batch)) = (&self.rows, self.batch) {
            writeln!(
                f,
                "rows:         {file}, {batch} row{} per request",
                if batch == 1 { "" } else { "s" }
            )?;
        }
        writeln!(
            f,
            "rate:         {:.1} rps achieved of {} target ({}s warm-up discarded, {}s measured)",
            self.achieved_rps, self.target_rps, self.warmup_s, self.duration_s
        )?;
        writeln!(
            f,
            "requests:     {} sent, {} completed, {} ok",
            self.sent, self.completed, self.ok
        )?;
        let e = &self.errors;
        writeln!(
            f,
            "errors:       {} non-2xx, {} transport, {} timeout, {} unfinished",
            e.status, e.transport, e.timeout, e.unfinished
        )?;
        if let Some(msg) = &e.first_transport_error {
            writeln!(f, "first error:  {msg}")?;
        }
        let l = &self.latency_us;
        writeln!(
            f,
            "latency µs:   p50 {}  p90 {}  p95 {}  p99 {}  p99.9 {}  max {}  (mean {:.1}, n={}, from due time)",
            l.p50, l.p90, l.p95, l.p99, l.p999, l.max, l.mean, l.count
        )?;
        let d = &self.dispatch_lag_us;
        writeln!(
            f,
            "pacer lag µs: p50 {}  p99 {}  max {}",
            d.p50, d.p99, d.max
        )?;
        for p in &self.processes {
            write_process(f, &format!("pid {}", p.pid), p)?;
        }
        write_process(f, "generator", &self.generator)?;
        for e in &self.events {
            writeln!(
                f,
                "event:        +{:.2}s {} {:?}: {} ({:.1} ms): {}",
                e.started_s,
                e.action,
                e.label,
                if e.ok { "ok" } else { "FAILED" },
                e.took_ms,
                e.outcome
            )?;
        }
        Ok(())
    }
}

fn write_process(f: &mut fmt::Formatter<'_>, name: &str, p: &ProcessUsage) -> fmt::Result {
    if let Some(err) = &p.error {
        return writeln!(f, "{name:<13} unavailable: {err}");
    }
    let per_req = p
        .cpu_us_per_req
        .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
    let rss = p.rss_kib.map_or_else(
        || "n/a".to_owned(),
        |v| format!("{:.1} MiB", v as f64 / 1024.0),
    );
    writeln!(
        f,
        "{:<13} CPU {per_req} µs/req ({:.0} ms, {:.1}% of a core), RSS {rss}",
        format!("{name}:"),
        p.cpu_ms,
        p.cpu_percent
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge() {
        let mut a = Tally::default();
        record_us(&mut a.latency, 100);
        a.completed = 1;
        let mut b = Tally {
            completed: 2,
            status_errors: 1,
            first_error: Some("boom".into()),
            ..Tally::default()
        };
        record_us(&mut b.latency, 0);
        record_us(&mut b.latency, u64::MAX);
        a.merge(b);
        assert_eq!(a.completed, 3);
        assert_eq!(a.status_errors, 1);
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.latency.min(), 1);
        assert!(a.latency.max() >= HIST_HIGH_US);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
    }
}
