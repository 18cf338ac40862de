//! Endpoint pools: one named set of endpoints in one region, and the
//! per-endpoint runtime state that survives reloads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;

use crate::client::UpstreamClient;

/// Runtime state of one upstream endpoint. Shared by every snapshot that
/// contains the endpoint, so counters carry across reloads.
#[derive(Debug)]
pub struct Endpoint {
    authority: Authority,
    /// Requests sent to this endpoint whose response has not finished yet.
    in_flight: AtomicU64,
    /// Attempts ever sent here; for the admin view and tests.
    attempts: AtomicU64,
}

impl Endpoint {
    /// A fresh endpoint with zeroed counters.
    pub fn new(authority: Authority) -> Self {
        Self {
            authority,
            in_flight: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
        }
    }

    /// `host:port` of the endpoint. Never shown to clients.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Requests currently outstanding at this endpoint.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Attempts sent to this endpoint since it entered the config.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Marks the start of an attempt; the returned guard ends it when dropped
    /// (which the gateway does when the response body has been fully sent).
    pub fn start_attempt(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
        }
    }
}

/// Holds one in-flight slot of an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One named endpoint pool in one region.
#[derive(Debug)]
pub struct BackendPool {
    name: Arc<str>,
    region: Arc<str>,
    /// Endpoints, repeated by weight so round-robin honours weights without
    /// per-request arithmetic.
    schedule: Vec<Arc<Endpoint>>,
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    client: UpstreamClient,
    timeout: Duration,
}

impl BackendPool {
    /// Builds a pool. `endpoints` pairs each endpoint with its weight (≥ 1).
    pub fn new(
        name: &str,
        region: &str,
        endpoints: Vec<(Arc<Endpoint>, u32)>,
        client: UpstreamClient,
        timeout: Duration,
    ) -> Self {
        let schedule = interleave_by_weight(&endpoints);
        Self {
            name: name.into(),
            region: region.into(),
            schedule,
            endpoints: endpoints.into_iter().map(|(e, _)| e).collect(),
            next: AtomicUsize::new(0),
            client,
            timeout,
        }
    }

    /// The backend's name from config; this is what responses may show.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The region the pool runs in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Every endpoint of the pool, in config order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The client for this pool's protocol.
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// The deadline for the upstream response headers, from config.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Picks the next endpoint, weighted round-robin. `None` only for a pool
    /// without endpoints, which validation does not allow.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        if self.schedule.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.schedule.get(turn % self.schedule.len())
    }
}

/// Spreads endpoints over a schedule in proportion to their weights,
/// interleaved (a a b a a b rather than a a a a b b), so a heavy endpoint
/// does not take bursts.
fn interleave_by_weight(endpoints: &[(Arc<Endpoint>, u32)]) -> Vec<Arc<Endpoint>> {
    let max_weight = endpoints.iter().map(|(_, w)| *w).max().unwrap_or(0);
    let mut schedule = Vec::new();
    for round in 0..max_weight {
        for (endpoint, weight) in endpoints {
            if round < *weight {
                schedule.push(Arc::clone(endpoint));
            }
        }
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascadia_config::UpstreamProtocol;

    fn endpoint(authority: &'static str) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(Authority::from_static(authority)))
    }

    fn pool(endpoints: Vec<(Arc<Endpoint>, u32)>) -> BackendPool {
        let client = UpstreamClient::new(UpstreamProtocol::Http1, Duration::from_secs(1));
        BackendPool::new("b", "r", endpoints, client, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn round_robin_honours_weights() {
        let a = endpoint("a:1");
        let b = endpoint("b:1");
        let pool = pool(vec![(a.clone(), 3), (b.clone(), 1)]);
        let picks: Vec<_> = (0..400).map(|_| pool.pick().unwrap().clone()).collect();
        let to_a = picks.iter().filter(|e| Arc::ptr_eq(e, &a)).count();
        assert_eq!(to_a, 300);
        assert_eq!(picks.len() - to_a, 100);
    }

    #[tokio::test]
    async fn in_flight_guard_counts_and_releases() {
        let a = endpoint("a:1");
        let first = a.start_attempt();
        let second = a.start_attempt();
        assert_eq!(a.in_flight(), 2);
        drop(first);
        assert_eq!(a.in_flight(), 1);
        drop(second);
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.attempts(), 2);
    }
}
