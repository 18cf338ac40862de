//! Failover drills: inject a fault on the way to one region for a bounded
//! time, watch what users saw, revert, and watch the region come back.
//!
//! `POST /admin/drills` starts one (`{"region", "fault": "blackhole" |
//! "latency" | "errors", "latency_ms", "error_rate", "duration_s",
//! "abort_error_rate"}`); `GET /admin/drills/{id}` reports:
//! - `detect_ms`: until the gateway first counted an endpoint of the region
//!   unavailable;
//! - `failover_ms`: until the region stopped receiving attempts (a 100 ms
//!   window without any);
//! - requests, 5xx errors and an approximate p99 during the drill;
//! - `failback_ms`: from the revert until the region served again.
//!
//! A drill whose error rate passes `abort_error_rate` is reverted early.
//! The fault is injected by the gateway itself (see
//! `cascadia_backends::Fault`); the backends are never touched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cascadia_backends::{Fault, RegionState};
use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::BUCKETS;
use crate::snapshot::{SharedSnapshot, Snapshot};

/// How often a running drill samples the gateway's counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// A region that got no attempt for this long has failed over.
const QUIET_WINDOW: Duration = Duration::from_millis(100);
/// How long after the revert a drill waits for fail-back.
const FAILBACK_WAIT: Duration = Duration::from_secs(30);
/// Reports kept for `GET /admin/drills`.
const KEEP_REPORTS: usize = 50;

/// What to inject, where, for how long.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    pub region: String,
    pub fault: Fault,
    pub duration: Duration,
    /// Revert early once more than this share of requests fail.
    pub abort_error_rate: f64,
}

/// A drill's report, filled in as it runs.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub id: u64,
    pub region: String,
    pub fault: String,
    pub duration_ms: u64,
    /// `running`, `reverted` (fail-back pending), `completed` or `aborted`.
    pub state: &'static str,
    pub started_unix_ms: u64,
    pub detect_ms: Option<u64>,
    pub failover_ms: Option<u64>,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Upper bound of the histogram bucket holding the 99th percentile.
    pub p99_ms: Option<f64>,
    pub failback_ms: Option<u64>,
    pub abort_reason: Option<String>,
}

/// The drills this gateway ran or is running.
#[derive(Default)]
pub struct Drills {
    next_id: AtomicU64,
    reports: Mutex<BTreeMap<u64, DrillReport>>,
}

impl Drills {
    /// Starts a drill against `region` (whose state the caller looked up).
    pub fn start(
        self: &Arc<Self>,
        spec: DrillSpec,
        region: Arc<RegionState>,
        snapshot: SharedSnapshot,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let report = DrillReport {
            id,
            region: spec.region.clone(),
            fault: describe(spec.fault),
            duration_ms: spec.duration.as_millis() as u64,
            state: "running",
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            detect_ms: None,
            failover_ms: None,
            requests: 0,
            errors: 0,
            error_rate: 0.0,
            p99_ms: None,
            failback_ms: None,
            abort_reason: None,
        };
        {
            let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
            reports.insert(id, report);
            while reports.len() > KEEP_REPORTS {
                let oldest = *reports.keys().next().expect("not empty");
                reports.remove(&oldest);
            }
        }
        let drills = Arc::clone(self);
        tokio::spawn(async move { drills.run(id, spec, region, snapshot).await });
        id
    }

