//! `/metrics` as Prometheus reads it: a gateway that has served every kind
//! of traffic passes `promtool check metrics`, every metric the Grafana
//! dashboard queries is exposed, the alert rules pass `promtool check rules`
//! and their unit tests, and `HEAD /metrics` answers.
//!
//! promtool comes with the Debian/Ubuntu package `prometheus` (`.ci/run`
//! installs it); without it these tests fail rather than skip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cascadia_sim::{feature_value, LatencyModel, SimHandle};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::support::redis::RedisServer;
use crate::support::{sim, sim_with, GatewayProcess, TestClient, TestResponse, JSON, WAIT};

/// Stage 1 of the `cascade` route: p = sigmoid(a + b - 5), `a` from the
/// request, `b` from the feature store.
const ENTITY_MODEL: &str = r#"{"name":"screen-lr","version":"1","features":["a","b"],"coefficients":[1.0,1.0],"intercept":-5.0}"#;

/// Stage 1 of the `degraded` route: p = sigmoid(a), both features from the
/// request; with a training reference, so the route reports drift.
const PLAIN_MODEL: &str = r#"{"name":"plain-lr","version":"1","features":["a","b"],"coefficients":[1.0,0.0],"intercept":0.0,
"reference":{"rows":100,"edges":[[0.0],[0.0]],"shares":[[0.5,0.5],[0.5,0.5]]}}"#;

/// promtool, found on `PATH`.
fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed, and it checks /metrics and the alert rules: \
                 install the Debian/Ubuntu package `prometheus` (apt-get install prometheus), \
                 as .ci/run does"
            )
        })
}

