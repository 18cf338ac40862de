//! Regional failover, outlier ejection, balancing, drains and deadlines,
//! through the real gateway against sim backends in three regions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascadia_sim::{LatencyModel, SimHandle};
use http::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::{assert_json_error, sim, GatewayProcess, TestClient, WAIT};

/// Sims per region, in preference order: us-east (two endpoints), eu-west,
/// ap-south.
struct Regions {
    us_east: Vec<SimHandle>,
    eu_west: SimHandle,
    ap_south: SimHandle,
}

impl Regions {
    async fn start() -> Self {
        Self {
            us_east: vec![
                sim("us-east-a", "1", "us-east").await,
                sim("us-east-b", "1", "us-east").await,
            ],
            eu_west: sim("eu-west-a", "1", "eu-west").await,
            ap_south: sim("ap-south-a", "1", "ap-south").await,
        }
    }

    fn config(&self, backend_timeout: &str) -> String {
        self.config_with(backend_timeout, "p2c-ewma")
    }

    fn config_with(&self, backend_timeout: &str, balancer: &str) -> String {
        self.config_full(backend_timeout, balancer, "")
    }

    /// With extra keys for the route table (e.g. `hedge = {...}`).
    fn config_full(&self, backend_timeout: &str, balancer: &str, route_extra: &str) -> String {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-us-east"
region = "us-east"
endpoints = ["{a}", "{b}"]
timeout = "{backend_timeout}"
balancer = "{balancer}"

[[backends]]
name = "fraud-eu-west"
region = "eu-west"
endpoints = ["{eu}"]
timeout = "{backend_timeout}"

[[backends]]
name = "fraud-ap-south"
region = "ap-south"
endpoints = ["{ap}"]
timeout = "{backend_timeout}"

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["fraud-us-east", "fraud-eu-west", "fraud-ap-south"]
retries = {{ attempts = 3, budget_percent = 100 }}
{route_extra}
"#,
            a = self.us_east[0].addr,
            b = self.us_east[1].addr,
            eu = self.eu_west.addr,
            ap = self.ap_south.addr,
        )
    }
}

struct Served {
    at: Instant,
    status: StatusCode,
    backend: String,
    attempts: u32,
}

