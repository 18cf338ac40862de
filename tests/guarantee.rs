//! The certified cascade through the real gateway: a band from `cascadia
//! calibrate`'s artifact (refused for another model), the guarantee
//! watched online against a stage 2 whose behaviour drifts, feature drift
//! (PSI) in metrics, and traffic recorded for recalibration.

use std::process::Command;
use std::time::Duration;

use cascadia_sim::SimHandle;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{sim, GatewayProcess, TestClient, WAIT};

/// Stage 1: p = sigmoid(a); features a and b. The reference says a and b
/// were uniform on 0..10 in training (deciles at 1..9).
const MODEL: &str = r#"{"name":"screen-lr","version":"7","features":["a","b"],"coefficients":[1.0,0.0],"intercept":0.0,"classes":[0,1],
"reference":{"rows":1000,"edges":[[1,2,3,4,5,6,7,8,9],[1,2,3,4,5,6,7,8,9]],"shares":[[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1],[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]]}}"#;

/// Accepted by stage 1 (p = sigmoid(-3)); stage 2 (the sim: logit
/// −0.3a − 0.2b) says sigmoid(−2.1) ≈ 0.11: negative, unless its bias
/// shifts by more than 2.1.
const NEGATIVE: [f64; 2] = [-3.0, 15.0];
/// Rejected by stage 1 (p = sigmoid(3)); stage 2 says sigmoid(3.1): positive.
const POSITIVE: [f64; 2] = [3.0, -20.0];

fn config(stage2: &SimHandle, cascade: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["{addr}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "x"
{cascade}
"#,
        addr = stage2.addr
    )
}

async fn infer(client: &TestClient, gateway: &GatewayProcess, row: [f64; 2]) -> (String, Value) {
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [row]}]});
    let response = client
        .send(
            Method::POST,
            &gateway.url("/v2/models/fraud/infer"),
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
    let stage = response
        .header("x-cascadia-stage")
        .unwrap_or_default()
        .to_owned();
    (stage, response.json())
}

/// `/admin/cascade`'s view of the route, checked against the OpenAPI
/// description every time (the demo has no watch, drift or recording).
async fn cascade_view(client: &TestClient, gateway: &GatewayProcess) -> Value {
    let view = client
        .get(&gateway.admin_url("/admin/cascade"), &[])
        .await
        .json();
    crate::openapi::check_get("/admin/cascade", &view);
    view["routes"][0].clone()
}

