//! Prometheus metrics at `GET /metrics` on the admin listener: the text
//! exposition of the counters in [`crate::core::stats`] and of every other
//! component's, rendered on scrape. Labels are low-cardinality: route,
//! version class, backend, region, tier (never a path, user or address).
//!
//! The counters stay lock-free atomics, and each component writes its own
//! sample lines, in whatever order suits it (per route, per pool). The text
//! format wants every sample of a family in one group behind its `# HELP`
//! and `# TYPE`, so a last pass ([`regroup`]) sorts the lines into families
//! and writes each family's header from [`FAMILIES`], the one table of what
//! every family is.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;

/// The content type of [`render`]'s text: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family's samples are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Samples named `{family}_bucket`, `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, kind and `# HELP` text.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

/// Every family the gateway exposes. A sample whose family is missing here
/// still goes out (as `untyped`, so a scrape never loses data), and the
/// tests fail on it.
pub const FAMILIES: &[Family] = &[
    family("cascadia_build_info", Kind::Gauge, "Always 1; the labels name the build: version (Cargo) and commit (CASCADIA_COMMIT at build time, else unknown)."),
    family("cascadia_config_version", Kind::Gauge, "Version of the serving config: 1 at start, plus one per applied reload."),
    family("cascadia_config_reloads_total", Kind::Counter, "Config reloads by result: applied, or rejected (the previous config goes on serving)."),
    family("cascadia_buffered_request_bytes", Kind::Gauge, "Request body bytes the gateway holds in memory now, against limits.max_buffered_bytes."),
    family("cascadia_route_latency_slo_seconds", Kind::Gauge, "The route's latency_slo from config, for alerts that compare the route's latency with it."),
    family("cascadia_requests_total", Kind::Counter, "Requests answered, by route (none: matched no route) and status class; gateway errors included."),
    family("cascadia_request_duration_seconds", Kind::Histogram, "Time from request to response headers, by route."),
    family("cascadia_shed_total", Kind::Counter, "Requests refused with 503 because the route was at max_concurrency."),
    family("cascadia_rate_limited_total", Kind::Counter, "Requests refused with 429 by the route's rate limit."),
    family("cascadia_retries_total", Kind::Counter, "Upstream attempts after the first (hedges not included)."),
    family("cascadia_hedges_total", Kind::Counter, "Hedged second attempts started for slow first attempts."),
    family("cascadia_failovers_total", Kind::Counter, "Answers served by a backend other than the version's first choice."),
    family("cascadia_request_faults_total", Kind::Counter, "Requests whose attempt failed the same way on two endpoints: the request's fault, nothing ejected."),
    family("cascadia_local_answers_total", Kind::Counter, "Answers the gateway gave itself (cascade stage 1 only), by status class."),
    family("cascadia_upstream_responses_total", Kind::Counter, "Upstream answers passed to clients, by route, version, backend, region and status class."),
    family("cascadia_rate_limit_fallbacks_total", Kind::Counter, "Shared rate limit decisions taken locally because Redis did not answer."),
    family("cascadia_shadow_mirrors_total", Kind::Counter, "Requests mirrored to the shadow candidate, by outcome: compared, failed, uncomparable, or dropped (budget, load)."),
    family("cascadia_shadow_rows_total", Kind::Counter, "Compared rows by whether primary and shadow predicted the same class."),
    family("cascadia_shadow_score_diff", Kind::Histogram, "Absolute score difference between primary and shadow, per compared row."),
    family("cascadia_redis_calls_total", Kind::Counter, "Redis calls by outcome: sent, error, or skipped (breaker open, drill)."),
    family("cascadia_upstream_attempts_total", Kind::Counter, "Attempts sent to a backend pool's endpoints."),
    family("cascadia_upstream_failures_total", Kind::Counter, "Attempts to a backend pool's endpoints that failed (connect, reset, timeout, gateway status)."),
    family("cascadia_endpoints", Kind::Gauge, "Endpoints of a backend pool by state: available (may take traffic) or ejected (outlier detection)."),
    family("cascadia_region_drained", Kind::Gauge, "1 while the pool's region is drained (admin API or drill), else 0."),
    family("cascadia_cascade_rows_total", Kind::Counter, "Cascade rows by stage-1 decision: accept, reject (answered locally) or escalate (to stage 2)."),
    family("cascadia_cascade_answered_rows_total", Kind::Counter, "Cascade rows by who answered them: local (stage 1), stage2, or degraded (stage 1 standing in for stage 2)."),
    family("cascadia_cascade_degraded_total", Kind::Counter, "Cascade requests answered by stage 1 in place of stage 2, by reason: deadline or unavailable."),
    family("cascadia_cascade_stage2_unusable_total", Kind::Counter, "Stage-2 answers the cascade could not use (each a 502), by reason."),
    family("cascadia_cascade_audit_disagreements_total", Kind::Counter, "Audited confident rows where stage 2 disagreed with stage 1, by band."),
    family("cascadia_cascade_batches_total", Kind::Counter, "Stage-2 calls that carried the escalations of several requests (micro-batching)."),
    family("cascadia_cascade_batched_requests_total", Kind::Counter, "Requests whose escalation went in a combined stage-2 call."),
    family("cascadia_cascade_batch_retries_total", Kind::Counter, "Requests sent alone after their batch was refused, unusable or could not be combined."),
    family("cascadia_cascade_accept_below", Kind::Gauge, "The cascade's lower threshold in force: the configured one, or lower once the watch's tighten policy moved it."),
    family("cascadia_cascade_recall_drop_target", Kind::Gauge, "The recall drop the watch holds the route to (its max_recall_drop, or the calibration's)."),
    family("cascadia_cascade_recall_drop_bound", Kind::Gauge, "Upper confidence bound of the recall drop over the watch's last windows, from audited and sampled escalated rows."),
    family("cascadia_cascade_guarantee_breached", Kind::Gauge, "1 once the watch found the recall drop above its target (until the config changes the band or the watch), else 0."),
    family("cascadia_cascade_guarantee_breaches_total", Kind::Counter, "Times the watch moved into breached."),
    family("cascadia_cascade_watch_windows_total", Kind::Counter, "Watch windows closed (each window_positives sampled positives)."),
    family("cascadia_cascade_escalate_all", Kind::Gauge, "1 while the watch's escalate_all policy has turned local answers off, else 0."),
    family("cascadia_cascade_feature_psi", Kind::Gauge, "Population stability index of a stage-1 feature over the last drift window, against the model's training reference."),
    family("cascadia_cascade_recorded_rows_total", Kind::Counter, "Rows with both stages' scores written to the route's record file."),
    family("cascadia_cascade_record_dropped_total", Kind::Counter, "Rows the record writer could not take in time (dropped, never waited for)."),
    family("cascadia_feature_lookups_total", Kind::Counter, "Entity feature lookups by the tier that answered: l1, redis, store, or store_failure."),
    family("cascadia_rollout_canary_weight", Kind::Gauge, "Canary weight (percent) the route's rollout set."),
    family("cascadia_rollout_step", Kind::Gauge, "Index of the rollout's current step."),
    family("cascadia_rollout_state", Kind::Gauge, "1 for the rollout's current state, 0 for the others."),
    family("cascadia_rollout_decisions_total", Kind::Counter, "Rollout decisions taken (start, promote, rollback, pause, resume, abort)."),
    family("cascadia_rollout_rollbacks_total", Kind::Counter, "Rollouts rolled back, by a failed check or an operator's abort."),
    family("process_cpu_seconds_total", Kind::Counter, "User and system CPU time spent, in seconds."),
    family("process_resident_memory_bytes", Kind::Gauge, "Resident memory size, in bytes."),
    family("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory size, in bytes."),
    family("process_open_fds", Kind::Gauge, "Open file descriptors."),
    family("process_max_fds", Kind::Gauge, "Soft limit on open file descriptors."),
    family("process_start_time_seconds", Kind::Gauge, "Start time of the process since the Unix epoch, in seconds."),
];

