//! `cascadia demo`: the whole system in one process. Four simulated model
//! servers (stable and canary versions of a `fraud` model, in `us-east` and
//! `eu-west`) run behind the gateway with the config from
//! `config/examples/demo.toml`, pointed at their real ports.
//!
//! The demo writes that config to a temporary folder (removed when the demo
//! stops) and serves it like `cascadia run` does, so editing the file (say,
//! the canary weight) reloads the gateway live. After its samples it walks
//! through a failover drill and a canary rollout that rolls back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use cascadia_sim::{LatencyModel, SimConfig, SimHandle};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::server::{announce, wait_for_shutdown_signal};
use crate::server::{Gateway, GatewayOptions};

/// The demo's config, with placeholder endpoints the demo replaces.
const DEMO_CONFIG: &str = include_str!("../../config/examples/demo.toml");
/// The cascade route's stage-1 model, written beside the config.
const DEMO_MODEL: (&str, &str) = (
    "phishing-lr.json",
    include_str!("../../config/examples/phishing-lr.json"),
);

/// The simulated servers: (placeholder endpoint in demo.toml, backend name,
/// region, model version, latency p50 and p99 in ms).
const DEMO_BACKENDS: [(&str, &str, &str, &str, u64, u64); 4] = [
    ("127.0.0.1:18101", "fraud-v1-us-east", "us-east", "1", 3, 12),
    ("127.0.0.1:18102", "fraud-v1-eu-west", "eu-west", "1", 5, 20),
    ("127.0.0.1:18103", "fraud-v2-us-east", "us-east", "2", 2, 9),
    ("127.0.0.1:18104", "fraud-v2-eu-west", "eu-west", "2", 4, 15),
];

/// A sample OIP request: one row of eight features.
const SAMPLE_BODY: &str = r#"{"inputs":[{"name":"features","shape":[1,8],"datatype":"FP32","data":[0.3,1.2,0.0,4.1,0.7,2.2,0.9,1.5]}]}"#;

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr, admin_listen: SocketAddr, sample_requests: u32) -> ExitCode {
    match run_inner(listen, admin_listen, sample_requests).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            if error.contains("in use") {
                eprintln!("hint: pick free ports, e.g. `cascadia demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    sample_requests: u32,
) -> Result<(), String> {
    let mut sims: Vec<SimHandle> = Vec::new();
    let mut config_text = DEMO_CONFIG.to_owned();
    for (placeholder, name, region, version, p50, p99) in DEMO_BACKENDS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start a simulated backend: {e}"))?;
        let sim = cascadia_sim::spawn(
            listener,
            SimConfig {
                name: name.to_owned(),
                model: "fraud".to_owned(),
                version: version.to_owned(),
                region: region.to_owned(),
                latency: LatencyModel::LogNormal {
                    p50: Duration::from_millis(p50),
                    p99: Duration::from_millis(p99),
                },
                error_rate: 0.0,
            },
        )
        .await
        .map_err(|e| format!("cannot start a simulated backend: {e}"))?;
        config_text = config_text.replace(placeholder, &sim.addr.to_string());
        sims.push(sim);
    }

    let demo_dir = DemoDir::create()?;
    let config_path = demo_dir.write_config(&config_text)?;
    let loaded =
        cascadia_config::load_file(&config_path).map_err(|e| format!("demo config: {e}"))?;
    let gateway = Gateway::start(
        loaded,
        GatewayOptions {
            listen: Some(listen),
            admin_listen: Some(admin_listen),
            watch_config: true,
            resolver: None,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    announce(&gateway);

    let base = format!("http://{}", gateway.listen_addr);
    println!();
    println!("Cascadia demo: model \"fraud\" with stable (90%) and canary (10%) versions,");
    println!("each served by simulated backends in us-east and eu-west.");
    println!();
    println!("  gateway  {base}");
    println!("  admin    http://{}/admin/config", gateway.admin_addr);
    println!(
        "  config   {}  (edit it: the gateway reloads live)",
        config_path.display()
    );
    println!();
    println!("Try an inference request (same user, same version every time):");
    println!();
    println!("  curl -si {base}/v2/models/fraud/infer \\");
    println!("    -H 'content-type: application/json' -H 'x-user-id: alice' \\");
    println!("    -d '{SAMPLE_BODY}'");
    println!();
    println!("Force the canary with -H 'x-cascadia-version: canary'.");
    println!();
    println!("The \"phishing\" model is a cascade: a logistic screen in the gateway answers");
    println!("confident requests (x-cascadia-stage: local) and escalates the rest:");
    println!();
    println!("  curl -si {base}/v2/models/phishing/infer \\");
    println!("    -H 'content-type: application/json' \\");
    println!("    -d '{SAMPLE_BODY}'");

    if sample_requests > 0 {
        println!();
        match send_samples(&base, sample_requests).await {
            Ok(tally) => {
                println!("Sent {sample_requests} sample requests from distinct users; served by:");
                for ((version, backend), count) in tally {
                    let share = 100.0 * f64::from(count) / f64::from(sample_requests);
                    println!("  {version:<8} {backend:<18} {count:>5}  ({share:.1}%)");
                }
            }
            Err(error) => println!("sample requests failed: {error}"),
        }
        match send_cascade_samples(&base, sample_requests).await {
            Ok(tally) => {
                println!();
                println!(
                    "Sent {sample_requests} requests with random features to the phishing cascade:"
                );
                for (stage, count) in tally {
                    let share = 100.0 * f64::from(count) / f64::from(sample_requests);
                    println!("  {stage:<10} {count:>5}  ({share:.1}%)");
                }
            }
            Err(error) => println!("cascade sample requests failed: {error}"),
        }
        match shadow_summary(gateway.admin_addr).await {
            Ok(line) => {
                println!();
                println!("{line}");
            }
            Err(error) => println!("shadow summary unavailable: {error}"),
        }
        let admin = format!("http://{}", gateway.admin_addr);
        println!();
        match failover_drill(&base, &admin).await {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(error) => println!("failover drill failed: {error}"),
        }
        println!();
        match canary_rollback(&base, &admin, &config_path, &config_text, &sims[2..]).await {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(error) => println!("canary rollout failed: {error}"),
        }
    }
    println!();
    println!("Press Ctrl-C to stop.");

    wait_for_shutdown_signal().await;
    gateway.shutdown().await;
    drop(sims);
    // `demo_dir` goes last, with everything the gateway wrote into it.
    drop(demo_dir);
    Ok(())
}

/// The demo's folder: the config, the stage-1 model, and whatever the
/// gateway writes beside them (a rollout's state). Removed when dropped,
/// on every way out of the demo.
struct DemoDir(PathBuf);

impl DemoDir {
    fn create() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("cascadia-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }

    fn write_config(&self, text: &str) -> Result<PathBuf, String> {
        let path = self.0.join("demo.toml");
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let model = self.0.join(DEMO_MODEL.0);
        std::fs::write(&model, DEMO_MODEL.1)
            .map_err(|e| format!("cannot write {}: {e}", model.display()))?;
        Ok(path)
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Background requests to the fraud route from many users until dropped;
/// counts answers and failures.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Traffic {
    fn start(base: &str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = format!("{base}/v2/models/fraud/infer");
        let stopping = std::sync::Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let (mut served, mut failed) = (0u64, 0u64);
            let mut user = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                user += 1;
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(&url)
                    .header("content-type", "application/json")
                    .header("x-user-id", format!("walk-{user}"))
                    .body(Full::new(Bytes::from_static(SAMPLE_BODY.as_bytes())));
                let Ok(request) = request else { break };
                match client.request(request).await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.into_body().collect().await;
                        served += 1;
                    }
                    _ => failed += 1,
                }
            }
            (served, failed)
        });
        Self { stop, task }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or((0, 0))
    }
}

