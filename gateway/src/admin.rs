//! The admin API, on its own listener: the serving config's version, hash
//! and last reload error, a reload trigger, and the backend pools.
//!
//! | Method | Path | Does |
//! |---|---|---|
//! | GET | `/admin/config` | version, hash, source, reload counters, last error |
//! | POST | `/admin/config/reload` | reloads now; 200 with the outcome, 422 with every error |
//! | GET | `/metrics` | Prometheus text format (see [`crate::metrics`]) |
//! | GET | `/admin/cascade` | per cascade route: stage-1 model, thresholds, row and audit counters |
//! | GET | `/admin/backends` | pools, regions, endpoints: health, EWMA latency, in-flight, ejection |
//! | POST | `/admin/drills` | starts a failover drill (see [`crate::drills`]); 202 with its id |
//! | GET | `/admin/drills`, `/admin/drills/{id}` | drill reports |
//! | GET | `/admin/rollouts` | rollout plans: step, weight, status, the open window's numbers, decisions |
//! | POST | `/admin/rollouts/{route}/{pause,resume,promote,abort}` | steers a rollout |
//! | GET | `/admin/shadow` | shadow traffic: class agreement, score difference, latency per version pair |
//! | GET | `/admin/openapi.json` | this table as OpenAPI 3.1, with every answer's schema |
//! | GET | `/admin/regions` | per region: drained, drill fault, available endpoints, attempts |
//! | POST | `/admin/regions/{region}/drain` | moves traffic away from a region (failover drill) |
//! | POST | `/admin/regions/{region}/restore` | lets traffic back into a drained region |
//!
//! Mutations only accept POST (a GET gets 405), so a crawler or a
//! prefetching browser cannot change anything, and only with
//! `Content-Type: application/json` (415 otherwise), which a cross-site
//! form or "simple" fetch cannot send. When `gateway.admin` names a token,
//! every request needs `Authorization: Bearer <token>`, reads included
//! (compared in constant time; 401 otherwise). A `Host` other than an IP
//! literal, `localhost` or a name in `gateway.admin.allowed_hosts` gets 403
//! (DNS rebinding). Every mutation attempt is written to the audit log
//! (target `cascadia::audit`): who, what, when, result.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use cascadia_backends::{Fault, Registry};
use http_body_util::BodyExt;
use std::time::Duration;

use crate::drills::{DrillFault, DrillSpec, DrillTarget, Drills};
use crate::rollout::{Action, Rollouts};
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::core::body::ResponseBody;
use crate::reload::{ReloadFailure, ReloadHandle, ReloadOutcome, Trigger};
use crate::snapshot::SharedSnapshot;

/// What the admin API reads and acts on.
#[derive(Clone)]
pub struct Admin {
    snapshot: SharedSnapshot,
    reload: ReloadHandle,
    registry: Arc<Registry>,
    drills: Arc<Drills>,
    rollouts: Arc<Rollouts>,
}

impl Admin {
    /// An admin API over the serving snapshot, its reloader and the
    /// registry of backend state.
    pub fn new(
        snapshot: SharedSnapshot,
        reload: ReloadHandle,
        registry: Arc<Registry>,
        rollouts: Arc<Rollouts>,
    ) -> Self {
        Self {
            snapshot,
            reload,
            registry,
            drills: Arc::default(),
            rollouts,
        }
    }

