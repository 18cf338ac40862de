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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_readiness_fails_at_once_and_serving_goes_on_for_the_drain_delay() {
    let backend = crate::support::sim("b", "1", "us-east").await;
    let config = single_backend_config("b", backend.addr, "").replacen(
        "[gateway]\n",
        "[gateway]\ndrain_delay = \"1500ms\"\n",
        1,
    );
    let mut leaving = GatewayProcess::start(&config).await;
    let staying = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let ready = |gateway: &GatewayProcess| gateway.url("/v2/health/ready");
    assert_eq!(
        client.get(&ready(&leaving), &[]).await.status,
        StatusCode::OK
    );

    // A client that follows readiness, as a load balancer does: it sends
    // to `leaving` while that is ready, then to `staying`. Every request
    // must be answered: no refused connection across the replacement.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        let (leaving_ready, leaving_url) = (ready(&leaving), leaving.url("/v2/models/fraud/infer"));
        let staying_url = staying.url("/v2/models/fraud/infer");
        async move {
            let (mut sent, mut failed, mut to_leaving) = (0u64, 0u64, 0u64);
            let mut use_leaving = true;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if use_leaving {
                    match client
                        .try_send(http::Method::GET, &leaving_ready, &[], "")
                        .await
                    {
                        Ok(r) if r.status == StatusCode::OK => {}
                        _ => use_leaving = false,
                    }
                }
                let url = if use_leaving {
                    &leaving_url
                } else {
                    &staying_url
                };
                sent += 1;
                if use_leaving {
                    to_leaving += 1;
                }
                match client
                    .try_send(http::Method::POST, url, crate::support::JSON, BODY)
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => {}
                    _ => failed += 1,
                }
            }
            (sent, failed, to_leaving)
        }
    });
    tokio::time::timeout(WAIT, async {
        while backend.control.requests() < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("traffic flows");

    let pid = leaving.child.id().unwrap().to_string();
    let signalled = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Readiness fails at once, while requests are still served.
    tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match client
                .try_send(http::Method::GET, &ready(&leaving), &[], "")
                .await
            {
                Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("readiness failed within 500 ms of SIGTERM");
    let served = client
        .infer(&leaving.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(
        served.status,
        StatusCode::OK,
        "still serving while draining"
    );
    let live = client.get(&leaving.url("/v2/health/live"), &[]).await;
    assert_eq!(live.status, StatusCode::OK, "still live");

    let status = tokio::time::timeout(WAIT, leaving.child.wait())
        .await
        .expect("the gateway exits after the drain delay")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "served for the whole drain delay: exited after {:?}",
        signalled.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed, to_leaving) = follower.await.unwrap();
    assert!(
        to_leaving > 0 && sent > to_leaving,
        "{to_leaving} of {sent}"
    );
    assert_eq!(failed, 0, "no request of {sent} failed or was refused");
}

const BODY: &str = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[0.1,0.2]}]}"#;
