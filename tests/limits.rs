//! Request limits and upstream failures: each answers with its status and a
//! JSON body carrying the request id, and never leaks an address.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::redis::RedisServer;
use crate::support::{
    assert_json_error, sim_with, single_backend_config, CanaryFixture, GatewayProcess, TestClient,
};

const LIMITS: &str = r#"
max_body_bytes = 1024
max_header_bytes = 2048
max_headers = 20
header_read_timeout = "300ms"
body_read_timeout = "300ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config_with(100, 0, LIMITS)).await;
    let client = TestClient::new();
    let big = "x".repeat(2048);

    // Declared length over the limit: refused before the body is read.
    let response = client
        .send(Method::POST, &gateway.url("/echo/upload"), &[], &big)
        .await;
    assert_json_error(&response, StatusCode::PAYLOAD_TOO_LARGE);

    // A body within the limit passes.
    let small = client
        .send(
            Method::POST,
            &gateway.url("/echo/upload"),
            &[],
            &"x".repeat(1000),
        )
        .await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.json()["body_bytes"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_bodies_get_413_while_streaming() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config_with(100, 0, LIMITS)).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let chunk = "y".repeat(600);
    let request = format!(
        "POST /echo/stream HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\nx-request-id: chunky\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains(r#""request_id":"chunky""#), "{response}");
    assert!(response.contains(r#""error":"#), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config_with(100, 0, LIMITS)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");

    let names: Vec<String> = (0..25).map(|i| format!("x-extra-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    assert_json_error(
        &client.send(Method::POST, &url, &many, "{}").await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    );

    let long = "v".repeat(3000);
    let large = [("x-large", long.as_str())];
    assert_json_error(
        &client.send(Method::POST, &url, &large, "{}").await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_gets_408_and_the_connection_closes() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config_with(100, 0, LIMITS)).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    // Half a head, then silence: the gateway must answer and close on its own.
    stream
        .write_all(b"GET /echo/slow HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains(r#""error":"#), "{response}");

    // Other clients are unaffected.
    let client = TestClient::new();
    assert_eq!(
        client
            .get(&gateway.url("/v2/health/live"), &[])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_serves_many_requests_within_the_head_timeout() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config_with(100, 0, LIMITS)).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_gets_502_without_its_address() {
    // A port that was free a moment ago: connections are refused.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let config = single_backend_config("gone", dead_addr, "");
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_json_error(&response, StatusCode::BAD_GATEWAY);
    assert!(!String::from_utf8_lossy(&response.body).contains(&dead_addr.port().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_504_at_the_route_timeout() {
    let slow = sim_with(
        "slow",
        "1",
        "us-east",
        cascadia_sim::LatencyModel::Fixed(Duration::from_secs(10)),
    )
    .await;
    let config = single_backend_config("slow", slow.addr, r#"timeout = "200ms""#);
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_json_error(&response, StatusCode::GATEWAY_TIMEOUT);
}

/// Reads until the server closes the connection or a full response with a
/// body has arrived.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&out);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end].lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        });
                        if let Some(length) = length {
                            if out.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(crate::support::WAIT, read)
        .await
        .expect("response arrives");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_route_sheds_load_with_a_fast_503_and_recovers() {
    let slow = sim_with(
        "slow",
        "1",
        "us-east",
        cascadia_sim::LatencyModel::Fixed(Duration::from_millis(400)),
    )
    .await;
    let gateway = GatewayProcess::start(&single_backend_config(
        "slow",
        slow.addr,
        "max_concurrency = 2",
    ))
    .await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    // Two fill the route (readiness: the backend has both)...
    let admitted: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.infer(&url, &[]).await })
        })
        .collect();
    tokio::time::timeout(crate::support::WAIT, async {
        while slow.control.requests() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("both requests reached the backend");
    // ...so the next ones are shed at once, without queueing.
    for _ in 0..4 {
        let shed = client.infer(&url, &[]).await;
        assert_json_error(&shed, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.header("retry-after"), Some("1"));
        // Its body was never read, so the connection cannot be reused:
        // the refusal says so, and the client reconnects cleanly.
        assert_eq!(shed.header("connection"), Some("close"));
    }
    for request in admitted {
        assert_eq!(request.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        slow.control.requests(),
        2,
        "shed requests never reached the backend"
    );
    // Capacity is back once the admitted requests finished.
    assert_eq!(client.infer(&url, &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_apply_per_api_key_with_retry_after() {
    let backend = crate::support::sim("b", "1", "us-east").await;
    let limit = r#"rate_limit = { per_second = 1, burst = 2, key_header = "x-api-key" }"#;
    let gateway = GatewayProcess::start(&single_backend_config("b", backend.addr, limit)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    // Key A's burst of two, then 429 for A only.
    for _ in 0..2 {
        assert_eq!(
            client.infer(&url, &[("x-api-key", "key-a")]).await.status,
            StatusCode::OK
        );
    }
    let limited = client.infer(&url, &[("x-api-key", "key-a")]).await;
    assert_json_error(&limited, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Another key is unaffected, and a forged x-forwarded-for changes nothing.
    assert_eq!(
        client.infer(&url, &[("x-api-key", "key-b")]).await.status,
        StatusCode::OK
    );
    let forged = client
        .infer(
            &url,
            &[("x-api-key", "key-a"), ("x-forwarded-for", "203.0.113.9")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        backend.control.requests(),
        3,
        "limited requests never reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_invents_a_new_api_key_every_time_is_still_limited() {
    let backend = crate::support::sim("b", "1", "us-east").await;
    let limit = r#"rate_limit = { per_second = 1, burst = 2, key_header = "x-api-key" }"#;
    let gateway = GatewayProcess::start(&single_backend_config("b", backend.addr, limit)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    let known = client.infer(&url, &[("x-api-key", "known")]).await;
    assert_eq!(known.status, StatusCode::OK);
    let mut served = 0;
    for i in 0..30 {
        let key = format!("invented-{i}");
        let response = client.infer(&url, &[("x-api-key", key.as_str())]).await;
        if response.status == StatusCode::OK {
            served += 1;
        } else {
            assert_json_error(&response, StatusCode::TOO_MANY_REQUESTS);
            assert!(response.header("retry-after").is_some());
        }
    }
    // New keys from one address come in at the limit's own rate: what is
    // left of the burst, and a refill or two while the loop runs.
    assert!((1..=3).contains(&served), "{served} invented keys served");
    // A key this address already brought in keeps its own budget.
    let known = client.infer(&url, &[("x-api-key", "known")]).await;
    assert_eq!(known.status, StatusCode::OK);
}

/// The gauge of request bytes the gateway holds, from `/metrics`.
async fn buffered_bytes(client: &TestClient, gateway: &GatewayProcess) -> u64 {
    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await.body;
    String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|line| line.strip_prefix("cascadia_buffered_request_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("cascadia_buffered_request_bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bodies_share_one_gateway_wide_budget() {
    let backend = crate::support::sim("b", "1", "us-east").await;
    let config = single_backend_config("b", backend.addr, "").replacen(
        "[gateway]",
        "[gateway]\nlimits = { max_body_bytes = 1048576, max_buffered_bytes = 1572864 }",
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    // Binary-tensor requests are read whole (to be converted to JSON).
    let head = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/octet-stream\r\ninference-header-content-length: 64\r\ncontent-length: 1000000\r\n\r\n";
    let part = vec![b' '; 900_000];
    let mut first = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&part).await.unwrap();
    // Readiness: the gateway holds the first body's 900 KB.
    tokio::time::timeout(crate::support::WAIT, async {
        while buffered_bytes(&client, &gateway).await < 900_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first body is being buffered");
    // A second one would take the gateway past its budget: refused while
    // it arrives, with a 503 to retry, not buffered.
    let mut second = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    second.write_all(head.as_bytes()).await.unwrap();
    let _ = second.write_all(&part).await;
    let response = read_response(&mut second).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("retry-after: 1"), "{response}");
    assert!(response.contains(r#"{"error":"#), "{response}");
    // The first client leaving returns its share.
    drop(first);
    tokio::time::timeout(crate::support::WAIT, async {
        while buffered_bytes(&client, &gateway).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the budget is returned");
    assert_eq!(
        client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_buffered_or_streamed() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config_with(100, 0, LIMITS)).await;
    // A model route buffers the body (to retry); a prefix route streams it.
    for path in ["/v2/models/fraud/infer", "/echo/upload"] {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"inputs\":");
        stream.write_all(head.as_bytes()).await.unwrap();
        // ...and nothing more: the gateway must answer on its own.
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 408"), "{path}: {response}");
        assert!(response.contains(r#""error":"#), "{path}: {response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_steadily_still_gets_408_at_the_total_timeout() {
    let fixture = CanaryFixture::start().await;
    let limits = "body_read_timeout = \"10s\"\nbody_total_timeout = \"1s\"\n";
    let gateway = GatewayProcess::start(&fixture.config_with(100, 0, limits)).await;
    // Buffered (a model route, for retries) and streamed (a prefix route).
    for path in ["/v2/models/fraud/infer", "/echo/upload"] {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = tokio::time::Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        // A byte every 100 ms: never idle long enough for body_read_timeout.
        let trickle = tokio::spawn(async move {
            loop {
                if writer.write_all(b"1\r\n \r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(crate::support::WAIT, async {
            while !response.windows(4).any(|w| w == b"\r\n\r\n") {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        trickle.abort();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 408"), "{path}: {response}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{path}: answered after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_rate_limit_holds_across_replicas_and_falls_back_without_redis() {
    let mut redis = RedisServer::start().await;
    let backend = crate::support::sim("b", "1", "us-east").await;
    let limit =
        r#"rate_limit = { per_second = 1, burst = 3, key_header = "x-api-key", shared = true }"#;
    let config = single_backend_config("b", backend.addr, limit).replacen(
        "[[backends]]",
        &format!("[gateway.redis]\nurl = \"{}\"\n\n[[backends]]", redis.url()),
        1,
    );
    // Two replicas behind an imaginary load balancer.
    let a = GatewayProcess::start(&config).await;
    let b = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let key = [("x-api-key", "shared-key")];
    let mut ok = 0;
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &key)
            .await;
        match response.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => assert!(response.header("retry-after").is_some()),
            other => panic!("unexpected {other}"),
        }
    }
    // One budget for both: a burst of 3 (a 4th only if a second passed).
    // Two local limiters would have let 6 through.
    assert!(
        (3..=4).contains(&ok),
        "{ok} requests passed the shared limit"
    );

    // Redis gone: each replica limits locally instead of failing open or
    // failing every request.
    redis.kill().await;
    let url = a.url("/v2/models/fraud/infer");
    let other_key = [("x-api-key", "another-key")];
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(client.infer(&url, &other_key).await.status);
        }
        out
    };
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        3,
        "the local burst applies: {statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        2,
        "{statuses:?}"
    );
    let metrics = client.get(&a.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let fallbacks: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cascadia_rate_limit_fallbacks_total{route=\"fraud\"} "))
        .expect("fallback metric")
        .parse()
        .unwrap();
    assert!(fallbacks >= 5, "{fallbacks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_password_never_reaches_the_log() {
    let backend = crate::support::sim("b", "1", "us-east").await;
    // Nothing listens there: every Redis call fails and is logged.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let limit = r#"rate_limit = { per_second = 100, burst = 100, key_header = "x-api-key", shared = true }"#;
    let config = single_backend_config("b", backend.addr, limit).replacen(
        "[[backends]]",
        &format!(
            "[gateway.redis]\nurl = \"redis://cascadia:hunter2-not-for-logs@{dead}/0\"\n\n[[backends]]"
        ),
        1,
    );
    let gateway = GatewayProcess::start_logged(&config).await;
    let log = gateway.log.clone().expect("captured");
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    tokio::time::timeout(crate::support::WAIT, async {
        loop {
            let response = client.infer(&url, &[("x-api-key", "k")]).await;
            assert_eq!(response.status, StatusCode::OK, "the local limit serves");
            if log.lock().unwrap().contains("Redis failing") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the Redis failure was logged");
    {
        let log = log.lock().unwrap();
        assert!(
            log.contains("cascadia:***@"),
            "the URL is logged, redacted: {log}"
        );
        assert!(!log.contains("hunter2"), "the password leaked: {log}");
    }
    // The effective config the admin API shows redacts it too.
    let shown = client.get(&gateway.admin_url("/admin/config"), &[]).await;
    let text = String::from_utf8_lossy(&shown.body);
    assert!(text.contains("cascadia:***@"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_after_its_headers_is_cut_off_and_frees_the_slot() {
    // An upstream that answers every request with a head promising 1 GiB,
    // one byte, and then nothing, holding the connection open.
    let upstream = raw_upstream(|mut stream| async move {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{";
        let _ = stream.write_all(head.as_bytes()).await;
        // Hold the socket until the gateway gives up on it.
        let _ = stream.read(&mut [0u8; 1024]).await;
    })
    .await;
    let config = single_backend_config("stall", upstream, "max_concurrency = 1").replacen(
        &format!("endpoints = [\"{upstream}\"]"),
        &format!("endpoints = [\"{upstream}\"]\ntimeout = \"300ms\""),
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    for round in 0..3 {
        let started = tokio::time::Instant::now();
        // The head arrives; the body must then fail (an abort, never a
        // clean end), well before any client would give up.
        let result = client
            .try_send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                "{}",
            )
            .await;
        assert!(
            result.is_err(),
            "round {round}: a truncated body is an error: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: cut off after {:?}",
            started.elapsed()
        );
        // With max_concurrency = 1, the next round is only admitted (and
        // reaches the upstream again) if the slot was released.
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_transfer_codings_and_encoded_slashes_are_refused() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    // `gzip, chunked`: hyper would frame it as chunked and the coding would
    // be lost on the way upstream.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let request = "POST /echo/upload HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 501"), "{response}");
    assert!(response.contains(r#""error":"#), "{response}");

    // Encoded slashes a prefix route's upstream could decode into other
    // segments than the ones matched.
    let client = TestClient::new();
    for path in ["/echo/..%2fadmin", "/echo/a%2Fb", "/echo/a%5cb"] {
        let response = client.get(&gateway.url(path), &[]).await;
        assert_json_error(&response, StatusCode::BAD_REQUEST);
    }
    let echoed_before = fixture.stable.control.requests();
    let fine = client.get(&gateway.url("/echo/a-b"), &[]).await;
    assert_eq!(fine.status, StatusCode::OK);
    assert_eq!(fixture.stable.control.requests(), echoed_before + 1);
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(crate::support::WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closed the idle connection");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_http1_and_h2_with_goaway() {
    let fixture = CanaryFixture::start().await;
    let config = fixture.config(100, 0).replacen(
        "[gateway.limits]",
        "[gateway.limits]\nidle_timeout = \"1s\"",
        1,
    );
    assert!(config.contains("idle_timeout"));
    let gateway = GatewayProcess::start(&config).await;

    // HTTP/1.1 keep-alive, idle after one request.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let seen = read_to_close(&mut stream).await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );

    // h2 with prior knowledge: the preface and an empty SETTINGS, then no
    // request. A well-behaved client (it answers PINGs, as hyper's and
    // gRPC's do) must still get a GOAWAY and a close.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frames = Vec::new();
    let mut pending = Vec::new();
    tokio::time::timeout(crate::support::WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            while pending.len() >= 9 {
                let len = usize::from(pending[0]) << 16
                    | usize::from(pending[1]) << 8
                    | usize::from(pending[2]);
                if pending.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (pending[3], pending[4]);
                frames.push(kind);
                if kind == 0x6 && flags & 1 == 0 {
                    // PING: answer it, as every real client does.
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&pending[9..17]);
                    let _ = stream.write_all(&ack).await;
                }
                pending.drain(..9 + len);
            }
        }
    })
    .await
    .expect("the gateway closed the idle h2 connection");
    assert!(frames.contains(&0x7), "a GOAWAY frame among {frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_tensor_that_would_expand_past_the_body_limit_is_a_413() {
    let fixture = CanaryFixture::start().await;
    let gateway =
        GatewayProcess::start(&fixture.config_with(100, 0, "max_body_bytes = 65536")).await;
    // 40,000 BOOLs: 40 KB of binary (under the limit), 240 KB as JSON.
    let header = r#"{"inputs":[{"name":"b","shape":[40000],"datatype":"BOOL","parameters":{"binary_data_size":40000}}]}"#;
    // (0x01 bytes: the body is valid UTF-8, which the test client needs.)
    let body = format!("{header}{}", "\u{1}".repeat(40_000));
    let length = header.len().to_string();
    let response = TestClient::new()
        .send(
            Method::POST,
            &gateway.url("/v2/models/fraud/infer"),
            &[
                ("content-type", "application/octet-stream"),
                ("inference-header-content-length", &length),
            ],
            &body,
        )
        .await;
    assert_json_error(&response, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        fixture.stable.control.requests(),
        0,
        "nothing went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_cannot_parse_get_a_json_error_too() {
    let fixture = CanaryFixture::start().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: t\r\nx-a: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    for (request, status) in [
        ("GET / HTTP/1.1\r\nhost: t\r\nnot a header\r\n\r\n", "400"),
        ("GARBAGE\r\n\r\n", "400"),
        (huge.as_str(), "431"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let _ = stream.write_all(request.as_bytes()).await;
        let response = read_response(&mut stream).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{response}"
        );
        assert!(
            response.contains("content-type: application/json"),
            "{response}"
        );
        assert!(response.contains(r#"{"error":"#), "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_frees_the_slot() {
    // An upstream with a 64 MiB answer for everyone, sent as fast as the
    // gateway takes it.
    let upstream = raw_upstream(|mut stream| async move {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 64 << 20);
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let zeros = vec![0u8; 64 * 1024];
        while stream.write_all(&zeros).await.is_ok() {}
    })
    .await;
    let config = single_backend_config("big", upstream, "max_concurrency = 1").replacen(
        "[gateway]",
        "[gateway]\nlimits = { write_timeout = \"1s\" }",
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let request = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    // The stalled reader: asks, then never reads.
    let mut stalled = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stalled.write_all(request.as_bytes()).await.unwrap();
    // Another client is admitted once the gateway gives up on the first
    // (503 while the slot is held).
    let started = tokio::time::Instant::now();
    let admitted = tokio::time::timeout(crate::support::WAIT, async {
        loop {
            let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).await.is_ok() && head.ends_with(b"200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(admitted.is_ok(), "the slot was never released");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "released after {:?}",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_with_a_zero_window_is_cut_off_and_frees_the_slot() {
    use http_body_util::BodyExt;
    let upstream = raw_upstream(|mut stream| async move {
        // Larger than the gateway buffers, so it streams and holds the slot.
        let body = vec![b'x'; 1 << 20];
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
    })
    .await;
    let config = single_backend_config("big", upstream, "max_concurrency = 1").replacen(
        "[gateway]",
        "[gateway]\nlimits = { write_timeout = \"1s\" }",
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let infer = || {
        http::Request::post(format!("http://{}/v2/models/fraud/infer", gateway.addr))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    // The stalled client: a stream window of 0, so the gateway may send
    // the answer's head but none of its data.
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut stalled, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let stalled_connection = tokio::spawn(connection);
    let head = stalled.send_request(infer()).await.unwrap();
    assert_eq!(head.status(), http::StatusCode::OK);
    // The answer holds the route's one slot meanwhile...
    let client = TestClient::new();
    let busy = post_empty_infer(&client, &gateway).await;
    assert_eq!(busy.status, http::StatusCode::SERVICE_UNAVAILABLE);
    // ...until the gateway gives up on the stalled client, within the
    // write timeout, and closes its connection.
    let closed = tokio::time::timeout(crate::support::WAIT, stalled_connection).await;
    assert!(closed.is_ok(), "the stalled h2 connection was never closed");
    drop(head);
    let response = post_empty_infer(&client, &gateway).await;
    assert_eq!(response.status, http::StatusCode::OK, "the slot was freed");
    // A normal h2 client on the same gateway is not affected.
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut reader, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = reader.send_request(infer()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 1 << 20);
}

/// `POST /v2/models/fraud/infer` with `{}`: enough for a raw upstream.
async fn post_empty_infer(
    client: &TestClient,
    gateway: &GatewayProcess,
) -> crate::support::TestResponse {
    client
        .send(
            http::Method::POST,
            &gateway.url("/v2/models/fraud/infer"),
            &[("content-type", "application/json")],
            "{}",
        )
        .await
}

/// A raw HTTP/1.1 upstream on a free port, for answers no real server
/// gives on purpose: each connection's request is read (one read), then
/// `answer` does what it likes with the socket.
async fn raw_upstream<F, Fut>(answer: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = std::sync::Arc::clone(&answer);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                answer(stream).await;
            });
        }
    });
    addr
}
