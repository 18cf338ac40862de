//! Failover drills: inject a fault on the way to one region (or take Redis
//! out) for a bounded time, watch what users saw, revert, and watch the
//! target come back.
//!
//! `POST /admin/drills` starts one (`{"region", "fault": "blackhole" |
//! "latency" | "errors" | "redis", "latency_ms", "error_rate",
//! "duration_s", "abort_error_rate", "abort_p99_ms"}`; a Redis drill needs
//! no region). `GET /admin/drills/{id}` reports:
//! - `detect_ms`: until the gateway first noticed: an endpoint of the
//!   region counted unavailable, or a request served without Redis;
//! - `failover_ms`: until the target stopped receiving traffic (a 100 ms
//!   window without any attempt or Redis call);
//! - requests, 5xx errors and an approximate p99 during the drill;
//! - `reentries`: times traffic went back to the faulted target after the
//!   failover (an ejected endpoint's trial, say) while the fault lasted;
//! - `failback_ms`: from the revert until the target served again;
//! - `flaps`: times the target lost its traffic again after failing back;
//! - `note`: why fail-back is missing when no traffic reached the target
//!   after the revert (a Redis drill on a route that never calls Redis);
//! - `steady_ms`: from the revert until the target had served for
//!   [`STEADY_WINDOW`] without a pause and without a failed request.
//!
//! A drill whose error rate passes `abort_error_rate`, or whose p99 passes
//! `abort_p99_ms`, is reverted early and reported `aborted`. The fault is
//! injected by the gateway itself (see `cascadia_backends::Fault` and
//! [`RedisTier::set_drill_down`]); backends and Redis are never touched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cascadia_backends::{Fault, RegionState};

use crate::features::RedisTier;
use serde::Serialize;
use tokio::time::Instant;

use crate::snapshot::{SharedSnapshot, Snapshot};

/// How often a running drill samples the gateway's counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// A region that got no attempt for this long has failed over.
const QUIET_WINDOW: Duration = Duration::from_millis(100);
/// How long after the revert a drill waits for fail-back and steady state.
const FAILBACK_WAIT: Duration = Duration::from_secs(30);
/// Serving without a pause or an error for this long is steady state.
pub const STEADY_WINDOW: Duration = Duration::from_secs(1);
/// Fewest requests before an abort criterion is judged.
const ABORT_MIN_REQUESTS: u64 = 20;
/// Reports kept for `GET /admin/drills`.
const KEEP_REPORTS: usize = 50;

/// What to inject, where, for how long.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    pub fault: DrillFault,
    pub duration: Duration,
    /// Revert early once more than this share of requests fail.
    pub abort_error_rate: f64,
    /// Revert early once the p99 during the drill passes this.
    pub abort_p99: Option<Duration>,
}

/// The fault a drill injects.
#[derive(Debug, Clone)]
pub enum DrillFault {
    /// On the way to every endpoint of a region.
    Region { region: String, fault: Fault },
    /// Redis unreachable: the feature cache and shared rate limits run on
    /// their fallbacks.
    RedisUnavailable,
}

/// The live object a drill acts on.
pub enum DrillTarget {
    Region {
        name: String,
        state: Arc<RegionState>,
    },
    Redis(Arc<RedisTier>),
}

/// A drill's report, filled in as it runs.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub id: u64,
    /// The region drilled; `None` for a Redis drill.
    pub region: Option<String>,
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
    /// The 99th percentile of the answers during the drill, to within a
    /// few percent (a log-linear histogram, not Prometheus buckets).
    pub p99_ms: Option<f64>,
    pub reentries: u64,
    pub failback_ms: Option<u64>,
    pub flaps: u64,
    pub steady_ms: Option<u64>,
    pub abort_reason: Option<String>,
    /// Why a number is missing from a completed report: fail-back could
    /// not be seen because no traffic reached the target after the revert.
    pub note: Option<String>,
    /// With Redis: what every replica's clients saw during the fault (each
    /// replica's published counts, at most 200 ms old, summed).
    pub fleet: Option<FleetTraffic>,
}

/// A drill's numbers over the whole fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetTraffic {
    /// Replicas heard from both when the fault went in and when it came out.
    pub replicas: usize,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Upper bound of the histogram bucket holding the 99th percentile.
    pub p99_ms: Option<f64>,
}

/// The drills this gateway ran or is running.
#[derive(Default)]
pub struct Drills {
    next_id: AtomicU64,
    reports: Mutex<BTreeMap<u64, DrillReport>>,
}

