//! Prometheus metrics at `GET /metrics` on the admin listener: the text
//! exposition of the counters in [`crate::core::stats`] and of every other
//! component's, rendered on scrape. Labels are low-cardinality: route,
//! version class, backend, region, tier (never a path, user or address).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;

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
