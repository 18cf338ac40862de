//! Process lifecycle: graceful shutdown drains in-flight requests.

use std::time::Duration;

use http::StatusCode;

use crate::support::{sim_with, single_backend_config, GatewayProcess, TestClient, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let slow = sim_with(
        "slow",
        "1",
        "us-east",
        cascadia_sim::LatencyModel::Fixed(Duration::from_millis(500)),
    )
    .await;
    let config = single_backend_config("slow", slow.addr, "");
    let mut gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.infer(&url, &[]).await }
    });

    // Readiness signal: the backend has the request.
    tokio::time::timeout(WAIT, async {
        while slow.control.requests() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("request reached the backend");

    let pid = gateway.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    let response = in_flight.await.unwrap();
    assert_eq!(
        response.status,
        StatusCode::OK,
        "in-flight request finished"
    );
    let status = tokio::time::timeout(WAIT, gateway.child.wait())
        .await
        .expect("gateway exits after draining")
        .unwrap();
    assert!(status.success(), "clean exit: {status}");
    assert!(
        tokio::net::TcpStream::connect(gateway.addr).await.is_err(),
        "no longer accepting"
    );
}
