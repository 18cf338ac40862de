//! The cascade's phases through the whole proxy, driven with `oneshot`
//! against a scripted stage 2 under paused tokio time: which rows escalate,
//! how answers merge, and when stage 1 stands in (degrades) or must not.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use cascadia_backends::{BackendPool, Endpoint, UpstreamBody, UpstreamError, UpstreamErrorKind};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::ServiceExt;

use super::Proxy;
use crate::core::body::{DownstreamBody, ReceivedBody};
use crate::forward::{Upstream, UpstreamFuture};
use crate::routing::RouteRuntimes;
use crate::snapshot::Snapshot;

/// Stage 1: p = sigmoid(a), over features a and b.
const MODEL: &str = r#"{"name":"screen-lr","version":"7","features":["a","b"],"coefficients":[1.0,0.0],"intercept":0.0,"classes":[0,1]}"#;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// What the scripted stage 2 does with a call.
#[derive(Clone, Copy)]
enum Reply {
    /// Scores each row `0.25 + a / 100` after this long.
    Scores(Duration),
    /// Scores one row fewer than it was sent.
    ShortBy1,
    /// Fails as the transport would.
    Fails(UpstreamErrorKind),
}

/// Stage 2 from a script; remembers the rows of every call.
struct Stage2 {
    reply: Mutex<Reply>,
    calls: Mutex<Vec<Vec<[f64; 2]>>>,
}

impl Stage2 {
    fn new(reply: Reply) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            reply: Mutex::new(reply),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<Vec<[f64; 2]>> {
        self.calls.lock().unwrap().clone()
    }
}

fn flatten(value: &Value, out: &mut Vec<f64>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other.as_f64().expect("a number")),
    }
}

fn stage2_score(a: f64) -> f64 {
    0.25 + a / 100.0
}

impl Upstream for Stage2 {
    fn send<'a>(
        &'a self,
        _pool: &'a BackendPool,
        _endpoint: &'a Endpoint,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> UpstreamFuture<'a> {
        let reply = *self.reply.lock().unwrap();
        Box::pin(async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let infer: Value = serde_json::from_slice(&body).unwrap();
            // OIP allows the data flat or nested by row.
            let mut data = Vec::new();
            flatten(&infer["inputs"][0]["data"], &mut data);
            let rows: Vec<[f64; 2]> = data.chunks(2).map(|r| [r[0], r[1]]).collect();
            self.calls.lock().unwrap().push(rows.clone());
            let mut scores: Vec<f64> = rows.iter().map(|r| stage2_score(r[0])).collect();
            match reply {
                Reply::Scores(delay) if delay > timeout => {
                    tokio::time::sleep(timeout).await;
                    return Err(UpstreamError::new(UpstreamErrorKind::Timeout, None));
                }
                Reply::Scores(delay) => tokio::time::sleep(delay).await,
                Reply::ShortBy1 => {
                    scores.pop();
                }
                Reply::Fails(kind) => return Err(UpstreamError::new(kind, None)),
            }
            let answer = json!({
                "model_name": "fraud",
                "outputs": [{"name": "probability", "shape": [scores.len(), 1],
                             "datatype": "FP64", "data": scores}],
            });
            Ok(Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(ReceivedBody::memory(answer.to_string()))
                .unwrap())
        })
    }
}

/// A proxy over one cascade route `fraud` (accept below 0.2, reject above
/// 0.8) whose stage 2 is `stage2`; `extra` is added to `[routes.cascade]`.
fn proxy(stage2: std::sync::Arc<Stage2>, extra: &str) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[[backends]]
name = "ensemble"
region = "us-east"
endpoints = ["127.0.0.1:1001"]
timeout = "1s"

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["ensemble"]

[routes.cascade]
model = "screen.json"
input = "x"
accept_below = 0.2
reject_above = 0.8
{extra}
"#
    );
    std::fs::write(dir.path().join("screen.json"), MODEL).unwrap();
    let path = dir.path().join("cascadia.toml");
    std::fs::write(&path, config).unwrap();
    let loaded = cascadia_config::load_file(&path).expect("a valid config");
    let registry = cascadia_backends::Registry::new();
    let snapshot = Snapshot::build(
        1,
        &loaded,
        &registry,
        None,
        std::sync::Arc::new(RouteRuntimes::default()),
    );
    let shared = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(snapshot));
    let peer = ([127, 0, 0, 1], 40000).into();
    (Proxy::with_upstream(shared, peer, stage2), dir)
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn probabilities(&self) -> Vec<f64> {
        assert_eq!(
            self.body["outputs"][0]["name"], "probability",
            "{}",
            self.body
        );
        self.body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }
}

