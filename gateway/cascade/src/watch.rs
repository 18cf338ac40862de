//! The guarantee watched online: from stage 2's second opinion on a sample
//! of rows, an upper confidence bound of the recall drop over the last few
//! windows, and the verdict a route's policy acts on.
//!
//! # What is counted
//! The gateway samples requests at the route's `audit_fraction`: a sampled
//! request answered locally is re-asked of stage 2 (an audit); a sampled
//! request that escalated already has stage 2's answer. Among the sampled
//! rows, `positives` are those stage 2 calls positive and `misses` those
//! stage 1 accepted (answered negative) although stage 2 calls them
//! positive. Both come from one uniform sample, so `misses / positives`
//! estimates the recall drop the calibration bounded, and its one-sided
//! Clopper–Pearson upper limit at 1 − δ bounds it.
//!
//! # When it breaches
//! Windows close every `window_positives` sampled positives; the bound is
//! over the last `windows` of them, and judged once that span is full. It
//! **breaches** when the bound, having been at or below α, rises above it,
//! or (without waiting for that) when the lower confidence limit is above
//! α: the evidence then says the drop exceeds α, not only that it cannot
//! be shown to be within it.

use std::collections::VecDeque;

use crate::calibrate::{clopper_pearson_lower, clopper_pearson_upper};

/// The watch's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchSettings {
    /// The recall drop the band must keep within.
    pub alpha: f64,
    /// 1 − the bound's confidence.
    pub delta: f64,
    /// Sampled positives per window.
    pub window_positives: u64,
    /// Windows the bound is computed over.
    pub windows: usize,
}

/// Where the watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchState {
    /// The bound has not yet come down to α: too little evidence either way.
    WarmingUp,
    /// The bound is within α.
    Holding,
    /// The drop is above α (or no longer shown within it).
    Breached,
}

impl WatchState {
    pub fn label(self) -> &'static str {
        match self {
            Self::WarmingUp => "warming_up",
            Self::Holding => "holding",
            Self::Breached => "breached",
        }
    }
}

/// What a closed window says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Upper confidence bound of the recall drop over the last windows.
    pub bound: f64,
    /// Its lower counterpart.
    pub lower: f64,
    pub misses: u64,
    pub positives: u64,
    pub state: WatchState,
    /// True when this window moved the watch into `Breached`.
    pub breached_now: bool,
}

/// The running counts and state of one route's guarantee.
#[derive(Debug)]
pub struct GuaranteeWatch {
    settings: WatchSettings,
    /// (misses, positives) of the closed windows, newest last.
    closed: VecDeque<(u64, u64)>,
    current: (u64, u64),
    state: WatchState,
    last: Option<Verdict>,
    /// Windows closed since the watch started.
    pub windows_closed: u64,
}

impl GuaranteeWatch {
    pub fn new(settings: WatchSettings) -> Self {
        Self {
            settings: WatchSettings {
                window_positives: settings.window_positives.max(1),
                windows: settings.windows.max(1),
                ..settings
            },
            closed: VecDeque::new(),
            current: (0, 0),
            state: WatchState::WarmingUp,
            last: None,
            windows_closed: 0,
        }
    }

    pub fn settings(&self) -> &WatchSettings {
        &self.settings
    }

    pub fn state(&self) -> WatchState {
        self.state
    }

    /// The verdict of the last closed window.
    pub fn last(&self) -> Option<Verdict> {
        self.last
    }

    /// Counts of the window still open: (misses, positives).
    pub fn open_window(&self) -> (u64, u64) {
        self.current
    }

    /// Adds a sample's counts. Returns the verdict of each window this
    /// closes (a window closes at `window_positives` positives; a big
    /// sample can close at most one, the rest starting the next).
    pub fn record(&mut self, misses: u64, positives: u64) -> Option<Verdict> {
        self.current.0 += misses;
        self.current.1 += positives;
        if self.current.1 < self.settings.window_positives {
            return None;
        }
        self.closed.push_back(std::mem::take(&mut self.current));
        if self.closed.len() > self.settings.windows {
            self.closed.pop_front();
        }
        self.windows_closed += 1;
        let (k, n) = self
            .closed
            .iter()
            .fold((0, 0), |(k, n), (m, p)| (k + m, n + p));
        let k = k.min(n);
        let bound = clopper_pearson_upper(k, n, self.settings.delta);
        let lower = clopper_pearson_lower(k, n, self.settings.delta);
        let alpha = self.settings.alpha;
        let previous = self.state;
        // The bound is judged only over a full span: over the first few
        // windows it can dip under α on little evidence and rise again
        // with the next miss, which is noise, not a breach.
        let full = self.closed.len() == self.settings.windows;
        self.state = match previous {
            _ if lower > alpha => WatchState::Breached,
            WatchState::Breached => WatchState::Breached,
            WatchState::Holding if bound > alpha => WatchState::Breached,
            _ if full && bound <= alpha => WatchState::Holding,
            other => other,
        };
        let verdict = Verdict {
            bound,
            lower,
            misses: k,
            positives: n,
            state: self.state,
            breached_now: self.state == WatchState::Breached && previous != WatchState::Breached,
        };
        self.last = Some(verdict);
        Some(verdict)
    }

