//! Route data of the features a route may carry: a cascade's stage 1 and
//! a shadow's target, with the counters that outlive reloads. Data only:
//! what is done with it lives in [`crate::cascade`] and [`crate::shadow`],
//! which sit above routing and forwarding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cascadia_cascade::drift::DriftWindow;
use cascadia_cascade::watch::GuaranteeWatch;
use cascadia_cascade::Thresholds;
use cascadia_config::Cascade;
use serde::Serialize;

use crate::core::stats::BUCKETS;
use crate::routing::Target;

/// A route's stage 1: its settings, entity lookup and counters.
#[derive(Debug)]
pub struct CascadeStage {
    pub settings: Cascade,
    /// `x-cascadia-stage1-model`: `name/version` of the model, formatted
    /// once per config rather than per answer.
    pub model_header: http::HeaderValue,
    /// Entity features through the feature cache, when configured.
    pub entity: Option<crate::features::EntityLookup>,
    /// Carried across reloads with the route.
    pub stats: Arc<CascadeStats>,
    /// The online watch of the calibration's guarantee, when configured;
    /// carried across reloads while its settings and band stay the same.
    pub guarantee: Option<Arc<Guarantee>>,
    /// PSI per feature, when configured (carried while the model and
    /// window stay the same).
    pub drift: Option<Arc<Mutex<DriftWindow>>>,
    /// Writes sampled rows with both stages' scores, when configured.
    pub recorder: Option<Arc<super::record::Recorder>>,
    /// Gathers concurrent escalations into one stage-2 call per split
    /// version, when `[routes.cascade.batch]` is set.
    pub batcher: Option<Arc<EscalationBatcher>>,
}

/// Escalations gathering by split version.
pub type EscalationBatcher = crate::core::coalesce::Coalescer<Arc<str>, BatchItem, BatchReply>;

/// One request's escalated rows, waiting in a batch.
#[derive(Debug)]
pub struct BatchItem {
    /// The stage-2 request for this request's rows alone.
    pub sub: cascadia_oip::json::InferRequest,
    /// How long this request can wait for stage 2's answer.
    pub budget: std::time::Duration,
}

/// What a batch member gets back from the leader.
#[derive(Debug)]
pub enum BatchReply {
    /// Its rows' scores, in order, from the combined call.
    Answered {
        scores: Vec<f64>,
        model_version: Option<String>,
        backend: Option<http::HeaderValue>,
    },
    /// Stage 2 could not be reached: the route's `on_unavailable` decides.
    Unavailable,
    /// The combined call was refused or its answer unusable, or the
    /// requests could not be combined: send these rows alone, so one bad
    /// request cannot fail the others.
    Alone(BatchItem),
}

impl CascadeStage {
    /// The band in force: the configured one, unless the watch's policy
    /// has tightened it or turned local answers off.
    pub fn thresholds(&self) -> Thresholds {
        match &self.guarantee {
            Some(g) => g.thresholds(self.settings.thresholds),
            None => self.settings.thresholds,
        }
    }
}

/// One route's guarantee, watched: the running bound and the band the
/// route's policy has moved to (`accept_below` only ever goes down, so a
/// breach can only make the route escalate more).
#[derive(Debug)]
pub struct Guarantee {
    pub settings: cascadia_config::Watch,
    pub watch: Mutex<GuaranteeWatch>,
    /// The lower threshold in force (f64 bits).
    accept_below: AtomicU64,
    escalate_all: AtomicBool,
    /// Times the watch moved into `breached`.
    pub breaches: AtomicU64,
    /// Times the policy lowered `accept_below`.
    pub tightenings: AtomicU64,
}

impl Guarantee {
    pub fn new(settings: cascadia_config::Watch, configured: Thresholds) -> Self {
        Self {
            watch: Mutex::new(GuaranteeWatch::new(settings.settings)),
            settings,
            accept_below: AtomicU64::new(configured.accept_below().to_bits()),
            escalate_all: AtomicBool::new(false),
            breaches: AtomicU64::new(0),
            tightenings: AtomicU64::new(0),
        }
    }

    pub fn accept_below(&self) -> f64 {
        f64::from_bits(self.accept_below.load(Ordering::Relaxed))
    }

    pub fn escalates_all(&self) -> bool {
        self.escalate_all.load(Ordering::Relaxed)
    }

    fn thresholds(&self, configured: Thresholds) -> Thresholds {
        if self.escalates_all() {
            // Nothing is below 0 or above 1: every row escalates.
            return Thresholds::new(0.0, 1.0).expect("0 and 1 are in order");
        }
        Thresholds::new(self.accept_below(), configured.reject_above()).unwrap_or(configured)
    }

    /// Lowers `accept_below` to `factor` of itself, not below `floor`;
    /// returns the new value.
    pub fn tighten(&self, factor: f64, floor: f64) -> f64 {
        let next = (self.accept_below() * factor)
            .max(floor)
            .min(self.accept_below());
        self.accept_below.store(next.to_bits(), Ordering::Relaxed);
        self.tightenings.fetch_add(1, Ordering::Relaxed);
        next
    }

    pub fn escalate_all(&self) {
        self.escalate_all.store(true, Ordering::Relaxed);
    }
}

