//! Shadow traffic: a candidate gets copies of requests, its answers are
//! compared online, and nothing the client receives changes.

use std::time::Duration;

use cascadia_sim::LatencyModel;
use http::StatusCode;
use serde_json::Value;

use crate::support::{sim, sim_with, GatewayProcess, TestClient, TestResponse};

fn config(stable: std::net::SocketAddr, candidate: std::net::SocketAddr, shadow: &str) -> String {
    config_over(stable, candidate, shadow, "http1")
}

/// [`config`] with both backends reached over `protocol`.
fn config_over(
    stable: std::net::SocketAddr,
    candidate: std::net::SocketAddr,
    shadow: &str,
    protocol: &str,
) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-v1"
region = "us-east"
protocol = "{protocol}"
endpoints = ["{stable}"]

[[backends]]
name = "fraud-v3"
region = "us-east"
protocol = "{protocol}"
endpoints = ["{candidate}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
max_concurrency = 64

[[routes.split]]
version = "stable"
weight = 100
backends = ["fraud-v1"]

[routes.shadow]
version = "v3"
backends = ["fraud-v3"]
{shadow}
"#
    )
}

fn answer(response: &TestResponse) -> (StatusCode, Option<String>, Value) {
    (
        response.status,
        response.header("x-cascadia-backend").map(str::to_owned),
        response.json()["outputs"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_compared_and_never_change_the_answer() {
    let stable = sim("stable", "1", "us-east").await;
    let candidate = sim("candidate", "3", "us-east").await;
    let gateway =
        GatewayProcess::start(&config(stable.addr, candidate.addr, "fraction = 1.0")).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");

    // The same answer with the candidate agreeing, disagreeing, or down.
    let reference = answer(&client.infer(&url, &[]).await);
    assert_eq!(reference.0, StatusCode::OK);
    assert_eq!(reference.1.as_deref(), Some("fraud-v1"));
    for _ in 0..9 {
        assert_eq!(answer(&client.infer(&url, &[]).await), reference);
    }
    let agreeing = gateway.shadow_report(&client, 10).await;
    let pair = &agreeing["pairs"][0];
    assert_eq!(pair["primary"], "stable");
    assert_eq!(pair["compared"], 10, "{agreeing}");
    assert_eq!(pair["class_agreement"], 1.0, "{agreeing}");
    assert_eq!(candidate.control.infer_requests(), 10);

    // A candidate that leans positive disagrees on this row.
    candidate.control.set_bias(4.0);
    for _ in 0..10 {
        assert_eq!(answer(&client.infer(&url, &[]).await), reference);
    }
    let disagreeing = gateway.shadow_report(&client, 20).await;
    let pair = &disagreeing["pairs"][0];
    assert_eq!(pair["compared"], 20, "{disagreeing}");
    assert_eq!(pair["class_agreement"], 0.5, "{disagreeing}");
    assert!(
        pair["mean_abs_score_diff"].as_f64().unwrap() > 0.1,
        "{disagreeing}"
    );

    // A failing candidate is counted, and the client never notices.
    candidate.control.set_error_rate(1.0);
    for _ in 0..5 {
        assert_eq!(answer(&client.infer(&url, &[]).await), reference);
    }
    let failing = gateway.shadow_report(&client, 25).await;
    assert_eq!(failing["pairs"][0]["failed"], 5, "{failing}");

    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        r#"cascadia_shadow_mirrors_total{route="fraud",primary="stable",shadow="v3",outcome="compared"} 20"#,
        r#"cascadia_shadow_rows_total{route="fraud",primary="stable",shadow="v3",class="disagree"} 10"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_shed_first_and_a_slow_candidate_never_delays_the_client() {
    let stable = sim("stable", "1", "us-east").await;
    // The candidate takes 2 s per answer; the budget is one mirror at once.
    let candidate = sim_with(
        "candidate",
        "3",
        "us-east",
        LatencyModel::Fixed(Duration::from_secs(2)),
    )
    .await;
    let gateway = GatewayProcess::start(&config(
        stable.addr,
        candidate.addr,
        "fraction = 1.0\nmax_in_flight = 1\ntimeout = \"3s\"",
    ))
    .await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    let started = tokio::time::Instant::now();
    for _ in 0..10 {
        let response = client.infer(&url, &[]).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("x-cascadia-backend"), Some("fraud-v1"));
    }
    // Ten answers well inside one candidate answer: nobody waited on it.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "clients waited for the mirror: {:?}",
        started.elapsed()
    );
    let report = client
        .get(&gateway.admin_url("/admin/shadow"), &[])
        .await
        .json();
    let route = &report["routes"][0];
    assert_eq!(route["dropped_budget"], 9, "{report}");
    assert_eq!(route["in_flight"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_mirrored_and_compared_too() {
    use cascadia_oip::grpc::client::InferenceClient;
    use cascadia_oip::grpc::{model_infer_request, InferTensorContents, ModelInferRequest};

    let stable = sim("stable", "1", "us-east").await;
    let candidate = sim("candidate", "3", "us-east").await;
    candidate.control.set_bias(4.0);
    let gateway = GatewayProcess::start(&config_over(
        stable.addr,
        candidate.addr,
        "fraction = 1.0",
        "h2c",
    ))
    .await;
    let mut client = InferenceClient::connect(gateway.url(""))
        .await
        .expect("connect");
    let request = ModelInferRequest {
        model_name: "fraud".to_owned(),
        inputs: vec![model_infer_request::InferInputTensor {
            name: "features".to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![2, 4],
            contents: Some(InferTensorContents {
                // Row 1 is near 0.5 (the biased candidate flips it), row 2
                // is confidently positive for both.
                fp32_contents: vec![0.5, 1.0, -0.5, 2.0, -9.0, -9.0, 0.0, 0.0],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    for _ in 0..4 {
        let reply = client
            .model_infer(request.clone())
            .await
            .expect("ModelInfer succeeds")
            .into_inner();
        assert_eq!(reply.model_version, "1", "the client gets stable's answer");
    }
    let client = TestClient::new();
    let report = gateway.shadow_report(&client, 4).await;
    let pair = &report["pairs"][0];
    assert_eq!(pair["compared"], 4, "{report}");
    assert_eq!(pair["rows"], 8, "{report}");
    assert_eq!(pair["class_agreement"], 0.5, "{report}");
    assert_eq!(candidate.control.infer_requests(), 4);
}
