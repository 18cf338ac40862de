//! A fleet: three gateway processes sharing one real `redis-server`, with
//! the load spread across them. One replica decides each canary step for
//! all, from the fleet's numbers; every replica follows within a second;
//! an operator's action through any replica applies to all; and when the
//! decider dies another takes over without losing or repeating a step.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascadia_sim::LatencyModel;
use http::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::redis::RedisServer;
use crate::support::{CanaryFixture, GatewayProcess, TestClient, JSON, WAIT};

/// How soon every replica must follow a decision.
const FOLLOW: Duration = Duration::from_secs(1);

/// The canary fixture's config, a rollout `plan` on `fraud`, and Redis.
fn config(fixture: &CanaryFixture, redis: &RedisServer, plan: &str) -> String {
    let base = fixture.config(100, 0);
    let (fraud, rest) = base.split_once("[[routes]]\nname = \"echo\"").unwrap();
    let text = format!(
        "{fraud}\n[routes.rollout]\ncanary = \"canary\"\n{plan}\n\n[[routes]]\nname = \"echo\"{rest}"
    );
    text.replacen(
        "[gateway.limits]",
        &format!(
            "[gateway.redis]\nurl = \"{}\"\n\n[gateway.limits]",
            redis.url()
        ),
        1,
    )
}

async fn fleet(text: &str) -> Vec<GatewayProcess> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(GatewayProcess::start(text).await);
    }
    replicas
}

