//! One upstream endpoint's runtime state: in-flight count, peak-EWMA
//! latency, passive outlier state and active health. All atomics, so the
//! request path takes no lock; the state is shared by every snapshot that
//! contains the endpoint, so it survives reloads.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascadia_config::OutlierDetection;

use crate::connections::Connections;
use crate::latency::LatencyHistogram;
use http::uri::Authority;
use http::HeaderValue;
use tokio::time::Instant;

/// The latency assumed for an endpoint before its first response, so new
/// endpoints are neither starved nor flooded.
pub const DEFAULT_RTT: Duration = Duration::from_millis(5);
/// How fast old latency observations fade in the peak EWMA.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// Runtime state of one upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    authority: Authority,
    /// `Host` for HTTP/1.1 requests here: the authority, formatted once.
    host: HeaderValue,
    /// Idle and shared connections to this endpoint.
    connections: Arc<Connections>,
    /// Reference point for the nanosecond timestamps below.
    epoch: Instant,
    /// Requests sent here whose response has not finished.
    in_flight: AtomicU64,
    /// Attempts ever sent here.
    attempts: AtomicU64,
    /// Attempts that failed (connect, timeout, 5xx).
    failures: AtomicU64,
    /// Peak-EWMA latency estimate in nanoseconds (f64 bits).
    rtt_ns: AtomicU64,
    /// When `rtt_ns` was last updated, ns since `epoch`.
    rtt_stamp: AtomicU64,
    /// Failed attempts in a row.
    consecutive_failures: AtomicU32,
    /// Ejected until this time, ns since `epoch`; 0 when never ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row without a success in between (drives the backoff).
    ejections: AtomicU32,
    /// Verdict of the active health check; true until a check says otherwise.
    check_healthy: AtomicBool,
    /// When the check last turned healthy again, ns since `epoch`; 0 never.
    check_healthy_since: AtomicU64,
    /// Recent response times, for hedging.
    latency: LatencyHistogram,
    /// Whether any response time was observed yet.
    observed: AtomicBool,
}

/// What one attempt at an endpoint ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a server error, after this long.
    Success(Duration),
    /// Connect error, timeout, reset or a 5xx.
    Failure,
}

impl Endpoint {
    /// A fresh endpoint.
    pub fn new(authority: Authority) -> Self {
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        Self {
            authority,
            host,
            connections: Arc::default(),
            epoch: Instant::now(),
            in_flight: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rtt_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            rtt_stamp: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            check_healthy: AtomicBool::new(true),
            check_healthy_since: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
            observed: AtomicBool::new(false),
        }
    }

    /// Whether the latency estimate comes from real responses (rather than
    /// [`DEFAULT_RTT`]).
    pub fn is_observed(&self) -> bool {
        self.observed.load(Ordering::Relaxed)
    }

