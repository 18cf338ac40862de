//! Endpoint pools: one named set of endpoints in one region, and how an
//! endpoint is picked from it (power of two choices over peak-EWMA load,
//! round-robin, or least-request).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascadia_config::{Balancer, OutlierDetection};
use tokio::time::Instant;

use crate::client::UpstreamClient;
use crate::endpoint::{Endpoint, Outcome};

/// Operator state of one region, shared by every pool in it and kept across
/// reloads.
#[derive(Debug, Default)]
pub struct RegionState {
    /// Set by `POST /admin/regions/{region}/drain`: no new attempts go here.
    drained: AtomicBool,
    /// A drill's injected fault (see [`Fault`]); 0 when none.
    fault_kind: std::sync::atomic::AtomicU8,
    /// Added latency in ms, or error rate in parts per million.
    fault_amount: std::sync::atomic::AtomicU32,
}

/// A fault a failover drill injects on the way to a region, so the drill
/// exercises detection and failover without touching the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every attempt fails as if the region were unreachable.
    Blackhole,
    /// Every attempt waits this long before it is sent.
    Latency(std::time::Duration),
    /// This share of attempts (parts per million) fail as unreachable.
    Errors { per_million: u32 },
}

impl RegionState {
    /// Whether the region is drained.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains (`true`) or restores (`false`) the region.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    /// Injects `fault` (or clears it with `None`).
    pub fn set_fault(&self, fault: Option<Fault>) {
        let (kind, amount) = match fault {
            None => (0, 0),
            Some(Fault::Blackhole) => (1, 0),
            Some(Fault::Latency(d)) => (2, d.as_millis().min(u128::from(u32::MAX)) as u32),
            Some(Fault::Errors { per_million }) => (3, per_million),
        };
        self.fault_amount.store(amount, Ordering::Relaxed);
        self.fault_kind.store(kind, Ordering::Release);
    }

    /// The injected fault, if a drill is running against the region.
    pub fn fault(&self) -> Option<Fault> {
        match self.fault_kind.load(Ordering::Acquire) {
            1 => Some(Fault::Blackhole),
            2 => Some(Fault::Latency(std::time::Duration::from_millis(u64::from(
                self.fault_amount.load(Ordering::Relaxed),
            )))),
            3 => Some(Fault::Errors {
                per_million: self.fault_amount.load(Ordering::Relaxed),
            }),
            _ => None,
        }
    }
}

/// One named endpoint pool in one region.
#[derive(Debug)]
pub struct BackendPool {
    name: Arc<str>,
    region: Arc<str>,
    region_state: Arc<RegionState>,
    endpoints: Vec<Arc<Endpoint>>,
    weights: Vec<u32>,
    total_weight: u32,
    /// Endpoint indexes repeated by weight, interleaved, for round-robin.
    schedule: Vec<usize>,
    next: AtomicUsize,
    balancer: Balancer,
    outlier: OutlierDetection,
    client: UpstreamClient,
    timeout: Duration,
    hold_down: Duration,
}

/// Everything a pool is built from.
#[derive(Debug)]
pub struct PoolSettings {
    pub name: String,
    pub region: String,
    pub region_state: Arc<RegionState>,
    /// Endpoints with their weights (≥ 1).
    pub endpoints: Vec<(Arc<Endpoint>, u32)>,
    pub balancer: Balancer,
    pub outlier: OutlierDetection,
    pub client: UpstreamClient,
    /// Per-attempt deadline for the response headers.
    pub timeout: Duration,
    /// How long a recovered endpoint must stay healthy before failover
    /// counts it again.
    pub hold_down: Duration,
}

