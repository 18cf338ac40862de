//! Redis beyond one server. A real three-master Redis Cluster behind every
//! shared use: the feature cache (keys on every node, one `MGET` split by
//! slot), the shared rate limit, and a fleet's rollout; a master killed
//! under load fails no request. And Redis Sentinel: the gateway follows a
//! failover to the new master.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use cascadia_sim::SimHandle;

use crate::support::redis::{RedisCluster, RedisSentinel};
use crate::support::{sim, single_backend_config, GatewayProcess, TestClient, JSON, WAIT};

/// `[gateway.redis]` for `cluster`.
fn redis_table(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[gateway.redis]\ncluster_nodes = [{}]\nresponse_timeout = \"200ms\"\n",
        nodes.join(", ")
    )
}

use crate::features::{config_with_redis, MODEL};

fn cascade_config(cluster: &RedisCluster, ensemble: &SimHandle, store: &SimHandle) -> String {
    config_with_redis(ensemble, store, &redis_table(cluster), "")
}

async fn infer_entity(client: &TestClient, gateway: &GatewayProcess, entity: &str) -> StatusCode {
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [[10.0]]}]});
    client
        .send(
            Method::POST,
            &gateway.url("/v2/models/fraud/infer"),
            &[("content-type", "application/json"), ("x-entity", entity)],
            &body.to_string(),
        )
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feature_cache_and_the_shared_limit_work_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let text = cascade_config(&cluster, &ensemble, &store);
    let files = [("screen.json", MODEL)];
    let first = GatewayProcess::start_with_files(&text, &files).await;
    let client = TestClient::new();
    // Enough entities that their keys land on every master.
    let entities: Vec<String> = (0..12).map(|i| format!("e{i}.example")).collect();
    for entity in &entities {
        assert_eq!(infer_entity(&client, &first, entity).await, StatusCode::OK);
    }
    tokio::time::timeout(WAIT, async {
        loop {
            let stored = entities
                .iter()
                .filter(|e| cluster.cli(&["EXISTS", &format!("cascadia:features:{e}")]) == "1")
                .count();
            if stored == entities.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every entry written to the cluster");
    let masters_holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]) != "0")
        .count();
    assert_eq!(masters_holding, 3, "the keys are spread over every master");

    // A fresh gateway reads them all back from the cluster.
    let fetched = store.control.requests();
    let second = GatewayProcess::start_with_files(&text, &files).await;
    for entity in &entities {
        assert_eq!(infer_entity(&client, &second, entity).await, StatusCode::OK);
    }
    assert_eq!(store.control.requests(), fetched, "served from the cluster");

    // The shared limit: one budget for two replicas, through the cluster.
    let backend = sim("b", "1", "us-east").await;
    let limit =
        r#"rate_limit = { per_second = 1, burst = 3, key_header = "x-api-key", shared = true }"#;
    let limited = single_backend_config("b", backend.addr, limit).replacen(
        "[[backends]]",
        &format!("{}\n[[backends]]", redis_table(&cluster)),
        1,
    );
    let a = GatewayProcess::start(&limited).await;
    let b = GatewayProcess::start(&limited).await;
    let mut ok = 0;
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let response = client
            .infer(
                &gateway.url("/v2/models/fraud/infer"),
                &[("x-api-key", "k")],
            )
            .await;
        if response.status == StatusCode::OK {
            ok += 1;
        }
    }
    assert!((3..=4).contains(&ok), "{ok} passed one shared budget of 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_no_request() {
    let mut cluster = RedisCluster::start().await;
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let text = cascade_config(&cluster, &ensemble, &store);
    let gateway = GatewayProcess::start_with_files(&text, &[("screen.json", MODEL)]).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..4)
        .map(|worker| {
            let (client, url, stop, answered, failed) = (
                client.clone(),
                gateway.url("/v2/models/fraud/infer"),
                stop.clone(),
                answered.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let body = json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [[10.0]]}]}).to_string();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Fresh and repeated entities: misses and hits.
                    let entity = format!("w{worker}-{}", i % 50);
                    i += 1;
                    let headers = [("content-type", "application/json"), ("x-entity", entity.as_str())];
                    let status = client.send(Method::POST, &url, &headers, &body).await.status;
                    if status == StatusCode::OK {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let wait_for = |count: u64| {
        let answered = answered.clone();
        async move {
            tokio::time::timeout(WAIT, async {
                while answered.load(Ordering::Relaxed) < count {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(wait_for(50).await, "load flows before the kill");
    let before = answered.load(Ordering::Relaxed);
    cluster.nodes[1].kill().await;
    // Keys on the dead master now miss: enough requests after the kill to
    // hit it many times over (50 entities per worker).
    let went_on = wait_for(before + 400).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert!(went_on, "requests went on after the kill");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_its_rollout_through_a_cluster() {
    let cluster = RedisCluster::start().await;
    let fixture = crate::support::CanaryFixture::start().await;
    let base = fixture.config(100, 0);
    let (fraud, rest) = base.split_once("[[routes]]\nname = \"echo\"").unwrap();
    let text = format!(
        "{fraud}\n[routes.rollout]\ncanary = \"canary\"\nsteps = [10, 50, 100]\nmin_dwell = \"1h\"\nmin_requests = 1000000\ninterval = \"100ms\"\n\n[[routes]]\nname = \"echo\"{rest}"
    )
    .replacen(
        "[gateway.limits]",
        &format!("{}\n[gateway.limits]", redis_table(&cluster)),
        1,
    );
    let a = GatewayProcess::start(&text).await;
    let b = GatewayProcess::start(&text).await;
    let client = TestClient::new();
    let plan = |gateway: &GatewayProcess| {
        let client = client.clone();
        let url = gateway.admin_url("/admin/rollouts");
        async move {
            let status = client.get(&url, &[]).await.json();
            status["rollouts"][0].clone()
        }
    };
    tokio::time::timeout(WAIT, async {
        while plan(&a).await["status"] != "running" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the plan runs");
    let promoted = client
        .send(
            Method::POST,
            &a.admin_url("/admin/rollouts/fraud/promote"),
            JSON,
            "",
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{:?}", promoted.json());
    let followed: Value = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let seen = plan(&b).await;
            if seen["weight"] == 50 {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the other replica followed within 1 s");
    assert_eq!(followed["generation"], promoted.json()["generation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_a_sentinel_failover_to_the_new_master() {
    let mut sentinel = RedisSentinel::start().await;
    let ensemble = sim("ensemble", "1", "us-east").await;
    let store = sim("store", "1", "us-east").await;
    let nodes: Vec<String> = sentinel.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let redis = format!(
        "[gateway.redis]\nsentinel_nodes = [{}]\nsentinel_master = \"{}\"\nresponse_timeout = \"200ms\"\n",
        nodes.join(", "),
        RedisSentinel::MASTER
    );
    let text = config_with_redis(&ensemble, &store, &redis, "");
    let gateway = GatewayProcess::start_with_files(&text, &[("screen.json", MODEL)]).await;
    let client = TestClient::new();
    assert_eq!(
        infer_entity(&client, &gateway, "before.example").await,
        StatusCode::OK
    );
    let key = |entity: &str| format!("cascadia:features:{entity}");
    tokio::time::timeout(WAIT, async {
        while sentinel.master.cli(&["EXISTS", &key("before.example")]) != "1" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("written to the master the sentinels named");

    let old = sentinel.master.port;
    sentinel.master.kill().await;
    tokio::time::timeout(WAIT, async {
        while sentinel.master_port() == Some(old) || sentinel.master_port().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the sentinels promoted the replica");
    assert_eq!(sentinel.master_port(), Some(sentinel.replica.port));

    // New entities land on the new master: the gateway found it. Until it
    // does, lookups fall back to the store, and no request fails.
    let mut i = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            let entity = format!("after-{i}.example");
            i += 1;
            assert_eq!(
                infer_entity(&client, &gateway, &entity).await,
                StatusCode::OK
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            if sentinel.replica.cli(&["EXISTS", &key(&entity)]) == "1" {
                return;
            }
        }
    })
    .await
    .expect("the gateway wrote to the new master");
}
