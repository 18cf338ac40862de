//! What the cascade does with stage 2's second opinion on sampled rows:
//! feeds the online watch (and acts on its verdict with the route's
//! policy), and hands the rows to the recorder.
//!
//! Sampled rows are the rows of audited requests (answered locally, then
//! re-asked of stage 2) and the escalated rows of requests sampled at the
//! same `audit_fraction`: one uniform sample, so its share of misses among
//! stage 2's positives estimates the recall drop. Local rows of a request
//! that also escalated rows are not audited (with one row per request, the
//! usual shape, there are none).

use cascadia_cascade::watch::WatchState;
use cascadia_cascade::Decision;
use cascadia_config::WatchPolicy;

use crate::routing::stages::CascadeStage;

/// Stage 2 calls a row positive at this probability: the audits' and the
/// calibration's default.
const STAGE2_POSITIVE: f64 = 0.5;

/// One sampled row.
pub struct Sampled<'a> {
    pub features: &'a [f64],
    pub stage1: f64,
    pub stage2: f64,
    pub decision: Decision,
}

/// Counts a sample of rows toward the watch and the recording.
pub fn observe<'a>(stage: &CascadeStage, route: &str, rows: impl IntoIterator<Item = Sampled<'a>>) {
    let (mut misses, mut positives) = (0u64, 0u64);
    for row in rows {
        let positive = row.stage2 >= STAGE2_POSITIVE;
        positives += u64::from(positive);
        misses += u64::from(positive && row.decision == Decision::Accept);
        if let Some(recorder) = &stage.recorder {
            let decision = match row.decision {
                Decision::Accept => "accept",
                Decision::Reject => "reject",
                Decision::Escalate => "escalate",
            };
            recorder.record(row.features, row.stage1, row.stage2, decision);
        }
    }
    let Some(guarantee) = &stage.guarantee else {
        return;
    };
    if positives == 0 {
        return;
    }
    let verdict = {
        let mut watch = guarantee.watch.lock().unwrap_or_else(|e| e.into_inner());
        let Some(verdict) = watch.record(misses, positives) else {
            return;
        };
        // A tightened band is a new band: the old evidence is not about it.
        if verdict.state == WatchState::Breached
            && matches!(guarantee.settings.policy, WatchPolicy::Tighten { .. })
        {
            watch.restart();
        }
        verdict
    };
    if verdict.state != WatchState::Breached {
        return;
    }
    if verdict.breached_now {
        guarantee
            .breaches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let alpha = guarantee.settings.settings.alpha;
    match guarantee.settings.policy {
        WatchPolicy::Alert => {
            if verdict.breached_now {
                tracing::warn!(
                    route,
                    bound = verdict.bound,
                    misses = verdict.misses,
                    positives = verdict.positives,
                    alpha,
                    "cascade guarantee breached: the recall drop's upper bound is above its target (policy: alert)"
                );
            }
        }
        WatchPolicy::Tighten { factor, floor } => {
            let before = guarantee.accept_below();
            let after = guarantee.tighten(factor, floor);
            tracing::warn!(
                route,
                bound = verdict.bound,
                misses = verdict.misses,
                positives = verdict.positives,
                alpha,
                accept_below_before = before,
                accept_below = after,
                "cascade guarantee breached: band tightened (more rows escalate)"
            );
        }
        WatchPolicy::EscalateAll => {
            if !guarantee.escalates_all() {
                guarantee.escalate_all();
                tracing::warn!(
                    route,
                    bound = verdict.bound,
                    misses = verdict.misses,
                    positives = verdict.positives,
                    alpha,
                    "cascade guarantee breached: every row now escalates until the config changes"
                );
            }
        }
    }
}

/// Whether this request's stage-2 answers join the sample: the audit's
/// coin, so escalated and audited rows are sampled alike.
pub fn sampled(stage: &CascadeStage) -> bool {
    let fraction = stage.settings.audit_fraction;
    (stage.guarantee.is_some() || stage.recorder.is_some())
        && fraction > 0.0
        && fastrand::f64() < fraction
}
