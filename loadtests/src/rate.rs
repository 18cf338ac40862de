//! The open-loop arrival schedule, and the pacer that waits for each due time.
//!
//! Request `i` is due at `start + i / rate` whatever happened to the requests before it: the
//! schedule never waits for responses. The first `ceil(warmup × rate)` requests are warm-up
//! and are sent but not measured. A stepped schedule (`--rate-steps`) chains several rates:
//! each step starts where the previous one ended and restarts the spacing at its own rate.

use std::time::{Duration, Instant};

/// A target arrival rate in requests per second: finite and positive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(f64);

/// A rate that is zero, negative or not finite.
#[derive(Debug, thiserror::Error)]
#[error("rate must be a positive number of requests per second, got {0}")]
pub struct InvalidRate(f64);

impl Rate {
    pub fn new(per_second: f64) -> Result<Self, InvalidRate> {
        if per_second.is_finite() && per_second > 0.0 {
            Ok(Rate(per_second))
        } else {
            Err(InvalidRate(per_second))
        }
    }

    pub fn per_second(self) -> f64 {
        self.0
    }
}

/// One step of a stepped run: a rate held for a duration. A plain run has one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub rate: Rate,
    /// Measured time at this rate; positive.
    pub duration: Duration,
}

/// A stretch of the schedule at one rate: the warm-up, or one step.
#[derive(Clone, Debug)]
struct Segment {
    /// Index of its first request.
    first: u64,
    /// Requests in it: `ceil(duration × rate)`.
    count: u64,
    /// Its start, from the schedule's start.
    offset: Duration,
    duration: Duration,
    rate: Rate,
}

impl Segment {
    fn due_offset(&self, j: u64) -> Duration {
        self.offset + Duration::from_secs_f64(j as f64 / self.rate.0)
    }
}

/// When each request is due, and which step (if any) measures it.
///
/// The warm-up runs at the first step's rate; then each step follows at its own rate, without
/// a gap. Within a segment, request `j` is due at `segment start + j / rate`.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    /// `segments[0]` is the warm-up, `segments[k + 1]` is step `k`.
    segments: Vec<Segment>,
}

impl Schedule {
    /// A single-rate schedule: `warmup`, then `duration` measured.
    pub fn new(start: Instant, rate: Rate, warmup: Duration, duration: Duration) -> Self {
        Self::stepped(start, warmup, &[Step { rate, duration }])
    }

    /// `warmup` at the first step's rate, then every step in turn.
    ///
    /// # Panics
    /// If `steps` is empty.
    pub fn stepped(start: Instant, warmup: Duration, steps: &[Step]) -> Self {
        assert!(!steps.is_empty(), "a schedule needs at least one step");
        let mut segments = Vec::with_capacity(steps.len() + 1);
        let (mut first, mut offset) = (0, Duration::ZERO);
        for (rate, duration) in std::iter::once((steps[0].rate, warmup))
            .chain(steps.iter().map(|s| (s.rate, s.duration)))
        {
            // Request j is due before `duration` exactly when j < duration × rate.
            let count = (duration.as_secs_f64() * rate.0).ceil() as u64;
            segments.push(Segment {
                first,
                count,
                offset,
                duration,
                rate,
            });
            first += count;
            offset += duration;
        }
        Schedule { start, segments }
    }

    fn segment_of(&self, i: u64) -> &Segment {
        let k = self.segments.partition_point(|s| s.first + s.count <= i);
        &self.segments[k.min(self.segments.len() - 1)]
    }

    /// When request `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        let s = self.segment_of(i);
        self.start + s.due_offset(i - s.first)
    }

    /// The step that measures request `i`, or `None` during warm-up.
    pub fn step_of(&self, i: u64) -> Option<usize> {
        let k = self.segments.partition_point(|s| s.first + s.count <= i);
        k.checked_sub(1)
    }

    /// Whether request `i` falls in the measured window (after warm-up).
    pub fn is_measured(&self, i: u64) -> bool {
        self.step_of(i).is_some()
    }

    /// Every request in order: (index, due time, measuring step).
    pub fn requests(&self) -> impl Iterator<Item = (u64, Instant, Option<usize>)> + '_ {
        self.segments.iter().enumerate().flat_map(move |(k, s)| {
            (0..s.count).map(move |j| (s.first + j, self.start + s.due_offset(j), k.checked_sub(1)))
        })
    }

    pub fn total_requests(&self) -> u64 {
        self.segments.iter().map(|s| s.count).sum()
    }

    pub fn measured_requests(&self) -> u64 {
        self.total_requests() - self.segments[0].count
    }

    pub fn steps(&self) -> usize {
        self.segments.len() - 1
    }

    /// Requests scheduled in step `k`.
    pub fn step_requests(&self, k: usize) -> u64 {
        self.segments[k + 1].count
    }

    pub fn step_rate(&self, k: usize) -> Rate {
        self.segments[k + 1].rate
    }

    pub fn step_duration(&self, k: usize) -> Duration {
        self.segments[k + 1].duration
    }

    /// Start of step `k`.
    pub fn step_start(&self, k: usize) -> Instant {
        self.start + self.segments[k + 1].offset
    }

    /// End of step `k`: its last request is due just before it.
    pub fn step_end(&self, k: usize) -> Instant {
        self.step_start(k) + self.segments[k + 1].duration
    }

    /// Start of the measured window.
    pub fn measure_start(&self) -> Instant {
        self.step_start(0)
    }

    /// End of the measured window: the last measured request is due just before it.
    pub fn measure_end(&self) -> Instant {
        self.step_end(self.steps() - 1)
    }
}