    /// One report.
    pub fn report(&self, id: u64) -> Option<DrillReport> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every kept report, newest first.
    pub fn reports(&self) -> Vec<DrillReport> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .rev()
            .cloned()
            .collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut DrillReport)) {
        if let Some(report) = self
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            f(report);
        }
    }

    async fn run(
        &self,
        id: u64,
        spec: DrillSpec,
        region: Arc<RegionState>,
        snapshot: SharedSnapshot,
    ) {
        let before = Counters::read(&snapshot.load(), &spec.region);
        let started = Instant::now();
        region.set_fault(Some(spec.fault));
        tracing::warn!(drill = id, region = %spec.region, fault = %describe(spec.fault), "drill started");

        let mut last_attempts = before.region_attempts;
        let mut quiet_since = started;
        let mut detected = None;
        let mut failed_over = None;
        let mut abort = None;
        while started.elapsed() < spec.duration {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let now = Instant::now();
            let current = snapshot.load();
            let counters = Counters::read(&current, &spec.region);
            if detected.is_none() && region_unhealthy(&current, &spec.region) {
                detected = Some(now - started);
            }
            if counters.region_attempts != last_attempts {
                last_attempts = counters.region_attempts;
                quiet_since = now;
            } else if failed_over.is_none() && now - quiet_since >= QUIET_WINDOW {
                failed_over = Some(quiet_since - started);
            }
            let (requests, errors) = counters.since(&before);
            if requests >= 20 && errors as f64 / requests as f64 > spec.abort_error_rate {
                abort = Some(format!(
                    "error rate {:.1}% over the limit",
                    100.0 * errors as f64 / requests as f64
                ));
                break;
            }
            self.update(id, |r| {
                r.detect_ms = detected.map(|d| d.as_millis() as u64);
                r.failover_ms = failed_over.map(|d| d.as_millis() as u64);
            });
        }

        region.set_fault(None);
        let reverted = Instant::now();
        let after = Counters::read(&snapshot.load(), &spec.region);
        let (requests, errors) = after.since(&before);
        self.update(id, |r| {
            r.state = "reverted";
            r.detect_ms = detected.map(|d| d.as_millis() as u64);
            r.failover_ms = failed_over.map(|d| d.as_millis() as u64);
            r.requests = requests;
            r.errors = errors;
            r.error_rate = if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            };
            r.p99_ms = after.p99_since(&before);
            r.abort_reason = abort.clone();
        });
        tracing::warn!(drill = id, region = %spec.region, "drill fault reverted");

        // Fail-back: the region serves again (after its hold-down).
        let reverted_attempts = after.region_attempts;
        let mut failback = None;
        while reverted.elapsed() < FAILBACK_WAIT {
            tokio::time::sleep(SAMPLE_EVERY).await;
            if Counters::read(&snapshot.load(), &spec.region).region_attempts > reverted_attempts {
                failback = Some(reverted.elapsed());
                break;
            }
        }
        self.update(id, |r| {
            r.failback_ms = failback.map(|d| d.as_millis() as u64);
            r.state = if abort.is_some() {
                "aborted"
            } else {
                "completed"
            };
        });
    }
}

/// The gateway's counters a drill compares before and after.
struct Counters {
    requests: u64,
    errors: u64,
    buckets: [u64; BUCKETS.len()],
    region_attempts: u64,
}

impl Counters {
    fn read(snapshot: &Snapshot, region: &str) -> Self {
        let mut counters = Counters {
            requests: 0,
            errors: 0,
            buckets: [0; BUCKETS.len()],
            region_attempts: 0,
        };
        for route in snapshot.routes.iter() {
            let (requests, errors) = route.stats.totals();
            counters.requests += requests;
            counters.errors += errors;
            for (sum, n) in counters.buckets.iter_mut().zip(route.stats.bucket_counts()) {
                *sum += n;
            }
        }
        counters.region_attempts = snapshot
            .pools
            .values()
            .filter(|p| p.region() == region)
            .flat_map(|p| p.endpoints())
            .map(|e| e.attempts())
            .sum();
        counters
    }

    fn since(&self, before: &Counters) -> (u64, u64) {
        (
            self.requests.saturating_sub(before.requests),
            self.errors.saturating_sub(before.errors),
        )
    }

    fn p99_since(&self, before: &Counters) -> Option<f64> {
        let deltas: Vec<u64> = self
            .buckets
            .iter()
            .zip(before.buckets)
            .map(|(a, b)| a.saturating_sub(b))
            .collect();
        let total: u64 = deltas.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (bound, n) in BUCKETS.iter().zip(deltas) {
            seen += n;
            if seen >= wanted {
                return Some(bound * 1000.0);
            }
        }
        None
    }
}

fn region_unhealthy(snapshot: &Snapshot, region: &str) -> bool {
    let now = Instant::now();
    snapshot
        .pools
        .values()
        .filter(|p| p.region() == region)
        .flat_map(|p| p.endpoints())
        .any(|e| !e.is_available(now))
}

fn describe(fault: Fault) -> String {
    match fault {
        Fault::Blackhole => "blackhole".to_owned(),
        Fault::Latency(d) => format!("latency {}ms", d.as_millis()),
        Fault::Errors { per_million } => {
            format!("errors {:.1}%", f64::from(per_million) / 10_000.0)
        }
    }
}
