//! Regional failover by priority: which pool of a version's preference list
//! an attempt goes to.
//!
//! # How it works
//! Pools are listed in preference order (usually the local region first).
//! Each pool's healthy fraction `h` (available endpoint weight ÷ total, 0
//! for a drained region) is scaled by the overprovisioning factor 1.4, as
//! Envoy does: a region keeps all its traffic while at least ~72% of it is
//! healthy, then spills the missing share to the next pool in order, and
//! loses everything when it is down. When no pool has healthy capacity,
//! there is nowhere to send the request and the caller answers 503.

use std::sync::Arc;

use tokio::time::Instant;

use crate::pool::BackendPool;

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
) -> Option<usize> {
    // Preference lists are short (a few regions): fixed storage, no allocation.
    let mut shares = [0.0f64; 8];
    let mut remaining = 1.0f64;
    let mut total = 0.0;
    for (i, pool) in pools.iter().enumerate().take(shares.len()) {
        if skip(i) {
            continue;
        }
        let capacity = (pool.healthy_fraction(now) * OVERPROVISIONING).min(1.0);
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
    use std::time::Duration;

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
            .filter(|k| choose_pool(pools, now, |_| false, (*k as f64 + 0.5) / n as f64) == Some(0))
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
        assert_eq!(choose_pool(&pools, now, |_| false, 0.3), Some(1));
        eject(&pools[1], 2, now);
        assert_eq!(choose_pool(&pools, now, |_| false, 0.3), None);
    }

    #[tokio::test(start_paused = true)]
    async fn skipped_pools_are_not_chosen() {
        let pools = [pool("us-east", 2), pool("eu-west", 2)];
        let now = Instant::now();
        assert_eq!(choose_pool(&pools, now, |i| i == 0, 0.1), Some(1));
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