/// A two-second blackhole drill on us-east under traffic: how fast the
/// gateway noticed, failed over to eu-west and came back.
async fn failover_drill(base: &str, admin: &str) -> Result<Vec<String>, String> {
    let traffic = Traffic::start(base);
    let started = crate::admin::call(
        admin,
        Method::POST,
        "/admin/drills".to_owned(),
        Bytes::from_static(
            r#"{"region": "us-east", "fault": "blackhole", "duration_s": 2}"#.as_bytes(),
        ),
        None,
    )
    .await?;
    let id = started["id"].as_u64().ok_or("no drill id")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let report = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = crate::admin::call(
            admin,
            Method::GET,
            format!("/admin/drills/{id}"),
            Bytes::new(),
            None,
        )
        .await?;
        // Fail-back is seen once us-east serves again; steady state after.
        let back = report["failback_ms"].is_u64() || report["state"] == "completed";
        if back || tokio::time::Instant::now() > deadline {
            break report;
        }
    };
    let (served, failed) = traffic.stop().await;
    let ms = |key: &str| {
        report[key]
            .as_u64()
            .map_or("not seen".to_owned(), |v| format!("{v} ms"))
    };
    Ok(vec![
        "Failover drill: us-east blackholed for 2 s under traffic (POST /admin/drills):".to_owned(),
        format!(
            "  detected in {}, failed over to eu-west in {}, failed back in {} after the revert",
            ms("detect_ms"),
            ms("failover_ms"),
            ms("failback_ms")
        ),
        format!(
            "  {served} requests answered, {failed} failed (`cascadia drill` runs the same from the shell)"
        ),
    ])
}