/// `fraud`'s rollout as `replica` reports it.
async fn plan(client: &TestClient, replica: &GatewayProcess) -> Value {
    let status = client
        .get(&replica.admin_url("/admin/rollouts"), &[])
        .await
        .json();
    status["rollouts"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["route"] == "fraud"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `done` holds on some replica; its plan.
async fn until_any(
    client: &TestClient,
    replicas: &[GatewayProcess],
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Vec::new());
    tokio::time::timeout(WAIT, async {
        loop {
            let mut seen = Vec::new();
            for replica in replicas {
                let plan = plan(client, replica).await;
                if done(&plan) {
                    return plan;
                }
                seen.push(plan);
            }
            *last.lock().unwrap() = seen;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no replica got there: {:?}", last.lock().unwrap()))
}

/// Waits up to `within` for every replica to report the same weight,
/// status and generation as `target`; how long it took.
async fn all_follow(
    client: &TestClient,
    replicas: &[&GatewayProcess],
    target: &Value,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut behind = Vec::new();
        for replica in replicas {
            let plan = plan(client, replica).await;
            let same = ["weight", "status", "generation"]
                .iter()
                .all(|k| plan[k] == target[k]);
            if !same {
                behind.push(plan);
            }
        }
        if behind.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "replicas did not follow {target} within {within:?}: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Closed-loop load on `fraud`, spread round-robin over `replicas`, until
/// `stop`; counts answers that were not 200.
fn load(
    client: &TestClient,
    replicas: &[GatewayProcess],
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let failures = Arc::new(AtomicU64::new(0));
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| r.url("/v2/models/fraud/infer"))
        .collect();
    let tasks = (0..6)
        .map(|worker| {
            let (client, urls, stop, failures) =
                (client.clone(), urls.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    let url = &urls[i % urls.len()];
                    i += 1;
                    // A replica killed by the test refuses: not a failure
                    // of the fleet, so only answers count.
                    if let Ok(response) = client.try_send(Method::POST, url, JSON, BODY).await {
                        if response.status != StatusCode::OK {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    (failures, tasks)
}

const BODY: &str = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[0.1,0.2]}]}"#;

async fn stop_load(stop: Arc<AtomicBool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
}

async fn act(client: &TestClient, replica: &GatewayProcess, action: &str) -> Value {
    let response = client
        .send(
            Method::POST,
            &replica.admin_url(&format!("/admin/rollouts/fraud/{action}")),
            JSON,
            "",
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
    response.json()
}

fn deciders(plans: &[Value]) -> usize {
    plans.iter().filter(|p| p["decider"] == true).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_for_the_whole_fleet_within_a_second() {
    let redis = RedisServer::start().await;
    let fixture = CanaryFixture::start().await;
    fixture
        .canary
        .control
        .set_latency(LatencyModel::Fixed(Duration::from_millis(60)));
    let text = config(
        &fixture,
        &redis,
        "steps = [30, 100]\nmin_dwell = \"10s\"\nmin_requests = 10\ninterval = \"100ms\"",
    );
    let replicas = fleet(&text).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, tasks) = load(&client, &replicas, stop.clone());
    let decided = until_any(&client, &replicas, |p| p["status"] == "rolled_back").await;
    let all: Vec<&GatewayProcess> = replicas.iter().collect();
    all_follow(&client, &all, &decided, FOLLOW).await;
    stop_load(stop, tasks).await;

    assert_eq!(decided["weight"], 0);
    let reason = decided["last_decision"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("p95"), "{decided}");
    let mut plans = Vec::new();
    for replica in &replicas {
        plans.push(plan(&client, replica).await);
    }
    assert_eq!(deciders(&plans), 1, "one decider: {plans:?}");
    // Every replica serves stable only now.
    for replica in &replicas {
        for _ in 0..5 {
            let response = client
                .infer(&replica.url("/v2/models/fraud/infer"), &[])
                .await;
            assert_eq!(response.header("x-cascadia-version"), Some("stable"));
        }
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_climbs_every_step_once_with_every_replica_on_it() {
    let redis = RedisServer::start().await;
    let fixture = CanaryFixture::start().await;
    let text = config(
        &fixture,
        &redis,
        "steps = [10, 50, 100]\nmin_dwell = \"300ms\"\nmin_requests = 20\ninterval = \"100ms\"\nlatency_slack = \"40ms\"",
    );
    let replicas = fleet(&text).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, tasks) = load(&client, &replicas, stop.clone());
    let all: Vec<&GatewayProcess> = replicas.iter().collect();
    // Each step: once one replica is on it, all are within a second.
    for weight in [50, 100] {
        let on_step = until_any(&client, &replicas, |p| p["weight"] == weight).await;
        all_follow(&client, &all, &on_step, FOLLOW).await;
    }
    let promoted = until_any(&client, &replicas, |p| p["status"] == "promoted").await;
    all_follow(&client, &all, &promoted, FOLLOW).await;
    stop_load(stop, tasks).await;
    let actions: Vec<(String, u64)> = promoted["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_owned(),
                d["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("start".to_owned(), 10),
            ("promote".to_owned(), 50),
            ("promote".to_owned(), 100),
            ("promote".to_owned(), 100)
        ],
        "every step once: {promoted}"
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

/// A plan only an operator moves.
const HELD_PLAN: &str =
    "steps = [10, 50, 100]\nmin_dwell = \"1h\"\nmin_requests = 1000000\ninterval = \"100ms\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_acts_through_any_replica_and_a_restarted_one_adopts_the_plan() {
    let redis = RedisServer::start().await;
    let fixture = CanaryFixture::start().await;
    let text = config(&fixture, &redis, HELD_PLAN);
    let mut replicas = fleet(&text).await;
    let client = TestClient::new();
    until_any(&client, &replicas, |p| p["status"] == "running").await;

    let promoted = act(&client, &replicas[0], "promote").await;
    assert_eq!(promoted["weight"], 50);
    let all: Vec<&GatewayProcess> = replicas.iter().collect();
    all_follow(&client, &all, &promoted, FOLLOW).await;

    let paused = act(&client, &replicas[2], "pause").await;
    assert_eq!(paused["status"], "paused");
    all_follow(&client, &all, &paused, FOLLOW).await;

    let resumed = act(&client, &replicas[1], "resume").await;
    assert_eq!(resumed["status"], "running");
    all_follow(&client, &all, &resumed, FOLLOW).await;

    // A replica restarted mid-rollout serves the fleet's weight from its
    // first request: its plan is read before it listens.
    let restarted = replicas.remove(1).restart().await;
    let adopted = plan(&client, &restarted).await;
    assert_eq!(adopted["weight"], 50, "{adopted}");
    assert_eq!(adopted["generation"], resumed["generation"], "{adopted}");
    let mut served_canary = 0;
    for _ in 0..200 {
        let response = client
            .infer(&restarted.url("/v2/models/fraud/infer"), &[])
            .await;
        if response.header("x-cascadia-version") == Some("canary") {
            served_canary += 1;
        }
    }
    assert!(
        (60..=140).contains(&served_canary),
        "about half of 200 to the canary, got {served_canary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_decider_dies_another_takes_over_and_no_step_is_lost_or_repeated() {
    let redis = RedisServer::start().await;
    let fixture = CanaryFixture::start().await;
    let steps = "steps = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]";
    let text = config(
        &fixture,
        &redis,
        &format!("{steps}\nmin_dwell = \"300ms\"\nmin_requests = 10\ninterval = \"100ms\"\nlatency_slack = \"40ms\""),
    );
    let mut replicas = fleet(&text).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (_failures, tasks) = load(&client, &replicas, stop.clone());
    until_any(&client, &replicas, |p| p["weight"] == 30).await;

    let mut plans = Vec::new();
    for replica in &replicas {
        plans.push(plan(&client, replica).await);
    }
    assert_eq!(deciders(&plans), 1, "{plans:?}");
    let decider = plans.iter().position(|p| p["decider"] == true).unwrap();
    let killed = Instant::now();
    drop(replicas.remove(decider));

    // The lease is three intervals, at least 1 s: another replica decides
    // within it (and a tick).
    let taken = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            for replica in &replicas {
                if plan(&client, replica).await["decider"] == true {
                    return killed.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("another replica took over");
    // One lease (1 s) and a few ticks; more on a loaded machine.
    assert!(
        taken <= Duration::from_millis(2_500),
        "took over after {taken:?}"
    );

    let promoted = until_any(&client, &replicas, |p| p["status"] == "promoted").await;
    stop_load(stop, tasks).await;
    let weights: Vec<u64> = promoted["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(
        weights,
        [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100],
        "every step exactly once: {promoted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_every_replica_holds_the_last_plan_and_nothing_changes_it() {
    let mut redis = RedisServer::start().await;
    let fixture = CanaryFixture::start().await;
    let text = config(&fixture, &redis, HELD_PLAN);
    let replicas = fleet(&text).await;
    let client = TestClient::new();
    until_any(&client, &replicas, |p| p["status"] == "running").await;
    let promoted = act(&client, &replicas[0], "promote").await;
    let all: Vec<&GatewayProcess> = replicas.iter().collect();
    all_follow(&client, &all, &promoted, FOLLOW).await;

    redis.kill().await;
    // The lease cannot be renewed: nobody decides.
    tokio::time::timeout(WAIT, async {
        loop {
            let mut plans = Vec::new();
            for replica in &replicas {
                plans.push(plan(&client, replica).await);
            }
            if deciders(&plans) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no replica decides without Redis");
    // An operator's change cannot be shared, so it is refused...
    let refused = client
        .send(
            Method::POST,
            &replicas[1].admin_url("/admin/rollouts/fraud/pause"),
            JSON,
            "",
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.json());
    // ...and every replica keeps serving the plan it had.
    for replica in &replicas {
        let plan = plan(&client, replica).await;
        assert_eq!(plan["weight"], 50, "{plan}");
        assert_eq!(plan["status"], "running", "{plan}");
        assert_eq!(
            client
                .infer(&replica.url("/v2/models/fraud/infer"), &[])
                .await
                .status,
            StatusCode::OK
        );
    }
}

/// Two regions, us-east preferred, over `redis`.
async fn regional(redis: &RedisServer) -> (String, Vec<cascadia_sim::SimHandle>) {
    let east = crate::support::sim("us-east-a", "1", "us-east").await;
    let west = crate::support::sim("eu-west-a", "1", "eu-west").await;
    let text = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[gateway.redis]
url = "{redis}"

[[backends]]
name = "fraud-us-east"
region = "us-east"
endpoints = ["{east}"]

[[backends]]
name = "fraud-eu-west"
region = "eu-west"
endpoints = ["{west}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["fraud-us-east", "fraud-eu-west"]
"#,
        redis = redis.url(),
        east = east.addr,
        west = west.addr,
    );
    (text, vec![east, west])
}

/// The region `us-east` as `replica` reports it.
async fn us_east(client: &TestClient, replica: &GatewayProcess) -> Value {
    let regions = client
        .get(&replica.admin_url("/admin/regions"), &[])
        .await
        .json();
    regions["regions"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["region"] == "us-east"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits up to `within` until every replica in `replicas` reports
/// `us-east` as `check` wants it.
async fn regions_agree(
    client: &TestClient,
    replicas: &[&GatewayProcess],
    within: Duration,
    check: impl Fn(&Value) -> bool,
) {
    let started = Instant::now();
    loop {
        let mut states = Vec::new();
        for replica in replicas {
            states.push(us_east(client, replica).await);
        }
        if states.iter().all(&check) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "not every replica got there within {within:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_through_one_replica_drains_the_fleet_and_a_restore_through_another_undoes_it() {
    let redis = RedisServer::start().await;
    let (text, _sims) = regional(&redis).await;
    let mut replicas = fleet(&text).await;
    let client = TestClient::new();
    let drained = replicas[0]
        .admin_post(&client, "/admin/regions/us-east/drain")
        .await;
    assert_eq!(drained.status, StatusCode::OK);
    let all: Vec<&GatewayProcess> = replicas.iter().collect();
    regions_agree(&client, &all, FOLLOW, |r| r["drained"] == true).await;
    // The others send nothing to the drained region.
    for _ in 0..10 {
        let response = client
            .infer(&replicas[2].url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(response.backend(), "fraud-eu-west");
    }
    let restored = replicas[1]
        .admin_post(&client, "/admin/regions/us-east/restore")
        .await;
    assert_eq!(restored.status, StatusCode::OK);
    regions_agree(&client, &all, FOLLOW, |r| r["drained"] == false).await;
    let response = client
        .infer(&replicas[0].url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.backend(), "fraud-us-east");

    // A replica that drains and dies cannot leave the region drained: its
    // entry lapses, and the others restore the region.
    replicas[2]
        .admin_post(&client, "/admin/regions/us-east/drain")
        .await;
    let all: Vec<&GatewayProcess> = replicas.iter().collect();
    regions_agree(&client, &all, FOLLOW, |r| r["drained"] == true).await;
    drop(replicas.remove(2));
    let rest: Vec<&GatewayProcess> = replicas.iter().collect();
    regions_agree(&client, &rest, Duration::from_secs(4), |r| {
        r["drained"] == false
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_through_one_replica_faults_the_region_on_every_replica_and_ends_on_all() {
    let redis = RedisServer::start().await;
    let (text, _sims) = regional(&redis).await;
    let replicas = fleet(&text).await;
    let client = TestClient::new();
    let started = client
        .send(
            Method::POST,
            &replicas[0].admin_url("/admin/drills"),
            JSON,
            r#"{"region": "us-east", "fault": "blackhole", "duration_s": 2.0}"#,
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{:?}", started.json());
    let all: Vec<&GatewayProcess> = replicas.iter().collect();
    regions_agree(&client, &all, FOLLOW, |r| r["drill_fault"] == "Blackhole").await;
    // Another replica's traffic fails over too.
    for _ in 0..5 {
        let response = client
            .infer(&replicas[1].url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.backend(), "fraud-eu-west");
    }
    // The drill ends on the replica that ran it, and so on every replica.
    regions_agree(&client, &all, Duration::from_secs(5), |r| {
        r["drill_fault"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drills_report_adds_up_what_every_replicas_clients_saw() {
    let redis = RedisServer::start().await;
    let (text, _sims) = regional(&redis).await;
    let replicas = fleet(&text).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, tasks) = load(&client, &replicas, stop.clone());
    // Every replica has published its counts before the drill reads them.
    tokio::time::timeout(WAIT, async {
        while redis.cli(&["HLEN", "cascadia:fleet:traffic"]) != "3" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every replica published its traffic");
    let report = replicas[0]
        .run_drill(
            &client,
            r#"{"region": "us-east", "fault": "blackhole", "duration_s": 1.5}"#,
        )
        .await;
    stop_load(stop, tasks).await;
    let fleet = &report["fleet"];
    assert_eq!(fleet["replicas"], 3, "{report}");
    let own = report["requests"].as_u64().unwrap();
    let all = fleet["requests"].as_u64().unwrap();
    assert!(
        all > own * 2,
        "the fleet's {all} requests are about three replicas' worth of {own}: {report}"
    );
    assert_eq!(fleet["errors"], 0, "{report}");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_ejections_an_endpoint_one_replica_ejects_is_avoided_by_all() {
    let redis = RedisServer::start().await;
    let healthy = crate::support::sim("us-east-a", "1", "us-east").await;
    // Nobody listens here: every attempt is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shared_ejections = true

[gateway.redis]
url = "{redis}"

[[backends]]
name = "fraud-us-east"
region = "us-east"
endpoints = ["{healthy}", "{dead}"]
balancer = "round-robin"
outlier = {{ consecutive_failures = 2, base_ejection = "30s", max_ejected_percent = 50 }}

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["fraud-us-east"]
retries = {{ attempts = 2, budget_percent = 100 }}
"#,
        redis = redis.url(),
        healthy = healthy.addr,
    );
    let replicas = fleet(&text).await;
    let client = TestClient::new();
    let ejected = |replica: &GatewayProcess| {
        let client = client.clone();
        let url = replica.admin_url("/admin/backends");
        let dead = dead.to_string();
        async move {
            let backends = client.get(&url, &[]).await.json();
            backends.to_string().contains(&dead)
                && backends["backends"][0]["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["address"] == dead.as_str() && e["ejected"] == true)
        }
    };
    // Only replica 0 sends traffic: it ejects the dead endpoint.
    let url = replicas[0].url("/v2/models/fraud/infer");
    tokio::time::timeout(WAIT, async {
        while !ejected(&replicas[0]).await {
            assert_eq!(client.infer(&url, &[]).await.status, StatusCode::OK);
        }
    })
    .await
    .expect("replica 0 ejected the dead endpoint");
    let since = Instant::now();
    // The others avoid it without having tried it.
    for replica in &replicas[1..] {
        tokio::time::timeout(Duration::from_secs(1), async {
            while !ejected(replica).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "another replica still uses the endpoint after {:?}",
                since.elapsed()
            )
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_identical_to_stable_passes_twenty_fleet_windows() {
    // Both versions' p95 near 10 ms, a Prometheus bucket bound: judged by
    // bucket bounds, the fleet's canary would flip between 10 and 25 ms.
    let redis = RedisServer::start().await;
    let fixture = CanaryFixture::start().await;
    let plan = crate::rollout::identical_versions_plan(&fixture);
    let text = config(&fixture, &redis, &plan);
    let replicas = fleet(&text).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, tasks) = load(&client, &replicas, stop.clone());
    let done = until_any(&client, &replicas, |p| {
        p["status"] == "promoted" || p["status"] == "rolled_back"
    })
    .await;
    stop_load(stop, tasks).await;
    assert_eq!(done["status"], "promoted", "{done}");
    assert!(
        done["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["action"] == "promote"),
        "no window failed: {done}"
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}
