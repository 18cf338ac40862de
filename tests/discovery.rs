//! DNS discovery: a backend named by a DNS name follows what the name
//! resolves to, without a reload; endpoints that stay keep their state.
//!
//! The gateway runs in-process here so the test can script DNS through
//! the resolver seam; everything else is real (sockets, model servers on
//! three loopback addresses sharing one port, the admin API).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cascadia::server::{Gateway, GatewayOptions};
use cascadia_backends::discovery::{Resolution, Resolver};
use cascadia_sim::{LatencyModel, SimHandle};
use http::StatusCode;
use serde_json::Value;

use crate::support::{tally, GatewayProcess, TestClient, WAIT};

/// DNS as the test says: the answer (or a failure) it was last given.
#[derive(Default)]
struct ScriptedDns(Mutex<Option<Vec<SocketAddr>>>);

impl ScriptedDns {
    fn answer(&self, addresses: &[SocketAddr]) {
        *self.0.lock().unwrap() = Some(addresses.to_vec());
    }

    fn fail(&self) {
        *self.0.lock().unwrap() = None;
    }
}

impl Resolver for ScriptedDns {
    fn resolve<'a>(&'a self, _host: &'a str, _port: u16) -> Resolution<'a> {
        let answer = self.0.lock().unwrap().clone();
        Box::pin(async move { answer.ok_or_else(|| std::io::ErrorKind::NotFound.into()) })
    }
}

/// A model server on `ip` at `port`, answering as `name`.
async fn sim_at(ip: &str, port: u16, name: &str) -> SimHandle {
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("bind sim");
    crate::support::sim_on(listener, name, "1", "us-east", LatencyModel::None).await
}

/// The pool's endpoints as the admin API lists them: address → attempts.
async fn endpoints(client: &TestClient, admin: SocketAddr) -> Vec<(String, u64)> {
    let backends: Value = client
        .get(&format!("http://{admin}/admin/backends"), &[])
        .await
        .json();
    let mut listed: Vec<(String, u64)> = backends["backends"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    listed.sort();
    listed
}

async fn wait_for_endpoints(
    client: &TestClient,
    admin: SocketAddr,
    want: &[SocketAddr],
) -> Vec<(String, u64)> {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    tokio::time::timeout(WAIT, async {
        loop {
            let listed = endpoints(client, admin).await;
            if listed.iter().map(|(a, _)| a).eq(want.iter()) {
                return listed;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the pool never became {want:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_dns_without_a_reload_and_those_that_stay_keep_their_state() {
    // One port on three loopback addresses, as pods behind a headless
    // Service share the target port.
    let first = sim_at("127.0.0.2", 0, "pod-a").await;
    let port = first.addr.port();
    let second = sim_at("127.0.0.3", port, "pod-b").await;
    let third = sim_at("127.0.0.4", port, "pod-c").await;
    let (a, b, c) = (first.addr, second.addr, third.addr);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cascadia.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_delay = "0s"

[[backends]]
name = "fraud-pods"
region = "us-east"
dns = "fraud.models.svc.cluster.local:{port}"
resolve_interval = "50ms"
balancer = "round-robin"

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["fraud-pods"]
"#
        ),
    )
    .unwrap();
    let dns = Arc::new(ScriptedDns::default());
    dns.answer(&[a, b]);
    let gateway = Gateway::start(
        cascadia_config::load_file(&path).unwrap(),
        GatewayOptions {
            resolver: Some(Arc::clone(&dns) as Arc<dyn Resolver>),
            ..GatewayOptions::default()
        },
    )
    .await
    .unwrap();
    let client = TestClient::new();
    let url = format!("http://{}/v2/models/fraud/infer", gateway.listen_addr);
    let admin = gateway.admin_addr;

    // Resolved before the first request: both pods answer.
    let mut responses = Vec::new();
    for _ in 0..20 {
        responses.push(client.infer(&url, &[]).await);
    }
    assert!(responses.iter().all(|r| r.status == StatusCode::OK));
    let served = tally(&responses, "x-sim-name");
    assert_eq!(
        (served.get("pod-a"), served.get("pod-b")),
        (Some(&10), Some(&10)),
        "{served:?}"
    );
    let before = endpoints(&client, admin).await;

    // b's pod goes, c's comes: no reload, and a keeps what it learned.
    dns.answer(&[a, c]);
    let after = wait_for_endpoints(&client, admin, &[a, c]).await;
    let attempts_of = |listed: &[(String, u64)], addr: SocketAddr| {
        listed
            .iter()
            .find(|(x, _)| *x == addr.to_string())
            .map(|(_, n)| *n)
    };
    assert_eq!(
        attempts_of(&after, a),
        attempts_of(&before, a),
        "a kept its state"
    );
    assert_eq!(attempts_of(&after, c), Some(0), "c starts fresh");
    let mut responses = Vec::new();
    for _ in 0..20 {
        responses.push(client.infer(&url, &[]).await);
    }
    let served = tally(&responses, "x-sim-name");
    assert_eq!(
        (served.get("pod-a"), served.get("pod-c")),
        (Some(&10), Some(&10)),
        "{served:?}"
    );
    assert_eq!(gateway.snapshot().load().version, 1, "no reload happened");

    // DNS fails: the last endpoints go on serving.
    dns.fail();
    let settled = second.control.requests();
    for _ in 0..10 {
        assert_eq!(client.infer(&url, &[]).await.status, StatusCode::OK);
    }
    assert_eq!(endpoints(&client, admin).await.len(), 2);
    assert_eq!(second.control.requests(), settled, "b is gone for good");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_resolves_a_dns_backend_with_the_system_resolver() {
    let model = crate::support::sim("fraud", "1", "us-east").await;
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-dns"
region = "us-east"
dns = "localhost:{port}"

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["fraud-dns"]
retries = {{ attempts = 2, budget_percent = 100 }}
"#,
        port = model.addr.port()
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let listed = endpoints(&client, gateway.admin).await;
    assert!(
        listed.iter().any(|(a, _)| *a == model.addr.to_string()),
        "localhost resolved to the model server: {listed:?}"
    );
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.status, StatusCode::OK);
}
