//! Automated canary analysis: a healthy canary climbs every step; a slow,
//! failing or disagreeing one is rolled back within one window; the plan
//! survives a restart and obeys the operator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascadia_sim::LatencyModel;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::support::redis::RedisServer;
use crate::support::{CanaryFixture, GatewayProcess, TestClient, WAIT};

/// The canary fixture's config plus a rollout plan (and `extra` route
/// lines, such as a shadow).
fn config(fixture: &CanaryFixture, plan: &str, extra: &str) -> String {
    config_weighted(fixture, (100, 0), plan, extra)
}

/// [`config`] with the file's own (stable, canary) weights.
fn config_weighted(
    fixture: &CanaryFixture,
    (stable, canary): (u32, u32),
    plan: &str,
    extra: &str,
) -> String {
    let base = fixture.config(stable, canary);
    // The fixture's second route starts here; the plan belongs to `fraud`.
    let (fraud, rest) = base.split_once("[[routes]]\nname = \"echo\"").unwrap();
    format!(
        "{fraud}\n[routes.rollout]\ncanary = \"canary\"\n{plan}\n{extra}\n[[routes]]\nname = \"echo\"{rest}"
    )
}

/// Short steps for tests; the latency slack is wide because a loaded test
/// machine adds tail latency to both versions, and these tests are not
/// about latency.
const FAST_PLAN: &str = r#"steps = [10, 50, 100]
min_dwell = "200ms"
min_requests = 20
interval = "100ms"
latency_slack = "40ms""#;