/// Closed-loop load from `workers` tasks until `stop` is set.
fn run_load(
    client: &TestClient,
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Served>>>, Vec<tokio::task::JoinHandle<()>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..workers)
        .map(|_| {
            let (client, url, stop, log) = (client.clone(), url.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let served = match client
                        .try_send(
                            Method::POST,
                            &url,
                            &[("content-type", "application/json")],
                            crate::support::INFER_BODY,
                        )
                        .await
                    {
                        Ok(r) => Served {
                            at: Instant::now(),
                            status: r.status,
                            backend: r.header("x-cascadia-backend").unwrap_or("-").to_owned(),
                            attempts: r
                                .header("x-cascadia-attempts")
                                .and_then(|a| a.parse().ok())
                                .unwrap_or(1),
                        },
                        Err(_) => Served {
                            at: Instant::now(),
                            status: StatusCode::IM_A_TEAPOT,
                            backend: "transport".into(),
                            attempts: 0,
                        },
                    };
                    log.lock().unwrap().push(served);
                }
            })
        })
        .collect();
    (log, tasks)
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_preferred_region_fails_over_with_no_client_failures() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&regions.config("1s")).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = run_load(
        &client,
        gateway.url("/v2/models/fraud/infer"),
        4,
        stop.clone(),
    );

    // Readiness: the preferred region is serving.
    let us_east: Vec<_> = regions.us_east.iter().map(|s| s.control.clone()).collect();
    wait_until(|| us_east.iter().map(|c| c.requests()).sum::<u64>() >= 200).await;

    // Kill the whole preferred region (connections dropped, port closed).
    let killed_at = Instant::now();
    let Regions {
        us_east: dying,
        eu_west,
        ap_south,
    } = regions;
    for sim in dying {
        sim.shutdown().await;
    }
    let eu = eu_west.control.clone();
    wait_until(|| eu.requests() >= 300).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let log = log.lock().unwrap();
    let failures: Vec<_> = log
        .iter()
        .filter(|s| s.status != StatusCode::OK)
        .map(|s| (s.status, s.backend.clone()))
        .collect();
    assert!(failures.is_empty(), "client-visible failures: {failures:?}");
    // Failover time: from the kill to the last request that still touched
    // the dead region (needed a retry or was served there).
    let last_touch = log
        .iter()
        .filter(|s| s.at >= killed_at && (s.attempts > 1 || s.backend == "fraud-us-east"))
        .map(|s| s.at)
        .max()
        .unwrap_or(killed_at);
    let failover = last_touch.duration_since(killed_at);
    println!("failover took {failover:?}");
    assert!(
        failover < Duration::from_secs(1),
        "failover took {failover:?}"
    );
    // Traffic went to the next region in order, not the last one.
    assert!(log
        .iter()
        .filter(|s| s.at > last_touch)
        .all(|s| s.backend == "fraud-eu-west"));
    assert_eq!(ap_south.control.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_region_down_gets_a_fast_503_with_retry_after() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start_logged(&regions.config("1s")).await;
    let client = TestClient::new();
    let Regions {
        us_east,
        eu_west,
        ap_south,
    } = regions;
    for sim in us_east.into_iter().chain([eu_west, ap_south]) {
        sim.shutdown().await;
    }
    // The first requests find the endpoints dead and eject them; from then
    // on the gateway answers at once without touching a backend.
    let mut saw_503 = None;
    for _ in 0..20 {
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert!(
            matches!(
                response.status,
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{:?}",
            response.status
        );
        if response.status == StatusCode::SERVICE_UNAVAILABLE {
            saw_503 = Some(response);
            break;
        }
    }
    let response = saw_503.expect("503 once every endpoint is ejected");
    assert_json_error(&response, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.header("retry-after"), Some("1"));
    // The log keeps every attempt of a request that failed them all, not
    // only the last one the client was told about.
    let log = gateway.log.clone().expect("captured");
    let log = log.lock().unwrap();
    let line = log
        .lines()
        .find(|line| line.contains("every attempt failed"))
        .unwrap_or_else(|| panic!("no attempt log: {log}"));
    assert!(line.matches(": Connect").count() >= 2, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_is_ejected_and_requests_stay_bounded_by_the_per_try_timeout() {
    let regions = Regions::start().await;
    // Round-robin, so the hung endpoint keeps being offered requests until
    // ejection removes it (latency-aware balancing would avoid it anyway).
    let gateway = GatewayProcess::start(&regions.config_with("150ms", "round-robin")).await;
    let client = TestClient::new();
    // One us-east endpoint hangs (accepts, never answers in time).
    regions.us_east[0]
        .control
        .set_latency(LatencyModel::Fixed(Duration::from_secs(30)));

    let mut attempts = Vec::new();
    for _ in 0..40 {
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&response.body)
        );
        attempts.push(
            response
                .header("x-cascadia-attempts")
                .map_or(1, |a| a.parse::<u32>().unwrap()),
        );
    }
    // Each request needed at most one retry, and after the ejection none.
    assert!(attempts.iter().all(|a| *a <= 2), "{attempts:?}");
    assert!(
        attempts[30..].iter().all(|a| *a == 1),
        "still hitting the hung endpoint: {attempts:?}"
    );
    let backends = client
        .get(&gateway.admin_url("/admin/backends"), &[])
        .await
        .json();
    let us_east = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "fraud-us-east")
        .unwrap()
        .clone();
    let hung = us_east["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == regions.us_east[0].addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(hung["ejected"], true, "{us_east}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_loses_traffic_to_a_fast_one() {
    let regions = Regions::start().await;
    regions.us_east[0]
        .control
        .set_latency(LatencyModel::Fixed(Duration::from_millis(20)));
    let gateway = GatewayProcess::start(&regions.config("1s")).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (_log, tasks) = run_load(
        &client,
        gateway.url("/v2/models/fraud/infer"),
        4,
        stop.clone(),
    );
    let (slow, fast) = (
        regions.us_east[0].control.clone(),
        regions.us_east[1].control.clone(),
    );
    wait_until(|| slow.requests() + fast.requests() >= 1000).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let share = slow.requests() as f64 / (slow.requests() + fast.requests()) as f64;
    assert!(
        share < 0.2,
        "slow endpoint still got {:.0}% of traffic",
        share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_region_moves_traffic_and_restoring_brings_it_back() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&regions.config("1s")).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");

    assert_eq!(
        client.infer(&url, &[]).await.backend().to_owned(),
        "fraud-us-east"
    );
    let drained = gateway
        .admin_post(&client, "/admin/regions/us-east/drain")
        .await;
    assert_eq!(drained.status, StatusCode::OK);
    for _ in 0..20 {
        assert_eq!(
            client.infer(&url, &[]).await.backend().to_owned(),
            "fraud-eu-west"
        );
    }
    let restored = gateway
        .admin_post(&client, "/admin/regions/us-east/restore")
        .await;
    assert_eq!(restored.status, StatusCode::OK);
    for _ in 0..20 {
        assert_eq!(
            client.infer(&url, &[]).await.backend().to_owned(),
            "fraud-us-east"
        );
    }
    let unknown = gateway
        .admin_post(&client, "/admin/regions/mars/drain")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let by_get = client
        .get(&gateway.admin_url("/admin/regions/us-east/drain"), &[])
        .await;
    assert_eq!(by_get.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remaining_deadline_goes_upstream_and_a_spent_one_is_a_504() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&regions.config("1s")).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");

    let response = client.infer(&url, &[("x-request-timeout-ms", "800")]).await;
    assert_eq!(response.status, StatusCode::OK);
    let seen: u64 = response
        .header("x-sim-saw-deadline-ms")
        .expect("deadline propagated")
        .parse()
        .unwrap();
    assert!(seen > 0 && seen <= 800, "backend saw {seen} ms");

    // A deadline shorter than the backend's latency: 504, not a hang.
    for sim in &regions.us_east {
        sim.control
            .set_latency(LatencyModel::Fixed(Duration::from_millis(500)));
    }
    let started = Instant::now();
    let response = client.infer(&url, &[("x-request-timeout-ms", "100")]).await;
    assert_json_error(&response, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_attempt_is_hedged_and_the_first_answer_wins() {
    let regions = Regions::start().await;
    for sim in &regions.us_east {
        sim.control
            .set_latency(LatencyModel::Fixed(Duration::from_millis(400)));
    }
    let hedged = r#"hedge = { floor = "20ms", cap = "20ms", budget_percent = 100 }"#;
    let gateway = GatewayProcess::start(&regions.config_full("2s", "p2c-ewma", hedged)).await;
    let client = TestClient::new();

    let started = Instant::now();
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, StatusCode::OK);
    // The preferred region was slow: the hedge to the next region answered.
    assert_eq!(response.header("x-cascadia-backend"), Some("fraud-eu-west"));
    assert_eq!(response.header("x-cascadia-attempts"), Some("2"));
    assert!(
        elapsed < Duration::from_millis(350),
        "the hedge did not win: {elapsed:?}"
    );

    // The losing attempt was cancelled, not left running: once the slow
    // backend's request is dropped, nothing is in flight at it.
    let us_east = regions
        .us_east
        .iter()
        .map(|s| s.addr.to_string())
        .collect::<Vec<_>>();
    tokio::time::timeout(WAIT, async {
        loop {
            let backends = client
                .get(&gateway.admin_url("/admin/backends"), &[])
                .await
                .json();
            let in_flight: u64 = backends["backends"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|b| b["endpoints"].as_array().unwrap().clone())
                .filter(|e| us_east.contains(&e["address"].as_str().unwrap().to_owned()))
                .map(|e| e["in_flight"].as_u64().unwrap())
                .sum();
            if in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the losing attempt was cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hedging_a_slow_backend_is_waited_for() {
    let regions = Regions::start().await;
    for sim in &regions.us_east {
        sim.control
            .set_latency(LatencyModel::Fixed(Duration::from_millis(100)));
    }
    let gateway = GatewayProcess::start(&regions.config("2s")).await;
    let client = TestClient::new();
    let response = client
        .infer(&gateway.url("/v2/models/fraud/infer"), &[])
        .await;
    assert_eq!(response.header("x-cascadia-backend"), Some("fraud-us-east"));
    assert!(response.header("x-cascadia-attempts").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_back_waits_for_the_hold_down_and_does_not_flap() {
    let us_east = sim("us-east-a", "1", "us-east").await;
    let eu_west = sim("eu-west-a", "1", "eu-west").await;
    let us_addr = us_east.addr;
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "fraud-us-east"
region = "us-east"
endpoints = ["{us_addr}"]
hold_down = "1s"
outlier = {{ base_ejection = "200ms" }}

[[backends]]
name = "fraud-eu-west"
region = "eu-west"
endpoints = ["{eu}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["fraud-us-east", "fraud-eu-west"]
retries = {{ attempts = 3, budget_percent = 100 }}
"#,
        eu = eu_west.addr
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    assert_eq!(
        client.infer(&url, &[]).await.backend().to_owned(),
        "fraud-us-east"
    );

    // The preferred region dies; traffic fails over.
    us_east.shutdown().await;
    for _ in 0..5 {
        assert_eq!(
            client.infer(&url, &[]).await.backend().to_owned(),
            "fraud-eu-west"
        );
    }
    // It comes back on the same address.
    let listener = tokio::net::TcpListener::bind(us_addr)
        .await
        .expect("rebind the old port");
    let _revived = cascadia_sim::spawn(
        listener,
        cascadia_sim::SimConfig {
            name: "us-east-a".into(),
            model: "fraud".into(),
            version: "1".into(),
            region: "us-east".into(),
            latency: LatencyModel::None,
            error_rate: 0.0,
        },
    )
    .await
    .unwrap();
    let revived_at = Instant::now();

    // Traffic stays in eu-west through the hold-down, then returns for good.
    let mut served = Vec::new();
    let returned_at = tokio::time::timeout(WAIT, async {
        loop {
            let b = client.infer(&url, &[]).await.backend().to_owned();
            served.push(b.clone());
            if b == "fraud-us-east" {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("traffic returned to the preferred region");
    let waited = returned_at.duration_since(revived_at);
    assert!(
        waited >= Duration::from_millis(900),
        "failed back after only {waited:?}"
    );
    for _ in 0..50 {
        assert_eq!(
            client.infer(&url, &[]).await.backend().to_owned(),
            "fraud-us-east",
            "flapped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_breaks_the_latency_slo_loses_traffic_to_a_faster_one() {
    let regions = Regions::start().await;
    for sim in &regions.us_east {
        sim.control
            .set_latency(LatencyModel::Fixed(Duration::from_millis(80)));
    }
    // Wide margins both ways: a loaded CI machine can add milliseconds to
    // the fast region too.
    let slo = r#"latency_slo = "25ms""#;
    let gateway = GatewayProcess::start(&regions.config_full("2s", "p2c-ewma", slo)).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = run_load(
        &client,
        gateway.url("/v2/models/fraud/infer"),
        4,
        stop.clone(),
    );
    let eu = regions.eu_west.control.clone();
    wait_until(|| eu.requests() >= 600).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert!(log.iter().all(|s| s.status == StatusCode::OK));
    // Once the slow region has a p95 on record, it keeps only a trickle.
    let settled = &log[log.len() / 2..];
    let slow = settled
        .iter()
        .filter(|s| s.backend == "fraud-us-east")
        .count();
    let share = slow as f64 / settled.len() as f64;
    assert!(
        share < 0.15,
        "slow region kept {:.0}% of traffic",
        share * 100.0
    );
    assert!(
        slow > 0,
        "the slow region still gets a trickle so it can recover"
    );
    assert_eq!(regions.ap_south.control.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_active_health_check_moves_traffic_before_any_request_fails() {
    let regions = Regions::start().await;
    // us-east's check probes a model the sims do not serve: 404, unhealthy.
    let config = regions.config("1s").replacen(
        r#"balancer = "p2c-ewma""#,
        r#"balancer = "p2c-ewma"
health_check = { path = "/v2/models/not-served/ready", interval = "50ms", timeout = "40ms", fall = 1 }"#,
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    // Readiness: the admin API reports both us-east endpoints unhealthy.
    gateway
        .wait_for_backends(&client, |backends| {
            backends["backends"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["name"] == "fraud-us-east")
                .flat_map(|b| b["endpoints"].as_array().unwrap().clone())
                .all(|e| e["check_healthy"] == false)
        })
        .await;
    for _ in 0..20 {
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.backend(), "fraud-eu-west");
        assert!(
            response.header("x-cascadia-attempts").is_none(),
            "no request needed a retry"
        );
    }
    assert_eq!(
        regions
            .us_east
            .iter()
            .map(|s| s.control.infer_requests())
            .sum::<u64>(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_state_survives_a_reload() {
    let regions = Regions::start().await;
    // Ejections that outlast the test: with the default 1 s, a loaded
    // machine could let the first one end before it is looked at, and the
    // test would be about timing, not the reload.
    let config = regions.config("1s").replacen(
        "region = \"us-east\"\n",
        "region = \"us-east\"\noutlier = { base_ejection = \"60s\", max_ejection = \"120s\" }\n",
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let Regions {
        us_east,
        eu_west: _eu,
        ap_south: _ap,
    } = regions;
    let dead: Vec<String> = us_east.iter().map(|s| s.addr.to_string()).collect();
    for sim in us_east {
        sim.shutdown().await;
    }
    // Enough traffic to eject both dead endpoints.
    for _ in 0..10 {
        assert_eq!(
            client
                .infer(&gateway.url("/v2/models/fraud/infer"), &[])
                .await
                .status,
            StatusCode::OK
        );
    }
    let ejected = |backends: &serde_json::Value| {
        backends["backends"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["endpoints"].as_array().unwrap().clone())
            .filter(|e| dead.contains(&e["address"].as_str().unwrap().to_owned()))
            .all(|e| e["ejected"] == true)
    };
    assert!(ejected(
        &client
            .get(&gateway.admin_url("/admin/backends"), &[])
            .await
            .json()
    ));

    // A reload that changes the route but keeps the endpoints keeps their state.
    let changed = gateway
        .config_text()
        .replace("budget_percent = 100", "budget_percent = 50");
    gateway.write_config(&changed);
    let (status, body) = gateway.reload(&client).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "applied");
    assert!(
        ejected(
            &client
                .get(&gateway.admin_url("/admin/backends"), &[])
                .await
                .json()
        ),
        "ejections were forgotten by the reload"
    );
}

/// A drill run against us-east while closed-loop load runs.
struct DrillRun {
    report: Value,
    id: u64,
    /// Client requests that did not get a 200.
    failures: usize,
    gateway: GatewayProcess,
    client: TestClient,
    _regions: Regions,
}

/// Starts the regions with short ejections and hold-down (so fail-back is
/// quick), warms us-east with `warm` requests, runs the drill `body` and
/// returns its finished report.
async fn drill_under_load(hold_down: &str, base_ejection: &str, warm: u64, body: &str) -> DrillRun {
    let regions = Regions::start().await;
    let config = regions.config("1s").replacen(
        r#"balancer = "p2c-ewma""#,
        &format!("balancer = \"p2c-ewma\"\nhold_down = \"{hold_down}\"\noutlier = {{ base_ejection = \"{base_ejection}\" }}"),
        1,
    );
    let gateway = GatewayProcess::start(&config).await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = run_load(
        &client,
        gateway.url("/v2/models/fraud/infer"),
        4,
        stop.clone(),
    );
    let us_east: Vec<_> = regions.us_east.iter().map(|s| s.control.clone()).collect();
    wait_until(|| us_east.iter().map(|c| c.requests()).sum::<u64>() >= warm).await;

    let report = gateway.run_drill(&client, body).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let failures = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.status != StatusCode::OK)
        .count();
    DrillRun {
        id: report["id"].as_u64().expect("drill id"),
        report,
        failures,
        gateway,
        client,
        _regions: regions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_drill_fails_over_reports_and_fails_back() {
    let run = drill_under_load(
        "300ms",
        "200ms",
        100,
        r#"{"region": "us-east", "fault": "blackhole", "duration_s": 1.0}"#,
    )
    .await;
    let report = &run.report;
    println!("drill report: {report}");
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["requests"].as_u64().unwrap() > 0);
    assert!(report["detect_ms"].as_u64().is_some(), "{report}");
    assert!(report["failover_ms"].as_u64().unwrap() < 1000, "{report}");
    assert!(report["failback_ms"].as_u64().is_some(), "{report}");
    // Fail-back sticks: the region keeps its traffic and settles.
    assert_eq!(report["flaps"], 0, "{report}");
    let steady = report["steady_ms"].as_u64().expect("steady state reached");
    assert!(
        steady >= report["failback_ms"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(report["region"], "us-east");
    assert_eq!(run.failures, 0, "no client saw the drill");
    let regions = run
        .client
        .get(&run.gateway.admin_url("/admin/regions"), &[])
        .await
        .json();
    let us_east = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "us-east")
        .expect("us-east listed");
    assert!(us_east["drill_fault"].is_null(), "the fault was reverted");
    assert!(us_east["attempts"].as_u64().unwrap() > 0);
    let listed = run
        .client
        .get(&run.gateway.admin_url("/admin/drills"), &[])
        .await
        .json();
    assert_eq!(listed["drills"][0]["id"], run.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_command_runs_a_drill_and_prints_the_report() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&regions.config("1s")).await;
    let client = TestClient::new();
    // Traffic keeps flowing so the region serves again right after the revert.
    let stop = Arc::new(AtomicBool::new(false));
    let (_log, tasks) = run_load(
        &client,
        gateway.url("/v2/models/fraud/infer"),
        2,
        stop.clone(),
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cascadia"))
        .args([
            "drill",
            "--region",
            "us-east",
            "--fault",
            "latency",
            "--latency-ms",
            "5",
            "--for",
            "300ms",
            "--admin",
        ])
        .arg(gateway.admin_url(""))
        .output()
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["state"], "completed");
    assert_eq!(report["fault"], "latency 5ms");
    let bad = client
        .send(
            Method::POST,
            &gateway.admin_url("/admin/drills"),
            crate::support::JSON,
            r#"{"region":"us-east","fault":"meteor","duration_s":1}"#,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = client
        .send(
            Method::POST,
            &gateway.admin_url("/admin/drills"),
            crate::support::JSON,
            r#"{"region":"mars","fault":"blackhole","duration_s":1}"#,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_drill_under_load_is_absorbed_by_retries_and_reported() {
    let run = drill_under_load(
        "200ms",
        "100ms",
        50,
        r#"{"region": "us-east", "fault": "errors", "error_rate": 0.5, "duration_s": 0.5}"#,
    )
    .await;
    let report = &run.report;
    assert_eq!(report["state"], "completed", "{report}");
    assert_eq!(report["fault"], "errors 50.0%");
    assert_eq!(
        report["errors"], 0,
        "retries absorbed the injected errors: {report}"
    );
    assert_eq!(run.failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_whose_p99_passes_the_limit_is_aborted_early() {
    let run = drill_under_load(
        "200ms",
        "100ms",
        50,
        r#"{"region": "us-east", "fault": "latency", "latency_ms": 300, "duration_s": 10, "abort_p99_ms": 50}"#,
    )
    .await;
    let report = &run.report;
    assert_eq!(report["state"], "aborted", "{report}");
    let reason = report["abort_reason"].as_str().unwrap();
    assert!(reason.starts_with("p99"), "{report}");
    // Aborted well before the 10 s the drill asked for.
    assert!(report["requests"].as_u64().unwrap() >= 20, "{report}");
}

/// A request the model server fails with a 500 every time (MLServer's
/// "Expected 2D array"): `sim_poison` makes the sim do that.
const POISON: &str = r#"{"parameters":{"sim_poison":true},"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;

/// Sends [`POISON`] `times`, each answered with the server's own 500.
async fn send_poison(client: &TestClient, url: &str, times: usize) {
    let headers = [("content-type", "application/json")];
    for _ in 0..times {
        let response = client.send(Method::POST, url, &headers, POISON).await;
        assert_eq!(
            response.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server's own answer"
        );
    }
}

/// How many endpoints `/admin/backends` shows ejected.
async fn ejected_endpoints(client: &TestClient, gateway: &GatewayProcess) -> usize {
    let backends = client
        .get(&gateway.admin_url("/admin/backends"), &[])
        .await
        .json();
    backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["endpoints"].as_array().unwrap().clone())
        .filter(|e| e["ejected"] == true)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_death_fails_itself_and_ejects_nothing() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&regions.config("2s")).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    // A client repeating its malformed request, far past the ejection
    // threshold of 3.
    send_poison(&client, &url, 12).await;
    assert_eq!(ejected_endpoints(&client, &gateway).await, 0);
    // Everyone else is served by the preferred region as before.
    for _ in 0..20 {
        let response = client.infer(&url, &[]).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.backend(), "fraud-us-east");
    }
    let calls: u64 = regions
        .us_east
        .iter()
        .chain([&regions.eu_west, &regions.ap_south])
        .map(|s| s.control.infer_requests())
        .sum();
    assert_eq!(calls, 12 + 20, "a 500 is not retried elsewhere");
}

/// `failure_statuses = "5xx"`: a 500 counts against the endpoint and is
/// retried elsewhere.
fn five_xx_config(regions: &Regions) -> String {
    let config = regions.config("2s").replace(
        "timeout = \"2s\"\n",
        "timeout = \"2s\"\noutlier = { failure_statuses = \"5xx\" }\n",
    );
    assert_eq!(config.matches("failure_statuses").count(), 3);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_5xx_ejects_when_the_outlier_policy_says_so() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&five_xx_config(&regions)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    // One endpoint fails everything it gets; the others are fine.
    regions.us_east[0].control.set_error_rate(1.0);
    for _ in 0..30 {
        let response = client.infer(&url, &[]).await;
        assert_eq!(response.status, StatusCode::OK, "retried elsewhere");
    }
    let backends = client
        .get(&gateway.admin_url("/admin/backends"), &[])
        .await
        .json();
    let failing = regions.us_east[0].addr.to_string();
    let ejected: Vec<_> = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["endpoints"].as_array().unwrap().clone())
        .filter(|e| e["ejected"] == true)
        .map(|e| e["address"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ejected, [failing], "{backends}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_that_repeats_on_a_second_endpoint_is_the_requests_and_ejects_nothing() {
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&five_xx_config(&regions)).await;
    let client = TestClient::new();
    let url = gateway.url("/v2/models/fraud/infer");
    send_poison(&client, &url, 12).await;
    assert_eq!(ejected_endpoints(&client, &gateway).await, 0);
    let calls: u64 = regions
        .us_east
        .iter()
        .chain([&regions.eu_west, &regions.ap_south])
        .map(|s| s.control.infer_requests())
        .sum();
    assert_eq!(
        calls,
        12 * 2,
        "tried twice, then recognised as the request's"
    );
    let metrics = client.get(&gateway.admin_url("/metrics"), &[]).await.body;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("cascadia_request_faults_total{route=\"fraud\"} 12"),
        "{metrics}"
    );
    for _ in 0..20 {
        let response = client.infer(&url, &[]).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.backend(), "fraud-us-east");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_body_is_a_408_and_ejects_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let regions = Regions::start().await;
    let gateway = GatewayProcess::start(&regions.config("300ms")).await;
    let client = TestClient::new();
    // A chunked upload that pauses longer than the backend timeout, more
    // times than it takes to eject an endpoint (3).
    for _ in 0..5 {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let head = "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"a\r\n{\"inputs\":\r\n").await.unwrap();
        // The slowness under test, not a synchronization.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 1024];
            while !response.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    }
    assert_eq!(ejected_endpoints(&client, &gateway).await, 0);
    for _ in 0..10 {
        let response = client
            .infer(&gateway.url("/v2/models/fraud/infer"), &[])
            .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.backend(), "fraud-us-east", "no failover either");
    }
}
