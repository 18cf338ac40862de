//! The two-stage cascade through the real gateway: stage 1 answers
//! confident rows itself, uncertain rows go to stage 2 (sim backends) and
//! are merged back in order.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascadia_sim::{LatencyModel, SimHandle};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_json_error, sim, GatewayProcess, TestClient, TestResponse, WAIT};

/// Stage 1: p = sigmoid(a); features a and b.
const MODEL: &str = r#"{"name":"screen-lr","version":"7","features":["a","b"],"coefficients":[1.0,0.0],"intercept":0.0,"classes":[0,1]}"#;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// What the sim (stage 2) answers for a row: its fixed weights are
/// -0.3 and -0.2 for the first two features.
fn stage2(a: f64, b: f64) -> f64 {
    sigmoid(-0.3 * a - 0.2 * b)
}

fn config(stage2: &SimHandle, cascade_extra: &str) -> String {
    config_with(stage2, "http1", cascade_extra)
}

fn config_with(stage2: &SimHandle, protocol: &str, cascade_extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "ensemble"
region = "us-east"
protocol = "{protocol}"
endpoints = ["{addr}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "x"
accept_below = 0.2
reject_above = 0.8
{cascade_extra}
"#,
        addr = stage2.addr
    )
}

async fn start(stage2: &SimHandle, cascade_extra: &str) -> GatewayProcess {
    GatewayProcess::start_with_files(&config(stage2, cascade_extra), &[("screen.json", MODEL)])
        .await
}

async fn infer(
    client: &TestClient,
    gateway: &GatewayProcess,
    rows: &[[f64; 2]],
    headers: &[(&str, &str)],
) -> TestResponse {
    let body = json!({"id": "req-1", "inputs": [{"name": "x", "shape": [rows.len(), 2], "datatype": "FP64", "data": rows}]});
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    client
        .send(
            Method::POST,
            &gateway.url("/v2/models/fraud/infer"),
            &all,
            &body.to_string(),
        )
        .await
}

