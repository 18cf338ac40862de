//! Choosing the band with a guarantee: the statistics behind `cascadia
//! calibrate`, and the calibration artifact it writes and routes load.
//!
//! # What is bounded
//! A calibration row has the stage-1 score, whether it is a positive (by
//! label, or by stage 2), and whether stage 2 would have flagged it. The
//! **recall drop** of a lower threshold `t` is the share of positives that
//! the cascade answers locally as negative (score below `t`) although
//! stage 2 alone would have caught them. Symmetrically, the **false-alarm
//! rise** of an upper threshold `u` is the share of negatives the cascade
//! flags locally (score above `u`) although stage 2 would have cleared them.
//!
//! # How (Learn-then-Test, fixed-sequence)
//! For each candidate `t`, from the safest (lowest) up, the null hypothesis
//! "the drop at `t` exceeds α" is tested with the binomial p-value
//! P(Bin(n, α) ≤ k), `k` the misses among `n` positives (it is valid
//! because a risk above α makes so few misses that unlikely). The drop only
//! grows with `t`, so the hypotheses are tested in that order and the walk
//! stops at the first one not rejected: fixed-sequence testing needs no
//! multiplicity correction. The two sides share δ (Bonferroni, δ/2 each).
//! With probability at least 1 − δ over the calibration draw, both chosen
//! thresholds keep their risk within α, **if** the traffic the band then
//! serves is exchangeable with the calibration rows: recalibrate on drift.
//! The reported bound is the one-sided Clopper–Pearson upper limit at
//! 1 − δ/2 of the chosen threshold's observed rate.

/// One calibration row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationRow {
    /// Stage 1's probability of the positive class.
    pub score: f64,
    /// The truth the guarantee is about: the label, or stage 2's answer.
    pub positive: bool,
    /// Whether stage 2 alone answers positive (equal to `positive` when
    /// the truth is stage 2's).
    pub stage2_positive: bool,
}

/// A band chosen with its guarantee.
#[derive(Debug, Clone, PartialEq)]
pub struct Certified {
    pub accept_below: f64,
    pub reject_above: f64,
    /// Share of rows answered locally at this band.
    pub local_share: f64,
    /// Misses among positives at `accept_below`, and the positives.
    pub misses: u64,
    pub positives: u64,
    /// Clopper–Pearson upper bound of the recall drop at 1 − δ/2.
    pub recall_drop_bound: f64,
    /// False alarms among negatives at `reject_above`, and the negatives.
    pub false_alarms: u64,
    pub negatives: u64,
    pub false_alarm_bound: f64,
}

/// Why no band could be certified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error("α and δ must be in (0, 1)")]
    BadTarget,
    #[error("the calibration set has no {0}: nothing bounds that side")]
    NoRows(&'static str),
    #[error(
        "too few rows to answer anything locally at this α and δ: {positives} positives and {negatives} negatives (each side is tested at δ/2 = {side_delta}; zero errors among n rows bound a rate near -ln(δ/2)/n)"
    )]
    TooFewRows {
        positives: u64,
        negatives: u64,
        side_delta: f64,
    },
    #[error(
        "the certified band escalates {escalated:.1}% of rows, above the allowed {allowed:.1}%"
    )]
    EscalatesTooMuch { escalated: f64, allowed: f64 },
}

/// P(X ≤ k) for X ~ Binomial(n, p), summed in logs (exact for the sizes a
/// calibration set has; O(k)).
pub fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let (ln_p, ln_q) = (p.ln(), (1.0 - p).ln());
    // The j = 0 term, then each next one by the ratio of successive terms.
    let mut ln_term = n as f64 * ln_q;
    let mut sum = ln_term.exp();
    for j in 0..k {
        ln_term += ((n - j) as f64 / (j + 1) as f64).ln() + ln_p - ln_q;
        sum += ln_term.exp();
    }
    sum.min(1.0)
}