    /// Starts over (the band changed, so the evidence no longer applies).
    pub fn restart(&mut self) {
        *self = Self::new(self.settings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: WatchSettings = WatchSettings {
        alpha: 0.02,
        delta: 0.05,
        window_positives: 100,
        windows: 10,
    };

    /// Feeds one positive at a time, each missed with probability `rate`,
    /// until a window closes; returns its verdict.
    fn window(watch: &mut GuaranteeWatch, rng: &mut fastrand::Rng, rate: f64) -> Verdict {
        loop {
            let miss = u64::from(rng.f64() < rate);
            if let Some(verdict) = watch.record(miss, 1) {
                return verdict;
            }
        }
    }

    #[test]
    fn a_drop_within_alpha_holds_and_a_shift_breaches_within_a_few_windows() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut watch = GuaranteeWatch::new(SETTINGS);
        // 0.2% misses: the bound needs a few windows to come down to 2%.
        let mut windows = 0;
        while watch.state() != WatchState::Holding {
            window(&mut watch, &mut rng, 0.002);
            windows += 1;
            assert!(windows <= SETTINGS.windows, "never certified online");
        }
        for _ in 0..30 {
            let verdict = window(&mut watch, &mut rng, 0.002);
            assert_eq!(verdict.state, WatchState::Holding, "{verdict:?}");
        }
        // Stage 2 shifts: 10% of positives are now missed.
        let mut delay = 0;
        loop {
            delay += 1;
            let verdict = window(&mut watch, &mut rng, 0.10);
            if verdict.breached_now {
                assert!(verdict.bound > SETTINGS.alpha);
                break;
            }
            assert!(delay < 5, "no breach after {delay} windows");
        }
        assert!(delay <= 2, "detection took {delay} windows");
        // It stays breached until restarted.
        assert_eq!(
            window(&mut watch, &mut rng, 0.0).state,
            WatchState::Breached
        );
        watch.restart();
        assert_eq!(watch.state(), WatchState::WarmingUp);
    }

    /// Detection delay, in windows after the shift, over 100 seeds for a
    /// few shift sizes (printed for BENCHMARKS.md with `--nocapture`), and
    /// how often an unshifted stream breaches (false alarms) over 30
    /// windows.
    #[test]
    fn detection_delay_and_false_alarms_over_many_seeds() {
        for (shifted, worst) in [(0.05, 6), (0.10, 3), (0.20, 2)] {
            let mut delays = Vec::new();
            for seed in 0..100 {
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut watch = GuaranteeWatch::new(SETTINGS);
                while watch.state() != WatchState::Holding {
                    window(&mut watch, &mut rng, 0.002);
                }
                let mut delay = 0;
                while watch.state() != WatchState::Breached {
                    window(&mut watch, &mut rng, shifted);
                    delay += 1;
                }
                delays.push(delay);
            }
            delays.sort_unstable();
            let (median, p95, max) = (delays[50], delays[95], delays[99]);
            println!(
                "miss rate 0.2% -> {shifted}: delay median {median}, p95 {p95}, max {max} windows"
            );
            assert!(max <= worst, "{shifted}: {delays:?}");
        }
        let mut false_alarms = 0;
        for seed in 0..100 {
            let mut rng = fastrand::Rng::with_seed(1000 + seed);
            let mut watch = GuaranteeWatch::new(SETTINGS);
            for _ in 0..30 {
                window(&mut watch, &mut rng, 0.002);
            }
            false_alarms += usize::from(watch.state() == WatchState::Breached);
        }
        println!("false alarms at a steady 0.2%: {false_alarms} of 100 runs of 30 windows");
        assert_eq!(false_alarms, 0);
    }

    #[test]
    fn clear_evidence_breaches_even_before_the_bound_ever_held() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut watch = GuaranteeWatch::new(SETTINGS);
        let verdict = window(&mut watch, &mut rng, 0.3);
        assert!(verdict.lower > SETTINGS.alpha, "{verdict:?}");
        assert!(verdict.breached_now);
    }

    #[test]
    fn too_little_evidence_is_neither_holding_nor_breached() {
        let mut watch = GuaranteeWatch::new(WatchSettings {
            alpha: 0.001,
            ..SETTINGS
        });
        // Zero misses in 1000 positives bounds the drop near 0.3%, above α.
        for _ in 0..10 {
            let verdict = watch.record(0, 100).unwrap();
            assert_eq!(verdict.state, WatchState::WarmingUp);
            assert!(!verdict.breached_now);
        }
        assert_eq!(watch.windows_closed, 10);
    }
}