fn probabilities(response: &TestResponse) -> Vec<f64> {
    let body = response.json();
    assert_eq!(body["outputs"][0]["name"], "probability", "{body}");
    body["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncertain_rows_escalate_and_merge_back_in_order() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway = start(&ensemble, "").await;
    let client = TestClient::new();

    let rows = [[-3.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.1, 2.0]];
    let response = infer(&client, &gateway, &rows, &[]).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
    assert_eq!(response.header("x-cascadia-stage"), Some("mixed"));
    assert_eq!(
        response.header("x-cascadia-stage1-model"),
        Some("screen-lr/7")
    );
    assert_eq!(response.header("x-cascadia-version"), Some("default"));
    let body = response.json();
    assert_eq!(body["outputs"][0]["shape"], json!([4, 1]));
    assert_eq!(body["id"], "req-1");
    let p = probabilities(&response);
    assert!(close(p[0], sigmoid(-3.0)), "row 0 local: {p:?}");
    assert!(close(p[1], stage2(0.0, 1.0)), "row 1 escalated: {p:?}");
    assert!(close(p[2], sigmoid(3.0)), "row 2 local: {p:?}");
    assert!(close(p[3], stage2(0.1, 2.0)), "row 3 escalated: {p:?}");
    // One stage-2 request for both uncertain rows.
    assert_eq!(ensemble.control.infer_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confident_requests_never_leave_the_gateway() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway = start(&ensemble, "").await;
    let client = TestClient::new();
    let response = infer(&client, &gateway, &[[-4.0, 9.0], [5.0, -1.0]], &[]).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-cascadia-stage"), Some("local"));
    assert!(response.header("x-cascadia-version").is_none());
    let p = probabilities(&response);
    assert!(
        close(p[0], sigmoid(-4.0)) && close(p[1], sigmoid(5.0)),
        "{p:?}"
    );
    assert_eq!(ensemble.control.infer_requests(), 0);

    let all_uncertain = infer(&client, &gateway, &[[0.0, 0.0]], &[]).await;
    assert_eq!(all_uncertain.header("x-cascadia-stage"), Some("escalated"));
    assert!(close(probabilities(&all_uncertain)[0], stage2(0.0, 0.0)));

    // Metrics tell the two apart: one answer local, one from upstream.
    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains(r#"cascadia_local_answers_total{route="fraud",status_class="2xx"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cascadia_requests_total{route="fraud",status_class="2xx"} 2"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_get_a_400_that_says_what_is_wrong() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway = start(&ensemble, r#"max_batch = 4"#).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    let cases = [
        (
            json!({"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}),
            "holds 4 values but data has 3",
        ),
        (
            json!({"inputs":[{"name":"x","shape":[1,2],"datatype":"STRING","data":[1,2]}]}),
            "unsupported datatype",
        ),
        (
            json!({"inputs":[{"name":"x","shape":[5,2],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0]}]}),
            "over the limit of 4",
        ),
        (
            json!({"inputs":[{"name":"y","shape":[1,2],"datatype":"FP32","data":[0,0]}]}),
            "missing feature \"x\"",
        ),
        (json!({"nope": 1}), "invalid inference request"),
    ];
    for (body, message) in cases {
        let response = client
            .send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                &body.to_string(),
            )
            .await;
        assert_json_error(&response, StatusCode::BAD_REQUEST);
        let error = response.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(message), "{error:?} lacks {message:?}");
    }
    assert_eq!(ensemble.control.infer_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_is_answered_by_stage_1_and_marked_degraded() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    ensemble
        .control
        .set_latency(LatencyModel::Fixed(Duration::from_millis(30)));
    let gateway = start(&ensemble, "").await;
    let client = TestClient::new();
    // Give stage 2 a latency history (p95 ≈ 30 ms).
    for _ in 0..25 {
        assert_eq!(
            infer(&client, &gateway, &[[0.0, 0.0]], &[])
                .await
                .header("x-cascadia-stage"),
            Some("escalated")
        );
    }
    let before = ensemble.control.infer_requests();
    let response = infer(
        &client,
        &gateway,
        &[[0.0, 0.0]],
        &[("x-request-timeout-ms", "10")],
    )
    .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-cascadia-stage"), Some("local"));
    assert_eq!(response.header("x-cascadia-degraded"), Some("deadline"));
    assert!(close(probabilities(&response)[0], 0.5));
    assert_eq!(
        ensemble.control.infer_requests(),
        before,
        "stage 2 was not called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_2_down_degrades_or_fails_as_configured() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let degrade = start(&ensemble, "").await;
    let strict = start(&ensemble, r#"on_unavailable = "error""#).await;
    ensemble.shutdown().await;
    let client = TestClient::new();

    let response = infer(&client, &degrade, &[[0.0, 0.0], [-5.0, 0.0]], &[]).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-cascadia-degraded"), Some("unavailable"));
    let p = probabilities(&response);
    assert!(close(p[0], 0.5) && close(p[1], sigmoid(-5.0)), "{p:?}");
    // The degradation is marked per row, in the header and the metrics.
    assert_eq!(response.json()["parameters"]["cascadia_rows"], "dl");
    assert_eq!(
        response.header("x-cascadia-rows"),
        Some("local=1, stage2=0, degraded=1")
    );
    let metrics = String::from_utf8(
        client
            .get(&degrade.admin_url("/metrics"), &[])
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains(
            r#"cascadia_cascade_answered_rows_total{route="fraud",version="default",stage="degraded"} 1"#
        ),
        "{metrics}"
    );

    let response = infer(&client, &strict, &[[0.0, 0.0]], &[]).await;
    assert!(response.status.is_server_error(), "{:?}", response.status);
    assert_json_error(&response, response.status);
    // Confident rows need no stage 2 either way.
    assert_eq!(
        infer(&client, &strict, &[[-5.0, 0.0]], &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_sample_confident_requests_in_the_background_and_count_disagreements() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway = start(&ensemble, "audit_fraction = 1.0").await;
    let client = TestClient::new();
    // Stage 1 rejects (p = sigmoid(4) ≈ 0.98); stage 2 says
    // sigmoid(-1.2) ≈ 0.23: a disagreement in the reject band.
    for _ in 0..5 {
        let response = infer(&client, &gateway, &[[4.0, 0.0]], &[]).await;
        assert_eq!(response.header("x-cascadia-stage"), Some("local"));
    }
    let stats = tokio::time::timeout(WAIT, async {
        loop {
            let cascade = client
                .get(&gateway.admin_url("/admin/cascade"), &[])
                .await
                .json();
            let stats = cascade["routes"][0]["stats"].clone();
            if stats["audit_rows"] == 5 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("audits finished");
    assert_eq!(stats["audits"], 5);
    assert_eq!(stats["audit_disagree_reject"], 5);
    assert_eq!(stats["audit_disagree_accept"], 0);
    assert_eq!(stats["rows_rejected"], 5);
    assert_eq!(ensemble.control.infer_requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_model_and_thresholds_under_load_with_zero_failures() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway = start(&ensemble, "").await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let url = gateway.url("/v2/models/fraud/infer");
    let body = json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [[1.0, 0.0]]}]}).to_string();
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, body, stop, failures, sent) = (
                client.clone(),
                url.clone(),
                body.clone(),
                stop.clone(),
                failures.clone(),
                sent.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .try_send(
                            Method::POST,
                            &url,
                            &[("content-type", "application/json")],
                            &body,
                        )
                        .await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !matches!(r, Ok(ref r) if r.status == StatusCode::OK) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // p = sigmoid(1) ≈ 0.73: uncertain under the first model. The new model
    // doubles the weight (p ≈ 0.88) and lowers reject_above to 0.85.
    let row = [[1.0, 0.0]];
    assert_eq!(
        infer(&client, &gateway, &row, &[])
            .await
            .header("x-cascadia-stage"),
        Some("escalated")
    );
    gateway.write_file(
        "screen.json",
        &MODEL
            .replace("[1.0,0.0]", "[2.0,0.0]")
            .replace(r#""version":"7""#, r#""version":"8""#),
    );
    gateway.write_config(
        &gateway
            .config_text()
            .replace("reject_above = 0.8", "reject_above = 0.85"),
    );
    let (status, reply) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["status"], "applied");
    let response = infer(&client, &gateway, &row, &[]).await;
    assert_eq!(response.header("x-cascadia-stage"), Some("local"));
    assert_eq!(
        response.header("x-cascadia-stage1-model"),
        Some("screen-lr/8")
    );
    assert!(close(probabilities(&response)[0], sigmoid(2.0)));

    // A changed model file alone is a changed config too.
    gateway.write_file(
        "screen.json",
        &MODEL.replace(r#""version":"7""#, r#""version":"9""#),
    );
    let (_, reply) = gateway.reload(&client).await;
    assert_eq!(reply["status"], "applied", "{reply}");

    // A broken model is rejected whole, naming the field.
    gateway.write_file(
        "screen.json",
        r#"{"name":"x","features":["a"],"coefficients":[1,2],"intercept":0}"#,
    );
    let (status, reply) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply["error"]["errors"][0]["path"],
        "routes[0].cascade.model"
    );

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let value: Value = client
        .get(&gateway.admin_url("/admin/cascade"), &[])
        .await
        .json();
    assert_eq!(value["routes"][0]["stage1_model"], "screen-lr/9");
}

mod grpc {
    use super::*;
    use cascadia_oip::grpc::client::InferenceClient;
    use cascadia_oip::grpc::{model_infer_request, InferTensorContents, ModelInferRequest};

    fn request(rows: &[[f64; 2]]) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "fraud".into(),
            id: "g-1".into(),
            inputs: vec![model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP64".into(),
                shape: vec![rows.len() as i64, 2],
                contents: Some(InferTensorContents {
                    fp64_contents: rows.iter().flatten().copied().collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packed_bools_that_would_expand_past_the_limit_are_refused_unexpanded() {
        let ensemble = sim("ensemble", "4", "us-east").await;
        let gateway = GatewayProcess::start_with_files(
            &config_with(&ensemble, "h2c", "").replacen(
                "[gateway]",
                "[gateway]\nlimits = { max_body_bytes = 65536 }",
                1,
            ),
            &[("screen.json", MODEL)],
        )
        .await;
        let mut client = InferenceClient::connect(gateway.url("")).await.unwrap();
        // 40,000 one-byte BOOLs: 40 KB on the wire, 40,000 values inside.
        let mut message = request(&[[0.0, 0.0]]);
        message.inputs.push(model_infer_request::InferInputTensor {
            name: "flags".into(),
            datatype: "BOOL".into(),
            shape: vec![40_000],
            ..Default::default()
        });
        message.inputs[0].contents = None;
        message.raw_input_contents = vec![
            [0.0f64, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            vec![1u8; 40_000],
        ];
        let status = client.model_infer(message).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert_eq!(ensemble.control.infer_requests(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shadow_compares_grpc_answers_of_the_cascade_too() {
        let ensemble = sim("ensemble", "4", "us-east").await;
        let shadow = "\n[routes.shadow]\nversion = \"ensemble-v5\"\nbackends = [\"ensemble\"]\nfraction = 1.0";
        let gateway = GatewayProcess::start_with_files(
            &config_with(&ensemble, "h2c", shadow),
            &[("screen.json", MODEL)],
        )
        .await;
        let mut client = InferenceClient::connect(gateway.url("")).await.unwrap();
        let response = client
            .model_infer(request(&[[-4.0, 9.0], [5.0, -1.0]]))
            .await
            .expect("ModelInfer");
        assert_eq!(
            response.metadata().get("x-cascadia-stage").unwrap(),
            "local"
        );
        let http = TestClient::new();
        let report = gateway.shadow_report(&http, 1).await;
        let pair = &report["pairs"][0];
        assert_eq!(pair["compared"], 1, "{report}");
        assert_eq!(pair["primary"], "cascade", "{report}");
        assert_eq!(pair["rows"], 2, "{report}");
        assert_eq!(
            ensemble.control.infer_requests(),
            1,
            "only the mirror reached it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_batches_split_and_merge_like_rest() {
        let ensemble = sim("ensemble", "4", "us-east").await;
        let gateway = GatewayProcess::start_with_files(
            &config_with(&ensemble, "h2c", ""),
            &[("screen.json", MODEL)],
        )
        .await;
        let mut client = InferenceClient::connect(gateway.url("")).await.unwrap();

        let rows = [[-3.0, 0.0], [0.0, 1.0], [3.0, 0.0]];
        let response = client
            .model_infer(request(&rows))
            .await
            .expect("ModelInfer");
        assert_eq!(
            response.metadata().get("x-cascadia-stage").unwrap(),
            "mixed"
        );
        let reply = response.into_inner();
        assert_eq!(reply.id, "g-1");
        assert!(
            reply.outputs[0].contents.is_none(),
            "outputs travel raw, as Triton clients expect"
        );
        let json = cascadia_cascade::grpc::to_json_response(&reply).unwrap();
        let output = &json.outputs[0];
        assert_eq!(output.name, "probability");
        assert_eq!(output.shape, vec![3, 1]);
        let p: Vec<f64> = output
            .data
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!((p[0] - sigmoid(-3.0)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - stage2(0.0, 1.0)).abs() < 1e-6, "{p:?}");
        assert!((p[2] - sigmoid(3.0)).abs() < 1e-6, "{p:?}");
        assert_eq!(ensemble.control.infer_requests(), 1);

        // raw_input_contents, all confident: answered locally.
        let mut raw = request(&[[-4.0, 0.0]]);
        raw.inputs[0].contents = None;
        raw.raw_input_contents = vec![[-4.0f64, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()];
        let response = client.model_infer(raw).await.expect("raw ModelInfer");
        assert_eq!(
            response.metadata().get("x-cascadia-stage").unwrap(),
            "local"
        );
        assert_eq!(ensemble.control.infer_requests(), 1);

        // A malformed tensor is INVALID_ARGUMENT with the reason.
        let mut bad = request(&[[0.0, 0.0]]);
        bad.inputs[0].shape = vec![2, 2];
        let status = client.model_infer(bad).await.expect_err("shape mismatch");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("holds 4 values"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_compares_the_cascades_answers_with_a_candidates() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let shadow =
        "\n[routes.shadow]\nversion = \"ensemble-v5\"\nbackends = [\"ensemble\"]\nfraction = 1.0";
    let gateway = start(&ensemble, shadow).await;
    let client = TestClient::new();
    // Answered locally: the candidate still sees a copy, and the client
    // gets stage 1's answer.
    let response = infer(&client, &gateway, &[[-4.0, 9.0]], &[]).await;
    assert_eq!(response.header("x-cascadia-stage"), Some("local"));
    assert!(close(probabilities(&response)[0], sigmoid(-4.0)));
    let report = gateway.shadow_report(&client, 1).await;
    let pair = &report["pairs"][0];
    assert_eq!(pair["compared"], 1, "{report}");
    assert_eq!(pair["primary"], "cascade", "{report}");
    assert_eq!(pair["rows"], 1, "{report}");
    assert_eq!(
        ensemble.control.infer_requests(),
        1,
        "only the mirror reached it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_score_that_is_not_a_number_escalates_and_is_never_degraded() {
    // Finite weights, finite features, yet 1e300 × 1e10 overflows both ways
    // and the sum is inf − inf: NaN.
    let model =
        r#"{"name":"huge","features":["a","b"],"coefficients":[1e300,1e300],"intercept":0.0}"#;
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway =
        GatewayProcess::start_with_files(&config(&ensemble, ""), &[("screen.json", model)]).await;
    let client = TestClient::new();
    let rows = [[1e10, -1e10]];
    let response = infer(&client, &gateway, &rows, &[]).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
    assert_eq!(response.header("x-cascadia-stage"), Some("escalated"));
    let p = probabilities(&response);
    assert!(close(p[0], stage2(1e10, -1e10)), "stage 2's number: {p:?}");

    // Stage 2 gone, degrade configured: still no stage-1 "answer" of NaN.
    ensemble.shutdown().await;
    let response = infer(&client, &gateway, &rows, &[]).await;
    assert!(response.status.is_server_error(), "{:?}", response.status);
    assert_json_error(&response, response.status);
    // A confident row beside it is no excuse either.
    let response = infer(&client, &gateway, &[[1e10, -1e10], [-1.0, 0.0]], &[]).await;
    assert!(response.status.is_server_error(), "{:?}", response.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_the_routes_datatype_and_shape() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let fp64 = start(&ensemble, "").await;
    let fp32 = start(&ensemble, r#"output_datatype = "FP32""#).await;
    let client = TestClient::new();
    // Local, mixed and escalated answers alike.
    for rows in [
        &[[-5.0, 0.0]][..],
        &[[-5.0, 0.0], [0.0, 1.0]],
        &[[0.0, 1.0]],
    ] {
        for (gateway, datatype) in [(&fp64, "FP64"), (&fp32, "FP32")] {
            let answer = infer(&client, gateway, rows, &[]).await.json();
            let output = &answer["outputs"][0];
            assert_eq!(output["datatype"], datatype, "{answer}");
            assert_eq!(output["shape"], json!([rows.len(), 1]), "{answer}");
        }
    }
    // Stage 1's own form of the logistic for z < 0 is e^z / (1 + e^z); to
    // the ulp, since a compile-time exp may differ from the runtime's.
    let exact = (-5.0f64).exp() / (1.0 + (-5.0f64).exp());
    let local = probabilities(&infer(&client, &fp64, &[[-5.0, 0.0]], &[]).await)[0];
    assert!(
        (local - exact).abs() <= f64::EPSILON * exact,
        "FP64 is stage 1's f64: {local} vs {exact}"
    );
    let rounded = probabilities(&infer(&client, &fp32, &[[-5.0, 0.0]], &[]).await)[0];
    assert_eq!(rounded, f64::from(local as f32), "FP32 is that, rounded");

    // A `[F]` row is one row: stage 2 gets `[1, F]`, the answer is `[1, 1]`.
    let body =
        json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [0.0, 1.0]}]});
    let response = client
        .send(
            Method::POST,
            &fp64.url("/v2/models/fraud/infer"),
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
    assert_eq!(response.header("x-cascadia-stage"), Some("escalated"));
    assert_eq!(response.json()["outputs"][0]["shape"], json!([1, 1]));
    assert!(close(probabilities(&response)[0], stage2(0.0, 1.0)));
}

const BATCH: &str =
    "[routes.cascade.batch]\nmax_rows = 8\nmax_wait = \"1s\"\ndeadline_share = 0.5\n";

/// Sends one uncertain row per request, all at once; the answers in order.
async fn concurrent_rows(
    client: &TestClient,
    gateway: &GatewayProcess,
    rows: &[[f64; 2]],
) -> Vec<TestResponse> {
    let calls = rows.iter().map(|row| {
        let client = client.clone();
        let url = gateway.url("/v2/models/fraud/infer");
        let body =
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [row]}]});
        tokio::spawn(async move {
            client
                .send(
                    Method::POST,
                    &url,
                    &[("content-type", "application/json")],
                    &body.to_string(),
                )
                .await
        })
    });
    let mut responses = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        responses.push(call.await.unwrap());
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_escalations_share_one_stage_2_call_and_each_gets_its_own_rows() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway = start(&ensemble, BATCH).await;
    let client = TestClient::new();
    // Eight uncertain rows (stage 1 says 0.5) in eight requests: the batch
    // is full at eight rows and goes at once, in one call.
    let rows: Vec<[f64; 2]> = (0..8).map(|i| [0.0, f64::from(i)]).collect();
    let responses = concurrent_rows(&client, &gateway, &rows).await;
    for (row, response) in rows.iter().zip(&responses) {
        assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
        assert_eq!(response.header("x-cascadia-stage"), Some("escalated"));
        let p = probabilities(response);
        assert!(close(p[0], stage2(row[0], row[1])), "{row:?}: {p:?}");
    }
    assert_eq!(ensemble.control.infer_requests(), 1);
    let cascade = client
        .get(&gateway.admin_url("/admin/cascade"), &[])
        .await
        .json();
    let stats = &cascade["routes"][0]["stats"];
    assert_eq!(stats["batches"], 1, "{stats}");
    assert_eq!(stats["batched_requests"], 8);
    assert_eq!(stats["batch_retries"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stage_2_refuses_is_retried_per_request_so_one_bad_row_fails_only_its_own() {
    let ensemble = sim("ensemble", "4", "us-east").await;
    let gateway = start(&ensemble, BATCH).await;
    let client = TestClient::new();
    // Row 5 carries a value stage 2 refuses (stage 1 ignores feature b).
    let mut rows: Vec<[f64; 2]> = (0..8).map(|i| [0.0, f64::from(i)]).collect();
    rows[5][1] = f64::from(cascadia_sim::REFUSED_VALUE);
    let responses = concurrent_rows(&client, &gateway, &rows).await;
    for (i, (row, response)) in rows.iter().zip(&responses).enumerate() {
        if i == 5 {
            assert_eq!(
                response.status,
                StatusCode::BAD_REQUEST,
                "stage 2's refusal passed on"
            );
            continue;
        }
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{i}: {:?}",
            response.json()
        );
        let p = probabilities(response);
        assert!(close(p[0], stage2(row[0], row[1])), "{row:?}: {p:?}");
    }
    // The combined call, then each request alone.
    assert_eq!(ensemble.control.infer_requests(), 9);
    let cascade = client
        .get(&gateway.admin_url("/admin/cascade"), &[])
        .await
        .json();
    let stats = &cascade["routes"][0]["stats"];
    assert_eq!(stats["batches"], 1, "{stats}");
    assert_eq!(stats["batch_retries"], 8);
}