    /// Answers one admin request from `peer`.
    ///
    /// In order: a `Host` that is not an IP literal, `localhost` or an
    /// allowed name is refused (DNS rebinding); with a token configured,
    /// every request needs it, reads included; a change (POST) needs
    /// `Content-Type: application/json`, which a cross-site "simple"
    /// request cannot send; every change attempt is audit-logged.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        if !self.host_allowed(&request) {
            return json_response(StatusCode::FORBIDDEN, json!({"error": "host not allowed"}));
        }
        let authorized = self.authorized(&request);
        if request.method() == Method::POST {
            let path = request.uri().path().to_owned();
            let response = if !authorized {
                unauthorized()
            } else if !is_json(&request) {
                json_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    json!({"error": "admin changes need Content-Type: application/json"}),
                )
            } else {
                self.route(request).await
            };
            tracing::info!(
                target: "cascadia::audit",
                %peer,
                method = "POST",
                path,
                authorized,
                status = response.status().as_u16(),
                "admin change"
            );
            return response;
        }
        if !authorized {
            return unauthorized();
        }
        self.route(request).await
    }

    /// Whether the `Host` names this admin API: absent, an IP literal,
    /// `localhost`, or one of `gateway.admin.allowed_hosts`.
    fn host_allowed<B>(&self, request: &Request<B>) -> bool {
        let Some(host) = request.headers().get(http::header::HOST) else {
            return true;
        };
        let Ok(host) = host.to_str() else {
            return false;
        };
        let name = match host.strip_prefix('[') {
            // `[v6]:port`
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        if name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let snapshot = self.snapshot.load();
        let allowed = &snapshot.config.gateway.admin_allowed_hosts;
        allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// Whether the request carries the configured token (always true when
    /// none is configured).
    fn authorized<B>(&self, request: &Request<B>) -> bool {
        let snapshot = self.snapshot.load();
        let Some(token) = &snapshot.admin_token else {
            return true;
        };
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| constant_time_eq(given, token.expose()))
    }

    async fn route(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let method = request.method().clone();
        match request.uri().path() {
            "/admin/config" if method == Method::GET => self.config(),
            "/admin/config/reload" if method == Method::POST => {
                tracing::info!(
                    "reload requested through the admin API (the audit line names the caller)"
                );
                match self.reload.reload(Trigger::Admin).await {
                    Some(outcome) => reload_outcome(outcome),
                    None => json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "reloader is not running"}),
                    ),
                }
            }
            "/admin/openapi.json" if method == Method::GET => {
                let mut response =
                    Response::new(ResponseBody::full(Bytes::from_static(OPENAPI.as_bytes())));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            "/admin/backends" if method == Method::GET => self.backends(),
            "/admin/regions" if method == Method::GET => self.regions(),
            "/admin/drills" if method == Method::POST => self.start_drill(request).await,
            "/admin/drills" if method == Method::GET => {
                json_response(StatusCode::OK, json!({ "drills": self.drills.reports() }))
            }
            "/admin/cascade" if method == Method::GET => self.cascade(),
            "/admin/shadow" if method == Method::GET => self.shadow(),
            "/admin/rollouts" if method == Method::GET => json_response(
                StatusCode::OK,
                json!({ "rollouts": self.rollouts.status() }),
            ),
            // HEAD gets GET's headers (its Content-Length included) and no
            // body: hyper leaves the body out of an answer to HEAD.
            "/metrics" if method == Method::GET || method == Method::HEAD => {
                let body =
                    crate::metrics::render(&self.snapshot.load(), &self.reload.status(), |out| {
                        self.rollout_metrics(out)
                    });
                let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                response
            }
            "/metrics" => method_not_allowed("GET, HEAD"),
            "/admin/config" | "/admin/backends" | "/admin/regions" | "/admin/cascade"
            | "/admin/shadow" | "/admin/rollouts" => method_not_allowed("GET"),
            "/admin/config/reload" => method_not_allowed("POST"),
            path if path.starts_with("/admin/drills/") && method == Method::GET => {
                match path["/admin/drills/".len()..]
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| self.drills.report(id))
                {
                    Some(report) => json_response(StatusCode::OK, json!(report)),
                    None => json_response(StatusCode::NOT_FOUND, json!({"error": "no such drill"})),
                }
            }
            path if path.starts_with("/admin/rollouts/") => {
                let rest = &path["/admin/rollouts/".len()..];
                let parsed = rest
                    .rsplit_once('/')
                    .and_then(|(route, action)| Some((route, Action::parse(action)?)));
                match parsed {
                    Some((route, action)) if method == Method::POST => {
                        match self.rollouts.act(route, action, &self.snapshot).await {
                            Ok(state) => json_response(StatusCode::OK, state),
                            Err(message) => {
                                json_response(StatusCode::CONFLICT, json!({"error": message}))
                            }
                        }
                    }
                    Some(_) => method_not_allowed("POST"),
                    None => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
                }
            }
            path => match region_action(path) {
                Some((region, drained)) if method == Method::POST => {
                    self.set_region_drained(region, drained)
                }
                Some(_) => method_not_allowed("POST"),
                None => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
            },
        }
    }

    fn config(&self) -> Response<ResponseBody> {
        let snapshot = self.snapshot.load();
        let status = self.reload.status();
        json_response(
            StatusCode::OK,
            json!({
                "version": snapshot.version,
                "hash": snapshot.hash,
                "source": self.reload.source().display().to_string(),
                "loaded_at_unix": snapshot.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "reloads": { "applied": status.applied, "rejected": status.rejected },
                "last_error": status.last_error.as_ref().map(failure_json),
                // What the gateway read, defaults applied, secrets never
                // (Redis passwords redacted, the admin token's source
                // only): the lines `cascadia check` prints.
                "effective": snapshot.config.summary().lines().collect::<Vec<_>>(),
            }),
        )
    }

    fn cascade(&self) -> Response<ResponseBody> {
        let snapshot = self.snapshot.load();
        let mut routes: Vec<(String, Value)> = snapshot
            .routes
            .iter()
            .filter_map(|route| {
                let stage = route.cascade.as_ref()?;
                let model = &stage.settings.model;
                let mut view = json!({
                    "route": &*route.name,
                    "stage1_model": format!("{}/{}", model.name, model.version),
                    "stage1_model_sha256": &model.sha256,
                    "accept_below": stage.settings.thresholds.accept_below(),
                    "reject_above": stage.settings.thresholds.reject_above(),
                    "accept_below_in_force": stage.thresholds().accept_below(),
                    "reject_above_in_force": stage.thresholds().reject_above(),
                    "stats": &*stage.stats,
                });
                if let Some(c) = &stage.settings.calibration {
                    view["calibration"] = json!({
                        "file": &c.path,
                        "created": &c.artifact.created,
                        "max_recall_drop": c.artifact.target.max_recall_drop,
                        "confidence": c.artifact.target.confidence,
                        "recall_drop_bound": c.artifact.result.recall_drop_bound,
                        "local_share": c.artifact.result.local_share,
                        "rows": c.artifact.data.rows,
                        "data_sha256": &c.artifact.data.sha256,
                    });
                }
                if let Some(g) = &stage.guarantee {
                    view["guarantee"] = guarantee_view(g);
                }
                if let Some(d) = &stage.drift {
                    view["drift"] = drift_view(d, stage);
                }
                if let Some(r) = &stage.recorder {
                    view["record"] = json!({
                        "target": &r.target,
                        "rows_written": r.written.load(std::sync::atomic::Ordering::Relaxed),
                        "rows_dropped": r.dropped.load(std::sync::atomic::Ordering::Relaxed),
                    });
                }
                Some((route.name.to_string(), view))
            })
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        json_response(
            StatusCode::OK,
            json!({ "routes": routes.into_iter().map(|(_, v)| v).collect::<Vec<_>>() }),
        )
    }

    /// The rollouts' samples for `/metrics` (headers come from
    /// [`crate::metrics::FAMILIES`]). `cascadia_rollout_state` has a series
    /// per state, 1 for the current one and 0 for the others, so an alert
    /// can ask for `state="rolled_back"` and a panel can chart every state.
    fn rollout_metrics(&self, out: &mut String) {
        use crate::rollout::Status;
        use std::fmt::Write;
        const STATES: [Status; 5] = [
            Status::Running,
            Status::Paused,
            Status::Promoted,
            Status::RolledBack,
            Status::Aborted,
        ];
        let mut gauges = self.rollouts.gauges();
        if gauges.is_empty() {
            return;
        }
        // The plans live in a map: sorted, so scrapes list them alike.
        gauges.sort_by(|a, b| a.0.cmp(&b.0));
        let name = |status: Status| {
            serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned())
        };
        for (route, weight, step, status) in gauges {
            // A new Status stops this compiling until STATES lists it.
            match status {
                Status::Running
                | Status::Paused
                | Status::Promoted
                | Status::RolledBack
                | Status::Aborted => {}
            }
            let _ = writeln!(
                out,
                "cascadia_rollout_canary_weight{{route=\"{route}\"}} {weight}"
            );
            let _ = writeln!(out, "cascadia_rollout_step{{route=\"{route}\"}} {step}");
            for state in STATES {
                let _ = writeln!(
                    out,
                    "cascadia_rollout_state{{route=\"{route}\",state=\"{}\"}} {}",
                    name(state),
                    u8::from(state == status)
                );
            }
        }
        let _ = writeln!(
            out,
            "cascadia_rollout_decisions_total {}",
            self.rollouts
                .decisions
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "cascadia_rollout_rollbacks_total {}",
            self.rollouts
                .rollbacks
                .load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    /// Shadow comparisons: per route with a shadow, per primary version.
    fn shadow(&self) -> Response<ResponseBody> {
        let snapshot = self.snapshot.load();
        let mut routes: Vec<(String, Value)> = snapshot
            .routes
            .iter()
            .filter_map(|route| {
                let shadow = route.shadow.as_ref()?;
                let stats = &shadow.stats;
                Some((
                    route.name.to_string(),
                    json!({
                        "route": &*route.name,
                        "candidate": shadow.settings.version,
                        "fraction": shadow.settings.fraction,
                        "in_flight": stats.in_flight(),
                        "dropped_budget": stats.dropped_budget.load(std::sync::atomic::Ordering::Relaxed),
                        "dropped_load": stats.dropped_load.load(std::sync::atomic::Ordering::Relaxed),
                        "pairs": stats.pairs().into_iter().map(|(primary, pair)| {
                            let mut report = pair.report();
                            report["primary"] = json!(&*primary);
                            report
                        }).collect::<Vec<_>>(),
                    }),
                ))
            })
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        json_response(
            StatusCode::OK,
            json!({ "routes": routes.into_iter().map(|(_, v)| v).collect::<Vec<_>>() }),
        )
    }

    async fn start_drill(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let body = match http_body_util::Limited::new(request.into_body(), 64 * 1024)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return json_response(StatusCode::BAD_REQUEST, json!({"error": "unreadable body"}))
            }
        };
        let spec = match drill_spec(&body) {
            Ok(spec) => spec,
            Err(message) => {
                return json_response(StatusCode::BAD_REQUEST, json!({"error": message}))
            }
        };
        let target = match &spec.fault {
            DrillFault::Region { region, .. } => match self.registry.region(region) {
                Some(state) => DrillTarget::Region {
                    name: region.clone(),
                    state,
                },
                None => {
                    return json_response(StatusCode::NOT_FOUND, json!({"error": "unknown region"}))
                }
            },
            DrillFault::RedisUnavailable => match &self.snapshot.load().redis {
                Some(redis) => DrillTarget::Redis(Arc::clone(redis)),
                None => {
                    return json_response(
                        StatusCode::CONFLICT,
                        json!({"error": "no Redis is configured (gateway.redis)"}),
                    )
                }
            },
        };
        let id = self.drills.start(spec, target, Arc::clone(&self.snapshot));
        let mut response = json_response(StatusCode::ACCEPTED, json!({"id": id}));
        if let Ok(location) = HeaderValue::from_str(&format!("/admin/drills/{id}")) {
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
        }
        response
    }

    fn set_region_drained(&self, region: &str, drained: bool) -> Response<ResponseBody> {
        if !self.registry.set_region_drained(region, drained) {
            return json_response(StatusCode::NOT_FOUND, json!({"error": "unknown region"}));
        }
        let action = if drained { "drained" } else { "restored" };
        tracing::warn!(region, action, "region state changed through the admin API");
        json_response(StatusCode::OK, json!({"region": region, "status": action}))
    }

    fn backends(&self) -> Response<ResponseBody> {
        let now = tokio::time::Instant::now();
        let snapshot = self.snapshot.load();
        let mut names: Vec<&String> = snapshot.pools.keys().collect();
        names.sort();
        let pools: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let pool = &snapshot.pools[name];
                json!({
                    "name": pool.name(),
                    "region": pool.region(),
                    "region_drained": pool.region_state().is_drained(),
                    "balancer": pool.balancer().to_string(),
                    "healthy_fraction": pool.healthy_fraction(now),
                    "available_fraction": pool.available_fraction(now),
                    "endpoints": pool.endpoints().iter().map(|e| json!({
                        "address": e.authority().as_str(),
                        "available": e.is_available(now),
                        "settled": e.is_settled(now, pool.hold_down()),
                        "ejected": e.is_ejected(now),
                        "check_healthy": e.is_check_healthy(),
                        "ewma_ms": e.rtt(now).as_secs_f64() * 1000.0,
                        "in_flight": e.in_flight(),
                        "attempts": e.attempts(),
                        "failures": e.failures(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json_response(StatusCode::OK, json!({ "backends": pools }))
    }

    /// One entry per region: its pools, whether it is drained or under a
    /// drill's fault, and how much of it can take traffic now.
    fn regions(&self) -> Response<ResponseBody> {
        let now = tokio::time::Instant::now();
        let snapshot = self.snapshot.load();
        let mut regions: std::collections::BTreeMap<&str, Vec<&cascadia_backends::BackendPool>> =
            Default::default();
        for pool in snapshot.pools.values() {
            regions.entry(pool.region()).or_default().push(pool);
        }
        let regions: Vec<Value> = regions
            .into_iter()
            .map(|(region, pools)| {
                let state = pools[0].region_state();
                let endpoints: usize = pools.iter().map(|p| p.endpoints().len()).sum();
                let available: usize = pools
                    .iter()
                    .flat_map(|p| p.endpoints())
                    .filter(|e| e.is_available(now))
                    .count();
                let mut backends: Vec<&str> = pools.iter().map(|p| p.name()).collect();
                backends.sort_unstable();
                json!({
                    "region": region,
                    "drained": state.is_drained(),
                    "drill_fault": state.fault().map(|f| format!("{f:?}")),
                    "backends": backends,
                    "endpoints": endpoints,
                    "available_endpoints": available,
                    "attempts": pools.iter().flat_map(|p| p.endpoints()).map(|e| e.attempts()).sum::<u64>(),
                    "failures": pools.iter().flat_map(|p| p.endpoints()).map(|e| e.failures()).sum::<u64>(),
                })
            })
            .collect();
        json_response(StatusCode::OK, json!({ "regions": regions }))
    }
}

/// How long an admin client may take to send a request head.
const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, admin: Admin, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
            _ = crate::listener::stopped(&mut shutdown) => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(request, peer).await) }
            });
            // A client that never finishes its head (or idles between
            // requests) is dropped: an admin connection costs a task and an
            // fd like any other.
            let _ = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads a drill request: `{"region", "fault", "duration_s", ...}`.
fn drill_spec(body: &[u8]) -> Result<DrillSpec, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        region: Option<String>,
        fault: String,
        duration_s: f64,
        latency_ms: Option<u64>,
        error_rate: Option<f64>,
        abort_error_rate: Option<f64>,
        abort_p99_ms: Option<f64>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("invalid drill: {e}"))?;
    if !(raw.duration_s > 0.0 && raw.duration_s <= 3600.0) {
        return Err("duration_s must be within (0, 3600]".to_owned());
    }
    // Bounded, so no number a client sends can overflow a Duration.
    if let Some(p99) = raw.abort_p99_ms {
        if !(p99 > 0.0 && p99 <= 3_600_000.0) {
            return Err("abort_p99_ms must be within (0, 3600000]".to_owned());
        }
    }
    if let Some(rate) = raw.abort_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            return Err("abort_error_rate must be within 0..=1".to_owned());
        }
    }
    if raw.latency_ms.is_some_and(|ms| ms > 60_000) {
        return Err("latency_ms must be at most 60000".to_owned());
    }
    if raw.fault == "redis" {
        return Ok(DrillSpec {
            fault: DrillFault::RedisUnavailable,
            duration: Duration::from_secs_f64(raw.duration_s),
            abort_error_rate: raw.abort_error_rate.unwrap_or(0.5),
            abort_p99: raw
                .abort_p99_ms
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        });
    }
    let region = raw
        .region
        .ok_or_else(|| format!("region is required for a {:?} fault", raw.fault))?;
    let fault = match raw.fault.as_str() {
        "blackhole" => Fault::Blackhole,
        "latency" => Fault::Latency(Duration::from_millis(
            raw.latency_ms
                .ok_or("latency_ms is required for a latency fault")?,
        )),
        "errors" => {
            let rate = raw
                .error_rate
                .ok_or("error_rate is required for an errors fault")?;
            if !(0.0..=1.0).contains(&rate) {
                return Err("error_rate must be within 0..=1".to_owned());
            }
            Fault::Errors {
                per_million: (rate * 1_000_000.0) as u32,
            }
        }
        other => {
            return Err(format!(
                "unknown fault {other:?} (blackhole, latency, errors, redis)"
            ))
        }
    };
    Ok(DrillSpec {
        fault: DrillFault::Region { region, fault },
        duration: Duration::from_secs_f64(raw.duration_s),
        abort_error_rate: raw.abort_error_rate.unwrap_or(0.5),
        abort_p99: raw
            .abort_p99_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    })
}