/// A canary rollout whose canary turns slow: the plan starts through a
/// config edit (hot reload), the gateway rolls it back on its own, and the
/// original config comes back.
async fn canary_rollback(
    base: &str,
    admin: &str,
    config_path: &std::path::Path,
    config_text: &str,
    canaries: &[SimHandle],
) -> Result<Vec<String>, String> {
    const PLAN: &str = "[routes.rollout]\ncanary = \"canary\"\nsteps = [10, 50, 100]\n\
        min_dwell = \"2s\"\nmin_requests = 20\ninterval = \"200ms\"\n\n";
    let with_plan = config_text.replacen("[routes.shadow]", &format!("{PLAN}[routes.shadow]"), 1);
    if with_plan == config_text {
        return Err("the demo config has no place for a rollout".to_owned());
    }
    let usual: Vec<LatencyModel> = canaries.iter().map(|c| c.control.latency()).collect();
    for canary in canaries {
        canary
            .control
            .set_latency(LatencyModel::Fixed(Duration::from_millis(40)));
    }
    let traffic = Traffic::start(base);
    std::fs::write(config_path, &with_plan).map_err(|e| e.to_string())?;
    crate::admin::call(
        admin,
        Method::POST,
        "/admin/config/reload".to_owned(),
        Bytes::new(),
        None,
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let plan = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = crate::admin::call(
            admin,
            Method::GET,
            "/admin/rollouts".to_owned(),
            Bytes::new(),
            None,
        )
        .await?;
        let plan = status["rollouts"]
            .as_array()
            .and_then(|all| all.iter().find(|r| r["route"] == "fraud"))
            .cloned()
            .unwrap_or_default();
        if plan["status"] == "rolled_back" || tokio::time::Instant::now() > deadline {
            break plan;
        }
    };
    let (served, failed) = traffic.stop().await;
    for (canary, latency) in canaries.iter().zip(usual) {
        canary.control.set_latency(latency);
    }
    // Back to the file as it was: the plan ends, the 90/10 split returns.
    std::fs::write(config_path, config_text).map_err(|e| e.to_string())?;
    crate::admin::call(
        admin,
        Method::POST,
        "/admin/config/reload".to_owned(),
        Bytes::new(),
        None,
    )
    .await?;
    Ok(vec![
        "Canary rollout: a [routes.rollout] plan added by a config edit, with the canary made 40 ms slow:".to_owned(),
        format!(
            "  {} at weight {}: {}",
            plan["status"].as_str().unwrap_or("unknown"),
            plan["weight"],
            plan["last_decision"]["reason"].as_str().unwrap_or("no decision")
        ),
        format!("  {served} requests answered, {failed} failed; the original config is back"),
    ])
}

/// One line on the fraud route's shadow comparison, read from the admin API
/// once the mirrors in flight have finished (or after two seconds).
async fn shadow_summary(admin: std::net::SocketAddr) -> Result<String, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let response = client
            .get(
                format!("http://{admin}/admin/shadow")
                    .parse()
                    .map_err(|_| "bad address")?,
            )
            .await
            .map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let report: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let route = &report["routes"][0];
        if route["in_flight"] == 0 || tokio::time::Instant::now() > deadline {
            let pairs = route["pairs"].as_array().cloned().unwrap_or_default();
            let compared: u64 = pairs.iter().filter_map(|p| p["compared"].as_u64()).sum();
            let agreement = pairs
                .iter()
                .filter_map(|p| p["class_agreement"].as_f64())
                .fold(None, |acc: Option<f64>, a| {
                    Some(acc.map_or(a, |b| b.min(a)))
                });
            return Ok(format!(
                "Shadow: {compared} of the fraud requests were mirrored to {} and compared; \
                 class agreement {} (GET /admin/shadow has the rest).",
                route["candidate"].as_str().unwrap_or("the candidate"),
                agreement.map_or("n/a".to_owned(), |a| format!("{:.1}%", 100.0 * a)),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends `count` single-row requests with random features to the cascade
/// route and counts who answered (`x-cascadia-stage`).
async fn send_cascade_samples(base: &str, count: u32) -> Result<BTreeMap<String, u32>, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tally = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..count {
        let features: Vec<f64> = (0..8).map(|_| rng.f64() * 3.0).collect();
        let body = serde_json::json!({
            "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP64", "data": features}]
        });
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{base}/v2/models/phishing/infer"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let stage = response
            .headers()
            .get("x-cascadia-stage")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let _ = response.into_body().collect().await;
        *tally.entry(stage).or_insert(0) += 1;
    }
    Ok(tally)
}

/// Sends `count` requests with distinct user ids and counts which version
/// and backend answered.
async fn send_samples(base: &str, count: u32) -> Result<BTreeMap<(String, String), u32>, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tally = BTreeMap::new();
    for user in 0..count {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{base}/v2/models/fraud/infer"))
            .header("content-type", "application/json")
            .header("x-user-id", format!("user-{user}"))
            .body(Full::new(Bytes::from_static(SAMPLE_BODY.as_bytes())))
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let key = (header("x-cascadia-version"), header("x-cascadia-backend"));
        let _ = response.into_body().collect().await;
        *tally.entry(key).or_insert(0) += 1;
    }
    Ok(tally)
}
