//! The feature cache behind the cascade: entity features fetched from a
//! feature store once, then served from the in-process tier and a real
//! Redis, which can die, hang or fill up without failing a request.

use std::time::Duration;

use cascadia_sim::{feature_value, LatencyModel, SimHandle};
use http::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use crate::support::redis::RedisServer;
use crate::support::{sim, GatewayProcess, TestClient, TestResponse, WAIT};

/// p = sigmoid(a + b); `a` comes with the request, `b` from the store.
pub(crate) const MODEL: &str = r#"{"name":"screen-lr","version":"1","features":["a","b"],"coefficients":[1.0,1.0],"intercept":-5.0}"#;

fn config(
    ensemble: &SimHandle,
    store: &SimHandle,
    redis: Option<&RedisServer>,
    entity_extra: &str,
) -> String {
    let redis = redis
        .map(|r| {
            format!(
                "[gateway.redis]\nurl = \"{}\"\nresponse_timeout = \"20ms\"\n",
                r.url()
            )
        })
        .unwrap_or_default();
    config_with_redis(ensemble, store, &redis, entity_extra)
}

/// A cascade route `fraud` whose feature `b` comes from the store through
/// the cache, over the `[gateway.redis]` table `redis` (may be empty).
pub(crate) fn config_with_redis(
    ensemble: &SimHandle,
    store: &SimHandle,
    redis: &str,
    entity_extra: &str,
) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{redis}
[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["{ensemble}"]

[[backends]]
name = "feature-store"
region = "us-east"
endpoints = ["{store}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "x"
accept_below = 0.2
reject_above = 0.8

[routes.cascade.entity]
key_header = "x-entity"
features = ["b"]
store = "feature-store"
ttl = "60s"
negative_ttl = "60s"
{entity_extra}
"#,
        ensemble = ensemble.addr,
        store = store.addr,
    )
}

async fn start(
    ensemble: &SimHandle,
    store: &SimHandle,
    redis: Option<&RedisServer>,
    entity_extra: &str,
) -> GatewayProcess {
    GatewayProcess::start_with_files(
        &config(ensemble, store, redis, entity_extra),
        &[("screen.json", MODEL)],
    )
    .await
}

async fn infer(
    client: &TestClient,
    gateway: &GatewayProcess,
    a: f64,
    entity: &str,
) -> TestResponse {
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [[a]]}]});
    client
        .send(
            Method::POST,
            &gateway.url("/v2/models/fraud/infer"),
            &[("content-type", "application/json"), ("x-entity", entity)],
            &body.to_string(),
        )
        .await
}

