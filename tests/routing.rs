//! Routing and the canary split, through the real gateway.

use std::collections::HashMap;

use http::StatusCode;

use crate::support::{
    assert_json_error, tally, CanaryFixture, GatewayProcess, TestClient, TestResponse,
};

/// Sends `count` inference requests with `concurrency` in flight, with the
/// headers `headers_for(i)` returns for request `i`.
async fn infer_many(
    client: &TestClient,
    url: &str,
    count: usize,
    concurrency: usize,
    headers_for: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<TestResponse> {
    let headers_for = std::sync::Arc::new(headers_for);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let headers_for = headers_for.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = worker;
            while i < count {
                let headers = headers_for(i);
                let refs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                out.push((i, client.infer(&url, &refs).await));
                i += concurrency;
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await.expect("worker"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_is_within_tolerance_over_10k_requests() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(90, 10)).await;
    let client = TestClient::new();
    let responses = infer_many(
        &client,
        &gateway.url("/v2/models/fraud/infer"),
        10_000,
        32,
        |_| Vec::new(),
    )
    .await;

    assert!(responses.iter().all(|r| r.status == StatusCode::OK));
    let versions = tally(&responses, "x-cascadia-version");
    let canary = versions.get("canary").copied().unwrap_or(0) as f64;
    // Binomial(10000, 0.1): sigma = 30. Five sigma keeps this from flaking
    // while still catching a wrong split (e.g. 5% or 15%).
    assert!(
        (canary - 1000.0).abs() <= 150.0,
        "canary served {canary} of 10000"
    );
    assert_eq!(
        versions.get("stable").copied().unwrap_or(0) + canary as usize,
        10_000
    );
    // Each version's requests went to its own backend.
    let backends = tally(&responses, "x-cascadia-backend");
    assert_eq!(
        backends.get("fraud-v2").copied().unwrap_or(0) as f64,
        canary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_stay_put_and_move_minimally_when_weights_change() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(90, 10)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    let users = 2_000;
    let by_user = |responses: &[TestResponse]| -> Vec<String> {
        responses
            .iter()
            .map(|r| r.header("x-cascadia-version").unwrap().to_owned())
            .collect()
    };
    let user_headers = |i: usize| vec![("x-user-id".to_owned(), format!("user-{}", i % 2_000))];

    let first = by_user(&infer_many(&client, &url, users, 16, user_headers).await);
    let again = by_user(&infer_many(&client, &url, users, 16, user_headers).await);
    assert_eq!(first, again, "the same user got a different version");

    gateway.write_config(&fixture.config(70, 30));
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "applied");

    let after = by_user(&infer_many(&client, &url, users, 16, user_headers).await);
    let mut moved = 0;
    for (before, after) in first.iter().zip(&after) {
        if before != after {
            assert_eq!(
                (before.as_str(), after.as_str()),
                ("stable", "canary"),
                "a key moved the wrong way"
            );
            moved += 1;
        }
    }
    // 20 points of weight moved: about 20% of keys should, and no more.
    let moved = moved as f64 / users as f64;
    assert!((0.15..=0.25).contains(&moved), "moved share {moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_force_header_picks_the_version() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");

    for _ in 0..20 {
        let response = client
            .infer(
                &url,
                &[("x-cascadia-version", "canary"), ("x-user-id", "u1")],
            )
            .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("x-cascadia-version"), Some("canary"));
        assert_eq!(response.header("x-cascadia-backend"), Some("fraud-v2"));
    }
    let unforced = client.infer(&url, &[("x-user-id", "u1")]).await;
    assert_eq!(unforced.header("x-cascadia-version"), Some("stable"));

    let unknown = client.infer(&url, &[("x-cascadia-version", "nope")]).await;
    assert_json_error(&unknown, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_name_what_served_them_and_carry_the_request_id() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(0, 100)).await;
    let client = TestClient::new();

    let response = client
        .infer(
            &gateway.url("/v2/models/fraud/infer"),
            &[("x-request-id", "req-42"), ("x-forwarded-for", "10.1.2.3")],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-request-id"), Some("req-42"));
    assert_eq!(response.header("x-cascadia-version"), Some("canary"));
    assert_eq!(response.header("x-cascadia-backend"), Some("fraud-v2"));
    // What the backend saw: the id, the forwarded chain, and the path
    // rewritten to the version the split names.
    assert_eq!(response.header("x-sim-name"), Some("fraud-v2"));
    assert_eq!(
        response.header("x-sim-saw-path"),
        Some("/v2/models/fraud/versions/2/infer")
    );
    // The client's own x-forwarded-for is a forgery from an untrusted
    // peer: the chain starts at the peer.
    assert_eq!(response.header("x-sim-saw-xff"), Some("127.0.0.1"));
    assert!(response
        .header("x-sim-saw-forwarded")
        .unwrap()
        .contains("for=127.0.0.1"));
    let body = response.json();
    assert_eq!(body["outputs"][0]["name"], "probability");

    // A generated id when the client sends none, different per request.
    let a = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    let b = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    let (a, b) = (
        a.header("x-request-id").unwrap().to_owned(),
        b.header("x-request-id").unwrap().to_owned(),
    );
    assert!(!a.is_empty());
    assert_ne!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_model_paths_prefixes_and_the_gateway_answers_health() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::new();

    let live = client.get(&gateway.url("/v2/health/live"), &[]).await;
    assert_eq!(live.status, StatusCode::OK);
    assert!(
        live.header("x-sim-name").is_none(),
        "health is answered by the gateway"
    );
    let ready = client.get(&gateway.url("/v2/health/ready"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);

    let model_ready = client
        .get(&gateway.url("/v2/models/fraud/ready"), &[])
        .await;
    assert_eq!(model_ready.status, StatusCode::OK);
    assert_eq!(
        model_ready.header("x-sim-saw-path"),
        Some("/v2/models/fraud/versions/1/ready")
    );
    let metadata = client.get(&gateway.url("/v2/models/fraud"), &[]).await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(metadata.json()["name"], "fraud");

    let echo = client.get(&gateway.url("/echo/a/b?q=1"), &[]).await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.header("x-cascadia-version"), Some("default"));
    assert_eq!(echo.header("x-sim-saw-path"), Some("/echo/a/b"));

    assert_json_error(
        &client.get(&gateway.url("/echoes"), &[]).await,
        StatusCode::NOT_FOUND,
    );
    assert_json_error(
        &client
            .infer(&gateway.url("/v2/models/other/infer"), &[])
            .await,
        StatusCode::NOT_FOUND,
    );
    assert_json_error(
        &client.get(&gateway.url("/echo/../admin"), &[]).await,
        StatusCode::BAD_REQUEST,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_clients_share_the_port() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::http2();
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-cascadia-version"), Some("stable"));
    let counts: HashMap<_, _> = tally([&response], "x-cascadia-backend");
    assert_eq!(counts.get("fraud-v1"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_uris_and_host_headers_cannot_pick_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    // The request names an internal address; only the configured backend
    // may ever receive it.
    stream
        .write_all(b"GET http://169.254.169.254/echo/meta HTTP/1.1\r\nhost: 169.254.169.254\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(crate::support::WAIT, stream.read_to_string(&mut response))
        .await
        .expect("response")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("x-sim-name: fraud-v1"), "{response}");
    assert!(
        response.contains("x-sim-saw-path: /echo/meta"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_class() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let client = TestClient::new();
    for _ in 0..5 {
        assert_eq!(
            client
                .infer(&gateway.url("/v2/models/fraud/infer"), &[])
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        client.get(&gateway.url("/nowhere"), &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        "cascadia_config_version 1",
        r#"cascadia_requests_total{route="fraud",status_class="2xx"} 5"#,
        r#"cascadia_requests_total{route="none",status_class="4xx"} 1"#,
        r#"cascadia_request_duration_seconds_count{route="fraud"} 5"#,
        r#"cascadia_upstream_attempts_total{backend="fraud-v1",region="us-east"} 5"#,
        r#"cascadia_endpoints{backend="fraud-v1",region="us-east",state="available"} 1"#,
        r#"cascadia_upstream_responses_total{route="fraud",version="stable",backend="fraud-v1",region="us-east",status_class="2xx"} 5"#,
        r#"cascadia_retries_total{route="fraud"} 0"#,
        r#"cascadia_failovers_total{route="fraud"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("127.0.0.1"), "no addresses in metric labels");

    // A reload keeps the route's counters (and its other runtime state).
    gateway.write_config(&fixture.config(0, 100));
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await
            .status,
        StatusCode::OK
    );
    let text = String::from_utf8_lossy(&client.get(&gateway.admin_url("/metrics"), &[]).await.body)
        .into_owned();
    assert!(
        text.contains(r#"cascadia_requests_total{route="fraud",status_class="2xx"} 6"#),
        "{text}"
    );
    // Per-version counters carry over too, and the canary's start counting.
    for line in [
        r#"cascadia_upstream_responses_total{route="fraud",version="stable",backend="fraud-v1",region="us-east",status_class="2xx"} 5"#,
        r#"cascadia_upstream_responses_total{route="fraud",version="canary",backend="fraud-v2",region="us-east",status_class="2xx"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarded_chain_is_kept() {
    let fixture = CanaryFixture::start().await;
    let config = fixture.config(0, 100).replacen(
        "[gateway]",
        "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]",
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let response = TestClient::new()
        .infer(
            &gateway.url("/v2/models/fraud/infer"),
            &[("x-forwarded-for", "10.1.2.3")],
        )
        .await;
    assert_eq!(
        response.header("x-sim-saw-xff"),
        Some("10.1.2.3, 127.0.0.1")
    );
}