/// Blocks the calling thread until `due`.
///
/// OS timers wake a sleeping thread late: about 85 µs at p50 on the 2-vCPU development
/// machine, several times a loopback round trip. Since latency is measured from the due time,
/// that lateness would be charged to the system under test. So we sleep until `spin` before
/// `due` and yield in a loop for the rest. `spin = 0` only sleeps.
pub fn wait_until(due: Instant, spin: Duration) {
    loop {
        let now = Instant::now();
        let Some(left) = due.checked_duration_since(now).filter(|d| !d.is_zero()) else {
            return;
        };
        if left > spin {
            std::thread::sleep(left - spin);
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_each_other() {
        let start = Instant::now();
        let step = |rate: f64, ms: u64| Step {
            rate: Rate::new(rate).unwrap(),
            duration: Duration::from_millis(ms),
        };
        let s = Schedule::stepped(
            start,
            Duration::from_millis(500),
            &[step(100.0, 1000), step(200.0, 500), step(3.0, 500)],
        );
        // Warm-up 50 at 100 rps, then 100, 100 and ceil(1.5) = 2.
        assert_eq!(s.total_requests(), 252);
        assert_eq!(s.measured_requests(), 202);
        assert_eq!(s.steps(), 3);
        assert_eq!(s.step_requests(2), 2);
        assert_eq!(s.step_of(49), None);
        assert_eq!(s.step_of(50), Some(0));
        assert_eq!(s.step_of(150), Some(1));
        assert_eq!(s.step_of(251), Some(2));
        assert_eq!(s.due(50), s.measure_start());
        assert_eq!(s.due(150), s.step_start(1));
        assert_eq!(s.due(151) - s.step_start(1), Duration::from_millis(5));
        assert_eq!(s.step_end(2) - start, Duration::from_millis(2500));
        assert_eq!(s.measure_end(), s.step_end(2));
        let all: Vec<_> = s.requests().collect();
        assert_eq!(all.len(), 252);
        for &(i, due, step) in &all {
            assert_eq!(due, s.due(i));
            assert_eq!(step, s.step_of(i));
        }
        assert!(all.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn rate_rejects_non_positive() {
        assert!(Rate::new(0.0).is_err());
        assert!(Rate::new(-1.0).is_err());
        assert!(Rate::new(f64::NAN).is_err());
        assert!(Rate::new(f64::INFINITY).is_err());
        assert!(Rate::new(0.5).is_ok());
    }

    #[test]
    fn schedule_counts_and_due_times() {
        let start = Instant::now();
        let s = Schedule::new(
            start,
            Rate::new(1000.0).unwrap(),
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert_eq!(s.total_requests(), 3000);
        assert_eq!(s.measured_requests(), 2000);
        assert!(!s.is_measured(999));
        assert!(s.is_measured(1000));
        assert_eq!(s.due(0), start);
        assert_eq!(s.due(1000), s.measure_start());
        assert_eq!(s.due(1500) - start, Duration::from_millis(1500));
        assert!(s.due(s.total_requests() - 1) < s.measure_end());
    }

    #[test]
    fn fractional_rate_rounds_up() {
        let s = Schedule::new(
            Instant::now(),
            Rate::new(3.0).unwrap(),
            Duration::ZERO,
            Duration::from_millis(500),
        );
        // Due at 0, 1/3 s: both before 0.5 s.
        assert_eq!(s.total_requests(), 2);
        assert_eq!(s.measured_requests(), 2);
    }

    #[test]
    fn wait_until_is_not_early() {
        let due = Instant::now() + Duration::from_millis(3);
        wait_until(due, Duration::from_micros(100));
        assert!(Instant::now() >= due);
    }
}
