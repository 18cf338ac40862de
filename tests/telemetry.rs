//! Tracing: spans reach an OTLP/gRPC receiver that the test runs, and the
//! backend receives a `traceparent` that continues the client's trace.

use std::time::Duration;

use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

use crate::support::{single_backend_config, GatewayProcess, TestClient, WAIT};

/// An OTLP trace receiver: every exported span goes down a channel.
struct Receiver(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_receiver() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Span>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, rx)
}

/// The same receiver behind TLS, with a certificate for `localhost`.
async fn start_tls_receiver(
    identity: &crate::support::tls::Issued,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Span>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&identity.cert_pem, &identity.key_pem),
    );
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(TraceServiceServer::new(Receiver(tx)));
    tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_that_the_configured_ca_vouches_for() {
    let ca = crate::support::tls::TestCa::new("collector ca");
    let (collector, mut spans) = start_tls_receiver(&ca.issue(&["localhost"])).await;
    let backend = crate::support::sim("b", "1", "us-east").await;
    let config = single_backend_config("b", backend.addr, "").replacen(
        "[[backends]]",
        &format!(
            "[gateway.tracing]\notlp_endpoint = \"https://localhost:{}\"\ntls_ca_file = \"ca.crt\"\n\n[[backends]]",
            collector.port()
        ),
        1,
    );
    let gateway = GatewayProcess::start_with_files(&config, &[("ca.crt", &ca.pem)]).await;
    let response = TestClient::new()
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let span = tokio::time::timeout(WAIT, async {
        loop {
            let span = spans.recv().await.expect("receiver open");
            if span.name == "cascadia.request" {
                return span;
            }
        }
    })
    .await
    .expect("the request span arrives over TLS");
    assert!(!span.trace_id.is_empty());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_traceparent_reaches_the_backend() {
    let (collector, mut spans) = start_receiver().await;
    let backend = crate::support::sim("b", "1", "us-east").await;
    let config = single_backend_config("b", backend.addr, "max_concurrency = 8").replacen(
        "[[backends]]",
        &format!("[gateway.tracing]\notlp_endpoint = \"http://{collector}\"\n\n[[backends]]"),
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = client
        .infer(
            &gateway.url("/v2/models/fraud/infer"),
            &[("traceparent", &format!("00-{trace_id}-{client_span}-01"))],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);

    // The backend joined the client's trace, as a child of the gateway's
    // attempt span rather than of the client's span.
    let seen = response
        .header("x-sim-saw-traceparent")
        .expect("the backend got a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(parts[2], client_span, "a new parent: the attempt span");
    let attempt_span = parts[2].to_owned();

    // Spans arrive within the export delay; collect until the request's
    // root span is in.
    let mut got: Vec<Span> = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !got.iter().any(|s| s.name == "cascadia.request") {
            got.push(spans.recv().await.expect("receiver open"));
        }
    })
    .await
    .expect("the request span arrives");
    // The others end before the root span, so they are in the same or an
    // earlier batch; drain whatever else has arrived.
    while let Ok(Some(span)) = tokio::time::timeout(Duration::from_millis(50), spans.recv()).await {
        got.push(span);
    }
    let find = |name: &str| {
        got.iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {:?}", names(&got)))
    };
    let request = find("cascadia.request");
    assert_eq!(hex(&request.trace_id), trace_id);
    assert_eq!(hex(&request.parent_span_id), client_span);
    let admission = find("cascadia.admission");
    assert_eq!(admission.parent_span_id, request.span_id);
    let upstream = find("cascadia.upstream");
    assert_eq!(hex(&upstream.span_id), attempt_span);
    assert_eq!(upstream.parent_span_id, request.span_id);
    assert!(
        upstream
            .attributes
            .iter()
            .any(|kv| kv.key == "cascadia.backend"),
        "attempt spans name the backend"
    );
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_the_clients_traceparent_passes_through_unchanged() {
    let backend = crate::support::sim("b", "1", "us-east").await;
    let gateway = GatewayProcess::start(&single_backend_config("b", backend.addr, "")).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = TestClient::new()
        .infer(
            &gateway.url("/v2/models/fraud/infer"),
            &[("traceparent", traceparent)],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-sim-saw-traceparent"), Some(traceparent));
}

/// The JSON access lines in a captured log.
fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "cascadia::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_access_line_with_its_route_backend_and_status() {
    let backend = crate::support::sim("fraud-us-east", "1", "us-east").await;
    let config = single_backend_config(
        "fraud-us-east",
        backend.addr,
        "rate_limit = { per_second = 1, burst = 1 }",
    );
    let gateway =
        GatewayProcess::start_with(&config, &["--capture-log", "--log-format", "json"]).await;
    let log = gateway.log.clone().expect("captured");
    let client = TestClient::new();
    let ok = client
        .infer(&gateway.url("/v2/models/fraud/infer?api_key=secret"), &[])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let limited = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let unmatched = client
        .infer(&gateway.url("/v2/models/nosuch/infer"), &[])
        .await;
    assert_eq!(unmatched.status, StatusCode::NOT_FOUND);

    let lines = tokio::time::timeout(WAIT, async {
        loop {
            let lines = access_lines(&log.lock().unwrap());
            if lines.len() >= 3 {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("three access lines");
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    let fields = |i: usize| lines[i]["fields"].clone();
    let first = fields(0);
    assert_eq!(first["route"], "fraud");
    assert_eq!(first["backend"], "fraud-us-east");
    assert_eq!(first["region"], "us-east");
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v2/models/fraud/infer", "no query: {first}");
    assert_eq!(first["request_id"], ok.header("x-request-id").unwrap());
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert_ne!(first["bytes_in"], "-");
    assert_ne!(first["bytes_out"], "-");
    assert!(first["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(fields(1)["status"], 429, "a 429 is logged at any level");
    assert_eq!(fields(2)["status"], 404);
    assert_eq!(fields(2)["route"], "-");
    assert!(
        !log.lock().unwrap().contains("secret"),
        "the query never reaches the log"
    );
    assert!(
        !log.lock().unwrap().contains('\u{1b}'),
        "no colour codes off a terminal"
    );
}