impl BackendPool {
    /// Builds a pool.
    pub fn new(settings: PoolSettings) -> Self {
        let weights: Vec<u32> = settings.endpoints.iter().map(|(_, w)| *w).collect();
        let schedule = interleave_by_weight(&weights);
        Self {
            name: settings.name.into(),
            region: settings.region.into(),
            region_state: settings.region_state,
            total_weight: weights.iter().sum(),
            weights,
            endpoints: settings.endpoints.into_iter().map(|(e, _)| e).collect(),
            schedule,
            next: AtomicUsize::new(0),
            balancer: settings.balancer,
            outlier: settings.outlier,
            client: settings.client,
            timeout: settings.timeout,
            hold_down: settings.hold_down,
        }
    }

    /// The backend's name from config; what responses may show.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The region the pool runs in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The region's operator state.
    pub fn region_state(&self) -> &Arc<RegionState> {
        &self.region_state
    }

    /// Every endpoint, in config order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The balancer in use.
    pub fn balancer(&self) -> Balancer {
        self.balancer
    }

    /// The client for this pool's protocol.
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Per-attempt deadline for the upstream response headers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a recovered endpoint must stay healthy before failover
    /// counts it again.
    pub fn hold_down(&self) -> Duration {
        self.hold_down
    }

    /// The share of the pool's weight that is healthy and settled (past
    /// the fail-back hold-down), 0..=1. A drained region has none.
    pub fn healthy_fraction(&self, now: Instant) -> f64 {
        self.fraction(|e| e.is_settled(now, self.hold_down))
    }

    /// The pool's recent latency at `percentile`, over all its endpoints.
    pub fn latency_percentile(&self, percentile: f64) -> Option<Duration> {
        crate::latency::LatencyHistogram::merged_percentile(
            self.endpoints.iter().map(|e| e.latency()),
            percentile,
        )
    }

    /// The share of the pool's weight that can take traffic now, settled
    /// or not. Failover falls back to this when no pool is settled.
    pub fn available_fraction(&self, now: Instant) -> f64 {
        self.fraction(|e| e.is_available(now))
    }

    fn fraction(&self, counts: impl Fn(&Endpoint) -> bool) -> f64 {
        if self.region_state.is_drained() || self.total_weight == 0 {
            return 0.0;
        }
        let healthy: u32 = self
            .endpoints
            .iter()
            .zip(&self.weights)
            .filter(|(e, _)| counts(e))
            .map(|(_, w)| *w)
            .sum();
        f64::from(healthy) / f64::from(self.total_weight)
    }

    /// Picks an available endpoint not in `tried`, or `None` when there is
    /// none. `tried` holds `Arc::as_ptr` addresses of endpoints this request
    /// already used.
    pub fn pick(&self, now: Instant, tried: &[usize]) -> Option<&Arc<Endpoint>> {
        // Empty: a DNS name that has not resolved to anything yet.
        if self.region_state.is_drained() || self.endpoints.is_empty() {
            return None;
        }
        let eligible = |i: usize| {
            let e = &self.endpoints[i];
            e.is_available(now) && !tried.contains(&(Arc::as_ptr(e) as usize))
        };
        match self.balancer {
            Balancer::RoundRobin => self.pick_round_robin(eligible),
            Balancer::P2cEwma => self.pick_p2c(eligible, |e| {
                if e.is_observed() {
                    e.load_cost(now)
                } else {
                    // A fresh endpoint is assumed as fast as its observed
                    // siblings: a fixed default far above the real latency
                    // would starve it, and one far below would flood it.
                    self.typical_rtt(now) * (e.in_flight() as f64 + 1.0)
                }
            }),
            Balancer::LeastRequest => self.pick_p2c(eligible, |e| e.in_flight() as f64 + 1.0),
        }
    }

    /// Mean latency estimate (ns) of the endpoints with observations, or
    /// the default when none has any.
    fn typical_rtt(&self, now: Instant) -> f64 {
        let (sum, count) = self
            .endpoints
            .iter()
            .filter(|e| e.is_observed())
            .fold((0.0, 0u32), |(sum, n), e| {
                (sum + e.rtt(now).as_nanos() as f64, n + 1)
            });
        if count == 0 {
            crate::endpoint::DEFAULT_RTT.as_nanos() as f64
        } else {
            sum / f64::from(count)
        }
    }

