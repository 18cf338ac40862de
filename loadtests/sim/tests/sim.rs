//! End-to-end tests of the simulator over real sockets on `127.0.0.1:0`.

use bytes::Bytes;
use cascadia_oip::grpc::client::InferenceClient;
use cascadia_oip::grpc::{
    model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest,
    ModelMetadataRequest, ModelReadyRequest, ServerLiveRequest,
};
use cascadia_sim::{LatencyModel, SimConfig, SimHandle};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

async fn start() -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SimConfig {
        name: "sim-a".into(),
        model: "fraud".into(),
        version: "3".into(),
        region: "us-east".into(),
        latency: LatencyModel::None,
        error_rate: 0.0,
    };
    cascadia_sim::spawn(listener, config).await.unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(
    sim: &SimHandle,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", sim.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        json,
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

fn infer_body() -> String {
    json!({
        "id": "req-1",
        "inputs": [{
            "name": "x", "shape": [2, 3], "datatype": "FP32",
            "data": [[0, 0, 0], [1, 1, 1]]
        }]
    })
    .to_string()
}

#[tokio::test]
async fn rest_infer_returns_probability_per_row() {
    let sim = start().await;
    let r = send(
        &sim,
        Method::POST,
        "/v2/models/fraud/versions/7/infer",
        &[
            ("x-request-id", "rid-9"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
        ],
        infer_body(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["model_name"], "fraud");
    assert_eq!(r.json["model_version"], "3");
    assert_eq!(r.json["id"], "req-1");
    let out = &r.json["outputs"][0];
    assert_eq!(out["name"], "probability");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], json!([2, 1]));
    let data: Vec<f64> = serde_json::from_value(out["data"].clone()).unwrap();
    assert_eq!(data.len(), 2);
    assert!((data[0] - 0.5).abs() < 1e-6);
    assert!((data[1] - 1.0 / (1.0 + 0.6f64.exp())).abs() < 1e-5);

    assert_eq!(header(&r, "x-sim-name"), "sim-a");
    assert_eq!(header(&r, "x-sim-version"), "3");
    assert_eq!(header(&r, "x-sim-region"), "us-east");
    assert_eq!(header(&r, "x-request-id"), "rid-9");
    assert_eq!(
        header(&r, "x-sim-saw-path"),
        "/v2/models/fraud/versions/7/infer"
    );
    assert_eq!(header(&r, "x-sim-saw-model"), "fraud");
    assert_eq!(header(&r, "x-sim-saw-version"), "7");
    assert_eq!(header(&r, "x-sim-saw-xff"), "10.0.0.1");
    assert_eq!(header(&r, "x-sim-saw-forwarded"), "for=10.0.0.1");
    assert_eq!(sim.control.infer_requests(), 1);
}

#[tokio::test]
async fn rest_model_mismatch_is_404_and_bad_json_is_400() {
    let sim = start().await;
    let r = send(
        &sim,
        Method::POST,
        "/v2/models/other/infer",
        &[],
        infer_body(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json["error"].is_string());
    assert_eq!(header(&r, "x-sim-saw-model"), "other");

    let r = send(
        &sim,
        Method::POST,
        "/v2/models/fraud/infer",
        &[],
        "{not json",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json["error"].is_string());

    let r = send(&sim, Method::GET, "/v2/models/other/ready", &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rest_health_ready_and_metadata() {
    let sim = start().await;
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/fraud/ready",
    ] {
        assert_eq!(
            send(&sim, Method::GET, path, &[], "").await.status,
            StatusCode::OK
        );
    }
    let r = send(&sim, Method::GET, "/v2/models/fraud", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["name"], "fraud");
    assert_eq!(r.json["versions"], json!(["3"]));
    assert_eq!(r.json["outputs"][0]["name"], "probability");
}

#[tokio::test]
async fn control_error_rate_one_fails_inference_but_not_health() {
    let sim = start().await;
    let r = send(
        &sim,
        Method::POST,
        "/sim/control",
        &[],
        r#"{"error_rate": 1.0, "latency": "none"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["error_rate"], 1.0);
    assert_eq!(sim.control.error_rate(), 1.0);

    let r = send(
        &sim,
        Method::POST,
        "/v2/models/fraud/infer",
        &[],
        infer_body(),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json["error"], "injected failure");
    assert_eq!(header(&r, "x-sim-name"), "sim-a");

    let mut grpc = InferenceClient::connect(sim.url()).await.unwrap();
    let err = grpc.model_infer(grpc_infer_request()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);

    let r = send(&sim, Method::GET, "/v2/health/ready", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);

    let r = send(&sim, Method::GET, "/sim/stats", &[], "").await;
    assert_eq!(r.json["errors_injected"], 2);
    assert_eq!(r.json["infer"], 2);
    assert_eq!(r.json["region"], "us-east");

    let r = send(
        &sim,
        Method::POST,
        "/sim/control",
        &[],
        r#"{"error_rate": 2}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    sim.control.set_error_rate(0.0);
    let r = send(
        &sim,
        Method::POST,
        "/v2/models/fraud/infer",
        &[],
        infer_body(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn echo_reads_the_whole_body() {
    let sim = start().await;
    let r = send(&sim, Method::PUT, "/echo/abc", &[], vec![7u8; 100_000]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json,
        json!({"path": "/echo/abc", "method": "PUT", "body_bytes": 100_000})
    );
    assert_eq!(header(&r, "x-sim-saw-path"), "/echo/abc");
    assert_eq!(sim.control.requests(), 1);
}

fn grpc_infer_request() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "fraud".into(),
        model_version: "7".into(),
        id: "g-1".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![2, 3],
            contents: Some(InferTensorContents {
                fp32_contents: vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_model_infer_via_client() {
    let sim = start().await;
    let mut client = InferenceClient::connect(sim.url()).await.unwrap();

    let mut req = tonic::Request::new(grpc_infer_request());
    req.metadata_mut()
        .insert("x-request-id", "grpc-rid".parse().unwrap());
    let resp = client.model_infer(req).await.unwrap();
    let md = resp.metadata().clone();
    let resp = resp.into_inner();
    assert_eq!(resp.model_name, "fraud");
    assert_eq!(resp.model_version, "3");
    assert_eq!(resp.id, "g-1");
    let out = &resp.outputs[0];
    assert_eq!(out.name, "probability");
    assert_eq!(out.shape, vec![2, 1]);
    let probs = &out.contents.as_ref().unwrap().fp32_contents;
    assert_eq!(probs.len(), 2);
    assert!((probs[0] - 0.5).abs() < 1e-6);
    assert_eq!(md.get("x-sim-saw-model").unwrap(), "fraud");
    assert_eq!(md.get("x-sim-saw-version").unwrap(), "7");
    assert_eq!(md.get("x-sim-name").unwrap(), "sim-a");
    assert_eq!(md.get("x-request-id").unwrap(), "grpc-rid");
    assert_eq!(
        md.get("x-sim-saw-path").unwrap(),
        "/inference.GRPCInferenceService/ModelInfer"
    );

    // Raw little-endian contents instead of typed ones.
    let mut raw = grpc_infer_request();
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![[0.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()];
    let resp = client.model_infer(raw).await.unwrap().into_inner();
    let probs2 = &resp.outputs[0].contents.as_ref().unwrap().fp32_contents;
    assert_eq!(probs2, probs);
}

#[tokio::test]
async fn grpc_health_metadata_and_not_found() {
    let sim = start().await;
    let mut client = InferenceClient::connect(sim.url()).await.unwrap();
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let ready = client
        .model_ready(ModelReadyRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["3".to_string()]);

    let mut other = grpc_infer_request();
    other.model_name = "other".into();
    let err = client.model_infer(other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.metadata().get("x-sim-saw-model").unwrap(), "other");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let sim = start().await;
    let addr = sim.addr;
    assert_eq!(
        send(&sim, Method::GET, "/v2/health/live", &[], "")
            .await
            .status,
        StatusCode::OK
    );
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
