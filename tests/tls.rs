//! TLS with rustls, with certificates the test makes: the listener speaks
//! h2 and HTTP/1.1 by ALPN, asks for client certificates when told to, and
//! serves a rotated certificate to new connections without failing a
//! request; upstreams are reached over TLS with a CA, mTLS and SNI.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cascadia_sim::SimHandle;
use http::{Method, StatusCode, Version};

use crate::support::tls::{Issued, TestCa, TlsClient};

use crate::support::{sim, single_backend_config, GatewayProcess, TestClient, INFER_BODY, WAIT};

const INFER: &str = "/v2/models/fraud/infer";

/// A gateway with `[gateway.tls]` over `server.crt` / `server.key` (and
/// `extra` lines in that table) in front of one simulated model server; its
/// log is kept (`log`), for tests that wait on what it says.
/// The model server comes back too: it serves as long as the test holds it.
async fn tls_gateway(ca: &TestCa, extra: &str) -> (GatewayProcess, Issued, SimHandle) {
    let model = sim("fraud-v1", "1", "us-east").await;
    let server = ca.issue(&["localhost", "127.0.0.1"]);
    let config = single_backend_config("fraud-us-east", model.addr, "").replacen(
        "[[backends]]",
        &format!(
            "[gateway.tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nreload_interval = \"100ms\"\n{extra}\n\n[[backends]]"
        ),
        1,
    );
    let gateway = GatewayProcess::start_logged_with_files(
        &config,
        &[
            ("server.crt", &server.cert_pem),
            ("server.key", &server.key_pem),
            ("ca.crt", &ca.pem),
        ],
    )
    .await;
    (gateway, server, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_h2_and_http1_by_alpn_and_refuses_plaintext() {
    let ca = TestCa::new("test ca");
    let (gateway, server, _model) = tls_gateway(&ca, "").await;
    for (alpn, version) in [("h2", Version::HTTP_2), ("http/1.1", Version::HTTP_11)] {
        let client = TlsClient::new(&ca.pem, &[alpn], None);
        let (mut connection, presented) = client.connect(gateway.addr).await.unwrap();
        assert_eq!(presented, server.der(), "the configured certificate");
        let (status, answered_in, body) = connection
            .send(Method::POST, INFER, INFER_BODY)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert_eq!(answered_in, version, "ALPN {alpn}");
    }
    // A plaintext request on the TLS port gets no HTTP answer.
    let plain = TestClient::new()
        .try_send(Method::POST, &gateway.url(INFER), &[], INFER_BODY)
        .await;
    assert!(
        plain.is_err(),
        "plaintext was answered: {:?}",
        plain.map(|r| r.status)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_the_configured_ca_only_are_let_in() {
    let ca = TestCa::new("test ca");
    let (gateway, _, _model) = tls_gateway(&ca, "client_ca_file = \"ca.crt\"").await;
    let request = |client: TlsClient| async move {
        let (mut connection, _) = client.connect(gateway.addr).await?;
        connection.send(Method::POST, INFER, INFER_BODY).await
    };
    let member = ca.issue(&["client.example"]);
    let (status, _, _) = request(TlsClient::new(&ca.pem, &["h2"], Some(&member)))
        .await
        .expect("a client with a certificate from the CA is served");
    assert_eq!(status, StatusCode::OK);
    // Without a certificate, and with one from another CA: no answer (TLS
    // 1.3 reports the refusal at the first read, so the request fails).
    assert!(request(TlsClient::new(&ca.pem, &["h2"], None))
        .await
        .is_err());
    let stranger = TestCa::new("another ca").issue(&["client.example"]);
    assert!(request(TlsClient::new(&ca.pem, &["h2"], Some(&stranger)))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_and_no_request_fails() {
    let ca = TestCa::new("test ca");
    let (gateway, old, _model) = tls_gateway(&ca, "").await;
    let dir = gateway.config_path.parent().unwrap().to_path_buf();
    let client = TlsClient::new(&ca.pem, &["h2", "http/1.1"], None);
    // A connection opened before the rotation, kept open across it.
    let (mut long_lived, presented) = client.connect(gateway.addr).await.unwrap();
    assert_eq!(presented, old.der());

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (client, stop, failures, served, seen) = (
                client.clone(),
                stop.clone(),
                failures.clone(),
                served.clone(),
                seen.clone(),
            );
            let addr = gateway.addr;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // A new connection (a new handshake) every five requests.
                    let (mut connection, presented) = match client.connect(addr).await {
                        Ok(connected) => connected,
                        Err(error) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("worker {worker}: {error}"));
                            continue;
                        }
                    };
                    {
                        let mut seen = seen.lock().unwrap();
                        if !seen.contains(&presented) {
                            seen.push(presented);
                        }
                    }
                    for _ in 0..5 {
                        match connection.send(Method::POST, INFER, INFER_BODY).await {
                            Ok((StatusCode::OK, _, _)) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failures
                                .lock()
                                .unwrap()
                                .push(format!("worker {worker}: {other:?}")),
                        }
                    }
                }
            })
        })
        .collect();

    let served_at_least = |n: u64| {
        let served = served.clone();
        async move {
            tokio::time::timeout(WAIT, async {
                while served.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the load is served")
        }
    };
    served_at_least(100).await;
    // Under load, the files are replaced the way a secret update does it.
    let new = ca.issue(&["localhost", "127.0.0.1"]);
    new.write(&dir, "server");
    let rotated = tokio::time::timeout(WAIT, async {
        loop {
            if seen.lock().unwrap().contains(&new.der()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // Some load on the new certificate too, then stop.
    served_at_least(served.load(Ordering::Relaxed) + 100).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    rotated.expect("new connections get the new certificate");
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
    // The connection from before the rotation still serves.
    let (status, _, _) = long_lived
        .send(Method::POST, INFER, INFER_BODY)
        .await
        .expect("an old connection survives the rotation");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pair_written_in_place_leaves_the_old_certificate_serving() {
    let ca = TestCa::new("test ca");
    let (gateway, old, _model) = tls_gateway(&ca, "").await;
    let dir = gateway.config_path.parent().unwrap().to_path_buf();
    // A new certificate with the old key: they do not match.
    let new = ca.issue(&["localhost"]);
    std::fs::write(dir.join("server.crt"), &new.cert_pem).unwrap();
    let client = TlsClient::new(&ca.pem, &["h2"], None);
    // Readiness: the gateway has looked at the changed files and refused
    // the pair (it says so in its log).
    let log = gateway.log.clone().expect("captured");
    tokio::time::timeout(WAIT, async {
        while !log.lock().unwrap().contains("not a usable pair") {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the mismatched pair was refused");
    let (mut connection, presented) = client.connect(gateway.addr).await.unwrap();
    assert_eq!(presented, old.der(), "the old pair goes on serving");
    let (status, _, _) = connection
        .send(Method::POST, INFER, INFER_BODY)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    // The matching key arrives: the new pair is taken.
    std::fs::write(dir.join("server.key"), &new.key_pem).unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, presented) = client.connect(gateway.addr).await.unwrap();
            if presented == new.der() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the completed pair is served");
}

/// An upstream that speaks only TLS and asks for client certificates: a
/// second gateway with `[gateway.tls]` in front of a model server, its
/// certificate for `model.internal` only (not for the address dialled).
async fn mtls_upstream(ca: &TestCa) -> (GatewayProcess, SimHandle) {
    let model = sim("fraud-v1", "1", "us-east").await;
    let server = ca.issue(&["model.internal"]);
    let config = single_backend_config("model", model.addr, "").replacen(
        "[[backends]]",
        "[gateway.tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nclient_ca_file = \"ca.crt\"\n\n[[backends]]",
        1,
    );
    let upstream = GatewayProcess::start_with_files(
        &config,
        &[
            ("server.crt", &server.cert_pem),
            ("server.key", &server.key_pem),
            ("ca.crt", &ca.pem),
        ],
    )
    .await;
    (upstream, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_reached_over_tls_with_a_ca_a_client_certificate_and_sni() {
    let ca = TestCa::new("mesh ca");
    let (upstream, _model) = mtls_upstream(&ca).await;
    let identity = ca.issue(&["gateway.internal"]);
    let client = TestClient::new();
    let front = |tls: &str, protocol: &str| {
        single_backend_config("mesh", upstream.addr, "").replacen(
            "endpoints = ",
            &format!("protocol = \"{protocol}\"\ntls = {{ {tls} }}\nendpoints = "),
            1,
        )
    };
    let files = [
        ("ca.crt", ca.pem.as_str()),
        ("client.crt", identity.cert_pem.as_str()),
        ("client.key", identity.key_pem.as_str()),
    ];
    let full = r#"ca_file = "ca.crt", cert_file = "client.crt", key_file = "client.key", server_name = "model.internal""#;
    for protocol in ["http1", "h2c"] {
        let gateway = GatewayProcess::start_with_files(&front(full, protocol), &files).await;
        let response = client.infer(&gateway.url(INFER), &[]).await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{protocol}: {:?}",
            response.json()
        );
    }
    // Each part matters: without the client certificate the upstream
    // refuses; without the SNI name the certificate does not match the
    // address; without the CA it is not trusted. Each is a 502 or 503 (the
    // upstream side), never an answer.
    for tls in [
        r#"ca_file = "ca.crt", server_name = "model.internal""#,
        r#"ca_file = "ca.crt", cert_file = "client.crt", key_file = "client.key""#,
        r#"cert_file = "client.crt", key_file = "client.key", server_name = "model.internal""#,
    ] {
        let gateway = GatewayProcess::start_with_files(&front(tls, "http1"), &files).await;
        let response = client.infer(&gateway.url(INFER), &[]).await;
        assert!(
            matches!(
                response.status,
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{tls}: {} {:?}",
            response.status,
            response.json()
        );
    }
    // Verification off: served (the gateway warns at every load).
    let insecure =
        r#"cert_file = "client.crt", key_file = "client.key", insecure_skip_verify = true"#;
    let mut gateway = GatewayProcess::start_with_files(&front(insecure, "http1"), &files).await;
    let response = client.infer(&gateway.url(INFER), &[]).await;
    assert_eq!(response.status, StatusCode::OK);
    let _ = gateway.child.start_kill();
}