/// The whole exposition for one scrape: the samples of `snapshot`, those
/// `extra` adds (the admin API's rollouts), the build and the process, in
/// one group per family.
pub fn render(
    snapshot: &Snapshot,
    reloads: &ReloadStatus,
    extra: impl FnOnce(&mut String),
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    render_build_info(&mut out);
    render_snapshot(snapshot, reloads, &mut out);
    extra(&mut out);
    render_process(&mut out);
    regroup(&out)
}

/// `cascadia_build_info`: which build is serving.
fn render_build_info(out: &mut String) {
    let _ = writeln!(
        out,
        "cascadia_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        label_value(env!("CARGO_PKG_VERSION")),
        label_value(option_env!("CASCADIA_COMMIT").unwrap_or("unknown"))
    );
}

/// `value` escaped for a label: backslash, double quote and newline.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The samples of the serving snapshot's routes, pools and tiers.
fn render_snapshot(snapshot: &Snapshot, reloads: &ReloadStatus, out: &mut String) {
    let now = tokio::time::Instant::now();
    let _ = writeln!(out, "cascadia_config_version {}", snapshot.version);
    let _ = writeln!(
        out,
        "cascadia_config_reloads_total{{result=\"applied\"}} {}",
        reloads.applied
    );
    let _ = writeln!(
        out,
        "cascadia_config_reloads_total{{result=\"rejected\"}} {}",
        reloads.rejected
    );

    let _ = writeln!(
        out,
        "cascadia_buffered_request_bytes {}",
        snapshot.runtimes.buffers.used()
    );
    let mut routes: Vec<_> = snapshot.routes.iter().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for route in &routes {
        route.stats.render(&route.name, out);
    }
    snapshot.unmatched.render("none", out);
    for route in &routes {
        if let Some(slo) = route.latency_slo {
            let _ = writeln!(
                out,
                "cascadia_route_latency_slo_seconds{{route=\"{}\"}} {}",
                route.name,
                slo.as_secs_f64()
            );
        }
    }
    for route in &routes {
        for target in route.split.targets() {
            for (pool, served) in target.pools.iter().zip(&target.served) {
                let labels = format!(
                    "route=\"{}\",version=\"{}\",backend=\"{}\",region=\"{}\"",
                    route.name,
                    target.version,
                    pool.name(),
                    pool.region()
                );
                served.render(&labels, out);
            }
        }
    }
    for route in &routes {
        if let Some(limiter) = route.rate_limit.as_ref().filter(|l| l.is_shared()) {
            let _ = writeln!(
                out,
                "cascadia_rate_limit_fallbacks_total{{route=\"{}\"}} {}",
                route.name,
                limiter.fallbacks()
            );
        }
    }
    for route in &routes {
        let Some(shadow) = &route.shadow else {
            continue;
        };
        let candidate = &shadow.settings.version;
        for (reason, counter) in [
            ("budget", &shadow.stats.dropped_budget),
            ("load", &shadow.stats.dropped_load),
        ] {
            let _ = writeln!(
                out,
                "cascadia_shadow_mirrors_total{{route=\"{}\",shadow=\"{candidate}\",outcome=\"dropped_{reason}\"}} {}",
                route.name,
                counter.load(Ordering::Relaxed)
            );
        }
        for (primary, pair) in shadow.stats.pairs() {
            let labels = format!(
                "route=\"{}\",primary=\"{primary}\",shadow=\"{candidate}\"",
                route.name
            );
            for (outcome, counter) in [
                ("compared", &pair.compared),
                ("failed", &pair.failed),
                ("uncomparable", &pair.uncomparable),
            ] {
                let _ = writeln!(
                    out,
                    "cascadia_shadow_mirrors_total{{{labels},outcome=\"{outcome}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
            let rows = pair.rows.load(Ordering::Relaxed);
            let agree = pair.rows_agree.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "cascadia_shadow_rows_total{{{labels},class=\"agree\"}} {agree}"
            );
            let _ = writeln!(
                out,
                "cascadia_shadow_rows_total{{{labels},class=\"disagree\"}} {}",
                rows - agree
            );
            let mut cumulative = 0;
            for (bound, n) in pair.diff_histogram() {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "cascadia_shadow_score_diff_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "cascadia_shadow_score_diff_bucket{{{labels},le=\"+Inf\"}} {rows}"
            );
            let _ = writeln!(out, "cascadia_shadow_score_diff_count{{{labels}}} {rows}");
            let _ = writeln!(
                out,
                "cascadia_shadow_score_diff_sum{{{labels}}} {}",
                pair.diff_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
    }
    if let Some(redis) = &snapshot.redis {
        for (outcome, counter) in [
            ("sent", &redis.stats.calls),
            ("error", &redis.stats.errors),
            ("skipped_breaker_open", &redis.stats.skipped_open),
            ("skipped_drill", &redis.stats.skipped_drill),
        ] {
            let _ = writeln!(
                out,
                "cascadia_redis_calls_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }

    let mut pools: Vec<_> = snapshot.pools.values().collect();
    pools.sort_by(|a, b| a.name().cmp(b.name()));
    for pool in pools {
        let (name, region) = (pool.name(), pool.region());
        let attempts: u64 = pool.endpoints().iter().map(|e| e.attempts()).sum();
        let failures: u64 = pool.endpoints().iter().map(|e| e.failures()).sum();
        let ejected = pool
            .endpoints()
            .iter()
            .filter(|e| e.is_ejected(now))
            .count();
        let available = pool
            .endpoints()
            .iter()
            .filter(|e| e.is_available(now))
            .count();
        let labels = format!("backend=\"{name}\",region=\"{region}\"");
        let _ = writeln!(
            out,
            "cascadia_upstream_attempts_total{{{labels}}} {attempts}"
        );
        let _ = writeln!(
            out,
            "cascadia_upstream_failures_total{{{labels}}} {failures}"
        );
        let _ = writeln!(
            out,
            "cascadia_endpoints{{{labels},state=\"available\"}} {available}"
        );
        let _ = writeln!(
            out,
            "cascadia_endpoints{{{labels},state=\"ejected\"}} {ejected}"
        );
        let _ = writeln!(
            out,
            "cascadia_region_drained{{{labels}}} {}",
            u8::from(pool.region_state().is_drained())
        );
    }

    for route in &routes {
        let Some(stage) = &route.cascade else {
            continue;
        };
        let name = &route.name;
        let s = &stage.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (decision, counter) in [
            ("accept", &s.rows_accepted),
            ("reject", &s.rows_rejected),
            ("escalate", &s.rows_escalated),
        ] {
            let _ = writeln!(
                out,
                "cascadia_cascade_rows_total{{route=\"{name}\",decision=\"{decision}\"}} {}",
                load(counter)
            );
        }
        for target in route.split.targets() {
            let rows = target.stats.cascade_rows();
            for (stage, n) in ["local", "stage2", "degraded"].iter().zip(rows) {
                let _ = writeln!(
                    out,
                    "cascadia_cascade_answered_rows_total{{route=\"{name}\",version=\"{}\",stage=\"{stage}\"}} {n}",
                    target.version
                );
            }
        }
        for reason in crate::cascade::UnusableReason::ALL {
            let _ = writeln!(
                out,
                "cascadia_cascade_stage2_unusable_total{{route=\"{name}\",reason=\"{}\"}} {}",
                reason.label(),
                load(s.stage2_unusable.counter(reason))
            );
        }
        for (reason, counter) in [
            ("deadline", &s.degraded_deadline),
            ("unavailable", &s.degraded_unavailable),
        ] {
            let _ = writeln!(
                out,
                "cascadia_cascade_degraded_total{{route=\"{name}\",reason=\"{reason}\"}} {}",
                load(counter)
            );
        }
        for (band, counter) in [
            ("accept", &s.audit_disagree_accept),
            ("reject", &s.audit_disagree_reject),
        ] {
            let _ = writeln!(
                out,
                "cascadia_cascade_audit_disagreements_total{{route=\"{name}\",band=\"{band}\"}} {}",
                load(counter)
            );
        }
        if stage.batcher.is_some() {
            for (family, counter) in [
                ("cascadia_cascade_batches_total", &s.batches),
                (
                    "cascadia_cascade_batched_requests_total",
                    &s.batched_requests,
                ),
                ("cascadia_cascade_batch_retries_total", &s.batch_retries),
            ] {
                let _ = writeln!(out, "{family}{{route=\"{name}\"}} {}", load(counter));
            }
        }
        cascade_guarantee_metrics(out, name, stage);
        if let Some(entity) = &stage.entity {
            let e = entity.stats();
            for (tier, counter) in [
                ("l1", &e.l1_hits),
                ("redis", &e.redis_hits),
                ("store", &e.store_fetches),
                ("store_failure", &e.store_failures),
            ] {
                let _ = writeln!(
                    out,
                    "cascadia_feature_lookups_total{{route=\"{name}\",tier=\"{tier}\"}} {}",
                    load(counter)
                );
            }
        }
    }
}

/// The watch, drift and recorder samples of one cascade route.
fn cascade_guarantee_metrics(
    out: &mut String,
    name: &str,
    stage: &crate::routing::stages::CascadeStage,
) {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "cascadia_cascade_accept_below{{route=\"{name}\"}} {}",
        stage.thresholds().accept_below()
    );
    if let Some(g) = &stage.guarantee {
        let watch = g.watch.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "cascadia_cascade_recall_drop_target{{route=\"{name}\"}} {}",
            g.settings.settings.alpha
        );
        if let Some(verdict) = watch.last() {
            let _ = writeln!(
                out,
                "cascadia_cascade_recall_drop_bound{{route=\"{name}\"}} {}",
                verdict.bound
            );
        }
        // Once breached, a route stays flagged until its config changes: the
        // tighten policy starts its watch over for the new band, which must
        // not clear the alert.
        let breached = load(&g.breaches) > 0;
        let _ = writeln!(
            out,
            "cascadia_cascade_guarantee_breached{{route=\"{name}\"}} {}",
            u8::from(breached)
        );
        let _ = writeln!(
            out,
            "cascadia_cascade_guarantee_breaches_total{{route=\"{name}\"}} {}",
            load(&g.breaches)
        );
        let _ = writeln!(
            out,
            "cascadia_cascade_watch_windows_total{{route=\"{name}\"}} {}",
            watch.windows_closed
        );
        let _ = writeln!(
            out,
            "cascadia_cascade_escalate_all{{route=\"{name}\"}} {}",
            u8::from(g.escalates_all())
        );
    }
    if let Some(drift) = &stage.drift {
        let window = drift.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(psi) = window.psi() {
            for (feature, value) in stage.settings.model.features.iter().zip(psi) {
                // Feature names come from the model file: escaped as the
                // exposition format asks.
                let feature = feature
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = writeln!(
                    out,
                    "cascadia_cascade_feature_psi{{route=\"{name}\",feature=\"{feature}\"}} {value}"
                );
            }
        }
    }
    if let Some(recorder) = &stage.recorder {
        let _ = writeln!(
            out,
            "cascadia_cascade_recorded_rows_total{{route=\"{name}\"}} {}",
            load(&recorder.written)
        );
        let _ = writeln!(
            out,
            "cascadia_cascade_record_dropped_total{{route=\"{name}\"}} {}",
            load(&recorder.dropped)
        );
    }
}

/// Sorts rendered sample lines into families: each family once, as
/// `# HELP`, `# TYPE`, then all its samples in the order first seen, the
/// families in the order their first sample came. A sample belongs to the
/// family of its name, or for a histogram to the name without `_bucket`,
/// `_sum` or `_count`. `#` lines in `text` are dropped: [`FAMILIES`] is
/// the one source of headers. A series rendered twice (the same name and
/// labels) keeps its first value, since a scrape with a duplicate series is
/// invalid.
pub fn regroup(text: &str) -> String {
    let known: HashMap<&str, &Family> = FAMILIES.iter().map(|f| (f.name, f)).collect();
    let mut groups: Vec<(&str, Option<&Family>, Vec<&str>)> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut series = HashSet::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // `name{labels} value`: the series is all but the value.
        if !series.insert(line.rsplit_once(' ').map_or(line, |(s, _)| s)) {
            continue;
        }
        let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
        let (family, spec) = family_of(name, &known);
        let index = *by_name.entry(family).or_insert_with(|| {
            groups.push((family, spec, Vec::new()));
            groups.len() - 1
        });
        groups[index].2.push(line);
    }
    let mut out = String::with_capacity(text.len() + groups.len() * 128);
    for (name, spec, samples) in groups {
        let (kind, help) = spec.map_or(("untyped", "Not documented."), |f| {
            (f.kind.as_str(), f.help)
        });
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for sample in samples {
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// The family a sample named `name` belongs to, and its entry if known.
fn family_of<'a>(
    name: &'a str,
    known: &HashMap<&str, &'static Family>,
) -> (&'a str, Option<&'static Family>) {
    if let Some(family) = known.get(name) {
        return (name, Some(*family));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(family) = known.get(base).filter(|f| f.kind == Kind::Histogram) {
                return (base, Some(*family));
            }
        }
    }
    (name, None)
}

/// Clock ticks per second of the times in `/proc/self/stat` (`USER_HZ`).
/// It is 100 on every Linux architecture; asking `sysconf` would take
/// `libc` and unsafe code for a constant.
const TICKS_PER_SECOND: f64 = 100.0;

/// The `process_*` families, from `/proc` (Linux). A file that cannot be
/// read or parsed leaves its metrics out, so the rest of the scrape stands.
fn render_process(out: &mut String) {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    if let Some(stat) = read("/proc/self/stat").and_then(|s| ProcStat::parse(&s)) {
        let _ = writeln!(out, "process_cpu_seconds_total {}", stat.cpu_seconds());
        let _ = writeln!(out, "process_virtual_memory_bytes {}", stat.vsize);
        if let Some(btime) = read("/proc/stat").and_then(|s| boot_time(&s)) {
            let _ = writeln!(
                out,
                "process_start_time_seconds {}",
                btime as f64 + stat.start_ticks as f64 / TICKS_PER_SECOND
            );
        }
    }
    if let Some(rss) = read("/proc/self/status").and_then(|s| resident_bytes(&s)) {
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }
    // The directory's own descriptor, open while it is listed, is counted
    // too (as the Go and Python clients do).
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Some(max) = read("/proc/self/limits").and_then(|s| max_open_files(&s)) {
        let _ = writeln!(out, "process_max_fds {max}");
    }
}

/// What `process_*` needs from `/proc/self/stat`.
#[derive(Debug, PartialEq)]
struct ProcStat {
    utime: u64,
    stime: u64,
    /// Ticks after boot at which the process started.
    start_ticks: u64,
    /// Virtual memory size, in bytes.
    vsize: u64,
}

impl ProcStat {
    /// Parses `/proc/self/stat` (proc(5)). The command name (field 2) is in
    /// parentheses and may hold spaces and parentheses itself, so fields
    /// are counted from the last `)`.
    fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // proc(5) numbers fields from 1; `rest` starts at field 3 (state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
        })
    }

    fn cpu_seconds(&self) -> f64 {
        (self.utime + self.stime) as f64 / TICKS_PER_SECOND
    }
}

/// `btime` of `/proc/stat`: boot time, in seconds since the Unix epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, in bytes (the file says kB).
fn resident_bytes(text: &str) -> Option<u64> {
    let value = text.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = value.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when
/// it is `unlimited`.
fn max_open_files(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code that writes `/metrics` sample lines (this file without its
    /// table and tests, the rollouts' in the admin API, the routes' stats).
    fn render_sources() -> [&'static str; 3] {
        let this = include_str!("metrics.rs");
        let code = &this[this.find("pub fn render(").unwrap()..this.find("#[cfg(test)]").unwrap()];
        [
            code,
            include_str!("admin.rs"),
            include_str!("core/stats.rs"),
        ]
    }

    #[test]
    fn every_family_has_help_and_a_name_the_render_code_writes() {
        let mut names = HashSet::new();
        for family in FAMILIES {
            assert!(names.insert(family.name), "{} twice", family.name);
            // The format forbids raw newlines in help, and a backslash
            // would need escaping.
            assert!(
                !family.help.is_empty() && !family.help.contains(['\n', '\\']),
                "help of {}",
                family.name
            );
            // A name no render code writes is a stale entry. Samples are
            // written as string literals: `"name{{..` or `"name ..`, a
            // histogram's as `"name_bucket..`, some as `("name", counter)`.
            let written =
                [" ", "{", "\"", "_bucket"].map(|after| format!("\"{}{after}", family.name));
            assert!(
                render_sources()
                    .iter()
                    .any(|source| written.iter().any(|w| source.contains(w.as_str()))),
                "no render code writes {}",
                family.name
            );
        }
    }

    /// A snapshot with a split, a shadow, a cascade with entity features,
    /// a latency SLO and a shared rate limit over a (lazy, unreachable)
    /// Redis: every family but the rollouts' has samples.
    fn rich_snapshot() -> (Snapshot, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let model = r#"{"name":"screen-lr","version":"1","features":["a","b"],"coefficients":[1.0,1.0],"intercept":-5.0}"#;
        std::fs::write(dir.path().join("screen.json"), model).unwrap();
        let config = r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[gateway.redis]
url = "redis://127.0.0.1:1/"

[[backends]]
name = "v1"
region = "us-east"
endpoints = ["127.0.0.1:1001"]

[[backends]]
name = "v2"
region = "us-west"
endpoints = ["127.0.0.1:1002"]

[[routes]]
name = "fraud"
match = { model = "fraud" }
latency_slo = "250ms"
rate_limit = { per_second = 10, burst = 10, key_header = "x-api-key", shared = true }

[[routes.split]]
version = "stable"
weight = 90
backends = ["v1"]

[[routes.split]]
version = "canary"
weight = 10
backends = ["v2"]

[routes.shadow]
version = "v3"
backends = ["v2"]
fraction = 1.0

[[routes]]
name = "screen"
match = { model = "screen" }
backends = ["v1"]

[routes.cascade]
model = "screen.json"
input = "x"
accept_below = 0.2
reject_above = 0.8

[routes.cascade.entity]
key_header = "x-entity"
features = ["b"]
store = "v2"
"#;
        let path = dir.path().join("cascadia.toml");
        std::fs::write(&path, config).unwrap();
        let loaded = cascadia_config::load_file(&path).expect("a valid config");
        let redis = crate::features::RedisTier::new(loaded.config.gateway.redis.clone().unwrap())
            .expect("a lazy Redis client");
        let registry = cascadia_backends::Registry::new();
        let snapshot = Snapshot::build(
            1,
            &loaded,
            &registry,
            Some(std::sync::Arc::new(redis)),
            std::sync::Arc::default(),
        );
        (snapshot, dir)
    }

    #[tokio::test]
    async fn a_snapshot_renders_one_documented_group_per_family() {
        let (snapshot, _dir) = rich_snapshot();
        for route in snapshot.routes.iter() {
            route.stats.record(200, std::time::Duration::from_millis(3));
            route
                .stats
                .record(503, std::time::Duration::from_millis(40));
        }
        let text = render(&snapshot, &ReloadStatus::default(), |out| {
            out.push_str("cascadia_rollout_step{route=\"fraud\"} 1\n");
        });
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let mut current = None;
        let mut families = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(families.insert(name), "{name} has two groups:\n{text}");
                headers.push(("HELP", name));
                current = None;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(headers.last(), Some(&("HELP", name)), "HELP then TYPE");
                assert_ne!(kind, "untyped", "{name} is not in FAMILIES");
                current = FAMILIES.iter().find(|f| f.name == name);
            } else {
                let family = current.unwrap_or_else(|| panic!("{line} is outside a family"));
                let name = &line[..line.find(['{', ' ']).unwrap()];
                assert!(
                    name == family.name
                        || (family.kind == Kind::Histogram && name.starts_with(family.name)),
                    "{line} in {}",
                    family.name
                );
            }
        }
        for expected in [
            "cascadia_build_info",
            "cascadia_route_latency_slo_seconds",
            "cascadia_requests_total",
            "cascadia_request_duration_seconds",
            "cascadia_shadow_mirrors_total",
            "cascadia_cascade_rows_total",
            "cascadia_feature_lookups_total",
            "cascadia_redis_calls_total",
            "cascadia_rate_limit_fallbacks_total",
            "cascadia_endpoints",
            "cascadia_rollout_step",
        ] {
            assert!(families.contains(expected), "no {expected} in:\n{text}");
        }
        assert!(
            text.contains("cascadia_route_latency_slo_seconds{route=\"fraud\"} 0.25\n"),
            "{text}"
        );
    }

    #[test]
    fn regroup_puts_each_family_in_one_group_behind_its_help_and_type() {
        let text = "\
# TYPE cascadia_requests_total counter
cascadia_requests_total{route=\"a\",status_class=\"2xx\"} 3
cascadia_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 3
cascadia_request_duration_seconds_count{route=\"a\"} 3
cascadia_request_duration_seconds_sum{route=\"a\"} 0.5
cascadia_requests_total{route=\"b\",status_class=\"5xx\"} 1
cascadia_request_duration_seconds_bucket{route=\"b\",le=\"+Inf\"} 1
cascadia_requests_total{route=\"b\",status_class=\"5xx\"} 7
mystery_total 2
";
        let expected = format!(
            "\
# HELP cascadia_requests_total {requests}
# TYPE cascadia_requests_total counter
cascadia_requests_total{{route=\"a\",status_class=\"2xx\"}} 3
cascadia_requests_total{{route=\"b\",status_class=\"5xx\"}} 1
# HELP cascadia_request_duration_seconds {duration}
# TYPE cascadia_request_duration_seconds histogram
cascadia_request_duration_seconds_bucket{{route=\"a\",le=\"+Inf\"}} 3
cascadia_request_duration_seconds_count{{route=\"a\"}} 3
cascadia_request_duration_seconds_sum{{route=\"a\"}} 0.5
cascadia_request_duration_seconds_bucket{{route=\"b\",le=\"+Inf\"}} 1
# HELP mystery_total Not documented.
# TYPE mystery_total untyped
mystery_total 2
",
            requests = help("cascadia_requests_total"),
            duration = help("cascadia_request_duration_seconds"),
        );
        assert_eq!(regroup(text), expected);
    }

    fn help(name: &str) -> &'static str {
        FAMILIES.iter().find(|f| f.name == name).unwrap().help
    }

    #[test]
    fn only_histograms_own_suffixed_names() {
        let known: HashMap<&str, &Family> = FAMILIES.iter().map(|f| (f.name, f)).collect();
        // `cascadia_endpoints` is a gauge: `cascadia_endpoints_count` is
        // not one of its samples.
        assert_eq!(
            family_of("cascadia_endpoints_count", &known)
                .1
                .map(|f| f.name),
            None
        );
        assert_eq!(
            family_of("cascadia_shadow_score_diff_sum", &known)
                .1
                .map(|f| f.name),
            Some("cascadia_shadow_score_diff")
        );
    }

    #[test]
    fn proc_files_parse() {
        // A command name with a space and a parenthesis in it.
        let stat = "4242 (cas cadia) R) S 1 4242 4242 0 -1 4194560 1544 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 4096 18446744073709551615";
        let parsed = ProcStat::parse(stat).unwrap();
        assert_eq!(
            parsed,
            ProcStat {
                utime: 250,
                stime: 75,
                start_ticks: 123456,
                vsize: 987654321
            }
        );
        assert_eq!(parsed.cpu_seconds(), 3.25);
        assert_eq!(ProcStat::parse("4242 (truncated"), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            resident_bytes("Name:\tcascadia\nVmSize:\t  100 kB\nVmRSS:\t    2048 kB\n"),
            Some(2048 * 1024)
        );
        let limits = "\
Limit                     Soft Limit           Hard Limit           Units
Max processes             63704                63704                processes
Max open files            1024                 524288               files
";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_come_from_proc() {
        let mut out = String::new();
        render_process(&mut out);
        let value = |name: &str| -> f64 {
            let prefix = format!("{name} ");
            let line = out
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no {name} in {out}"));
            line[prefix.len()..].parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0, "stdin, stdout, stderr");
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }

    #[test]
    fn build_info_names_the_version() {
        let mut out = String::new();
        render_build_info(&mut out);
        assert!(
            out.starts_with(&format!(
                "cascadia_build_info{{version=\"{}\",commit=\"",
                env!("CARGO_PKG_VERSION")
            )),
            "{out}"
        );
        assert!(out.ends_with("\"} 1\n"), "{out}");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