/// Closed-loop load on `fraud` from `workers` tasks until `stop`; counts
/// answers that were not 200.
fn load(
    client: &TestClient,
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let failures = Arc::new(AtomicU64::new(0));
    let tasks = (0..workers)
        .map(|_| {
            let (client, url, stop, failures) =
                (client.clone(), url.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if client.infer(&url, &[]).await.status != StatusCode::OK {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (failures, tasks)
}

/// The `fraud` rollout once `done` holds for it.
async fn wait_for_rollout(
    client: &TestClient,
    gateway: &GatewayProcess,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            let status = client
                .get(&gateway.admin_url("/admin/rollouts"), &[])
                .await
                .json();
            if let Some(plan) = status["rollouts"]
                .as_array()
                .and_then(|all| all.iter().find(|r| r["route"] == "fraud"))
            {
                if done(plan) {
                    return plan.clone();
                }
                *last.lock().unwrap() = plan.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    reached.unwrap_or_else(|_| panic!("the rollout did not get there: {}", last.lock().unwrap()))
}

/// `POST /admin/rollouts/fraud/{action}`.
async fn act(
    client: &TestClient,
    gateway: &GatewayProcess,
    action: &str,
) -> crate::support::TestResponse {
    client
        .send(
            Method::POST,
            &gateway.admin_url(&format!("/admin/rollouts/fraud/{action}")),
            crate::support::JSON,
            "",
        )
        .await
}

/// A plan that never moves on its own: only an operator moves it.
const HELD_PLAN: &str = r#"steps = [10, 50, 100]
min_dwell = "1h"
min_requests = 1000000
interval = "100ms""#;

async fn stop_load(stop: Arc<AtomicBool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
}

/// Runs `fraud` under load with `plan` (and `extra` route lines) until the
/// rollout is rolled back; the plan and the count of failed requests.
async fn until_rolled_back(fixture: &CanaryFixture, plan: &str, extra: &str) -> (Value, u64) {
    let gateway = GatewayProcess::start(&config(fixture, plan, extra)).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, tasks) = load(
        &client,
        gateway.url("/v2/models/fraud/infer"),
        4,
        stop.clone(),
    );
    let plan = wait_for_rollout(&client, &gateway, |p| p["status"] == "rolled_back").await;
    stop_load(stop, tasks).await;
    // After the rollback everything goes to stable.
    for _ in 0..10 {
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(response.header("x-cascadia-version"), Some("stable"));
    }
    (plan, failures.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&config(&fixture, FAST_PLAN, "")).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, tasks) = load(&client, url.clone(), 4, stop.clone());
    let plan = wait_for_rollout(&client, &gateway, |p| p["status"] == "promoted").await;
    stop_load(stop, tasks).await;

    println!("promoted: {plan}");
    assert_eq!(plan["weight"], 100);
    let actions: Vec<&str> = plan["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start", "promote", "promote", "promote"]);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    // Everything goes to the canary now.
    for _ in 0..10 {
        let response = client.infer(&url, &[]).await;
        assert_eq!(response.header("x-cascadia-version"), Some("canary"));
    }
    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains(r#"cascadia_rollout_canary_weight{route="fraud"} 100"#),
        "{text}"
    );
}

/// Gives both of `fixture`'s versions one latency whose p95, with the
/// gateway's and the sim's own time, sits at about 10 ms (a Prometheus
/// bucket bound), and returns a plan of 20 steps after the first with a
/// tight latency check (1 ms slack).
pub(crate) fn identical_versions_plan(fixture: &CanaryFixture) -> String {
    let latency = LatencyModel::LogNormal {
        p50: Duration::from_micros(6_500),
        p99: Duration::from_micros(9_000),
    };
    fixture.stable.control.set_latency(latency);
    fixture.canary.control.set_latency(latency);
    // Twenty steps of 5 points: at 1-point steps the first windows wait for
    // thousands of requests to give the canary its twenty, which a loaded CI
    // machine does not serve within the test's wait.
    let steps: Vec<String> = (1..=20).map(|s| (s * 5).to_string()).collect();
    format!(
        r#"steps = [{}]
min_dwell = "100ms"
min_requests = 20
interval = "100ms"
max_p95_ratio = 1.5
max_p99_ratio = 2.0
latency_slack = "1ms""#,
        steps.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_identical_to_stable_passes_twenty_windows_with_a_tight_latency_check() {
    // Both versions' p95 sits at about 10 ms, a bound of the Prometheus
    // buckets: judged by bucket bounds, one window reads 10 ms and the next
    // 25 ms, and the canary is rolled back for nothing.
    let fixture = CanaryFixture::start().await;
    let plan = identical_versions_plan(&fixture);
    let gateway = GatewayProcess::start(&config(&fixture, &plan, "")).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, tasks) = load(
        &client,
        gateway.url("/v2/models/fraud/infer"),
        8,
        stop.clone(),
    );
    let plan = wait_for_rollout(&client, &gateway, |p| {
        p["status"] == "promoted" || p["status"] == "rolled_back"
    })
    .await;
    stop_load(stop, tasks).await;
    // Twenty steps, each judged over its own window.
    assert_eq!(plan["status"], "promoted", "{plan}");
    assert_eq!(plan["weight"], 100, "{plan}");
    let history = plan["history"].as_array().unwrap();
    assert!(
        history.iter().all(|d| d["action"] == "promote"),
        "no window failed: {plan}"
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_without_failing_a_request() {
    let fixture = CanaryFixture::start().await;
    fixture
        .canary
        .control
        .set_latency(LatencyModel::Fixed(Duration::from_millis(60)));
    let plan = r#"steps = [30, 100]
min_dwell = "10s"
min_requests = 10
interval = "100ms""#;
    let (plan, failures) = until_rolled_back(&fixture, plan, "").await;
    let last = &plan["last_decision"];
    assert_eq!(last["action"], "rollback");
    assert!(
        last["reason"].as_str().unwrap().starts_with("p95"),
        "{plan}"
    );
    assert_eq!(plan["weight"], 0);
    assert_eq!(failures, 0, "the rollback failed no request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_with_the_reason() {
    let fixture = CanaryFixture::start().await;
    fixture.canary.control.set_error_rate(0.5);
    let (plan, _failures) = until_rolled_back(&fixture, FAST_PLAN, "").await;
    let reason = plan["last_decision"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("error rate"), "{plan}");
    // Judged at the first step: the canary never got more than 10%.
    assert_eq!(plan["step"], 0, "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_disagrees_with_stable_is_rolled_back() {
    let fixture = CanaryFixture::start().await;
    fixture.canary.control.set_bias(4.0);
    // Every answer is compared with stable's: shadow to stable's backend.
    let shadow = "[routes.shadow]\nversion = \"stable-check\"\nbackends = [\"fraud-v1\"]\nfraction = 1.0\nupstream_version = \"1\"";
    let (plan, failures) = until_rolled_back(&fixture, FAST_PLAN, shadow).await;
    let reason = plan["last_decision"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("disagrees"), "{plan}");
    assert_eq!(failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_survives_a_restart_and_obeys_the_operator() {
    let redis = RedisServer::start().await;
    let fixture = CanaryFixture::start().await;
    let plan_text = HELD_PLAN;
    let text = config(&fixture, plan_text, "").replacen(
        "[gateway.limits]",
        &format!(
            "[gateway.redis]\nurl = \"{}\"\n\n[gateway.limits]",
            redis.url()
        ),
        1,
    );
    let client = TestClient::new();
    {
        let gateway = GatewayProcess::start(&text).await;
        wait_for_rollout(&client, &gateway, |p| p["status"] == "running").await;
        let promoted = act(&client, &gateway, "promote").await;
        assert_eq!(promoted.status, StatusCode::OK, "{:?}", promoted.json());
        assert_eq!(promoted.json()["weight"], 50);
        // Through the CLI: pause.
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cascadia"))
            .args(["rollout", "pause", "--route", "fraud", "--admin"])
            .arg(gateway.admin_url(""))
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let paused: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(paused["status"], "paused");
        let again = act(&client, &gateway, "pause").await;
        assert_eq!(
            again.status,
            StatusCode::CONFLICT,
            "pausing twice is refused"
        );
    }
    // A new gateway process picks the plan up where it was.
    let gateway = GatewayProcess::start(&text).await;
    let plan = wait_for_rollout(&client, &gateway, |p| p["status"] == "paused").await;
    assert_eq!(plan["step"], 1);
    assert_eq!(plan["weight"], 50);
    let actions: Vec<&str> = plan["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start", "promote", "pause"]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cascadia"))
        .args(["rollout", "status", "--admin"])
        .arg(gateway.admin_url(""))
        .output()
        .await
        .unwrap();
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["rollouts"][0]["last_decision"]["action"], "pause");
    // Aborting sends everything back to stable.
    let aborted = act(&client, &gateway, "abort").await;
    assert_eq!(aborted.json()["weight"], 0);
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.header("x-cascadia-version"), Some("stable"));

    // A reload whose file gives the canary everything does not undo the
    // plan, not even for the first request after it.
    let reloaded = config_weighted(&fixture, (0, 100), plan_text, "").replacen(
        "[gateway.limits]",
        &format!(
            "[gateway.redis]\nurl = \"{}\"\n\n[gateway.limits]",
            redis.url()
        ),
        1,
    );
    gateway.write_config(&reloaded);
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "applied", "{body}");
    for _ in 0..20 {
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(response.header("x-cascadia-version"), Some("stable"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_plan_is_kept_in_a_file_beside_the_config() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&config(&fixture, HELD_PLAN, "")).await;
    let client = TestClient::new();
    wait_for_rollout(&client, &gateway, |p| p["status"] == "running").await;
    let promoted = act(&client, &gateway, "promote").await;
    assert_eq!(promoted.status, StatusCode::OK);
    let saved = gateway
        .config_path
        .with_file_name(".cascadia-rollout-fraud.json");
    let state: Value = serde_json::from_slice(&std::fs::read(&saved).expect("state file")).unwrap();
    assert_eq!(state["step"], 1);

    // Killed, not drained: the file is all the new process has.
    let gateway = gateway.restart().await;
    let plan = wait_for_rollout(&client, &gateway, |p| p["step"] == 1).await;
    assert_eq!(plan["weight"], 50);
    assert_eq!(plan["status"], "running");

    // Taking the plan out of the config hands the weights back to the file
    // (all stable here) and drops the plan from the status.
    gateway.write_config(&fixture.config(100, 0));
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for _ in 0..20 {
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(response.header("x-cascadia-version"), Some("stable"));
    }
    tokio::time::timeout(WAIT, async {
        loop {
            let status = client
                .get(&gateway.admin_url("/admin/rollouts"), &[])
                .await
                .json();
            if status["rollouts"].as_array().is_some_and(|a| a.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the plan is no longer listed");
}
