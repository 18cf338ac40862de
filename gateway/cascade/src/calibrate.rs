//! Choosing the band with a guarantee (issue 18's statistics; the
//! `cascadia calibrate` command that feeds it is still to come).
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
        "not even the band that escalates everything is certified: {0} rows are too few for this α and δ (zero errors among n rows bound the rate near -ln(δ)/n)"
    )]
    TooFewRows(u64),
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
    let positives: Vec<&CalibrationRow> = rows.iter().filter(|r| r.positive).collect();
    let negatives: Vec<&CalibrationRow> = rows.iter().filter(|r| !r.positive).collect();
    if positives.is_empty() {
        return Err(CalibrationError::NoRows("positives"));
    }
    if negatives.is_empty() {
        return Err(CalibrationError::NoRows("negatives"));
    }
    // Lower threshold: walk up through the scores of the rows that would
    // be missed (positives stage 2 catches), safest first.
    let mut catchable: Vec<f64> = positives
        .iter()
        .filter(|r| r.stage2_positive)
        .map(|r| r.score)
        .collect();
    catchable.sort_by(f64::total_cmp);
    let n_pos = positives.len() as u64;
    // `t` at or below the lowest catchable score misses nothing; each next
    // candidate is just above one more of them.
    if binomial_cdf(0, n_pos, alpha) > side_delta {
        return Err(CalibrationError::TooFewRows(n_pos));
    }
    let mut accept_below = catchable.first().copied().unwrap_or(1.0);
    let mut misses = 0u64;
    for (i, &score) in catchable.iter().enumerate() {
        let k = i as u64 + 1;
        if binomial_cdf(k, n_pos, alpha) > side_delta {
            break;
        }
        // Rows with this very score would be missed too: the threshold
        // stops below the next distinct score.
        misses = k;
        accept_below = catchable.get(i + 1).copied().unwrap_or(1.0).max(score);
    }
    // Upper threshold: walk down through the negatives stage 2 clears.
    let mut clearable: Vec<f64> = negatives
        .iter()
        .filter(|r| !r.stage2_positive)
        .map(|r| r.score)
        .collect();
    clearable.sort_by(|a, b| b.total_cmp(a));
    let n_neg = negatives.len() as u64;
    if binomial_cdf(0, n_neg, alpha) > side_delta {
        return Err(CalibrationError::TooFewRows(n_neg));
    }
    let mut reject_above = clearable.first().copied().unwrap_or(0.0);
    let mut false_alarms = 0u64;
    for (i, &score) in clearable.iter().enumerate() {
        let k = i as u64 + 1;
        if binomial_cdf(k, n_neg, alpha) > side_delta {
            break;
        }
        false_alarms = k;
        reject_above = clearable.get(i + 1).copied().unwrap_or(0.0).min(score);
    }
    // The two sides must not cross: a row cannot be both.
    if reject_above < accept_below {
        let middle = 0.5 * (accept_below + reject_above);
        accept_below = middle;
        reject_above = middle;
    }
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
    Ok(Certified {
        accept_below,
        reject_above,
        local_share,
        misses,
        positives: n_pos,
        recall_drop_bound: clopper_pearson_upper(misses, n_pos, side_delta),
        false_alarms,
        negatives: n_neg,
        false_alarm_bound: clopper_pearson_upper(false_alarms, n_neg, side_delta),
    })
}

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
        assert_eq!(
            certify(&few, 0.005, 0.05, None),
            Err(CalibrationError::TooFewRows(5))
        );
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