    fn pick_round_robin(&self, eligible: impl Fn(usize) -> bool) -> Option<&Arc<Endpoint>> {
        let len = self.schedule.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|offset| self.schedule[(start + offset) % len])
            .find(|&i| eligible(i))
            .map(|i| &self.endpoints[i])
    }

    /// Power of two choices: two weighted-random eligible endpoints, the
    /// one with the lower cost per unit of weight wins.
    fn pick_p2c(
        &self,
        eligible: impl Fn(usize) -> bool,
        cost: impl Fn(&Endpoint) -> f64,
    ) -> Option<&Arc<Endpoint>> {
        let first = self.random_eligible(&eligible)?;
        // The second choice must differ from the first, or a pool of two
        // would hand the slow endpoint every draw that picked it twice.
        let Some(second) = self.random_eligible(&|i| i != first && eligible(i)) else {
            return Some(&self.endpoints[first]);
        };
        let score = |i: usize| cost(&self.endpoints[i]) / f64::from(self.weights[i]);
        let winner = if score(second) < score(first) {
            second
        } else {
            first
        };
        Some(&self.endpoints[winner])
    }

    /// A weighted-random eligible endpoint index. Draws from the weighted
    /// schedule a few times, then falls back to a scan, so the common case
    /// (everything healthy) allocates nothing and costs O(1).
    fn random_eligible(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..4 {
            let i = self.schedule[fastrand::usize(..self.schedule.len())];
            if eligible(i) {
                return Some(i);
            }
        }
        let candidates = (0..self.endpoints.len()).filter(|&i| eligible(i)).count();
        if candidates == 0 {
            return None;
        }
        (0..self.endpoints.len())
            .filter(|&i| eligible(i))
            .nth(fastrand::usize(..candidates))
    }

    /// Whether an answer with `status` counts against the endpoint that
    /// gave it (the outlier policy's `failure_statuses`).
    pub fn counts_as_failure(&self, status: http::StatusCode) -> bool {
        self.outlier.failure_statuses.counts(status)
    }

    /// Records an attempt's outcome at `endpoint`, applying outlier
    /// detection with the pool's cap on how much of it may be ejected.
    pub fn record(&self, endpoint: &Endpoint, outcome: Outcome, now: Instant) {
        let ejected = endpoint.record(outcome, now, &self.outlier, || {
            let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
            // Always allow one ejection, even in a one-endpoint pool, so a
            // dead single endpoint fails fast instead of on every request.
            let cap =
                (self.endpoints.len() * self.outlier.max_ejected_percent as usize / 100).max(1);
            ejected < cap
        });
        if ejected {
            tracing::warn!(backend = %self.name, region = %self.region, endpoint = %endpoint.authority(), "endpoint ejected after consecutive failures");
        }
    }
}

