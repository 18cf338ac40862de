//! Prometheus metrics at `GET /metrics` on the admin listener: counters and
//! histograms kept in atomics on the hot path, rendered in the text
//! exposition format on scrape. Labels are low-cardinality: route, version
//! class, backend, region, tier (never a path, user or address).
//!
//! Counters that live in a route or pool restart from zero when a reload
//! rebuilds it; Prometheus' `rate()` treats that as a counter reset.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;

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
    buckets: [AtomicU64; BUCKETS.len()],
    /// Cascade rows of this version's requests by who answered them:
    /// stage 1, stage 2, stage 1 standing in for stage 2.
    cascade_rows: [AtomicU64; 3],
}

/// A point-in-time copy of [`VersionStats`]; windows are differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionCounts {
    pub by_class: [u64; 5],
    pub buckets: [u64; BUCKETS.len()],
}

impl VersionStats {
    /// Counts one answer (an error the gateway gave counts by its status).
    pub fn record(&self, status: u16, latency: std::time::Duration) {
        if let Some(counter) = self.by_class.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
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
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

impl VersionCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &VersionCounts) -> VersionCounts {
        VersionCounts {
            by_class: std::array::from_fn(|i| self.by_class[i].saturating_sub(earlier.by_class[i])),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        }
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
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

    /// Upper bound (ms) of the bucket holding quantile `q`.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        bucket_quantile_ms(&self.buckets, q)
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

    fn render(&self, labels: &str, out: &mut String) {
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

    fn render(&self, route: &str, out: &mut String) {
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

/// The whole exposition for one scrape.
pub fn render(snapshot: &Snapshot, reloads: &ReloadStatus) -> String {
    let now = tokio::time::Instant::now();
    let mut out = String::with_capacity(8 * 1024);
    let _ = writeln!(out, "# TYPE cascadia_config_version gauge");
    let _ = writeln!(out, "cascadia_config_version {}", snapshot.version);
    let _ = writeln!(out, "# TYPE cascadia_config_reloads_total counter");
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

    let _ = writeln!(out, "# TYPE cascadia_buffered_request_bytes gauge");
    let _ = writeln!(
        out,
        "cascadia_buffered_request_bytes {}",
        snapshot.runtimes.buffers.used()
    );
    let _ = writeln!(out, "# TYPE cascadia_requests_total counter");
    let _ = writeln!(out, "# TYPE cascadia_request_duration_seconds histogram");
    let _ = writeln!(out, "# TYPE cascadia_shed_total counter");
    let _ = writeln!(out, "# TYPE cascadia_rate_limited_total counter");
    let _ = writeln!(out, "# TYPE cascadia_retries_total counter");
    let _ = writeln!(out, "# TYPE cascadia_hedges_total counter");
    let _ = writeln!(out, "# TYPE cascadia_failovers_total counter");
    let _ = writeln!(out, "# TYPE cascadia_request_faults_total counter");
    let _ = writeln!(out, "# TYPE cascadia_local_answers_total counter");
    let mut routes: Vec<_> = snapshot.routes.iter().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for route in &routes {
        route.stats.render(&route.name, &mut out);
    }
    snapshot.unmatched.render("none", &mut out);
    let _ = writeln!(out, "# TYPE cascadia_upstream_responses_total counter");
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
                served.render(&labels, &mut out);
            }
        }
    }
    let _ = writeln!(out, "# TYPE cascadia_rate_limit_fallbacks_total counter");
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
    let _ = writeln!(out, "# TYPE cascadia_shadow_mirrors_total counter");
    let _ = writeln!(out, "# TYPE cascadia_shadow_rows_total counter");
    let _ = writeln!(out, "# TYPE cascadia_shadow_score_diff histogram");
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
        }
    }
    if let Some(redis) = &snapshot.redis {
        let _ = writeln!(out, "# TYPE cascadia_redis_calls_total counter");
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

    let _ = writeln!(out, "# TYPE cascadia_upstream_attempts_total counter");
    let _ = writeln!(out, "# TYPE cascadia_upstream_failures_total counter");
    let _ = writeln!(out, "# TYPE cascadia_endpoints gauge");
    let _ = writeln!(out, "# TYPE cascadia_region_drained gauge");
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

    let _ = writeln!(out, "# TYPE cascadia_cascade_rows_total counter");
    let _ = writeln!(out, "# TYPE cascadia_cascade_answered_rows_total counter");
    let _ = writeln!(out, "# TYPE cascadia_cascade_degraded_total counter");
    let _ = writeln!(out, "# TYPE cascadia_cascade_stage2_unusable_total counter");
    let _ = writeln!(
        out,
        "# TYPE cascadia_cascade_audit_disagreements_total counter"
    );
    let _ = writeln!(out, "# TYPE cascadia_feature_lookups_total counter");
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
    out
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