/// Parses `/admin/regions/{region}/drain|restore` into (region, drained).
fn region_action(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/admin/regions/")?;
    let (region, action) = rest.rsplit_once('/')?;
    if region.is_empty() || region.contains('/') {
        return None;
    }
    match action {
        "drain" => Some((region, true)),
        "restore" => Some((region, false)),
        _ => None,
    }
}

/// The admin API described in OpenAPI 3.1, served at `/admin/openapi.json`;
/// `tests/openapi.rs` checks real answers against it.
const OPENAPI: &str = include_str!("../openapi/admin.json");

fn reload_outcome(outcome: ReloadOutcome) -> Response<ResponseBody> {
    match outcome {
        ReloadOutcome::Applied { version, hash } => json_response(
            StatusCode::OK,
            json!({"status": "applied", "version": version, "hash": hash}),
        ),
        ReloadOutcome::Unchanged { version, hash } => json_response(
            StatusCode::OK,
            json!({"status": "unchanged", "version": version, "hash": hash}),
        ),
        ReloadOutcome::Rejected(failure) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"status": "rejected", "error": failure_json(&failure)}),
        ),
    }
}

fn failure_json(failure: &ReloadFailure) -> Value {
    json!({
        "message": failure.message,
        "errors": failure.errors.iter().map(|e| json!({"path": e.path, "message": e.message})).collect::<Vec<_>>(),
        "at_unix": failure.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// `Content-Type: application/json` (parameters such as a charset allowed).
fn is_json<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response<ResponseBody> {
    let mut response = json_response(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": "method not allowed"}),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn json_response(status: StatusCode, body: Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A client's admin API call (the CLI's and the demo's): the JSON answer
/// on success; otherwise the status and error, with a hint when a token is
/// missing or wrong.
pub async fn call(
    admin: &str,
    method: http::Method,
    path: String,
    body: bytes::Bytes,
    token: Option<&str>,
) -> Result<serde_json::Value, String> {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", admin.trim_end_matches('/')))
        .header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    // Bounded: a gateway that accepts and never answers (or streams without
    // end) must not hang the CLI. A reload may take the reloader's 10 s read
    // bound and a build, so the whole exchange gets 30 s and 16 MiB.
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("admin API unreachable: {e}"))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| format!("reading the admin API's answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "the admin API did not answer within 30s".to_owned())??;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() {
        return Ok(json);
    }
    let message = json["error"].as_str().unwrap_or("request failed");
    let hint = match (status, token.is_some()) {
        (http::StatusCode::UNAUTHORIZED, false) => {
            "\n  the admin API needs its token: pass --token-file FILE (the file gateway.admin.token_file names)"
        }
        (http::StatusCode::UNAUTHORIZED, true) => {
            "\n  the token in --token-file is not the gateway's (gateway.admin.token_file or token_env)"
        }
        _ => "",
    };
    Err(format!("{status}: {message}{hint}"))
}

/// `/admin/cascade`'s `guarantee`: the watch's target, where it stands, and
/// the last window's bound.
fn guarantee_view(g: &crate::routing::stages::Guarantee) -> Value {
    let watch = g.watch.lock().unwrap_or_else(|e| e.into_inner());
    let settings = watch.settings();
    let (open_misses, open_positives) = watch.open_window();
    let last = watch.last().map(|v| {
        json!({
            "bound": v.bound,
            "lower": v.lower,
            "misses": v.misses,
            "positives": v.positives,
        })
    });
    json!({
        "max_recall_drop": settings.alpha,
        "confidence": 1.0 - settings.delta,
        "window_positives": settings.window_positives,
        "windows": settings.windows,
        "policy": g.settings.policy.label(),
        "state": watch.state().label(),
        "windows_closed": watch.windows_closed,
        "last_window": last,
        "open_window": { "misses": open_misses, "positives": open_positives },
        "breaches": g.breaches.load(std::sync::atomic::Ordering::Relaxed),
        "tightenings": g.tightenings.load(std::sync::atomic::Ordering::Relaxed),
        "escalate_all": g.escalates_all(),
    })
}

/// `/admin/cascade`'s `drift`: PSI per feature over the last window.
fn drift_view(
    drift: &std::sync::Mutex<cascadia_cascade::drift::DriftWindow>,
    stage: &crate::routing::stages::CascadeStage,
) -> Value {
    let window = drift.lock().unwrap_or_else(|e| e.into_inner());
    let threshold = stage.settings.drift.map_or(0.2, |d| d.threshold);
    let features: Vec<Value> = match window.psi() {
        Some(psi) => stage
            .settings
            .model
            .features
            .iter()
            .zip(psi)
            .map(|(name, &psi)| json!({ "feature": name, "psi": psi, "drifted": psi > threshold }))
            .collect(),
        None => Vec::new(),
    };
    json!({
        "window_rows": window.window_rows(),
        "threshold": threshold,
        "features": features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_call_to_an_admin_that_never_answers_gives_up() {
        // The kernel accepts the connection; nobody ever reads or answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = format!("http://{}", silent.local_addr().unwrap());
        let answer = call(
            &admin,
            Method::GET,
            "/admin/rollouts".to_owned(),
            Bytes::new(),
            None,
        )
        .await;
        assert_eq!(
            answer.unwrap_err(),
            "the admin API did not answer within 30s"
        );
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(super::constant_time_eq(
            b"secret-token-123",
            b"secret-token-123"
        ));
        assert!(!super::constant_time_eq(
            b"secret-token-124",
            b"secret-token-123"
        ));
        assert!(!super::constant_time_eq(b"short", b"secret-token-123"));
    }
}