/// Runs promtool with `args` in `dir`, `stdin` fed to it; its exit status
/// and everything it printed.
async fn run_promtool(args: &[&str], dir: &Path, stdin: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start promtool");
    let mut input = child.stdin.take().expect("promtool stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("feed promtool");
    drop(input);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("promtool finished")
        .expect("promtool ran");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A port nothing listens on: connections to it are refused.
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The backends of the busy gateway.
struct Sims {
    stable: SimHandle,
    canary: SimHandle,
    candidate: SimHandle,
    ensemble: SimHandle,
    store: SimHandle,
    /// Slow, for the route that sheds.
    held: SimHandle,
    /// Slow, for the route that hedges.
    sluggish: SimHandle,
    west: SimHandle,
}

impl Sims {
    async fn start() -> Self {
        // `held` keeps the shed route full long enough for a second request
        // on a loaded machine; `sluggish` only has to lose to a hedge.
        let held = LatencyModel::Fixed(Duration::from_secs(1));
        let slow = LatencyModel::Fixed(Duration::from_millis(300));
        Self {
            stable: sim("fraud-v1", "1", "us-east").await,
            canary: sim("fraud-v2", "2", "us-east").await,
            candidate: sim("fraud-v3", "3", "us-east").await,
            ensemble: sim("ensemble", "4", "us-east").await,
            store: sim("feature-store", "1", "us-east").await,
            held: sim_with("held", "1", "us-east", held).await,
            sluggish: sim_with("sluggish", "1", "us-east", slow).await,
            west: sim("fraud-west", "1", "us-west").await,
        }
    }
}

/// One route per kind of traffic: `fraud` (shadowed, with a latency SLO),
/// `canary` (a rollout), `cascade` (entity features through Redis),
/// `degraded` (a cascade whose stage 2 is down), `limited` (shared rate
/// limit), `shed`, `failover`, `hedged` and `broken` (a dead backend).
fn busy_config(sims: &Sims, redis: &RedisServer) -> String {
    let dead = closed_port();
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[gateway.redis]
url = "{redis}"
response_timeout = "200ms"

[[backends]]
name = "fraud-v1"
region = "us-east"
endpoints = ["{stable}"]

[[backends]]
name = "fraud-v2"
region = "us-east"
endpoints = ["{canary}"]

[[backends]]
name = "fraud-v3"
region = "us-east"
endpoints = ["{candidate}"]

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["{ensemble}"]

[[backends]]
name = "feature-store"
region = "us-east"
endpoints = ["{store}"]

[[backends]]
name = "held"
region = "us-east"
endpoints = ["{held}"]

[[backends]]
name = "sluggish"
region = "us-east"
endpoints = ["{sluggish}"]
timeout = "2s"

[[backends]]
name = "fraud-west"
region = "us-west"
endpoints = ["{west}"]

[[backends]]
name = "dead"
region = "us-east"
endpoints = ["{dead}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
latency_slo = "250ms"

[[routes.split]]
version = "stable"
weight = 100
backends = ["fraud-v1"]

[routes.shadow]
version = "v3"
backends = ["fraud-v3"]
fraction = 1.0

[[routes]]
name = "canary"
match = {{ model = "canary" }}

[[routes.split]]
version = "stable"
weight = 50
backends = ["fraud-v1"]
upstream_model = "fraud"

[[routes.split]]
version = "canary"
weight = 50
backends = ["fraud-v2"]
upstream_model = "fraud"

[routes.rollout]
canary = "canary"
steps = [50, 100]
min_dwell = "1h"
min_requests = 5
interval = "100ms"

[[routes]]
name = "cascade"
match = {{ model = "cascade" }}
backends = ["ensemble"]
upstream_model = "fraud"

[routes.cascade]
model = "screen.json"
input = "x"
accept_below = 0.2
reject_above = 0.8

[routes.cascade.entity]
key_header = "x-entity"
features = ["b"]
store = "feature-store"

[[routes]]
name = "degraded"
match = {{ model = "degraded" }}
backends = ["dead"]
upstream_model = "fraud"

[routes.cascade]
model = "plain.json"
input = "x"
accept_below = 0.2
reject_above = 0.8
audit_fraction = 1.0

[routes.cascade.watch]
max_recall_drop = 0.05

[routes.cascade.drift]
window_rows = 1
slices = 1

[[routes]]
name = "limited"
match = {{ model = "limited" }}
backends = ["fraud-v1"]
upstream_model = "fraud"
rate_limit = {{ per_second = 1, burst = 2, key_header = "x-api-key", shared = true }}

[[routes]]
name = "shed"
match = {{ model = "shed" }}
backends = ["held"]
upstream_model = "fraud"
max_concurrency = 1

[[routes]]
name = "failover"
match = {{ model = "failover" }}
backends = ["dead", "fraud-west"]
upstream_model = "fraud"
retries = {{ attempts = 3, budget_percent = 100 }}

[[routes]]
name = "hedged"
match = {{ model = "hedged" }}
backends = ["sluggish", "fraud-west"]
upstream_model = "fraud"
hedge = {{ floor = "20ms", cap = "20ms", budget_percent = 100 }}

[[routes]]
name = "broken"
match = {{ model = "broken" }}
backends = ["dead"]
upstream_model = "fraud"
"#,
        redis = redis.url(),
        stable = sims.stable.addr,
        canary = sims.canary.addr,
        candidate = sims.candidate.addr,
        ensemble = sims.ensemble.addr,
        store = sims.store.addr,
        held = sims.held.addr,
        sluggish = sims.sluggish.addr,
        west = sims.west.addr,
    )
}

fn infer_url(gateway: &GatewayProcess, model: &str) -> String {
    gateway.url(&format!("/v2/models/{model}/infer"))
}

/// An inference call with `rows` of request-side features in input `x`.
async fn infer_rows(
    client: &TestClient,
    url: &str,
    rows: &[Vec<f64>],
    headers: &[(&str, &str)],
) -> TestResponse {
    let width = rows.first().map_or(0, Vec::len);
    let body = json!({"inputs": [{"name": "x", "shape": [rows.len(), width], "datatype": "FP64", "data": rows}]});
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    client
        .send(Method::POST, url, &all, &body.to_string())
        .await
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a sample value"))
}

/// Drives a gateway through every kind of traffic and returns one scrape
/// of `/metrics` (its body and content type).
async fn drive_busy_gateway() -> (String, String) {
    let sims = Sims::start().await;
    let redis = RedisServer::start().await;
    let gateway = GatewayProcess::start_with_files(
        &busy_config(&sims, &redis),
        &[("screen.json", ENTITY_MODEL), ("plain.json", PLAIN_MODEL)],
    )
    .await;
    let client = TestClient::new();

    // Normal answers, each mirrored to the shadow and compared.
    for _ in 0..10 {
        let response = client.infer(&infer_url(&gateway, "fraud"), &[]).await;
        assert_eq!(response.status, StatusCode::OK);
    }
    let shadow = gateway.shadow_report(&client, 10).await;
    assert_eq!(shadow["pairs"][0]["compared"], 10, "{shadow}");

    // A 404 (no route) and a 400 (a malformed tensor).
    let unmatched = client.infer(&infer_url(&gateway, "nope"), &[]).await;
    assert_eq!(unmatched.status, StatusCode::NOT_FOUND);
    let malformed = client
        .send(
            Method::POST,
            &infer_url(&gateway, "cascade"),
            &[("content-type", "application/json"), ("x-entity", "e1")],
            r#"{"inputs":[{"name":"x","shape":[2,1],"datatype":"FP64","data":[1]}]}"#,
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    // The cascade: confident rows answered locally, an uncertain one (its
    // score exactly 0.5 with the store's feature) escalated; the second
    // call finds the entity in the cache.
    let b = feature_value("e1", "b");
    let cascade = infer_url(&gateway, "cascade");
    let mixed = infer_rows(
        &client,
        &cascade,
        &[vec![-30.0], vec![30.0], vec![5.0 - b]],
        &[("x-entity", "e1")],
    )
    .await;
    assert_eq!(mixed.status, StatusCode::OK, "{:?}", mixed.json());
    assert_eq!(mixed.header("x-cascadia-stage"), Some("mixed"));
    let local = infer_rows(&client, &cascade, &[vec![-30.0]], &[("x-entity", "e1")]).await;
    assert_eq!(local.header("x-cascadia-stage"), Some("local"));

    // A cascade whose stage 2 is down answers from stage 1, degraded.
    let degraded = infer_rows(
        &client,
        &infer_url(&gateway, "degraded"),
        &[vec![0.0, 0.0]],
        &[],
    )
    .await;
    assert_eq!(degraded.status, StatusCode::OK);
    assert_eq!(degraded.header("x-cascadia-degraded"), Some("unavailable"));

    // Rate limited: past the burst of two, a 429 (the bucket refills at one
    // a second, so a slow machine may need a few more tries).
    let limited_url = infer_url(&gateway, "limited");
    let mut limited = Vec::new();
    while limited.last() != Some(&StatusCode::TOO_MANY_REQUESTS) && limited.len() < 20 {
        limited.push(
            client
                .infer(&limited_url, &[("x-api-key", "k")])
                .await
                .status,
        );
    }
    assert_eq!(
        limited.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{limited:?}"
    );

    // Shed: one request fills the route (readiness: the backend has it),
    // the next is refused at once.
    let shed_url = infer_url(&gateway, "shed");
    let admitted = {
        let (client, url) = (client.clone(), shed_url.clone());
        tokio::spawn(async move { client.infer(&url, &[]).await })
    };
    tokio::time::timeout(WAIT, async {
        while sims.held.control.requests() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first request reached the slow backend");
    let shed = client.infer(&shed_url, &[]).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(admitted.await.unwrap().status, StatusCode::OK);

    // Retries and failover: the first choice refuses connections.
    for _ in 0..3 {
        let response = client.infer(&infer_url(&gateway, "failover"), &[]).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.backend(), "fraud-west");
    }
    // A hedge: the slow first choice loses to the other region.
    let hedged = client.infer(&infer_url(&gateway, "hedged"), &[]).await;
    assert_eq!(hedged.status, StatusCode::OK);
    assert_eq!(hedged.backend(), "fraud-west");
    // 5xx: the only backend is dead.
    for _ in 0..2 {
        let response = client.infer(&infer_url(&gateway, "broken"), &[]).await;
        assert!(response.status.is_server_error(), "{:?}", response.status);
    }

    // A rollout whose canary fails every request is rolled back.
    sims.canary.control.set_error_rate(1.0);
    let canary_url = infer_url(&gateway, "canary");
    tokio::time::timeout(WAIT, async {
        loop {
            for _ in 0..10 {
                client.infer(&canary_url, &[]).await;
            }
            let status = client
                .get(&gateway.admin_url("/admin/rollouts"), &[])
                .await
                .json();
            let plan = status["rollouts"]
                .as_array()
                .and_then(|all| all.iter().find(|r| r["route"] == "canary").cloned())
                .unwrap_or(Value::Null);
            if plan["status"] == "rolled_back" {
                break;
            }
        }
    })
    .await
    .expect("the failing canary was rolled back");

    // A rejected reload, then a drained region.
    gateway.write_config(&format!("{}\nthis is not toml\n", gateway.config_text()));
    let (status, _) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let drained = gateway
        .admin_post(&client, "/admin/regions/us-west/drain")
        .await;
    assert_eq!(drained.status, StatusCode::OK);

    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.body.to_vec()).expect("UTF-8 metrics");
    let content_type = metrics.header("content-type").unwrap_or("").to_owned();
    (text, content_type)
}

/// One scrape of the busy gateway, shared by the tests that read it (the
/// gateway is gone by then; the text is all they need).
async fn busy_scrape() -> &'static (String, String) {
    static SCRAPE: OnceCell<(String, String)> = OnceCell::const_new();
    SCRAPE.get_or_init(drive_busy_gateway).await
}

/// Every family once, as `# HELP`, `# TYPE` (not untyped), then all its
/// samples. promtool does not check this: its parser merges a family's
/// scattered samples without a word.
fn assert_one_group_per_family(text: &str) {
    let mut families = BTreeSet::new();
    let mut current: Option<(&str, &str)> = None;
    let mut help: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(families.insert(name), "{name} has two groups:\n{text}");
            help = Some(name);
            current = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(help, Some(name), "TYPE {name} right after its HELP");
            assert_ne!(kind, "untyped", "{name} is missing from metrics::FAMILIES");
            current = Some((name, kind));
        } else {
            let (family, kind) = current.unwrap_or_else(|| panic!("{line:?} before any TYPE"));
            let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
            let belongs = name == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family)));
            assert!(belongs, "{line:?} is in the group of {family}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_of_a_gateway_that_served_every_kind_of_traffic() {
    let (text, content_type) = busy_scrape().await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");

    // The scrape holds every kind of traffic, so promtool judges all of it.
    for (series, at_least) in [
        (
            r#"cascadia_requests_total{route="fraud",status_class="2xx"}"#,
            10.0,
        ),
        (
            r#"cascadia_requests_total{route="none",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"cascadia_requests_total{route="cascade",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"cascadia_requests_total{route="broken",status_class="5xx"}"#,
            1.0,
        ),
        (
            r#"cascadia_requests_total{route="canary",status_class="5xx"}"#,
            1.0,
        ),
        (
            r#"cascadia_shadow_mirrors_total{route="fraud",primary="stable",shadow="v3",outcome="compared"}"#,
            10.0,
        ),
        (
            r#"cascadia_shadow_score_diff_count{route="fraud",primary="stable",shadow="v3"}"#,
            10.0,
        ),
        (
            r#"cascadia_local_answers_total{route="cascade",status_class="2xx"}"#,
            1.0,
        ),
        (
            r#"cascadia_cascade_rows_total{route="cascade",decision="escalate"}"#,
            1.0,
        ),
        (
            r#"cascadia_cascade_answered_rows_total{route="cascade",version="default",stage="stage2"}"#,
            1.0,
        ),
        (
            r#"cascadia_cascade_answered_rows_total{route="degraded",version="default",stage="degraded"}"#,
            1.0,
        ),
        (
            r#"cascadia_cascade_degraded_total{route="degraded",reason="unavailable"}"#,
            1.0,
        ),
        (
            r#"cascadia_feature_lookups_total{route="cascade",tier="store"}"#,
            1.0,
        ),
        (
            r#"cascadia_feature_lookups_total{route="cascade",tier="l1"}"#,
            1.0,
        ),
        (r#"cascadia_redis_calls_total{outcome="sent"}"#, 1.0),
        (r#"cascadia_rate_limited_total{route="limited"}"#, 1.0),
        (r#"cascadia_shed_total{route="shed"}"#, 1.0),
        (r#"cascadia_retries_total{route="failover"}"#, 1.0),
        (r#"cascadia_failovers_total{route="failover"}"#, 1.0),
        (r#"cascadia_hedges_total{route="hedged"}"#, 1.0),
        (
            r#"cascadia_upstream_failures_total{backend="dead",region="us-east"}"#,
            1.0,
        ),
        (
            r#"cascadia_rollout_state{route="canary",state="rolled_back"}"#,
            1.0,
        ),
        (r#"cascadia_rollout_rollbacks_total"#, 1.0),
        (r#"cascadia_config_reloads_total{result="rejected"}"#, 1.0),
        (
            r#"cascadia_region_drained{backend="fraud-west",region="us-west"}"#,
            1.0,
        ),
        (r#"cascadia_route_latency_slo_seconds{route="fraud"}"#, 0.25),
        ("process_resident_memory_bytes", 1.0),
        ("process_start_time_seconds", 1.0),
    ] {
        let value = sample(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(value >= at_least, "{series} is {value}, not ≥ {at_least}");
    }
    assert_eq!(
        sample(
            text,
            r#"cascadia_rollout_state{route="canary",state="running"}"#
        ),
        Some(0.0),
        "one state at a time"
    );
    assert!(
        text.contains(&format!(
            "cascadia_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );

    assert_one_group_per_family(text);

    let dir = tempfile::tempdir().unwrap();
    let (ok, printed) = run_promtool(&["check", "metrics"], dir.path(), text).await;
    println!("promtool check metrics:\n{printed}");
    assert!(
        ok,
        "promtool check metrics failed:\n{printed}\n--- the scrape:\n{text}"
    );
}

/// The metric names a PromQL expression reads (ours: `cascadia_` and
/// `process_`), quoted label values left out.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            current.push(c);
            continue;
        }
        if current.starts_with("cascadia_") || current.starts_with("process_") {
            names.push(current.clone());
        }
        current.clear();
    }
    names
}

/// Every (panel title, PromQL expression) of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo_path("gateway/grafana/cascadia-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            queries.push((
                panel["title"].as_str().unwrap_or("?").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exposed_by_a_busy_gateway() {
    let (text, _) = busy_scrape().await;
    let exposed: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| &l[..l.find(['{', ' ']).unwrap_or(l.len())])
        .collect();
    let queries = dashboard_queries();
    let mut queried = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                exposed.contains(name.as_str()),
                "panel {title:?} queries {name}, which /metrics does not expose"
            );
            queried.insert(name);
        }
    }
    // The panels this issue added are there.
    for name in [
        "cascadia_rollout_canary_weight",
        "cascadia_rollout_step",
        "cascadia_rollout_state",
        "cascadia_rollout_rollbacks_total",
        "cascadia_shadow_mirrors_total",
        "cascadia_shadow_rows_total",
        "cascadia_shadow_score_diff_bucket",
        "cascadia_cascade_answered_rows_total",
        "cascadia_cascade_rows_total",
        "cascadia_cascade_degraded_total",
    ] {
        assert!(queried.contains(name), "no panel charts {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_is_valid_promql() {
    // promtool parses expressions when it checks rules: each query becomes
    // a recording rule (a JSON string is a YAML string).
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), &rules).unwrap();
    let (ok, printed) = run_promtool(&["check", "rules", "dashboard.yml"], dir.path(), "").await;
    assert!(ok, "promtool check rules failed:\n{printed}\n{rules}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo_path("deploy/prometheus");
    let (ok, printed) = run_promtool(&["check", "rules", "cascadia-alerts.yml"], &dir, "").await;
    println!("promtool check rules:\n{printed}");
    assert!(ok, "promtool check rules failed:\n{printed}");
    assert!(printed.contains("SUCCESS"), "{printed}");

    let (ok, printed) =
        run_promtool(&["test", "rules", "cascadia-alerts.test.yml"], &dir, "").await;
    println!("promtool test rules:\n{printed}");
    assert!(ok, "promtool test rules failed:\n{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_only_read_metrics_the_gateway_exposes() {
    // A rule over a renamed metric would never fire: every name a rule
    // reads must be one the busy gateway's scrape has.
    let (text, _) = busy_scrape().await;
    let rules = std::fs::read_to_string(repo_path("deploy/prometheus/cascadia-alerts.yml"))
        .expect("read the rules");
    let exprs: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let names: BTreeSet<String> = exprs.iter().flat_map(|l| metric_names(l)).collect();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        let exposed = text
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(
            exposed,
            "an alert reads {name}, which /metrics does not expose"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_metrics_gets_the_headers_of_get_and_no_body() {
    let backend = sim("b", "1", "us-east").await;
    let gateway = GatewayProcess::start(&crate::support::single_backend_config(
        "b",
        backend.addr,
        "",
    ))
    .await;
    let client = TestClient::new();
    let get = client.get(&gateway.admin_url("/metrics"), &[]).await;
    let head = client
        .send(Method::HEAD, &gateway.admin_url("/metrics"), &[], "")
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty(), "{:?}", head.body);
    assert_eq!(
        head.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(head.header("content-type"), get.header("content-type"));
    // The length of the body a GET would get now (process metrics move
    // between the two scrapes, so not byte for byte GET's).
    let length: usize = head
        .header("content-length")
        .expect("HEAD has a content-length")
        .parse()
        .unwrap();
    assert!(length > 1000, "{length}");

    // Other methods are told what is allowed.
    let post = client
        .send(Method::POST, &gateway.admin_url("/metrics"), JSON, "")
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}