/// The one-sided Clopper–Pearson upper bound at confidence 1 − `delta` on
/// a rate with `k` events in `n` trials: the `p` with P(Bin(n, p) ≤ k) = δ.
pub fn clopper_pearson_upper(k: u64, n: u64, delta: f64) -> f64 {
    if n == 0 || k >= n {
        return 1.0;
    }
    let (mut low, mut high) = (k as f64 / n as f64, 1.0);
    // The CDF falls as p rises: bisect to well below any rate quoted.
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        if binomial_cdf(k, n, mid) > delta {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// The one-sided Clopper–Pearson lower bound at confidence 1 − `delta`:
/// the `p` with P(Bin(n, p) ≥ k) = δ (0 when `k` is 0).
pub fn clopper_pearson_lower(k: u64, n: u64, delta: f64) -> f64 {
    if k == 0 || n == 0 {
        return 0.0;
    }
    // By symmetry: k events are n − k non-events.
    1.0 - clopper_pearson_upper(n - k.min(n), n, delta)
}

/// The widest band (most rows answered locally) whose recall drop and
/// false-alarm rise are each at most `alpha` with probability 1 − `delta`,
/// optionally escalating at most `max_escalation` of the rows.
pub fn certify(
    rows: &[CalibrationRow],
    alpha: f64,
    delta: f64,
    max_escalation: Option<f64>,
) -> Result<Certified, CalibrationError> {
    if !(alpha > 0.0 && alpha < 1.0 && delta > 0.0 && delta < 1.0) {
        return Err(CalibrationError::BadTarget);
    }
    let side_delta = delta / 2.0;
    let positives = rows.iter().filter(|r| r.positive).count() as u64;
    let negatives = rows.len() as u64 - positives;
    if positives == 0 {
        return Err(CalibrationError::NoRows("positives"));
    }
    if negatives == 0 {
        return Err(CalibrationError::NoRows("negatives"));
    }
    // Lower threshold: walk up through the scores of the rows that would
    // be missed (positives stage 2 catches), safest first.
    let mut catchable: Vec<f64> = rows
        .iter()
        .filter(|r| r.positive && r.stage2_positive)
        .map(|r| r.score)
        .collect();
    catchable.sort_by(f64::total_cmp);
    // Upper threshold: walk down through the negatives stage 2 clears.
    let mut clearable: Vec<f64> = rows
        .iter()
        .filter(|r| !r.positive && !r.stage2_positive)
        .map(|r| r.score)
        .collect();
    clearable.sort_by(|a, b| b.total_cmp(a));
    // A side with too few rows to certify even one step answers nothing
    // locally (accept below 0, flag above 1): a risk of exactly zero.
    let mut accept_below = walk(&catchable, positives, alpha, side_delta, true).unwrap_or(0.0);
    let mut reject_above = walk(&clearable, negatives, alpha, side_delta, false).unwrap_or(1.0);
    if accept_below == 0.0 && reject_above == 1.0 {
        return Err(CalibrationError::TooFewRows {
            positives,
            negatives,
            side_delta,
        });
    }
    // The two sides must not cross: a row cannot be both.
    if reject_above < accept_below {
        let middle = 0.5 * (accept_below + reject_above);
        accept_below = middle;
        reject_above = middle;
    }
    // The counts are those of the band returned, whatever moved it.
    let misses = catchable.iter().filter(|&&s| s < accept_below).count() as u64;
    let false_alarms = clearable.iter().filter(|&&s| s > reject_above).count() as u64;
    let local = rows
        .iter()
        .filter(|r| r.score < accept_below || r.score > reject_above)
        .count();
    let local_share = local as f64 / rows.len() as f64;
    if let Some(allowed) = max_escalation {
        let escalated = 1.0 - local_share;
        if escalated > allowed {
            return Err(CalibrationError::EscalatesTooMuch {
                escalated: 100.0 * escalated,
                allowed: 100.0 * allowed,
            });
        }
    }
    // A side that answers nothing locally has no risk to bound.
    let bound = |k: u64, n: u64, idle: bool| {
        if idle {
            0.0
        } else {
            clopper_pearson_upper(k, n, side_delta)
        }
    };
    Ok(Certified {
        accept_below,
        reject_above,
        local_share,
        misses,
        positives,
        recall_drop_bound: bound(misses, positives, accept_below == 0.0),
        false_alarms,
        negatives,
        false_alarm_bound: bound(false_alarms, negatives, reject_above == 1.0),
    })
}

/// The fixed-sequence walk of one side: `risky` holds the scores of the
/// rows that would count against the side, safest first; `n` is the rows
/// the rate is over. Returns the threshold just past the last step whose
/// binomial p-value stays within `side_delta` (for the lower side,
/// `ascending`, a value to accept below; the upper side passes scores in
/// descending order and gets one to flag above), or `None` when not even
/// zero errors could be certified.
fn walk(risky: &[f64], n: u64, alpha: f64, side_delta: f64, ascending: bool) -> Option<f64> {
    if binomial_cdf(0, n, alpha) > side_delta {
        return None;
    }
    let edge = if ascending { 1.0 } else { 0.0 };
    let mut threshold = risky.first().copied().unwrap_or(edge);
    for (i, &score) in risky.iter().enumerate() {
        if binomial_cdf(i as u64 + 1, n, alpha) > side_delta {
            break;
        }
        // Rows with this very score would count too: the threshold stops
        // at the next distinct score.
        let next = risky.get(i + 1).copied().unwrap_or(edge);
        threshold = if ascending {
            next.max(score)
        } else {
            next.min(score)
        };
    }
    Some(threshold)
}

/// One point of the trade-off curve: a lower threshold, the share it
/// answers locally (with the certified upper threshold), and its recall
/// drop observed and bounded.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    pub accept_below: f64,
    pub local_share: f64,
    pub misses: u64,
    pub recall_drop: f64,
    /// Clopper–Pearson upper bound at 1 − δ/2, as for the certified band.
    pub bound: f64,
}

/// The lower threshold's trade-off, from "miss nothing" up to twice the
/// certified number of misses (at least 20), at most `max_points` points;
/// the upper threshold stays at `band.reject_above`.
pub fn curve(
    rows: &[CalibrationRow],
    band: &Certified,
    delta: f64,
    max_points: usize,
) -> Vec<CurvePoint> {
    let mut catchable: Vec<f64> = rows
        .iter()
        .filter(|r| r.positive && r.stage2_positive)
        .map(|r| r.score)
        .collect();
    catchable.sort_by(f64::total_cmp);
    let mut scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
    scores.sort_by(f64::total_cmp);
    let above = rows.iter().filter(|r| r.score > band.reject_above).count();
    let last = (2 * band.misses).max(20).min(catchable.len() as u64) as usize;
    let step = (last / max_points.max(1)).max(1);
    let n = rows.len().max(1) as f64;
    (0..=last)
        .step_by(step)
        .map(|k| {
            let accept_below = catchable.get(k).copied().unwrap_or(1.0);
            // Rows strictly below the threshold, but never past the upper one.
            let below = scores.partition_point(|&s| s < accept_below.min(band.reject_above));
            let misses = catchable.partition_point(|&s| s < accept_below) as u64;
            CurvePoint {
                accept_below,
                local_share: (below + above) as f64 / n,
                misses,
                recall_drop: misses as f64 / band.positives.max(1) as f64,
                bound: clopper_pearson_upper(misses, band.positives, delta / 2.0),
            }
        })
        .collect()
}

/// What `cascadia calibrate` writes and a route's `calibration` loads:
/// the band, what it was certified for, and what it was certified on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Always [`ARTIFACT_KIND`].
    pub kind: String,
    /// When it was made (RFC 3339, UTC).
    pub created: String,
    pub model: ArtifactModel,
    pub data: ArtifactData,
    pub target: ArtifactTarget,
    pub band: ArtifactBand,
    pub result: ArtifactResult,
    /// The method, in words, so the file explains itself.
    pub method: String,
}

