//! Balancer pick: `BackendPool::pick` with power of two choices over peak-EWMA, round-robin and
//! least-request, over 3 and 32 endpoints, against a baseline of the pool's own round-robin
//! pick (the cheapest balancer, one atomic increment). An inline atomic counter is there too, as
//! the floor any pick can reach.
//!
//! Every endpoint is healthy and has latency history (a few hundred µs to a few ms, some
//! requests in flight), as in steady traffic; the cold p2c-ewma case has no history yet, where
//! the pick falls back to the pool's mean latency. `now` is taken once outside the loop, as the
//! gateway takes it once per request, and `tried` is empty (a first attempt).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascadia_backends::{BackendPool, Endpoint, InFlight, Outcome, PoolSettings, UpstreamClient};
use cascadia_config::{Balancer, OutlierDetection, UpstreamProtocol};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::time::Instant;

/// A pool of `n` endpoints, all weight 1. With `warm`, each endpoint has seen responses and
/// holds some requests in flight (the guards are returned so they stay in flight).
fn pool(n: usize, balancer: Balancer, warm: bool) -> (BackendPool, Vec<InFlight>) {
    let endpoints: Vec<(Arc<Endpoint>, u32)> = (0..n)
        .map(|i| {
            let authority = format!("10.0.{}.{}:8000", i / 250, i % 250 + 1)
                .parse()
                .expect("valid authority");
            (Arc::new(Endpoint::new(authority)), 1)
        })
        .collect();
    let pool = BackendPool::new(PoolSettings {
        name: "bench".to_owned(),
        region: "local".to_owned(),
        region_state: Arc::default(),
        endpoints,
        balancer,
        outlier: OutlierDetection::default(),
        client: UpstreamClient::new(UpstreamProtocol::Http1, Duration::from_secs(1)),
        timeout: Duration::from_secs(2),
        hold_down: Duration::from_secs(5),
    });
    let mut in_flight = Vec::new();
    if warm {
        let now = Instant::now();
        for (i, endpoint) in pool.endpoints().iter().enumerate() {
            for k in 0..8u64 {
                let rtt = Duration::from_micros(300 + (i as u64 * 137 + k * 61) % 3000);
                pool.record(endpoint, Outcome::Success(rtt), now);
            }
            for _ in 0..i % 3 {
                in_flight.push(endpoint.start_attempt());
            }
        }
    }
    (pool, in_flight)
}

fn picks(c: &mut Criterion) {
    for n in [3usize, 32] {
        let (round_robin, _rr) = pool(n, Balancer::RoundRobin, true);
        let (p2c, _p2c) = pool(n, Balancer::P2cEwma, true);
        let (p2c_cold, _cold) = pool(n, Balancer::P2cEwma, false);
        let (least, _least) = pool(n, Balancer::LeastRequest, true);
        let counter = AtomicUsize::new(0);
        let endpoints = round_robin.endpoints();
        let now = Instant::now();
        let tried: &[usize] = &[];

        let mut group = c.benchmark_group(format!("pick/{n}-endpoints"));
        group.bench_function("baseline-round-robin", |b| {
            b.iter(|| {
                round_robin
                    .pick(black_box(now), black_box(tried))
                    .unwrap()
                    .in_flight()
            })
        });
        group.bench_function("p2c-ewma", |b| {
            b.iter(|| {
                p2c.pick(black_box(now), black_box(tried))
                    .unwrap()
                    .in_flight()
            })
        });
        group.bench_function("p2c-ewma-cold", |b| {
            b.iter(|| {
                p2c_cold
                    .pick(black_box(now), black_box(tried))
                    .unwrap()
                    .in_flight()
            })
        });
        group.bench_function("least-request", |b| {
            b.iter(|| {
                least
                    .pick(black_box(now), black_box(tried))
                    .unwrap()
                    .in_flight()
            })
        });
        group.bench_function("inline-atomic-counter", |b| {
            b.iter(|| {
                let i = counter.fetch_add(1, Ordering::Relaxed) % endpoints.len();
                endpoints[i].in_flight()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