    /// Recent response times (successful attempts).
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// `host:port`. Never shown to clients.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header naming this endpoint.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host
    }

    /// This endpoint's upstream connections.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Requests outstanding here.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Attempts sent here since the endpoint entered the config.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Attempts that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Marks the start of an attempt; the guard ends it when dropped.
    pub fn start_attempt(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// The peak-EWMA latency estimate at `now`.
    ///
    /// Like tower's `PeakEwma`: a slower observation replaces the estimate
    /// at once (react to trouble fast), a faster one blends in with a weight
    /// that grows with the time since the last one.
    ///
    /// The estimate also decays toward zero while no response arrives, as
    /// in tower: an endpoint that was slow and then left alone looks better
    /// over time, gets probed again, and can prove it recovered.
    pub fn rtt(&self, now: Instant) -> Duration {
        let stored = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let idle = self
            .nanos(now)
            .saturating_sub(self.rtt_stamp.load(Ordering::Relaxed)) as f64;
        Duration::from_nanos((stored * (-idle / EWMA_DECAY.as_nanos() as f64).exp()) as u64)
    }

    /// The balancing cost: latency × (in-flight + 1), per unit of weight.
    pub fn load_cost(&self, now: Instant) -> f64 {
        self.rtt(now).as_nanos() as f64 * (self.in_flight() as f64 + 1.0)
    }

    fn observe_rtt(&self, rtt: Duration, now: Instant) {
        let now_ns = self.nanos(now);
        let previous = self.rtt(now).as_nanos() as f64;
        let elapsed = now_ns.saturating_sub(self.rtt_stamp.load(Ordering::Relaxed)) as f64;
        let sample = rtt.as_nanos() as f64;
        let next = if sample > previous {
            sample
        } else {
            let keep = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            previous * keep + sample * (1.0 - keep)
        };
        // Concurrent updates may overwrite each other; the estimate is a
        // heuristic and the last writer is as good as any.
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.rtt_stamp.store(now_ns, Ordering::Relaxed);
        self.observed.store(true, Ordering::Relaxed);
    }

    /// Whether passive outlier detection has ejected the endpoint at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > self.nanos(now)
    }

    /// Whether the active health check passes (always true without checks).
    pub fn is_check_healthy(&self) -> bool {
        self.check_healthy.load(Ordering::Relaxed)
    }

    /// Sets the active health check's verdict.
    pub fn set_check_healthy(&self, healthy: bool) {
        let was = self.check_healthy.swap(healthy, Ordering::Relaxed);
        if healthy && !was {
            self.check_healthy_since
                .store(self.nanos(Instant::now()).max(1), Ordering::Relaxed);
        }
    }

    /// Available, and has been for at least `hold_down` since its last
    /// ejection or failed health check ended. Failover only moves traffic
    /// back to settled endpoints, so a recovering region does not flap.
    pub fn is_settled(&self, now: Instant, hold_down: Duration) -> bool {
        if !self.is_available(now) {
            return false;
        }
        let recovered_at = self
            .ejected_until
            .load(Ordering::Relaxed)
            .max(self.check_healthy_since.load(Ordering::Relaxed));
        recovered_at == 0 || self.nanos(now) >= recovered_at + hold_down.as_nanos() as u64
    }

    /// Whether new attempts may go here.
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_check_healthy() && !self.is_ejected(now)
    }

    /// Records an attempt's outcome. On a failure that crosses the
    /// threshold, ejects the endpoint if `may_eject` agrees (the pool's cap
    /// on ejected endpoints) and returns true.
    pub fn record(
        &self,
        outcome: Outcome,
        now: Instant,
        policy: &OutlierDetection,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        match outcome {
            Outcome::Success(rtt) => {
                self.observe_rtt(rtt, now);
                self.latency.record(rtt);
                self.consecutive_failures.store(0, Ordering::Relaxed);
                if !self.is_ejected(now) {
                    self.ejections.store(0, Ordering::Relaxed);
                }
                false
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if streak < policy.consecutive_failures || self.is_ejected(now) || !may_eject() {
                    return false;
                }
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let repeats = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
                let backoff = policy
                    .base_ejection
                    .get()
                    .saturating_mul(1 << repeats)
                    .min(policy.max_ejection.get());
                // ±10% jitter so endpoints ejected together do not return
                // together.
                let jittered = backoff.mul_f64(0.9 + fastrand::f64() * 0.2);
                self.ejected_until
                    .store(self.nanos(now + jittered), Ordering::Relaxed);
                true
            }
        }
    }

    /// How much longer the endpoint stays ejected, if it is.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let at = self.nanos(now);
        (until > at).then(|| Duration::from_nanos(until - at))
    }

    /// Ejects the endpoint until `until` (another replica's ejection), unless
    /// it already is for longer.
    pub fn eject_until(&self, until: Instant) {
        self.ejected_until
            .fetch_max(self.nanos(until), Ordering::Relaxed);
    }

    /// Ends an ejection now (used when a region is restored by an operator).
    pub fn clear_ejection(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// Holds one in-flight slot of an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl InFlight {
    /// The endpoint this slot belongs to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::new(Authority::from_static("127.0.0.1:1"))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_growing_backoff() {
        let e = endpoint();
        let policy = OutlierDetection::default(); // 3 failures, 1s base, 30s max
        let now = Instant::now();
        assert!(!e.record(Outcome::Failure, now, &policy, || true));
        assert!(!e.record(Outcome::Failure, now, &policy, || true));
        assert!(
            e.record(Outcome::Failure, now, &policy, || true),
            "third failure ejects"
        );
        assert!(e.is_ejected(now + Duration::from_millis(850)));
        assert!(!e.is_ejected(now + Duration::from_millis(1150)), "1s ± 10%");

        // Back after the first ejection and failing again: twice as long.
        let later = now + Duration::from_secs(2);
        for _ in 0..3 {
            e.record(Outcome::Failure, later, &policy, || true);
        }
        assert!(e.is_ejected(later + Duration::from_millis(1750)));
        assert!(!e.is_ejected(later + Duration::from_millis(2250)));

        // A success after re-admission resets the backoff.
        let recovered = later + Duration::from_secs(3);
        e.record(
            Outcome::Success(Duration::from_millis(1)),
            recovered,
            &policy,
            || true,
        );
        for _ in 0..3 {
            e.record(Outcome::Failure, recovered, &policy, || true);
        }
        assert!(!e.is_ejected(recovered + Duration::from_millis(1150)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_endpoint_settles_only_after_the_hold_down() {
        let e = endpoint();
        let policy = OutlierDetection::default();
        let hold_down = Duration::from_secs(5);
        let now = Instant::now();
        assert!(
            e.is_settled(now, hold_down),
            "never failed: settled at once"
        );
        for _ in 0..3 {
            e.record(Outcome::Failure, now, &policy, || true);
        }
        let back = now + Duration::from_millis(1200); // ejection (≤ 1.1s) over
        assert!(e.is_available(back));
        assert!(!e.is_settled(back, hold_down));
        assert!(e.is_settled(now + Duration::from_millis(6200), hold_down));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_cap_can_veto_an_ejection() {
        let e = endpoint();
        let policy = OutlierDetection::default();
        let now = Instant::now();
        for _ in 0..5 {
            assert!(!e.record(Outcome::Failure, now, &policy, || false));
        }
        assert!(!e.is_ejected(now));
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let e = endpoint();
        let policy = OutlierDetection::default();
        let now = Instant::now();
        e.record(
            Outcome::Success(Duration::from_millis(50)),
            now,
            &policy,
            || true,
        );
        assert_eq!(
            e.rtt(now),
            Duration::from_millis(50),
            "a slow sample takes over at once"
        );
        // A fast sample right away barely moves it; one after a long quiet
        // spell mostly replaces it.
        e.record(
            Outcome::Success(Duration::from_millis(1)),
            now,
            &policy,
            || true,
        );
        assert!(e.rtt(now) > Duration::from_millis(49));
        let later = now + EWMA_DECAY * 3;
        e.record(
            Outcome::Success(Duration::from_millis(1)),
            later,
            &policy,
            || true,
        );
        assert!(
            e.rtt(later) < Duration::from_millis(4),
            "{:?}",
            e.rtt(later)
        );
    }
}