impl Drills {
    /// Starts a drill against `target` (which the caller looked up).
    pub fn start(
        self: &Arc<Self>,
        spec: DrillSpec,
        target: DrillTarget,
        snapshot: SharedSnapshot,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let report = DrillReport {
            id,
            region: match &spec.fault {
                DrillFault::Region { region, .. } => Some(region.clone()),
                DrillFault::RedisUnavailable => None,
            },
            fault: describe(&spec.fault),
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
            reentries: 0,
            failback_ms: None,
            note: None,
            flaps: 0,
            steady_ms: None,
            abort_reason: None,
            fleet: None,
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
        tokio::spawn(async move { drills.run(id, spec, target, snapshot).await });
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

    async fn run(&self, id: u64, spec: DrillSpec, target: DrillTarget, snapshot: SharedSnapshot) {
        let before = Counters::read(&snapshot.load(), &target);
        let redis = snapshot.load().redis.clone();
        let fleet_before = match &redis {
            Some(redis) => crate::fleet::fleet_traffic(redis).await,
            None => None,
        };
        let started = Instant::now();
        target.inject(&spec.fault, true);
        tracing::warn!(drill = id, fault = %describe(&spec.fault), "drill started");

        // During the fault: detection, failover, re-entries, abort checks.
        let mut last_traffic = before.target_traffic;
        let mut quiet_since = started;
        let mut quiet = false;
        let mut detected = None;
        let mut failed_over = None;
        let mut reentries = 0;
        let mut abort = None;
        while started.elapsed() < spec.duration {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let now = Instant::now();
            let current = snapshot.load();
            let counters = Counters::read(&current, &target);
            if detected.is_none() && target.noticed(&current, &before) {
                detected = Some(now - started);
            }
            if counters.target_traffic != last_traffic {
                last_traffic = counters.target_traffic;
                quiet_since = now;
                if quiet {
                    quiet = false;
                    reentries += 1;
                }
            } else if !quiet && now - quiet_since >= QUIET_WINDOW {
                quiet = true;
                failed_over.get_or_insert(quiet_since - started);
            }
            let (requests, errors) = counters.since(&before);
            if requests >= ABORT_MIN_REQUESTS {
                let error_rate = errors as f64 / requests as f64;
                let p99 = counters.p99_since(&before);
                if error_rate > spec.abort_error_rate {
                    abort = Some(format!(
                        "error rate {:.1}% over the limit",
                        100.0 * error_rate
                    ));
                } else if let (Some(limit), Some(p99)) = (spec.abort_p99, p99) {
                    if p99 > limit.as_secs_f64() * 1000.0 {
                        abort = Some(format!("p99 {p99} ms over the limit"));
                    }
                }
                if abort.is_some() {
                    break;
                }
            }
            self.update(id, |r| {
                r.detect_ms = detected.map(millis);
                r.failover_ms = failed_over.map(millis);
                r.reentries = reentries;
            });
        }

        target.inject(&spec.fault, false);
        let reverted = Instant::now();
        let after = Counters::read(&snapshot.load(), &target);
        let fleet = match (&redis, fleet_before) {
            (Some(redis), Some(before)) => crate::fleet::fleet_traffic(redis)
                .await
                .map(|after| fleet_totals(&before, &after)),
            _ => None,
        };
        let (requests, errors) = after.since(&before);
        self.update(id, |r| {
            r.state = "reverted";
            r.detect_ms = detected.map(millis);
            r.failover_ms = failed_over.map(millis);
            r.reentries = reentries;
            r.requests = requests;
            r.errors = errors;
            r.error_rate = if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            };
            r.p99_ms = after.p99_since(&before);
            r.abort_reason = abort.clone();
            r.fleet = fleet;
        });
        tracing::warn!(drill = id, "drill fault reverted");

        // After the revert: fail-back, flaps, and steady state.
        let mut settle = Settle::new(reverted, after.target_traffic, after.errors);
        while reverted.elapsed() < FAILBACK_WAIT && settle.steady.is_none() {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let counters = Counters::read(&snapshot.load(), &target);
            settle.observe(Instant::now(), &counters);
            self.update(id, |r| {
                r.failback_ms = settle.failback.map(millis);
                r.flaps = settle.flaps;
            });
        }
        self.update(id, |r| {
            r.failback_ms = settle.failback.map(millis);
            r.flaps = settle.flaps;
            r.steady_ms = settle.steady.map(millis);
            if settle.failback.is_none() {
                r.note = Some(match &target {
                    DrillTarget::Redis(_) => format!(
                        "no request called Redis within {}s of the revert, so fail-back was not seen; \
                         drill under traffic that uses the feature cache or a shared rate limit",
                        FAILBACK_WAIT.as_secs()
                    ),
                    _ => format!(
                        "no attempt reached the region within {}s of the revert, so fail-back was not seen",
                        FAILBACK_WAIT.as_secs()
                    ),
                });
            }
            r.state = if abort.is_some() {
                "aborted"
            } else {
                "completed"
            };
        });
    }
}

/// The fleet's traffic between two readings: each replica's own
/// difference (a replica missing from either, or restarted, is left out).
fn fleet_totals(
    before: &std::collections::HashMap<String, crate::fleet::Traffic>,
    after: &std::collections::HashMap<String, crate::fleet::Traffic>,
) -> FleetTraffic {
    let mut sum = crate::fleet::Traffic::default();
    let mut replicas = 0;
    for (replica, now) in after {
        if let Some(delta) = before.get(replica).and_then(|then| now.since(then)) {
            sum.add(&delta);
            replicas += 1;
        }
    }
    FleetTraffic {
        replicas,
        requests: sum.requests,
        errors: sum.errors,
        error_rate: if sum.requests == 0 {
            0.0
        } else {
            sum.errors as f64 / sum.requests as f64
        },
        p99_ms: crate::core::stats::bucket_quantile_ms(&sum.buckets, 0.99),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Tracks the target after the revert: when it serves again, whether it
/// loses its traffic again (a flap), and when it has served steadily.
struct Settle {
    reverted: Instant,
    last_traffic: u64,
    last_errors: u64,
    /// When the current unbroken stretch of serving began.
    serving_since: Option<Instant>,
    last_served: Instant,
    last_error: Instant,
    failback: Option<Duration>,
    flaps: u64,
    steady: Option<Duration>,
}

impl Settle {
    fn new(reverted: Instant, traffic: u64, errors: u64) -> Self {
        Self {
            reverted,
            last_traffic: traffic,
            last_errors: errors,
            serving_since: None,
            last_served: reverted,
            last_error: reverted,
            failback: None,
            flaps: 0,
            steady: None,
        }
    }

    fn observe(&mut self, now: Instant, counters: &Counters) {
        if counters.errors != self.last_errors {
            self.last_errors = counters.errors;
            self.last_error = now;
        }
        if counters.target_traffic != self.last_traffic {
            self.last_traffic = counters.target_traffic;
            self.last_served = now;
            if self.serving_since.is_none() {
                self.serving_since = Some(now);
                self.failback.get_or_insert(now - self.reverted);
            }
        } else if self.serving_since.is_some() && now - self.last_served >= QUIET_WINDOW {
            // Failed back, then lost its traffic again.
            self.serving_since = None;
            self.flaps += 1;
        }
        if let Some(since) = self.serving_since {
            let from = since.max(self.last_error);
            if now - from >= STEADY_WINDOW {
                self.steady = Some(from - self.reverted);
            }
        }
    }
}

impl DrillTarget {
    fn inject(&self, fault: &DrillFault, on: bool) {
        match (self, fault) {
            (DrillTarget::Region { state, .. }, DrillFault::Region { fault, .. }) => {
                state.set_fault(on.then_some(*fault));
            }
            (DrillTarget::Redis(redis), DrillFault::RedisUnavailable) => redis.set_drill_down(on),
            // The admin API pairs them; a mismatch injects nothing.
            _ => {}
        }
    }

    /// Whether the gateway has noticed the fault.
    fn noticed(&self, snapshot: &Snapshot, before: &Counters) -> bool {
        match self {
            DrillTarget::Region { name, .. } => region_unhealthy(snapshot, name),
            DrillTarget::Redis(redis) => {
                redis.stats.skipped_drill.load(Ordering::Relaxed) > before.redis_skipped
            }
        }
    }
}

/// The gateway's counters a drill compares before and after.
struct Counters {
    requests: u64,
    errors: u64,
    /// Every version's answers, in the log-linear histogram rollouts use:
    /// a p99 to within a few percent, not a Prometheus bucket's bound.
    latency: crate::core::histogram::HistogramCounts,
    /// Attempts sent to the region, or calls sent to Redis.
    target_traffic: u64,
    redis_skipped: u64,
}

impl Counters {
    fn read(snapshot: &Snapshot, target: &DrillTarget) -> Self {
        let mut counters = Counters {
            requests: 0,
            errors: 0,
            latency: Default::default(),
            target_traffic: 0,
            redis_skipped: 0,
        };
        for route in snapshot.routes.iter() {
            let (requests, errors) = route.stats.totals();
            counters.requests += requests;
            counters.errors += errors;
            for target in route.split.targets() {
                counters.latency.merge(&target.stats.counts().latency);
            }
        }
        match target {
            DrillTarget::Region { name, .. } => {
                counters.target_traffic = snapshot
                    .pools
                    .values()
                    .filter(|p| p.region() == name)
                    .flat_map(|p| p.endpoints())
                    .map(|e| e.attempts())
                    .sum();
            }
            DrillTarget::Redis(redis) => {
                counters.target_traffic = redis.stats.calls.load(Ordering::Relaxed);
                counters.redis_skipped = redis.stats.skipped_drill.load(Ordering::Relaxed);
            }
        }
        counters
    }

    fn since(&self, before: &Counters) -> (u64, u64) {
        (
            self.requests.saturating_sub(before.requests),
            self.errors.saturating_sub(before.errors),
        )
    }

    fn p99_since(&self, before: &Counters) -> Option<f64> {
        self.latency.since(&before.latency).quantile_ms(0.99)
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

fn describe(fault: &DrillFault) -> String {
    match fault {
        DrillFault::Region { fault, .. } => match fault {
            Fault::Blackhole => "blackhole".to_owned(),
            Fault::Latency(d) => format!("latency {}ms", d.as_millis()),
            Fault::Errors { per_million } => {
                format!("errors {:.1}%", f64::from(*per_million) / 10_000.0)
            }
        },
        DrillFault::RedisUnavailable => "redis unavailable".to_owned(),
    }
}