fn probability(response: &TestResponse) -> f64 {
    response.json()["outputs"][0]["data"][0].as_f64().unwrap()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_features_are_fetched_once_then_served_from_the_cache() {
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let gateway = start(&ensemble, &store, None, "").await;
    let client = TestClient::new();

    // a = 10 makes every row a confident positive; the exact score shows
    // the store's value of b was used.
    let b = feature_value("acme.com", "b");
    for _ in 0..5 {
        let response = infer(&client, &gateway, 10.0, "acme.com").await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("x-cascadia-stage"), Some("local"));
        assert!((probability(&response) - sigmoid(10.0 + b - 5.0)).abs() < 1e-9);
    }
    assert_eq!(
        store.control.requests(),
        1,
        "one store fetch, then the cache"
    );

    // Unknown entities are cached too (negatively), and their rows go to
    // stage 2, which has its own features.
    for _ in 0..3 {
        let response = infer(&client, &gateway, 10.0, "unknown-domain").await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("x-cascadia-stage"), Some("escalated"));
    }
    assert_eq!(store.control.requests(), 2);

    // A reload keeps the in-process tier: no new fetch for a cached entity.
    let changed = gateway
        .config_text()
        .replace("accept_below = 0.2", "accept_below = 0.1");
    gateway.write_config(&changed);
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        infer(&client, &gateway, 10.0, "acme.com").await.status,
        StatusCode::OK
    );
    assert_eq!(
        store.control.requests(),
        2,
        "the reload did not empty the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_key_make_one_fetch() {
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    store
        .control
        .set_latency(LatencyModel::Fixed(Duration::from_millis(200)));
    let gateway = start(&ensemble, &store, None, r#"timeout = "2s""#).await;
    let client = TestClient::new();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), gateway.url("/v2/models/fraud/infer"));
            tokio::spawn(async move {
                let body = json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [[10.0]]}]});
                client
                    .send(Method::POST, &url, &[("content-type", "application/json"), ("x-entity", "hot.com")], &body.to_string())
                    .await
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        store.control.requests(),
        1,
        "20 concurrent misses, one fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_finds_entities_in_redis() {
    let redis = RedisServer::start().await;
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let first = start(&ensemble, &store, Some(&redis), "").await;
    let client = TestClient::new();
    assert_eq!(
        infer(&client, &first, 10.0, "shared.com").await.status,
        StatusCode::OK
    );
    // The write to Redis happens in the background: wait until it lands.
    tokio::time::timeout(WAIT, async {
        while redis.cli(&["EXISTS", "cascadia:features:shared.com"]) != "1" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("entry written to Redis");
    let ttl: i64 = redis
        .cli(&["TTL", "cascadia:features:shared.com"])
        .parse()
        .unwrap();
    assert!(
        (50..=66).contains(&ttl),
        "TTL with ±10% jitter around 60s: {ttl}"
    );

    // A fresh gateway (empty in-process tier) reads it from Redis.
    let second = start(&ensemble, &store, Some(&redis), "").await;
    let response = infer(&client, &second, 10.0, "shared.com").await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(
        (probability(&response) - sigmoid(5.0 + feature_value("shared.com", "b"))).abs() < 1e-9
    );
    assert_eq!(
        store.control.requests(),
        1,
        "the second gateway did not go to the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_shared_through_a_redis_that_speaks_only_tls() {
    let redis = RedisServer::start_tls().await;
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    // The CA file is read beside the config, like a model. The one request
    // below makes the only write: a TLS handshake that misses the 100 ms
    // default connect timeout on a loaded machine would drop it (writes are
    // best-effort by design), so the test allows the handshake 2 s.
    let text = config(&ensemble, &store, Some(&redis), "").replacen(
        "response_timeout = \"20ms\"\n",
        "response_timeout = \"200ms\"\nconnect_timeout = \"2s\"\ntls_ca_file = \"redis-ca.pem\"\n",
        1,
    );
    assert!(text.contains("rediss://"), "{text}");
    let files = [("screen.json", MODEL), ("redis-ca.pem", &redis.ca_pem())];
    let first = GatewayProcess::start_with_files(&text, &files).await;
    let client = TestClient::new();
    assert_eq!(
        infer(&client, &first, 10.0, "tls.com").await.status,
        StatusCode::OK
    );
    tokio::time::timeout(WAIT, async {
        while redis.cli(&["EXISTS", "cascadia:features:tls.com"]) != "1" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("entry written to Redis over TLS");
    let second = GatewayProcess::start_with_files(&text, &files).await;
    let response = infer(&client, &second, 10.0, "tls.com").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(store.control.requests(), 1, "the second gateway read Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_paused_or_full_never_fails_a_request() {
    let mut redis = RedisServer::start().await;
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let gateway = start(&ensemble, &store, Some(&redis), "").await;
    let client = TestClient::new();
    let mut n = 0;
    let mut check = async |phase: &str, client: &TestClient| {
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            n += 1;
            let started = Instant::now();
            let response = infer(client, &gateway, 10.0, &format!("{phase}-{n}.com")).await;
            worst = worst.max(started.elapsed());
            assert_eq!(response.status, StatusCode::OK, "{phase}");
            assert_eq!(
                response.header("x-cascadia-stage"),
                Some("local"),
                "{phase}"
            );
        }
        worst
    };

    check("healthy", &client).await;

    // Hung: every call is cut at the 20 ms response timeout, then the
    // breaker keeps Redis out of the path entirely.
    redis.pause();
    let worst = check("paused", &client).await;
    assert!(
        worst < Duration::from_millis(500),
        "a request waited {worst:?} on a hung Redis"
    );
    redis.resume();

    // Out of memory: writes fail, reads still work; nobody notices.
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    check("full", &client).await;
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);

    // Killed, then back on the same port: the gateway reconnects and
    // writes again.
    redis.kill().await;
    check("killed", &client).await;
    redis.restart().await;
    let fresh = "after-restart.com";
    tokio::time::timeout(WAIT, async {
        loop {
            assert_eq!(
                infer(&client, &gateway, 10.0, &format!("{fresh}-{n}"))
                    .await
                    .status,
                StatusCode::OK
            );
            if redis.cli(&["EXISTS", &format!("cascadia:features:{fresh}-{n}")]) == "1" {
                break;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the gateway wrote to Redis again after it came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_drill_under_load_runs_on_the_fallback_and_reports() {
    let redis = RedisServer::start().await;
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let gateway = start(&ensemble, &store, Some(&redis), "").await;
    let client = TestClient::new();
    let stop = std::sync::atomic::AtomicBool::new(false);

    // Every request names a new entity, so every one asks Redis.
    let load = async {
        let (mut sent, mut failed) = (0u64, 0u64);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let response = infer(&client, &gateway, 10.0, &format!("e{sent}.com")).await;
            if response.status != StatusCode::OK {
                failed += 1;
            }
            sent += 1;
        }
        (sent, failed)
    };
    let drill = async {
        let report = gateway
            .run_drill(&client, r#"{"fault": "redis", "duration_s": 0.5}"#)
            .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        report
    };
    let ((sent, failed), report) = tokio::join!(load, drill);
    println!("redis drill report: {report}");
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["fault"], "redis unavailable");
    assert!(report["region"].is_null());
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert!(report["detect_ms"].as_u64().is_some(), "{report}");
    assert!(report["failover_ms"].as_u64().is_some(), "{report}");
    assert!(report["failback_ms"].as_u64().is_some(), "{report}");
    assert!(report["steady_ms"].as_u64().is_some(), "{report}");
    assert_eq!(report["flaps"], 0, "{report}");

    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let skipped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cascadia_redis_calls_total{outcome=\"skipped_drill\"} "))
        .expect("redis metrics")
        .parse()
        .unwrap();
    assert!(skipped > 0, "requests went around Redis during the drill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_drill_needs_a_configured_redis() {
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let gateway = start(&ensemble, &store, None, "").await;
    let response = TestClient::new()
        .send(
            Method::POST,
            &gateway.admin_url("/admin/drills"),
            crate::support::JSON,
            r#"{"fault": "redis", "duration_s": 1}"#,
        )
        .await;
    assert_eq!(response.status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_keys_that_could_escape_or_flood_are_a_400() {
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let gateway = start(&ensemble, &store, None, "").await;
    let client = TestClient::new();
    let long = "k".repeat(129);
    for key in ["..", "a/../b", "a%2f..", long.as_str()] {
        let response = infer(&client, &gateway, 10.0, key).await;
        crate::support::assert_json_error(&response, StatusCode::BAD_REQUEST);
    }
    assert_eq!(store.control.requests(), 0, "the store never saw them");
    assert_eq!(ensemble.control.requests(), 0);
    // A plain key still works.
    let response = infer(&client, &gateway, 10.0, "acme.com").await;
    assert_eq!(response.status, StatusCode::OK);
}
