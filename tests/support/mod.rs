//! Test harness: simulated backends, a gateway process, and a small client.
//!
//! The gateway runs as the real binary (`CARGO_BIN_EXE_cascadia`). Tests
//! learn its ports from the lines it prints once bound, so nothing uses a
//! fixed port and nothing sleeps to wait for readiness.

#![allow(dead_code)]

pub mod redis;
pub mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cascadia_sim::{LatencyModel, SimConfig, SimHandle};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The content type every admin change must carry.
pub const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// A one-row OIP inference body.
pub const INFER_BODY: &str =
    r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[0.5,1.0,-0.5,2.0]}]}"#;

/// Starts a simulated model server on a free port.
pub async fn sim(name: &str, version: &str, region: &str) -> SimHandle {
    sim_with(name, version, region, LatencyModel::None).await
}

/// Starts a simulated model server with a latency model.
pub async fn sim_with(name: &str, version: &str, region: &str, latency: LatencyModel) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sim");
    sim_on(listener, name, version, region, latency).await
}

/// Starts a simulated model server (model `fraud`) on `listener`.
pub async fn sim_on(
    listener: tokio::net::TcpListener,
    name: &str,
    version: &str,
    region: &str,
    latency: LatencyModel,
) -> SimHandle {
    cascadia_sim::spawn(
        listener,
        SimConfig {
            name: name.to_owned(),
            model: "fraud".to_owned(),
            version: version.to_owned(),
            region: region.to_owned(),
            latency,
            error_rate: 0.0,
        },
    )
    .await
    .expect("start sim")
}

/// A stable/canary pair of sims and the config that routes `fraud` to them.
pub struct CanaryFixture {
    pub stable: SimHandle,
    pub canary: SimHandle,
    /// Upstream protocol of both backends.
    pub protocol: &'static str,
}

impl CanaryFixture {
    pub async fn start() -> Self {
        Self {
            stable: sim("fraud-v1", "1", "us-east").await,
            canary: sim("fraud-v2", "2", "us-east").await,
            protocol: "http1",
        }
    }

    /// Backends reached over h2c, as gRPC needs.
    pub async fn start_h2c() -> Self {
        Self {
            protocol: "h2c",
            ..Self::start().await
        }
    }

    /// A full config with the given split weights and extra `[gateway]` lines.
    pub fn config(&self, stable: u32, canary: u32) -> String {
        self.config_with(stable, canary, "")
    }

    pub fn config_with(&self, stable: u32, canary: u32, limits: &str) -> String {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[gateway.limits]
{limits}

[[backends]]
name = "fraud-v1"
region = "us-east"
protocol = "{protocol}"
endpoints = ["{stable}"]

[[backends]]
name = "fraud-v2"
region = "us-east"
protocol = "{protocol}"
endpoints = ["{canary}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
key_header = "x-user-id"

[[routes.split]]
version = "stable"
weight = {stable_weight}
backends = ["fraud-v1"]
upstream_version = "1"

[[routes.split]]
version = "canary"
weight = {canary_weight}
backends = ["fraud-v2"]
upstream_version = "2"

[[routes]]
name = "echo"
match = {{ path_prefix = "/echo" }}
backends = ["fraud-v1"]
"#,
            stable = self.stable.addr,
            canary = self.canary.addr,
            protocol = self.protocol,
            stable_weight = stable,
            canary_weight = canary,
        )
    }
}

/// A config with one backend (`name`, one endpoint at `addr`) serving model
/// `fraud`, plus `route_extra` lines in the route table (e.g. a timeout).
pub fn single_backend_config(
    name: &str,
    addr: impl std::fmt::Display,
    route_extra: &str,
) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[backends]]
name = "{name}"
region = "us-east"
endpoints = ["{addr}"]

[[routes]]
name = "fraud"
match = {{ model = "fraud" }}
backends = ["{name}"]
{route_extra}
"#
    )
}

/// `config` with `gateway.drain_delay = "0s"` unless it sets one: tests
/// that stop a gateway with SIGTERM need not wait out the 5 s default
/// meant for a load balancer (the drain tests set their own).
fn without_drain_delay(config: &str) -> String {
    if config.contains("drain_delay") || !config.contains("[gateway]\n") {
        return config.to_owned();
    }
    config.replacen("[gateway]\n", "[gateway]\ndrain_delay = \"0s\"\n", 1)
}

/// `cascadia demo` on free ports, once its walkthrough is done (it printed
/// "Press Ctrl-C"): the process, killed when dropped, and what it printed.
pub struct DemoProcess {
    pub child: Child,
    pub output: Vec<String>,
}

