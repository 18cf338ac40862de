//! Regional failover by priority: which pool of a version's preference list
//! an attempt goes to.
//!
//! # How it works
//! Pools are listed in preference order (usually the local region first).
//! Each pool's healthy fraction `h` (available endpoint weight ÷ total, 0
//! for a drained region) is scaled by the overprovisioning factor 1.4, as
//! Envoy does: a region keeps all its traffic while at least ~72% of it is
//! healthy, then spills the missing share to the next pool in order, and
//! loses everything when it is down. A pool whose recent p95 breaks the
//! route's latency SLO counts as degraded: it keeps only a trickle of
//! traffic ([`DEGRADED_TRICKLE`], to keep measuring it) while a pool within
//! the SLO has capacity. Only endpoints past their fail-back
//! hold-down count as healthy, so traffic returns to a recovered region once
//! it has stayed healthy for a while, not at its first good moment. When no
//! pool has settled capacity, pools are weighed by what is available at all
//! (so a lone recovering region still serves); when nothing is available,
//! there is nowhere to send the request and the caller answers 503.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pool::BackendPool;

/// The share a pool that breaks the latency SLO keeps, so its latency is
/// still measured and it can recover.
pub const DEGRADED_TRICKLE: f64 = 0.05;

/// How much headroom a pool is assumed to have: at 1/1.4 ≈ 71% healthy it
/// still takes all of its traffic.
pub const OVERPROVISIONING: f64 = 1.4;

/// Chooses a pool index for an attempt. `skip(i)` excludes pools (for
/// example ones this request already failed in); `draw` is uniform in [0, 1).
pub fn choose_pool(
    pools: &[Arc<BackendPool>],
    now: Instant,
    skip: impl Fn(usize) -> bool,
    draw: f64,
    latency_slo: Option<Duration>,
) -> Option<usize> {
    if let Some(slo) = latency_slo {
        let degraded = |p: &BackendPool| p.latency_percentile(95.0).is_some_and(|p95| p95 > slo);
        let within_slo = pools
            .iter()
            .enumerate()
            .any(|(i, p)| !skip(i) && !degraded(p) && p.healthy_fraction(now) > 0.0);
        if within_slo {
            return choose_by(pools, &skip, draw, |p| {
                let health = p.healthy_fraction(now);
                if degraded(p) {
                    health.min(DEGRADED_TRICKLE / OVERPROVISIONING)
                } else {
                    health
                }
            });
        }
    }
    choose_by(pools, &skip, draw, |p| p.healthy_fraction(now))
        .or_else(|| choose_by(pools, &skip, draw, |p| p.available_fraction(now)))
}