/// Spreads endpoint indexes over a schedule in proportion to their weights,
/// interleaved (a a b a a b rather than a a a a b b) so a heavy endpoint
/// does not take bursts.
fn interleave_by_weight(weights: &[u32]) -> Vec<usize> {
    let max_weight = weights.iter().copied().max().unwrap_or(0);
    let mut schedule = Vec::new();
    for round in 0..max_weight {
        for (i, weight) in weights.iter().enumerate() {
            if round < *weight {
                schedule.push(i);
            }
        }
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascadia_config::UpstreamProtocol;
    use http::uri::Authority;

    fn pool(balancer: Balancer, weights: &[u32]) -> BackendPool {
        pool_with(balancer, weights, OutlierDetection::default())
    }

    fn pool_with(balancer: Balancer, weights: &[u32], outlier: OutlierDetection) -> BackendPool {
        let endpoints = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let authority = Authority::try_from(format!("127.0.0.1:{}", 1000 + i)).unwrap();
                (Arc::new(Endpoint::new(authority)), *w)
            })
            .collect();
        BackendPool::new(PoolSettings {
            name: "p".into(),
            region: "r".into(),
            region_state: Arc::default(),
            endpoints,
            balancer,
            outlier,
            client: UpstreamClient::new(UpstreamProtocol::Http1, Duration::from_secs(1)),
            timeout: Duration::from_secs(1),
            hold_down: Duration::from_secs(5),
        })
    }

    fn port(e: &Endpoint) -> u16 {
        e.authority().port_u16().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_honours_weights_and_interleaves() {
        let pool = pool(Balancer::RoundRobin, &[2, 1]);
        let now = Instant::now();
        let picks: Vec<u16> = (0..6).map(|_| port(pool.pick(now, &[]).unwrap())).collect();
        assert_eq!(picks, vec![1000, 1001, 1000, 1000, 1001, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_faster_endpoint() {
        let pool = pool(Balancer::P2cEwma, &[1, 1]);
        let now = Instant::now();
        let slow = &pool.endpoints()[0];
        let fast = &pool.endpoints()[1];
        pool.record(slow, Outcome::Success(Duration::from_millis(50)), now);
        pool.record(fast, Outcome::Success(Duration::from_millis(1)), now);
        let to_fast = (0..1000)
            .filter(|_| port(pool.pick(now, &[]).unwrap()) == 1001)
            .count();
        // Whenever both are drawn the fast one wins; the slow one only gets
        // the draws where it was picked twice (about a quarter).
        assert!(to_fast > 700, "fast endpoint got {to_fast} of 1000");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_endpoint_is_not_starved_by_the_default_estimate() {
        let pool = pool(Balancer::P2cEwma, &[1, 1]);
        let now = Instant::now();
        // One endpoint answered in 200 µs, far below the 5 ms default; the
        // other has not been tried yet. It must still get traffic.
        pool.record(
            &pool.endpoints()[0],
            Outcome::Success(Duration::from_micros(200)),
            now,
        );
        let to_fresh = (0..1000)
            .filter(|_| port(pool.pick(now, &[]).unwrap()) == 1001)
            .count();
        assert!(to_fresh > 300, "fresh endpoint got {to_fresh} of 1000");
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_and_tried_endpoints_are_skipped() {
        let pool = pool(Balancer::P2cEwma, &[1, 1]);
        let now = Instant::now();
        let first = Arc::clone(&pool.endpoints()[0]);
        for _ in 0..3 {
            pool.record(&first, Outcome::Failure, now);
        }
        assert!(first.is_ejected(now));
        assert_eq!(pool.healthy_fraction(now), 0.5);
        for _ in 0..100 {
            assert_eq!(port(pool.pick(now, &[]).unwrap()), 1001);
        }
        let second = Arc::as_ptr(&pool.endpoints()[1]) as usize;
        assert!(pool.pick(now, &[second]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_capped_share_is_ejected() {
        let capped = OutlierDetection {
            max_ejected_percent: 50,
            ..OutlierDetection::default()
        };
        let pool = pool_with(Balancer::P2cEwma, &[1, 1], capped);
        let now = Instant::now();
        for e in pool.endpoints() {
            for _ in 0..3 {
                pool.record(e, Outcome::Failure, now);
            }
        }
        // 50% of two endpoints: only one is ejected.
        assert_eq!(pool.healthy_fraction(now), 0.5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_pool_picks_nothing_and_has_no_healthy_share() {
        for balancer in [
            Balancer::RoundRobin,
            Balancer::P2cEwma,
            Balancer::LeastRequest,
        ] {
            let pool = pool(balancer, &[]);
            assert!(pool.pick(Instant::now(), &[]).is_none());
            assert_eq!(pool.healthy_fraction(Instant::now()), 0.0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_region_takes_nothing() {
        let pool = pool(Balancer::P2cEwma, &[1]);
        let now = Instant::now();
        pool.region_state().set_drained(true);
        assert_eq!(pool.healthy_fraction(now), 0.0);
        assert!(pool.pick(now, &[]).is_none());
        pool.region_state().set_drained(false);
        assert!(pool.pick(now, &[]).is_some());
    }
}