/// The `kind` of a calibration artifact.
pub const ARTIFACT_KIND: &str = "cascadia-calibration/v1";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactModel {
    pub name: String,
    pub version: String,
    /// SHA-256 of the model artifact's bytes: the gateway refuses the
    /// calibration for any other model.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactData {
    /// The file, as named on the command line.
    pub file: String,
    pub sha256: String,
    pub rows: u64,
    /// What "positive" meant: `label` or `stage2`.
    pub truth: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactTarget {
    pub max_recall_drop: f64,
    pub confidence: f64,
    pub max_escalation: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactBand {
    pub accept_below: f64,
    pub reject_above: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactResult {
    pub local_share: f64,
    pub positives: u64,
    pub misses: u64,
    pub recall_drop_bound: f64,
    pub negatives: u64,
    pub false_alarms: u64,
    pub false_alarm_bound: f64,
}

impl Artifact {
    /// Parses an artifact and checks it can be served: its kind, a band in
    /// order, a target in range.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let artifact: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if artifact.kind != ARTIFACT_KIND {
            return Err(format!(
                "kind is {:?}, expected {ARTIFACT_KIND:?}",
                artifact.kind
            ));
        }
        crate::Thresholds::new(artifact.band.accept_below, artifact.band.reject_above)
            .map_err(|e| format!("band: {e}"))?;
        let t = &artifact.target;
        let within = |v: f64| v > 0.0 && v < 1.0;
        if !(within(t.max_recall_drop) && within(t.confidence)) {
            return Err("target: max_recall_drop and confidence must be within (0, 1)".into());
        }
        Ok(artifact)
    }
}

/// The method as the artifact states it.
pub const METHOD: &str = "Learn-then-Test, fixed-sequence: the lower threshold rises through the scores of positives stage 2 catches, and the upper falls through those of negatives it clears, while the binomial p-value P(Bin(n, alpha) <= misses) stays at or below delta/2 per side; with probability at least 1 - delta over the calibration draw both risks are within alpha, for traffic exchangeable with the calibration rows. Bounds are one-sided Clopper-Pearson at 1 - delta/2.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binomial_cdf_and_clopper_pearson_match_known_values() {
        // P(Bin(20, 0.1) ≤ 2) = 0.676927 (summed exactly with math.comb).
        assert!((binomial_cdf(2, 20, 0.1) - 0.676_927).abs() < 1e-6);
        assert_eq!(binomial_cdf(20, 20, 0.3), 1.0);
        // Zero events in n: the bound is 1 − δ^(1/n) (about 3/n at 95%).
        let bound = clopper_pearson_upper(0, 600, 0.05);
        assert!(
            (bound - (1.0 - 0.05f64.powf(1.0 / 600.0))).abs() < 1e-9,
            "{bound}"
        );
        assert!((bound * 600.0 - 2.99).abs() < 0.01);
        // And it is a bound: the CDF at it is δ.
        let upper = clopper_pearson_upper(7, 1000, 0.05);
        assert!((binomial_cdf(7, 1000, upper) - 0.05).abs() < 1e-6);
        // The lower bound mirrors it: P(Bin(1000, lower) >= 7) = δ.
        let lower = clopper_pearson_lower(7, 1000, 0.05);
        assert!(lower < 0.007 && lower > 0.0);
        assert!((1.0 - binomial_cdf(6, 1000, lower) - 0.05).abs() < 1e-6);
        assert_eq!(clopper_pearson_lower(0, 1000, 0.05), 0.0);
    }

    #[test]
    fn the_curve_starts_at_no_misses_and_passes_the_certified_band() {
        let rows = overlapping(20_000, 7);
        let band = certify(&rows, 0.02, 0.05, None).unwrap();
        let points = curve(&rows, &band, 0.05, 400);
        assert_eq!(points[0].misses, 0);
        assert!(points
            .windows(2)
            .all(|w| w[0].local_share <= w[1].local_share));
        let at = points
            .iter()
            .find(|p| p.misses == band.misses)
            .expect("the certified point is on the curve");
        assert!((at.accept_below - band.accept_below).abs() < 1e-12);
        assert!((at.local_share - band.local_share).abs() < 1e-12);
        assert!((at.bound - band.recall_drop_bound).abs() < 1e-12);
    }

    #[test]
    fn an_artifact_round_trips_and_a_bad_one_is_refused() {
        let artifact = Artifact {
            kind: ARTIFACT_KIND.to_owned(),
            created: "2026-12-01T00:00:00Z".to_owned(),
            model: ArtifactModel {
                name: "m".into(),
                version: "1".into(),
                sha256: "ab".repeat(32),
            },
            data: ArtifactData {
                file: "cal.csv".into(),
                sha256: "cd".repeat(32),
                rows: 10,
                truth: "label".into(),
            },
            target: ArtifactTarget {
                max_recall_drop: 0.05,
                confidence: 0.9,
                max_escalation: None,
            },
            band: ArtifactBand {
                accept_below: 0.2,
                reject_above: 0.8,
            },
            result: ArtifactResult {
                local_share: 0.9,
                positives: 5,
                misses: 0,
                recall_drop_bound: 0.4,
                negatives: 5,
                false_alarms: 0,
                false_alarm_bound: 0.4,
            },
            method: METHOD.to_owned(),
        };
        let text = serde_json::to_string(&artifact).unwrap();
        assert_eq!(Artifact::from_json(&text).unwrap(), artifact);
        let inverted = text.replace("\"accept_below\":0.2", "\"accept_below\":0.9");
        assert!(Artifact::from_json(&inverted).unwrap_err().contains("band"));
        let other = text.replace(ARTIFACT_KIND, "something-else");
        assert!(Artifact::from_json(&other).unwrap_err().contains("kind"));
    }

    /// Overlapping classes: positives score in 0.3..1, negatives in 0..0.7,
    /// one row in ten positive, and stage 2 agrees with the labels.
    fn overlapping(n: usize, seed: u64) -> Vec<CalibrationRow> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|i| {
                let positive = i % 10 == 0;
                let score = if positive {
                    0.3 + 0.7 * rng.f64()
                } else {
                    0.7 * rng.f64()
                };
                CalibrationRow {
                    score,
                    positive,
                    stage2_positive: positive,
                }
            })
            .collect()
    }

    #[test]
    fn a_certified_band_keeps_its_risk_on_fresh_rows_and_answers_most_locally() {
        let calibration = overlapping(20_000, 7);
        let band = certify(&calibration, 0.02, 0.05, None).unwrap();
        assert!(band.accept_below <= band.reject_above);
        assert!(band.recall_drop_bound <= 0.02 + 1e-9, "{band:?}");
        // About 45% of each class lies outside the overlap.
        assert!(band.local_share > 0.4, "{band:?}");
        // On a disjoint draw from the same distribution the realised drop
        // stays within α.
        let fresh = overlapping(20_000, 99);
        let positives = fresh.iter().filter(|r| r.positive).count() as f64;
        let missed = fresh
            .iter()
            .filter(|r| r.positive && r.stage2_positive && r.score < band.accept_below)
            .count() as f64;
        assert!(missed / positives <= 0.02, "{} of {positives}", missed);
    }

    #[test]
    fn too_few_rows_or_a_one_sided_set_certify_nothing() {
        let few = overlapping(50, 7);
        assert!(matches!(
            certify(&few, 0.005, 0.05, None),
            Err(CalibrationError::TooFewRows {
                positives: 5,
                negatives: 45,
                ..
            })
        ));
        let all_negative: Vec<CalibrationRow> = overlapping(1000, 7)
            .into_iter()
            .filter(|r| !r.positive)
            .collect();
        assert_eq!(
            certify(&all_negative, 0.05, 0.05, None),
            Err(CalibrationError::NoRows("positives"))
        );
        assert_eq!(
            certify(&few, 0.0, 0.05, None),
            Err(CalibrationError::BadTarget)
        );
    }

    #[test]
    fn a_side_with_too_few_rows_escalates_entirely_and_the_other_is_still_certified() {
        // 2,000 negatives and 40 positives: at α = 2% the positives cannot
        // certify even zero misses (0.98^40 > δ/2), so nothing is accepted
        // locally; the negatives still certify the upper threshold.
        let mut rows: Vec<CalibrationRow> = overlapping(20_000, 3)
            .into_iter()
            .filter(|r| !r.positive)
            .take(2000)
            .collect();
        rows.extend(overlapping(400, 4).into_iter().filter(|r| r.positive));
        let band = certify(&rows, 0.02, 0.05, None).unwrap();
        assert_eq!(band.accept_below, 0.0, "{band:?}");
        assert_eq!(band.misses, 0);
        assert_eq!(band.recall_drop_bound, 0.0, "nothing accepted, no risk");
        assert!(
            band.reject_above < 1.0 && band.local_share > 0.0,
            "{band:?}"
        );
    }

    #[test]
    fn crossed_sides_meet_in_the_middle_with_the_counts_of_that_band() {
        // Stage 2 agrees with a perfectly separating stage 1: both walks
        // run to the far end and cross.
        let rows: Vec<CalibrationRow> = (0..4000)
            .map(|i| {
                let positive = i % 2 == 0;
                CalibrationRow {
                    score: if positive {
                        0.6 + 1e-4 * f64::from(i % 1000) / 10.0
                    } else {
                        0.4 - 1e-4 * f64::from(i % 1000) / 10.0
                    },
                    positive,
                    stage2_positive: positive,
                }
            })
            .collect();
        let band = certify(&rows, 0.05, 0.05, None).unwrap();
        assert_eq!(band.accept_below, band.reject_above);
        let misses = rows
            .iter()
            .filter(|r| r.positive && r.score < band.accept_below)
            .count() as u64;
        assert_eq!(band.misses, misses);
        assert_eq!(band.local_share, 1.0);
    }

    #[test]
    fn a_maximum_escalation_rate_is_enforced() {
        let rows = overlapping(20_000, 7);
        let band = certify(&rows, 0.02, 0.05, None).unwrap();
        let escalated = 1.0 - band.local_share;
        assert!(matches!(
            certify(&rows, 0.02, 0.05, Some(escalated / 2.0)),
            Err(CalibrationError::EscalatesTooMuch { .. })
        ));
        assert!(certify(&rows, 0.02, 0.05, Some(escalated + 0.01)).is_ok());
    }
}
