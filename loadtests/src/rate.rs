//! The open-loop arrival schedule, and the pacer that waits for each due time.
//!
//! Request `i` is due at `start + i / rate` whatever happened to the requests before it: the
//! schedule never waits for responses. The first `ceil(warmup × rate)` requests are warm-up
//! and are sent but not measured.

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

/// When each request is due, and which requests are measured.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    rate: Rate,
    warmup: Duration,
    duration: Duration,
    /// Requests due before `start + warmup`: sent, not measured.
    warmup_requests: u64,
    /// All requests: warm-up plus measured.
    total_requests: u64,
}

impl Schedule {
    pub fn new(start: Instant, rate: Rate, warmup: Duration, duration: Duration) -> Self {
        // Request i is due before time t exactly when i < t × rate.
        let count_before = |t: Duration| (t.as_secs_f64() * rate.0).ceil() as u64;
        Schedule {
            start,
            rate,
            warmup,
            duration,
            warmup_requests: count_before(warmup),
            total_requests: count_before(warmup + duration),
        }
    }

    /// When request `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate.0)
    }

    /// Whether request `i` falls in the measured window (after warm-up).
    pub fn is_measured(&self, i: u64) -> bool {
        i >= self.warmup_requests
    }

    pub fn total_requests(&self) -> u64 {
        self.total_requests
    }

    pub fn measured_requests(&self) -> u64 {
        self.total_requests - self.warmup_requests
    }

    /// Start of the measured window.
    pub fn measure_start(&self) -> Instant {
        self.start + self.warmup
    }

    /// End of the measured window: the last measured request is due just before it.
    pub fn measure_end(&self) -> Instant {
        self.start + self.warmup + self.duration
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