/// Sends one inference call with `rows` of (a, b) and `headers`.
async fn infer(proxy: &Proxy, rows: &[[f64; 2]], headers: &[(&str, &str)]) -> Answer {
    let body = json!({"inputs": [{"name": "x", "shape": [rows.len(), 2], "datatype": "FP64", "data": rows}]});
    let mut request =
        Request::post("/v2/models/fraud/infer").header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(DownstreamBody::other(Full::new(Bytes::from(
            body.to_string(),
        ))))
        .unwrap();
    let response = proxy.clone().oneshot(request).await.unwrap();
    let (head, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: head.status,
        headers: head.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(start_paused = true)]
async fn only_uncertain_rows_escalate_and_their_answers_merge_back_in_row_order() {
    let stage2 = Stage2::new(Reply::Scores(Duration::from_millis(5)));
    let (proxy, _dir) = proxy(stage2.clone(), "");
    // Confident negative, uncertain, confident positive, uncertain.
    let rows = [[-5.0, 1.0], [0.0, 2.0], [5.0, 3.0], [0.5, 4.0]];
    let answer = infer(&proxy, &rows, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(stage2.calls(), vec![vec![[0.0, 2.0], [0.5, 4.0]]]);
    let p = answer.probabilities();
    assert_eq!(p.len(), 4);
    assert!(close(p[0], sigmoid(-5.0)));
    assert!(close(p[1], stage2_score(0.0)));
    assert!(close(p[2], sigmoid(5.0)));
    assert!(close(p[3], stage2_score(0.5)));
    assert_eq!(answer.header("x-cascadia-stage"), Some("mixed"));
    assert_eq!(
        answer.header("x-cascadia-rows"),
        Some("local=2, stage2=2, degraded=0")
    );
    assert_eq!(answer.header("x-cascadia-degraded"), None);
}

#[tokio::test(start_paused = true)]
async fn confident_rows_are_answered_without_calling_stage_2() {
    let stage2 = Stage2::new(Reply::Scores(Duration::from_millis(5)));
    let (proxy, _dir) = proxy(stage2.clone(), "");
    let started = Instant::now();
    let answer = infer(&proxy, &[[-5.0, 0.0], [5.0, 0.0]], &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-cascadia-stage"), Some("local"));
    assert!(stage2.calls().is_empty());
    assert_eq!(started.elapsed(), Duration::ZERO, "no timer was waited on");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_stage_2s_p95_is_answered_by_stage_1_marked_degraded() {
    let stage2 = Stage2::new(Reply::Scores(Duration::from_millis(30)));
    let (proxy, _dir) = proxy(stage2.clone(), "");
    // A latency history for stage 2: p95 = 30 ms.
    for _ in 0..25 {
        let answer = infer(&proxy, &[[0.0, 0.0]], &[]).await;
        assert_eq!(answer.header("x-cascadia-stage"), Some("escalated"));
    }
    let calls = stage2.calls().len();
    let started = Instant::now();
    let answer = infer(&proxy, &[[0.0, 0.0]], &[("x-request-timeout-ms", "10")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-cascadia-stage"), Some("local"));
    assert_eq!(answer.header("x-cascadia-degraded"), Some("deadline"));
    assert!(close(answer.probabilities()[0], 0.5));
    assert_eq!(stage2.calls().len(), calls, "stage 2 was not called");
    assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
    // A deadline stage 2 fits in escalates as usual.
    let answer = infer(&proxy, &[[0.0, 0.0]], &[("x-request-timeout-ms", "40")]).await;
    assert_eq!(answer.header("x-cascadia-stage"), Some("escalated"));
}

#[tokio::test(start_paused = true)]
async fn stage_2_out_of_time_degrades_after_exactly_the_backend_timeout() {
    let stage2 = Stage2::new(Reply::Scores(Duration::from_secs(5)));
    let (proxy, _dir) = proxy(stage2.clone(), "");
    let started = Instant::now();
    let answer = infer(&proxy, &[[-5.0, 0.0], [0.0, 0.0]], &[]).await;
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "the backend's timeout"
    );
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-cascadia-degraded"), Some("unavailable"));
    assert_eq!(
        answer.header("x-cascadia-rows"),
        Some("local=1, stage2=0, degraded=1")
    );
    let p = answer.probabilities();
    assert!(close(p[0], sigmoid(-5.0)) && close(p[1], 0.5));
}

#[tokio::test(start_paused = true)]
async fn stage_2_down_is_an_error_when_the_route_says_so() {
    let stage2 = Stage2::new(Reply::Fails(UpstreamErrorKind::Connect));
    let (proxy, _dir) = proxy(stage2.clone(), r#"on_unavailable = "error""#);
    let answer = infer(&proxy, &[[0.0, 0.0]], &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    assert_eq!(answer.header("x-cascadia-degraded"), None);
    assert!(answer.body["error"].is_string(), "{}", answer.body);
}

#[tokio::test(start_paused = true)]
async fn an_answer_with_the_wrong_row_count_is_a_502_never_stage_1s_numbers() {
    let stage2 = Stage2::new(Reply::ShortBy1);
    let (proxy, _dir) = proxy(stage2.clone(), "");
    let answer = infer(&proxy, &[[0.0, 0.0], [0.5, 0.0]], &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    assert!(answer.body.get("outputs").is_none(), "{}", answer.body);
}
