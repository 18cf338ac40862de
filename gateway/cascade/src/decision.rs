//! The decision bands: answer locally below `accept_below` or above
//! `reject_above`, escalate in between.

/// Validated thresholds: `0 ≤ accept_below ≤ reject_above ≤ 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    accept_below: f64,
    reject_above: f64,
}

/// Thresholds out of order or range.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdsError {
    #[error("{0} is not within 0..=1")]
    OutOfRange(f64),
    #[error("accept_below {accept_below} is above reject_above {reject_above}")]
    Inverted {
        accept_below: f64,
        reject_above: f64,
    },
}

impl Thresholds {
    /// Checks the thresholds once, here, so no caller re-checks them.
    pub fn new(accept_below: f64, reject_above: f64) -> Result<Self, ThresholdsError> {
        for t in [accept_below, reject_above] {
            if !(0.0..=1.0).contains(&t) {
                return Err(ThresholdsError::OutOfRange(t));
            }
        }
        if accept_below > reject_above {
            return Err(ThresholdsError::Inverted {
                accept_below,
                reject_above,
            });
        }
        Ok(Self {
            accept_below,
            reject_above,
        })
    }

    pub fn accept_below(&self) -> f64 {
        self.accept_below
    }

    pub fn reject_above(&self) -> f64 {
        self.reject_above
    }

    /// The decision for a positive-class probability `p`. Scores exactly on
    /// a threshold are uncertain: the bands are strict inequalities. A score
    /// that is not a number is never confident.
    pub fn decide(&self, p: f64, confirm_positives: bool) -> Decision {
        if !p.is_finite() {
            Decision::Escalate
        } else if p < self.accept_below {
            Decision::Accept
        } else if p > self.reject_above && !confirm_positives {
            Decision::Reject
        } else {
            Decision::Escalate
        }
    }
}

/// What happens to one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Confidently negative: answered locally.
    Accept,
    /// Confidently positive: answered locally.
    Reject,
    /// Uncertain: sent to stage 2.
    Escalate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_are_strict_at_their_edges() {
        let t = Thresholds::new(0.1, 0.9).unwrap();
        assert_eq!(t.decide(0.099_999, false), Decision::Accept);
        assert_eq!(t.decide(0.1, false), Decision::Escalate);
        assert_eq!(t.decide(0.5, false), Decision::Escalate);
        assert_eq!(t.decide(0.9, false), Decision::Escalate);
        assert_eq!(t.decide(0.900_001, false), Decision::Reject);
        assert_eq!(
            t.decide(0.99, true),
            Decision::Escalate,
            "positives confirmed by stage 2"
        );
    }

    #[test]
    fn a_score_that_is_not_a_number_escalates() {
        let t = Thresholds::new(0.1, 0.9).unwrap();
        assert_eq!(t.decide(f64::NAN, false), Decision::Escalate);
        assert_eq!(t.decide(f64::INFINITY, false), Decision::Escalate);
    }

    #[test]
    fn invalid_thresholds_are_rejected() {
        assert_eq!(
            Thresholds::new(-0.1, 0.5).unwrap_err(),
            ThresholdsError::OutOfRange(-0.1)
        );
        assert!(matches!(
            Thresholds::new(0.8, 0.2).unwrap_err(),
            ThresholdsError::Inverted { .. }
        ));
        // Equal thresholds escalate nothing but the exact value.
        let t = Thresholds::new(0.5, 0.5).unwrap();
        assert_eq!(t.decide(0.5, false), Decision::Escalate);
    }
}
