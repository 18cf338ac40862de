//! The timing and blame rules of the attempt loop, against a scripted
//! upstream under paused tokio time: every duration asserted is exact.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::*;
use crate::routing::{RouteRuntimes, RouteTable};

/// What one endpoint does with each attempt it gets.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    Error(UpstreamErrorKind),
}

/// An upstream that answers each endpoint from a script, after a delay.
struct Scripted {
    script: HashMap<&'static str, (Duration, Answer)>,
    calls: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(script: &[(&'static str, u64, Answer)]) -> Self {
        Self {
            script: script
                .iter()
                .map(|&(endpoint, ms, answer)| (endpoint, (Duration::from_millis(ms), answer)))
                .collect(),
            calls: Mutex::default(),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Upstream for Scripted {
    fn send<'a>(
        &'a self,
        _pool: &'a BackendPool,
        endpoint: &'a Endpoint,
        _request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> UpstreamFuture<'a> {
        let endpoint = endpoint.authority().to_string();
        self.calls.lock().unwrap().push(endpoint.clone());
        let (delay, answer) = self.script[endpoint.as_str()];
        Box::pin(async move {
            if delay > timeout {
                tokio::time::sleep(timeout).await;
                return Err(UpstreamError::new(UpstreamErrorKind::Timeout, None));
            }
            tokio::time::sleep(delay).await;
            match answer {
                Answer::Status(status) => Ok(Response::builder()
                    .status(status)
                    .body(ReceivedBody::memory(&b"{}"[..]))
                    .expect("a valid response")),
                Answer::Error(kind) => Err(UpstreamError::new(kind, None)),
            }
        })
    }
}

const EAST: &str = "127.0.0.1:1001";
const WEST: &str = "127.0.0.1:1002";

/// A route over two regions, east preferred, with three attempts (unless
/// `route_extra` sets `retries`), `route_extra` and `backend_extra` (on
/// both backends) added.
fn table(route_extra: &str, backend_extra: &str) -> RouteTable {
    let retries = if route_extra.contains("retries") {
        ""
    } else {
        "retries = { attempts = 3, budget_percent = 100 }"
    };
    let toml = format!(
        r#"
[[backends]]
name = "east"
region = "east"
endpoints = ["{EAST}"]
timeout = "1s"
{backend_extra}

[[backends]]
name = "west"
region = "west"
endpoints = ["{WEST}"]
timeout = "1s"
{backend_extra}

[[routes]]
name = "r"
match = {{ model = "m" }}
backends = ["east", "west"]
{retries}
{route_extra}
"#
    );
    let config = cascadia_config::parse(&toml).expect("a valid config");
    let registry = cascadia_backends::Registry::new();
    RouteTable::build(
        &config,
        &registry.build(&config),
        None,
        &RouteRuntimes::default(),
    )
}

const DOWNSTREAM: Downstream = Downstream {
    peer: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000),
    trusted: false,
};

/// Forwards one inference request on route `r` through `upstream`.
async fn send(
    table: &RouteTable,
    upstream: &Scripted,
    headers: &[(&str, &str)],
) -> Result<Response<ResponseBody>, GatewayError> {
    let route = table.by_model("m").expect("route r");
    let mut builder = Request::post("http://gateway/v2/models/m/infer");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let (parts, ()) = builder.body(()).expect("a valid request").into_parts();
    let target = crate::routing::choose_target(route, &parts.headers).expect("a target");
    let exchange = Exchange {
        route,
        target,
        parts,
        path_and_query: PathAndQuery::from_static("/v2/models/m/infer"),
        body: RequestBody::Buffered(Bytes::from_static(b"{}")),
        request_id: &HeaderValue::from_static("test"),
    };
    forward(upstream, DOWNSTREAM, exchange).await
}

/// Failures counted against `endpoint` (toward its ejection).
fn failures(table: &RouteTable, endpoint: &str) -> u64 {
    let route = table.by_model("m").unwrap();
    route.split.targets()[0]
        .pools
        .iter()
        .flat_map(|pool| pool.endpoints().iter())
        .find(|e| e.authority().as_str() == endpoint)
        .map(|e| e.failures())
        .expect("a configured endpoint")
}

fn failed(result: Result<Response<ResponseBody>, GatewayError>) -> GatewayError {
    match result {
        Ok(response) => panic!("answered {}", response.status()),
        Err(error) => error,
    }
}

fn backend_of(response: &Response<ResponseBody>) -> &str {
    response.headers()[headers::X_CASCADIA_BACKEND]
        .to_str()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_503_is_retried_in_the_next_region_and_blamed_on_the_first() {
    let table = table("", "");
    let upstream = Scripted::new(&[
        (EAST, 10, Answer::Status(503)),
        (WEST, 20, Answer::Status(200)),
    ]);
    let started = Instant::now();
    let response = send(&table, &upstream, &[]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backend_of(&response), "west");
    assert_eq!(upstream.calls(), [EAST, WEST]);
    assert_eq!(started.elapsed(), Duration::from_millis(30));
    assert_eq!(failures(&table, EAST), 1);
    assert_eq!(failures(&table, WEST), 0);
}

#[tokio::test(start_paused = true)]
async fn the_same_failure_on_a_second_endpoint_is_the_requests() {
    let table = table("", r#"outlier = { failure_statuses = "5xx" }"#);
    let upstream = Scripted::new(&[
        (EAST, 10, Answer::Status(500)),
        (WEST, 10, Answer::Status(500)),
    ]);
    let response = send(&table, &upstream, &[]).await.unwrap();
    assert_eq!(response.status(), 500, "the upstream's own answer");
    assert_eq!(upstream.calls().len(), 2, "not tried a third time");
    assert_eq!(failures(&table, EAST), 0);
    assert_eq!(failures(&table, WEST), 0);
    let route = table.by_model("m").unwrap();
    assert_eq!(route.stats.request_faults.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_500_is_passed_on_at_once_under_the_default_policy() {
    let table = table("", "");
    let upstream = Scripted::new(&[
        (EAST, 10, Answer::Status(500)),
        (WEST, 10, Answer::Status(200)),
    ]);
    let response = send(&table, &upstream, &[]).await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(upstream.calls(), [EAST]);
    assert_eq!(failures(&table, EAST), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reset_that_repeats_elsewhere_ejects_nothing_but_a_refusal_always_counts() {
    let table = table("", "");
    let reset = Answer::Error(UpstreamErrorKind::Protocol);
    let upstream = Scripted::new(&[(EAST, 5, reset), (WEST, 5, reset)]);
    let error = failed(send(&table, &upstream, &[]).await);
    assert_eq!(error.status(), 502);
    assert_eq!(upstream.calls().len(), 2);
    assert_eq!((failures(&table, EAST), failures(&table, WEST)), (0, 0));

    // A refused connection says nothing about the request: both blamed.
    let refused = Answer::Error(UpstreamErrorKind::Connect);
    let upstream = Scripted::new(&[(EAST, 0, refused), (WEST, 0, refused)]);
    failed(send(&table, &upstream, &[]).await);
    assert_eq!((failures(&table, EAST), failures(&table, WEST)), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_is_cut_at_the_backend_timeout_and_retried() {
    let table = table("", "");
    let upstream = Scripted::new(&[
        (EAST, 5_000, Answer::Status(200)),
        (WEST, 40, Answer::Status(200)),
    ]);
    let started = Instant::now();
    let response = send(&table, &upstream, &[]).await.unwrap();
    assert_eq!(backend_of(&response), "west");
    assert_eq!(started.elapsed(), Duration::from_millis(1_040));
    assert_eq!(failures(&table, EAST), 1, "a timeout is the endpoint's");
}

#[tokio::test(start_paused = true)]
async fn the_clients_deadline_bounds_the_attempts_and_is_a_504() {
    let table = table("", "");
    let upstream = Scripted::new(&[
        (EAST, 5_000, Answer::Status(200)),
        (WEST, 5_000, Answer::Status(200)),
    ]);
    let started = Instant::now();
    let error = failed(send(&table, &upstream, &[("x-request-timeout-ms", "300")]).await);
    assert!(matches!(error, GatewayError::DeadlineExceeded), "{error:?}");
    assert_eq!(error.status(), 504);
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(upstream.calls(), [EAST], "no attempt past the deadline");
    assert_eq!(
        failures(&table, EAST),
        0,
        "the client's short deadline is not the endpoint's fault"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_hedged_and_the_first_good_answer_wins() {
    let table = table(
        r#"hedge = { percentile = 95, floor = "50ms", cap = "50ms", budget_percent = 100 }"#,
        "",
    );
    let upstream = Scripted::new(&[
        (EAST, 800, Answer::Status(200)),
        (WEST, 10, Answer::Status(200)),
    ]);
    let started = Instant::now();
    let response = send(&table, &upstream, &[]).await.unwrap();
    assert_eq!(backend_of(&response), "west");
    // The hedge starts at the 50 ms cap and answers 10 ms later.
    assert_eq!(started.elapsed(), Duration::from_millis(60));
    assert_eq!(upstream.calls(), [EAST, WEST]);
    let route = table.by_model("m").unwrap();
    assert_eq!(route.stats.hedges.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn without_retry_budget_the_first_answer_is_returned() {
    let table = table(
        "retries = { attempts = 3, budget_percent = 0, min_per_second = 0 }",
        "",
    );
    let upstream = Scripted::new(&[
        (EAST, 10, Answer::Status(503)),
        (WEST, 10, Answer::Status(200)),
    ]);
    let response = send(&table, &upstream, &[]).await.unwrap();
    assert_eq!(
        response.status(),
        503,
        "the upstream's answer, not a generic one"
    );
    assert_eq!(upstream.calls(), [EAST]);
}