impl DemoProcess {
    pub async fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cascadia"))
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cascadia demo");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut output = Vec::new();
        // The walkthrough (samples, a drill, a rollout) takes several seconds.
        tokio::time::timeout(WAIT * 3, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                let done = line.starts_with("Press Ctrl-C");
                output.push(line);
                if done {
                    return;
                }
            }
            panic!("the demo exited early:\n{}", output.join("\n"));
        })
        .await
        .expect("the demo finished its walkthrough");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, output }
    }

    /// The first printed line starting with `prefix` (leading spaces
    /// ignored), without the prefix.
    pub fn after(&self, prefix: &str) -> Option<&str> {
        self.output
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
    }
}

/// A running gateway process. Killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub config_path: PathBuf,
    /// Everything the gateway logged, for [`GatewayProcess::start_logged`];
    /// otherwise its log goes to the test's stderr.
    pub log: Option<Arc<std::sync::Mutex<String>>>,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Writes `config` to a temp file and starts `cascadia run` on it.
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, &[]).await
    }

    /// Starts a gateway that also reloads when its config file changes.
    /// The others reload only when asked (admin API, SIGHUP), so a test
    /// that writes a file and then asks for a reload never races the watch.
    pub async fn start_watching(config: &str) -> Self {
        Self::start_full(config, &["--watch"], &[]).await
    }

    /// Like [`Self::start`], with extra `cascadia run` arguments.
    pub async fn start_with(config: &str, extra_args: &[&str]) -> Self {
        Self::start_full(config, extra_args, &[]).await
    }

    /// Writes `files` (name, contents) beside the config first, e.g. a
    /// cascade's model artifact.
    pub async fn start_with_files(config: &str, files: &[(&str, &str)]) -> Self {
        Self::start_full(config, &[], files).await
    }

    async fn start_full(config: &str, extra_args: &[&str], files: &[(&str, &str)]) -> Self {
        let config = &without_drain_delay(config);
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write file");
        }
        let config_path = dir.path().join("cascadia.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self::launch(dir, config_path, extra_args).await
    }

    /// [`GatewayProcess::start_with_files`], keeping what the gateway logs
    /// in `log`.
    pub async fn start_logged_with_files(config: &str, files: &[(&str, &str)]) -> Self {
        Self::start_full(config, &["--capture-log"], files).await
    }

    /// [`GatewayProcess::start`], keeping what the gateway logs in `log`.
    pub async fn start_logged(config: &str) -> Self {
        Self::start_with(config, &["--capture-log"]).await
    }

    /// Kills the gateway (SIGKILL) and starts a new process on the same
    /// config folder, so whatever it saved there is found again.
    pub async fn restart(mut self) -> Self {
        self.child.kill().await.expect("kill gateway");
        Self::launch(self._dir, self.config_path, &[]).await
    }

    async fn launch(dir: tempfile::TempDir, config_path: PathBuf, extra_args: &[&str]) -> Self {
        // `--watch` is the harness's own marker: watching is the binary's
        // default, so it is dropped; without it the harness adds --no-watch.
        let watch = extra_args.contains(&"--watch");
        // `--capture-log` is the harness's too: stderr is kept, not shown.
        let capture = extra_args.contains(&"--capture-log");
        let extra_args: Vec<&str> = extra_args
            .iter()
            .copied()
            .filter(|a| !matches!(*a, "--watch" | "--no-watch" | "--capture-log"))
            .collect();
        // The access log (a line per request) only where a test reads the
        // log: elsewhere it would bury the warnings in the test's output.
        let log = if capture {
            "warn"
        } else {
            "warn,cascadia::access=off"
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_cascadia"))
            .args(["run", "--workers", "2", "--log", log, "--config"])
            .arg(&config_path)
            .args(&extra_args)
            .args((!watch).then_some("--no-watch"))
            .stdout(Stdio::piped())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cascadia");
        let log = child.stderr.take().map(|stderr| {
            let log = Arc::new(std::sync::Mutex::new(String::new()));
            let sink = Arc::clone(&log);
            let mut lines = BufReader::new(stderr).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            log
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (addr, admin) = tokio::time::timeout(WAIT, async {
            let mut addr = None;
            let mut admin = None;
            while addr.is_none() || admin.is_none() {
                let line = lines
                    .next_line()
                    .await
                    .expect("read stdout")
                    .expect("gateway exited before it was ready");
                let data_plane = line
                    .strip_prefix("cascadia gateway listening on http://")
                    .or_else(|| line.strip_prefix("cascadia gateway listening on https://"));
                if let Some(a) = data_plane {
                    addr = Some(a.parse().expect("gateway addr"));
                } else if let Some(a) = line.strip_prefix("cascadia admin listening on http://") {
                    admin = Some(a.parse().expect("admin addr"));
                }
            }
            (addr.unwrap(), admin.unwrap())
        })
        .await
        .expect("gateway became ready");
        // Keep draining stdout so the gateway never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            addr,
            admin,
            config_path,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Rewrites the config file in place (atomically, by rename).
    pub fn write_config(&self, config: &str) {
        let config = without_drain_delay(config);
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("replace config");
    }

    /// Starts a drill (`body` is `POST /admin/drills` JSON) and returns its
    /// report once it has completed or aborted.
    pub async fn run_drill(&self, client: &TestClient, body: &str) -> serde_json::Value {
        let started = client
            .send(Method::POST, &self.admin_url("/admin/drills"), JSON, body)
            .await;
        assert_eq!(started.status, StatusCode::ACCEPTED, "{:?}", started.json());
        let id = started.json()["id"].as_u64().expect("drill id");
        tokio::time::timeout(WAIT, async {
            loop {
                let report = client
                    .get(&self.admin_url(&format!("/admin/drills/{id}")), &[])
                    .await
                    .json();
                if report["state"] == "completed" || report["state"] == "aborted" {
                    return report;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the drill finished")
    }

    /// The first shadowed route of `GET /admin/shadow`, once `mirrors`
    /// mirrors of its first version pair are accounted for (compared,
    /// failed or uncomparable).
    pub async fn shadow_report(&self, client: &TestClient, mirrors: u64) -> serde_json::Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let report = client
                    .get(&self.admin_url("/admin/shadow"), &[])
                    .await
                    .json();
                let route = report["routes"][0].clone();
                let pair = &route["pairs"][0];
                let done = ["compared", "failed", "uncomparable"]
                    .iter()
                    .map(|k| pair[k].as_u64().unwrap_or(0))
                    .sum::<u64>();
                if done >= mirrors {
                    return route;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every mirror is accounted for")
    }

    /// Asks the admin API to reload; returns the status and JSON body.
    pub async fn reload(&self, client: &TestClient) -> (StatusCode, serde_json::Value) {
        let response = client
            .send(
                Method::POST,
                &self.admin_url("/admin/config/reload"),
                JSON,
                "",
            )
            .await;
        (response.status, response.json())
    }

    /// Writes a file beside the config (e.g. a new model artifact).
    pub fn write_file(&self, name: &str, contents: &str) {
        let path = self.config_path.with_file_name(name);
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, contents).expect("write file");
        std::fs::rename(&tmp, &path).expect("replace file");
    }

    /// The config file's current text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("read config")
    }

    /// Polls `GET /admin/backends` until `done` holds (readiness for state
    /// the gateway changes on its own, such as health checks).
    pub async fn wait_for_backends(
        &self,
        client: &TestClient,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let backends = client
                    .get(&self.admin_url("/admin/backends"), &[])
                    .await
                    .json();
                if done(&backends) {
                    return backends;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("backend condition reached")
    }

    /// `POST`s to an admin path with an empty body.
    pub async fn admin_post(&self, client: &TestClient, path: &str) -> TestResponse {
        client
            .send(Method::POST, &self.admin_url(path), JSON, "")
            .await
    }

    /// `GET /admin/config`.
    pub async fn admin_config(&self, client: &TestClient) -> serde_json::Value {
        client
            .get(&self.admin_url("/admin/config"), &[])
            .await
            .json()
    }

    /// Polls `GET /admin/config` until `done` holds. The admin API is the
    /// gateway's readiness signal for reloads that the test does not drive
    /// itself (file watch, SIGHUP).
    pub async fn wait_for_config(
        &self,
        client: &TestClient,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let config = self.admin_config(client).await;
                if done(&config) {
                    return config;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("config condition reached")
    }
}

/// A finished response.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The backend that served the response (`x-cascadia-backend`).
    pub fn backend(&self) -> &str {
        self.header("x-cascadia-backend").unwrap_or("-")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A keep-alive HTTP client.
#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn http2() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.send(Method::GET, url, headers, "").await
    }

    pub async fn infer(&self, url: &str, headers: &[(&str, &str)]) -> TestResponse {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(Method::POST, url, &all, INFER_BODY).await
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> TestResponse {
        self.try_send(method, url, headers, body)
            .await
            .expect("request completes")
    }

    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<TestResponse, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(WAIT, self.inner.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Counts values of `header` over `responses`.
pub fn tally<'a>(
    responses: impl IntoIterator<Item = &'a TestResponse>,
    header: &str,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for response in responses {
        *counts
            .entry(response.header(header).unwrap_or("-").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Asserts an error response: the status, a JSON body with `error` and the
/// request id, and no internal address in it.
pub fn assert_json_error(response: &TestResponse, status: StatusCode) {
    assert_eq!(
        response.status,
        status,
        "body: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert!(body["error"].is_string(), "error message in {body}");
    let request_id = response
        .header("x-request-id")
        .expect("x-request-id on errors");
    assert_eq!(body["request_id"], request_id);
    let text = String::from_utf8_lossy(&response.body);
    assert!(!text.contains("127.0.0.1"), "address leaked: {text}");
    assert!(!text.contains("panic"), "panic text leaked: {text}");
}