fn choose_by(
    pools: &[Arc<BackendPool>],
    skip: &impl Fn(usize) -> bool,
    draw: f64,
    health: impl Fn(&BackendPool) -> f64,
) -> Option<usize> {
    // Preference lists are short (a few regions): fixed storage, no allocation.
    let mut shares = [0.0f64; 8];
    let mut remaining = 1.0f64;
    let mut total = 0.0;
    for (i, pool) in pools.iter().enumerate().take(shares.len()) {
        if skip(i) {
            continue;
        }
        let capacity = (health(pool) * OVERPROVISIONING).min(1.0);
        let share = capacity.min(remaining);
        shares[i] = share;
        remaining -= share;
        total += share;
    }
    if total <= 0.0 {
        return None;
    }
    let mut ticket = draw * total;
    for (i, share) in shares.iter().enumerate().take(pools.len()) {
        if *share > 0.0 {
            if ticket < *share {
                return Some(i);
            }
            ticket -= share;
        }
    }
    // Rounding left the ticket past the end: the last pool with a share.
    shares.iter().rposition(|s| *s > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::UpstreamClient;
    use crate::endpoint::{Endpoint, Outcome};
    use crate::pool::PoolSettings;
    use cascadia_config::{Balancer, OutlierDetection, UpstreamProtocol};
    use http::uri::Authority;

    fn pool(region: &str, endpoints: usize) -> Arc<BackendPool> {
        let endpoints = (0..endpoints)
            .map(|i| {
                let authority = Authority::try_from(format!("127.0.0.1:{}", 2000 + i)).unwrap();
                (Arc::new(Endpoint::new(authority)), 1)
            })
            .collect();
        Arc::new(BackendPool::new(PoolSettings {
            name: region.into(),
            region: region.into(),
            region_state: Arc::default(),
            endpoints,
            balancer: Balancer::P2cEwma,
            outlier: OutlierDetection {
                max_ejected_percent: 100,
                ..OutlierDetection::default()
            },
            client: UpstreamClient::new(UpstreamProtocol::Http1, Duration::from_secs(1)),
            timeout: Duration::from_secs(1),
            hold_down: Duration::from_secs(5),
        }))
    }

    fn eject(pool: &BackendPool, count: usize, now: Instant) {
        for e in &pool.endpoints()[..count] {
            for _ in 0..3 {
                pool.record(e, Outcome::Failure, now);
            }
        }
    }

    fn share_of_first(pools: &[Arc<BackendPool>], now: Instant) -> f64 {
        let n = 10_000;
        let first = (0..n)
            .filter(|k| {
                choose_pool(pools, now, |_| false, (*k as f64 + 0.5) / n as f64, None) == Some(0)
            })
            .count();
        first as f64 / n as f64
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_preferred_region_takes_everything() {
        let pools = [pool("us-east", 10), pool("eu-west", 10)];
        let now = Instant::now();
        assert_eq!(share_of_first(&pools, now), 1.0);
        // Still everything at 80% healthy (80% × 1.4 ≥ 100%).
        eject(&pools[0], 2, now);
        assert_eq!(share_of_first(&pools, now), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_spills_in_proportion_as_health_drops() {
        let pools = [pool("us-east", 10), pool("eu-west", 10)];
        let now = Instant::now();
        eject(&pools[0], 5, now); // 50% healthy → 70% of traffic stays
        let first = share_of_first(&pools, now);
        assert!((first - 0.7).abs() < 0.01, "{first}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_region_fails_over_entirely_and_all_dead_is_none() {
        let pools = [pool("us-east", 2), pool("eu-west", 2)];
        let now = Instant::now();
        eject(&pools[0], 2, now);
        assert_eq!(share_of_first(&pools, now), 0.0);
        assert_eq!(choose_pool(&pools, now, |_| false, 0.3, None), Some(1));
        eject(&pools[1], 2, now);
        assert_eq!(choose_pool(&pools, now, |_| false, 0.3, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_back_waits_for_the_hold_down() {
        let pools = [pool("us-east", 2), pool("eu-west", 2)];
        let start = Instant::now();
        eject(&pools[0], 2, start);
        assert_eq!(share_of_first(&pools, start), 0.0);
        // Ejections (≤ 1.1s) are over, but the region is inside its 5s
        // hold-down: traffic stays away.
        let recovered = start + Duration::from_millis(1200);
        assert_eq!(share_of_first(&pools, recovered), 0.0);
        // Past the hold-down it all comes back.
        assert_eq!(
            share_of_first(&pools, start + Duration::from_millis(6300)),
            1.0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_recovering_pool_still_serves() {
        let pools = [pool("us-east", 2)];
        let start = Instant::now();
        eject(&pools[0], 2, start);
        assert_eq!(choose_pool(&pools, start, |_| false, 0.5, None), None);
        let recovered = start + Duration::from_millis(1200);
        assert_eq!(
            choose_pool(&pools, recovered, |_| false, 0.5, None),
            Some(0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_over_the_latency_slo_keeps_only_a_trickle() {
        let pools = [pool("us-east", 2), pool("eu-west", 2)];
        let now = Instant::now();
        let slo = Some(Duration::from_millis(10));
        for e in pools[0].endpoints() {
            for _ in 0..50 {
                pools[0].record(e, Outcome::Success(Duration::from_millis(30)), now);
            }
        }
        let first = (0..10_000)
            .filter(|k| {
                choose_pool(&pools, now, |_| false, (*k as f64 + 0.5) / 10_000.0, slo) == Some(0)
            })
            .count() as f64
            / 10_000.0;
        assert!((first - DEGRADED_TRICKLE).abs() < 0.001, "{first}");
        // Without an SLO, or when every region is slow, priority rules.
        assert_eq!(share_of_first(&pools, now), 1.0);
        for e in pools[1].endpoints() {
            for _ in 0..50 {
                pools[1].record(e, Outcome::Success(Duration::from_millis(30)), now);
            }
        }
        assert_eq!(choose_pool(&pools, now, |_| false, 0.5, slo), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn skipped_pools_are_not_chosen() {
        let pools = [pool("us-east", 2), pool("eu-west", 2)];
        let now = Instant::now();
        assert_eq!(choose_pool(&pools, now, |i| i == 0, 0.1, None), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_region_fails_over_and_back() {
        let pools = [pool("us-east", 2), pool("eu-west", 2)];
        let now = Instant::now();
        pools[0].region_state().set_drained(true);
        assert_eq!(share_of_first(&pools, now), 0.0);
        pools[0].region_state().set_drained(false);
        assert_eq!(share_of_first(&pools, now), 1.0);
    }
}