/// Polls `/admin/cascade` until `done` holds for the route's view.
async fn wait_for_cascade(
    client: &TestClient,
    gateway: &GatewayProcess,
    done: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let view = cascade_view(client, gateway).await;
            if done(&view) {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("cascade condition reached")
}

/// Sends `pairs` × (one negative, one positive) and waits until every
/// audit of them has come back, so what follows sees their counts.
async fn send_audited(client: &TestClient, gateway: &GatewayProcess, pairs: u64) -> Value {
    let before = cascade_view(client, gateway).await["stats"]["audit_rows"]
        .as_u64()
        .unwrap_or(0);
    let mut local = 0;
    for _ in 0..pairs {
        for row in [NEGATIVE, POSITIVE] {
            let (stage, _) = infer(client, gateway, row).await;
            local += u64::from(stage == "local");
        }
    }
    wait_for_cascade(client, gateway, |v| {
        v["stats"]["audit_rows"].as_u64().unwrap_or(0)
            + v["stats"]["audit_failures"].as_u64().unwrap_or(0)
            >= before + local
    })
    .await
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn metrics(client: &TestClient, gateway: &GatewayProcess) -> String {
    let response = client.get(&gateway.admin_url("/metrics"), &[]).await;
    String::from_utf8_lossy(&response.body).into_owned()
}

const WATCH: &str = r#"
accept_below = 0.2
reject_above = 0.8
audit_fraction = 1.0

[routes.cascade.watch]
max_recall_drop = 0.05
confidence = 0.95
window_positives = 20
windows = 5
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_holds_then_escalates_everything_when_stage_2_shifts() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let cascade = format!("{WATCH}policy = \"escalate_all\"\n");
    let gateway =
        GatewayProcess::start_with_files(&config(&ensemble, &cascade), &[("screen.json", MODEL)])
            .await;
    let client = TestClient::new();

    // 100 positives, none missed, fill the watch's five windows: zero in
    // 100 bounds the drop at 2.9%, below 5%.
    let view = send_audited(&client, &gateway, 100).await;
    let g = &view["guarantee"];
    assert_eq!(g["state"], "holding", "{view}");
    assert_eq!(g["windows_closed"], 5);
    assert!(g["last_window"]["bound"].as_f64().unwrap() < 0.05, "{g}");
    assert_eq!(g["last_window"]["misses"], 0);
    let text = metrics(&client, &gateway).await;
    assert_eq!(
        metric(
            &text,
            "cascadia_cascade_guarantee_breached{route=\"fraud\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "cascadia_cascade_recall_drop_target{route=\"fraud\"}"
        ),
        Some(0.05)
    );

    // Stage 2 drifts: it now calls the rows stage 1 accepts positive, so
    // every accepted row is a miss.
    ensemble.control.set_bias(5.0);
    let windows_before = 5;
    let (view, delay) = loop {
        let view = send_audited(&client, &gateway, 10).await;
        let delay = view["guarantee"]["windows_closed"].as_u64().unwrap() - windows_before;
        if view["guarantee"]["state"] == "breached" {
            break (view, delay);
        }
        assert!(
            delay <= 3,
            "no breach {delay} windows after the shift: {view}"
        );
    };
    eprintln!("detection delay: {delay} window(s) after the shift");
    assert!(delay <= 2, "{view}");
    let g = &view["guarantee"];
    assert_eq!(g["escalate_all"], true);
    assert_eq!(g["breaches"], 1);
    assert!(g["last_window"]["lower"].as_f64().unwrap() > 0.05, "{g}");
    let text = metrics(&client, &gateway).await;
    assert_eq!(
        metric(
            &text,
            "cascadia_cascade_guarantee_breached{route=\"fraud\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "cascadia_cascade_escalate_all{route=\"fraud\"}"),
        Some(1.0)
    );

    // From now on nothing is answered locally: the row stage 1 would
    // accept gets stage 2's answer.
    let (stage, body) = infer(&client, &gateway, NEGATIVE).await;
    assert_eq!(stage, "escalated", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tighten_policy_lowers_the_band_within_its_floor() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let cascade =
        format!("{WATCH}policy = \"tighten\"\ntighten_factor = 0.5\nmin_accept_below = 0.1\n");
    let gateway =
        GatewayProcess::start_with_files(&config(&ensemble, &cascade), &[("screen.json", MODEL)])
            .await;
    let client = TestClient::new();
    ensemble.control.set_bias(5.0);
    let view = loop {
        let view = send_audited(&client, &gateway, 10).await;
        if view["guarantee"]["tightenings"].as_u64().unwrap() >= 2 {
            break view;
        }
        assert!(
            view["guarantee"]["windows_closed"].as_u64().unwrap() < 10,
            "{view}"
        );
    };
    // 0.2 → 0.1, then held at the floor.
    assert_eq!(view["accept_below_in_force"], 0.1, "{view}");
    assert_eq!(view["accept_below"], 0.2);
    let text = metrics(&client, &gateway).await;
    assert_eq!(
        metric(&text, "cascadia_cascade_accept_below{route=\"fraud\"}"),
        Some(0.1)
    );
    // The watch starts over for the tightened band, but the route stays
    // flagged: the alert must not clear itself.
    assert_eq!(
        metric(
            &text,
            "cascadia_cascade_guarantee_breached{route=\"fraud\"}"
        ),
        Some(1.0)
    );
    // The negative row (p ≈ 0.047) is still below the floor: still local.
    let (stage, _) = infer(&client, &gateway, NEGATIVE).await;
    assert_eq!(stage, "local");

    // A new model is judged afresh: its band is the configured one again,
    // and no evidence about the old model carries over.
    gateway.write_file(
        "screen.json",
        &MODEL.replace("\"intercept\":0.0", "\"intercept\":0.01"),
    );
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = cascade_view(&client, &gateway).await;
    assert_eq!(view["accept_below_in_force"], 0.2, "{view}");
    assert_eq!(view["guarantee"]["windows_closed"], 0, "{view}");
    assert_eq!(view["guarantee"]["breaches"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psi_stays_low_for_training_like_traffic_and_rises_past_the_alert_line_when_it_moves() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let cascade = "accept_below = 0.2\nreject_above = 0.8\n\n[routes.cascade.drift]\nwindow_rows = 200\nslices = 2\n";
    let gateway =
        GatewayProcess::start_with_files(&config(&ensemble, cascade), &[("screen.json", MODEL)])
            .await;
    let client = TestClient::new();
    // Both features spread evenly over 0..10, as in training.
    for i in 0..200 {
        let v = f64::from(i % 10) + 0.5;
        infer(&client, &gateway, [v, 9.5 - v]).await;
    }
    let text = metrics(&client, &gateway).await;
    let psi_a = metric(
        &text,
        "cascadia_cascade_feature_psi{route=\"fraud\",feature=\"a\"}",
    )
    .unwrap();
    assert!(psi_a < 0.01, "{psi_a}");
    // Feature a moves to the top of its range; b stays.
    for i in 0..200 {
        let v = f64::from(i % 10) + 0.5;
        infer(&client, &gateway, [7.0 + v / 4.0, 9.5 - v]).await;
    }
    let view = cascade_view(&client, &gateway).await;
    let features = view["drift"]["features"].as_array().unwrap();
    assert_eq!(features[0]["feature"], "a");
    assert_eq!(features[0]["drifted"], true, "{view}");
    assert_eq!(features[1]["drifted"], false, "{view}");
    let text = metrics(&client, &gateway).await;
    let psi_a = metric(
        &text,
        "cascadia_cascade_feature_psi{route=\"fraud\",feature=\"a\"}",
    )
    .unwrap();
    assert!(psi_a > 0.2, "{psi_a}");
}

/// Runs `cascadia calibrate` with `args`; (exit code, stdout, stderr).
async fn calibrate(args: Vec<String>) -> (Option<i32>, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cascadia"))
            .arg("calibrate")
            .args(&args)
            .output()
            .expect("run cascadia calibrate")
    })
    .await
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_traffic_calibrates_a_band_the_route_then_serves_and_another_model_is_refused() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    // Everything escalates while recording: stage 2 answers every row.
    let cascade = "accept_below = 0.0\nreject_above = 1.0\naudit_fraction = 1.0\n\n[routes.cascade.record]\nfile = \"rows.jsonl\"\n";
    let gateway =
        GatewayProcess::start_with_files(&config(&ensemble, cascade), &[("screen.json", MODEL)])
            .await;
    let client = TestClient::new();
    // a from −6 to 6; b chosen so stage 2 mostly agrees with stage 1 on
    // the side of 0.5: logit2 = −0.3a − 0.2b = 0.7a − 0.2u for b = −5a + u,
    // u uniform on ±10, so rows near the middle disagree.
    let n = 600;
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..n {
        let a = 12.0 * rng.f64() - 6.0;
        let (stage, _) = infer(&client, &gateway, [a, -5.0 * a + 20.0 * rng.f64() - 10.0]).await;
        assert_eq!(stage, "escalated");
    }
    let view = wait_for_cascade(&client, &gateway, |v| v["record"]["rows_written"] == n).await;
    assert_eq!(view["record"]["rows_dropped"], 0);
    let dir = gateway.config_path.parent().unwrap().to_owned();
    let recorded = std::fs::read_to_string(dir.join("rows.jsonl")).unwrap();
    assert_eq!(recorded.lines().count(), n as usize);

    let path = |name: &str| dir.join(name).display().to_string();
    let (code, stdout, stderr) = calibrate(vec![
        "--model".into(),
        path("screen.json"),
        "--data".into(),
        path("rows.jsonl"),
        "--max-recall-drop".into(),
        "0.05".into(),
        "--confidence".into(),
        "0.9".into(),
        "--out".into(),
        path("band.json"),
        "--svg".into(),
        path("band.svg"),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("certified band"), "{stdout}");
    assert!(stdout.contains("<- certified"), "{stdout}");
    let svg = std::fs::read_to_string(dir.join("band.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("certified"),
        "{svg}"
    );
    let artifact: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("band.json")).unwrap()).unwrap();
    assert_eq!(artifact["data"]["truth"], "stage2");
    assert_eq!(artifact["data"]["rows"], n);
    let accept_below = artifact["band"]["accept_below"].as_f64().unwrap();
    let reject_above = artifact["band"]["reject_above"].as_f64().unwrap();
    assert!(
        0.0 < accept_below && accept_below < reject_above,
        "{artifact}"
    );

    // The route now takes its band from the artifact.
    let served = gateway.config_text().replace(
        "accept_below = 0.0\nreject_above = 1.0\n",
        "calibration = \"band.json\"\n",
    );
    gateway.write_file("cascadia.toml", &served);
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view = cascade_view(&client, &gateway).await;
    assert_eq!(view["accept_below"].as_f64(), Some(accept_below), "{view}");
    assert_eq!(view["calibration"]["file"], "band.json");
    assert_eq!(view["calibration"]["rows"], n);
    let (stage, _) = infer(&client, &gateway, [-8.0, 40.0]).await;
    assert_eq!(stage, "local");

    // Another model (a changed coefficient) with the same artifact: the
    // reload is refused, naming the field, and the last good config serves.
    gateway.write_file("screen.json", &MODEL.replace("[1.0,0.0]", "[1.1,0.0]"));
    let (status, body) = gateway.reload(&client).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    let text = body.to_string();
    assert!(text.contains("routes[0].cascade.calibration"), "{text}");
    assert!(text.contains("recalibrate"), "{text}");
    let view = cascade_view(&client, &gateway).await;
    assert_eq!(view["accept_below"].as_f64(), Some(accept_below));

    // Too strict a target for 600 rows: no band, a clear error, exit 1.
    let (code, _, stderr) = calibrate(vec![
        "--model".into(),
        path("screen.json"),
        "--data".into(),
        path("rows.jsonl"),
        "--max-recall-drop".into(),
        "0.001".into(),
        "--out".into(),
        path("strict.json"),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("too few"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_records_to_one_redis_stream_that_calibrate_reads() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let redis = crate::support::redis::RedisServer::start().await;
    let cascade = "accept_below = 0.0\nreject_above = 1.0\naudit_fraction = 1.0\n\n[routes.cascade.record]\nredis_stream = \"cascadia:calibration:fraud\"\nmax_rows = 1000\n";
    let config = config(&ensemble, cascade).replace(
        "admin_listen = \"127.0.0.1:0\"\n",
        &format!(
            "admin_listen = \"127.0.0.1:0\"\n\n[gateway.redis]\nurl = \"{}\"\n",
            redis.url()
        ),
    );
    // Two replicas, one stream.
    let replicas = [
        GatewayProcess::start_with_files(&config, &[("screen.json", MODEL)]).await,
        GatewayProcess::start_with_files(&config, &[("screen.json", MODEL)]).await,
    ];
    let client = TestClient::new();
    let mut rng = fastrand::Rng::with_seed(21);
    let per_replica = 300;
    for gateway in &replicas {
        for _ in 0..per_replica {
            let a = 12.0 * rng.f64() - 6.0;
            infer(&client, gateway, [a, -5.0 * a + 20.0 * rng.f64() - 10.0]).await;
        }
    }
    for gateway in &replicas {
        let view = wait_for_cascade(&client, gateway, |v| {
            v["record"]["rows_written"] == per_replica
        })
        .await;
        assert_eq!(
            view["record"]["target"],
            "Redis stream cascadia:calibration:fraud"
        );
        assert_eq!(view["record"]["rows_dropped"], 0);
    }
    let dir = replicas[0].config_path.parent().unwrap().to_owned();
    let path = |name: &str| dir.join(name).display().to_string();
    let (code, stdout, stderr) = calibrate(vec![
        "--model".into(),
        path("screen.json"),
        "--redis-url".into(),
        redis.url(),
        "--redis-stream".into(),
        "cascadia:calibration:fraud".into(),
        "--max-recall-drop".into(),
        "0.05".into(),
        "--confidence".into(),
        "0.9".into(),
        "--out".into(),
        path("band.json"),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let artifact: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("band.json")).unwrap()).unwrap();
    assert_eq!(artifact["data"]["rows"], 2 * per_replica, "{artifact}");
    assert_eq!(
        artifact["data"]["file"],
        "redis stream cascadia:calibration:fraud"
    );
}