/// Counters of one cascade route (carried across reloads). The
/// `rows_accepted` / `rejected` / `escalated` say what stage 1 *decided*;
/// the `answered_*` ones say who *answered* each row in the end.
#[derive(Debug, Default, Serialize)]
pub struct CascadeStats {
    pub requests: AtomicU64,
    pub rows_accepted: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub rows_escalated: AtomicU64,
    /// Rows answered by stage 1, confident.
    pub answered_local: AtomicU64,
    /// Rows answered by stage 2.
    pub answered_stage2: AtomicU64,
    /// Rows stage 1 answered for an unavailable or too slow stage 2.
    pub answered_degraded: AtomicU64,
    /// Stage-2 answers that could not be used (each a 502), by reason.
    pub stage2_unusable: UnusableCounts,
    /// Stage-2 calls that carried the escalations of several requests.
    pub batches: AtomicU64,
    /// Requests whose escalation went in such a call.
    pub batched_requests: AtomicU64,
    /// Requests sent alone after their batch was refused (or could not be
    /// combined).
    pub batch_retries: AtomicU64,
    pub degraded_deadline: AtomicU64,
    pub degraded_unavailable: AtomicU64,
    pub audits: AtomicU64,
    /// Rows stage 1 accepted (negative) that stage 2 called positive.
    pub audit_disagree_accept: AtomicU64,
    /// Rows stage 1 rejected (positive) that stage 2 called negative.
    pub audit_disagree_reject: AtomicU64,
    pub audit_rows: AtomicU64,
    pub audit_failures: AtomicU64,
}

/// Unusable answers by reason (carried across reloads with the route).
#[derive(Debug, Default, Serialize)]
pub struct UnusableCounts {
    pub encoding: AtomicU64,
    pub malformed: AtomicU64,
    pub too_large: AtomicU64,
    pub missing_output: AtomicU64,
    pub datatype: AtomicU64,
    pub shape: AtomicU64,
    pub not_probability: AtomicU64,
}

impl UnusableCounts {
    pub fn counter(&self, reason: UnusableReason) -> &AtomicU64 {
        match reason {
            UnusableReason::Encoding => &self.encoding,
            UnusableReason::Malformed => &self.malformed,
            UnusableReason::TooLarge => &self.too_large,
            UnusableReason::MissingOutput => &self.missing_output,
            UnusableReason::Datatype => &self.datatype,
            UnusableReason::Shape => &self.shape,
            UnusableReason::NotProbability => &self.not_probability,
        }
    }

    pub fn bump(&self, reason: UnusableReason) {
        self.counter(reason).fetch_add(1, Ordering::Relaxed);
    }
}

/// The kinds of unusable answer, each counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnusableReason {
    /// A content coding the gateway cannot decode, or a corrupt one.
    Encoding,
    /// Not an OIP answer (JSON or protobuf that does not parse).
    Malformed,
    /// Over the body limit.
    TooLarge,
    MissingOutput,
    Datatype,
    Shape,
    NotProbability,
}

impl UnusableReason {
    pub const ALL: [Self; 7] = [
        Self::Encoding,
        Self::Malformed,
        Self::TooLarge,
        Self::MissingOutput,
        Self::Datatype,
        Self::Shape,
        Self::NotProbability,
    ];

    /// A low-cardinality label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Encoding => "encoding",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::MissingOutput => "missing_output",
            Self::Datatype => "datatype",
            Self::Shape => "shape",
            Self::NotProbability => "not_probability",
        }
    }
}

/// Upper bounds of the |score difference| histogram.
pub const DIFF_BUCKETS: [f64; 7] = [0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0];
/// A route's shadow: where mirrors go, and the comparison so far.
#[derive(Debug)]
pub struct Shadow {
    pub settings: cascadia_config::Shadow,
    /// The candidate's pools, with its upstream model name and version.
    pub target: Target,
    pub stats: Arc<ShadowStats>,
}

/// Comparisons per primary version, and the drops; carried across reloads.
#[derive(Debug, Default)]
pub struct ShadowStats {
    pub(crate) in_flight: AtomicUsize,
    pub dropped_budget: AtomicU64,
    pub dropped_load: AtomicU64,
    pub(crate) pairs: Mutex<HashMap<Arc<str>, Arc<PairStats>>>,
}

/// The comparison of one primary version with the candidate.
#[derive(Debug, Default)]
pub struct PairStats {
    /// Mirrors whose answers were compared.
    pub compared: AtomicU64,
    /// Mirrors that failed (transport error, timeout, non-2xx).
    pub failed: AtomicU64,
    /// Mirrors whose answers could not be compared (shapes differ, not
    /// OIP JSON, too long, or the client left before its answer ended).
    pub uncomparable: AtomicU64,
    pub rows: AtomicU64,
    pub rows_agree: AtomicU64,
    /// Counts of |score difference| per [`DIFF_BUCKETS`] bound.
    pub(crate) diff: [AtomicU64; DIFF_BUCKETS.len()],
    pub(crate) diff_sum_micros: AtomicU64,
    /// Time to the response head, per [`BUCKETS`] bound.
    pub(crate) primary_latency: [AtomicU64; BUCKETS.len()],
    pub(crate) shadow_latency: [AtomicU64; BUCKETS.len()],
    /// Sum of (candidate − primary) head latency, µs.
    pub(crate) latency_diff_micros: AtomicI64,
}
