//! The cascade's stage 1, for inference calls on cascade routes: score every
//! row with the in-gateway logistic model, answer the confident rows at
//! once, and send only the uncertain ones to stage 2 (the route's split, with
//! its regions, retries and failover) in one request, merging the answers
//! back in row order.
//!
//! # Phases (inside the proxy's match → respond)
//! 1. read and parse the OIP request (400 with what is wrong);
//! 2. score and decide per row (`accept_below` / `reject_above`);
//! 3. if any row is uncertain: answer from stage 1 when the deadline is
//!    shorter than stage 2's recent p95, else escalate those rows;
//! 4. merge, stamp `x-cascadia-stage` and the model versions, respond;
//! 5. maybe audit: a sample of confident requests also goes to stage 2 in
//!    the background, and disagreements are counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cascadia_cascade::rows::{self, Layout};
use cascadia_cascade::Decision;
use cascadia_config::{Cascade, OnUnavailable};
use cascadia_oip::json::{InferRequest, InferResponse};
use cascadia_oip::path::{OipKind, OipPath};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use crate::errors::{json_error, GatewayError};
use crate::proxy::body::ResponseBody;
use crate::proxy::{choose_target, deadline, headers, upstream_path, Proxy, RequestBody};
use crate::routing::{Route, Target};
use crate::snapshot::Snapshot;
use crate::telemetry::trace;

/// Who answered: `local`, `escalated` or `mixed`.
pub const X_CASCADIA_STAGE: HeaderName = HeaderName::from_static("x-cascadia-stage");
/// The stage-1 model's `name/version`.
pub const X_CASCADIA_STAGE1_MODEL: HeaderName = HeaderName::from_static("x-cascadia-stage1-model");
/// Why stage 1 answered rows it would have escalated: `deadline` or
/// `unavailable`.
pub const X_CASCADIA_DEGRADED: HeaderName = HeaderName::from_static("x-cascadia-degraded");

/// Counters of one cascade route (reset when the route is reloaded).
#[derive(Debug, Default, Serialize)]
pub struct CascadeStats {
    pub requests: AtomicU64,
    pub rows_accepted: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub rows_escalated: AtomicU64,
    pub degraded_deadline: AtomicU64,
    pub degraded_unavailable: AtomicU64,
    pub audits: AtomicU64,
    /// Rows stage 1 accepted (negative) that stage 2 called positive.
    pub audit_disagree_accept: AtomicU64,
    /// Rows stage 1 rejected (positive) that stage 2 called negative.
    pub audit_disagree_reject: AtomicU64,
    pub audit_rows: AtomicU64,
    pub audit_failures: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A route's stage 1: its settings, entity lookup and counters.
#[derive(Debug)]
pub struct CascadeStage {
    pub settings: Cascade,
    /// Entity features through the feature cache, when configured.
    pub entity: Option<crate::features::EntityLookup>,
    /// Carried across reloads with the route.
    pub stats: Arc<CascadeStats>,
}

/// How the client speaks: OIP REST JSON or OIP gRPC. The cascade works on
/// the JSON model either way; only parsing and answering differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Rest,
    Grpc,
}

/// Handles an OIP gRPC `ModelInfer` call on a cascade route. `message` is
/// the (unframed) protobuf request the proxy already read.
pub async fn handle_grpc(
    proxy: &Proxy,
    snapshot: &Arc<Snapshot>,
    route: &Arc<Route>,
    stage: &CascadeStage,
    parts: http::request::Parts,
    message: &[u8],
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    use prost::Message;
    let request = match cascadia_oip::grpc::ModelInferRequest::decode(message) {
        Ok(request) => request,
        Err(_) => {
            return Ok(payload_error(
                Wire::Grpc,
                "malformed ModelInferRequest",
                request_id,
            ))
        }
    };
    let infer = match cascadia_cascade::grpc::to_json_request(&request) {
        Ok(infer) => infer,
        Err(error) => return Ok(payload_error(Wire::Grpc, &error.to_string(), request_id)),
    };
    let model_version = (!request.model_version.is_empty()).then(|| request.model_version.clone());
    // The shadow's copy: the message under the candidate's model name.
    let mirror_body = route.shadow.as_ref().and_then(|shadow| {
        let target = &shadow.target;
        if target.upstream_model.is_none() && target.upstream_version.is_none() {
            return Some(cascadia_oip::grpc::encode_frame(message));
        }
        cascadia_oip::grpc::rewrite_model(
            message,
            target.upstream_model.as_deref(),
            target.upstream_version.as_deref(),
        )
        .ok()
        .map(|m| cascadia_oip::grpc::encode_frame(&m))
    });
    run(
        proxy,
        snapshot,
        route,
        stage,
        parts,
        infer,
        None,
        mirror_body,
        Wire::Grpc,
        (request.model_name.clone(), model_version),
        request_id,
    )
    .await
}

/// Handles an OIP REST inference call on a cascade route.
pub async fn handle(
    proxy: &Proxy,
    snapshot: &Arc<Snapshot>,
    route: &Arc<Route>,
    stage: &CascadeStage,
    request: Request<Incoming>,
    model: (String, Option<String>),
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    if request.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed);
    }
    let limit = snapshot.config.gateway.limits.max_body_bytes;
    let (parts, incoming) = request.into_parts();
    let body = crate::proxy::read_limited(
        incoming,
        limit,
        snapshot.config.gateway.limits.body_read_timeout.get(),
    )
    .await?;
    handle_body(
        proxy, snapshot, route, stage, parts, body, model, request_id,
    )
    .await
}

/// [`handle`] for a body already read (e.g. rewritten from Triton's binary
/// extension).
#[allow(clippy::too_many_arguments)]
pub async fn handle_body(
    proxy: &Proxy,
    snapshot: &Arc<Snapshot>,
    route: &Arc<Route>,
    stage: &CascadeStage,
    parts: http::request::Parts,
    body: Bytes,
    model: (String, Option<String>),
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    // 1. Parse. Payload errors describe the client's own request, so their
    //    text is safe to return.
    let infer: InferRequest = match serde_json::from_slice(&body) {
        Ok(infer) => infer,
        Err(error) => {
            return Ok(payload_error(
                Wire::Rest,
                &format!("invalid inference request: {error}"),
                request_id,
            ))
        }
    };
    run(
        proxy,
        snapshot,
        route,
        stage,
        parts,
        infer,
        Some(body.clone()),
        Some(body),
        Wire::Rest,
        model,
        request_id,
    )
    .await
}

/// Stage 1 and the escalation, on a parsed request, plus the route's
/// shadow: the request (`mirror_body`, what the candidate is sent) may be
/// mirrored to a candidate, whose answer is compared with the cascade's
/// (label `cascade`).
#[allow(clippy::too_many_arguments)]
async fn run(
    proxy: &Proxy,
    snapshot: &Arc<Snapshot>,
    route: &Arc<Route>,
    stage: &CascadeStage,
    parts: http::request::Parts,
    infer: InferRequest,
    body: Option<Bytes>,
    mirror_body: Option<Bytes>,
    wire: Wire,
    model: (String, Option<String>),
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    let mirror = match (&route.shadow, &mirror_body) {
        (Some(shadow), Some(bytes)) => {
            let load = route.admission.as_ref().map(|a| a.load());
            match wire {
                Wire::Rest => {
                    let oip = cascadia_oip::path::parse(parts.uri.path());
                    crate::proxy::upstream_path(&shadow.target, oip, &parts.uri)
                        .ok()
                        .and_then(|path| {
                            crate::shadow::Mirror::prepare(shadow, load, &parts.headers, bytes)
                                .map(|m| (m, path))
                        })
                }
                Wire::Grpc => parts.uri.path_and_query().cloned().and_then(|path| {
                    crate::shadow::Mirror::prepare_grpc(shadow, load, &parts.headers, bytes)
                        .map(|m| (m, path))
                }),
            }
        }
        _ => None,
    };
    let started = tokio::time::Instant::now();
    let mut response = run_stages(
        proxy, snapshot, route, stage, parts, infer, body, wire, model, request_id,
    )
    .await?;
    if let Some((mirror, path)) = mirror {
        if response.status().is_success() {
            let primary = response.body_mut().capture(crate::shadow::COMPARE_LIMIT);
            mirror.send(path, Arc::from("cascade"), started.elapsed(), primary);
        }
    }
    Ok(response)
}

/// Stage 1 and the escalation. `body` is the client's REST body, reused
/// as-is when every row escalates.
#[allow(clippy::too_many_arguments)]
async fn run_stages(
    proxy: &Proxy,
    snapshot: &Arc<Snapshot>,
    route: &Arc<Route>,
    stage: &CascadeStage,
    parts: http::request::Parts,
    infer: InferRequest,
    body: Option<Bytes>,
    wire: Wire,
    (model_name, model_version): (String, Option<String>),
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, GatewayError> {
    let settings = &stage.settings;
    let layout = Layout {
        matrix_input: settings.input.as_deref(),
        max_batch: settings.max_batch,
        default: settings.missing_feature_default,
    };
    let (features, forced) = match assemble_features(stage, &infer, &parts.headers, layout).await {
        Ok(found) => found,
        Err(message) => return Ok(payload_error(wire, &message, request_id)),
    };

    // 2. Score and decide. Rows whose entity features could not be found
    //    (and have no default) escalate: stage 2 has its own features.
    let span = trace::child("cascadia.stage1");
    let mut scores: Vec<f64> = (0..features.rows)
        .map(|i| settings.model.score(features.row(i)))
        .collect();
    let decisions: Vec<Decision> = scores
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if forced.get(i).copied().unwrap_or(false) {
                Decision::Escalate
            } else {
                settings.thresholds.decide(*p, settings.confirm_positives)
            }
        })
        .collect();
    let escalate: Vec<usize> = (0..decisions.len())
        .filter(|&i| decisions[i] == Decision::Escalate)
        .collect();
    span.set("cascadia.rows", features.rows as i64);
    span.set("cascadia.rows_escalated", escalate.len() as i64);
    drop(span);
    let stats = &stage.stats;
    bump(&stats.requests, 1);
    bump(
        &stats.rows_accepted,
        decisions.iter().filter(|d| **d == Decision::Accept).count() as u64,
    );
    bump(
        &stats.rows_rejected,
        decisions.iter().filter(|d| **d == Decision::Reject).count() as u64,
    );

    let stage1 = stage1_header(settings);
    if escalate.is_empty() {
        if let Some(body) = body {
            maybe_audit(
                proxy,
                snapshot,
                route,
                &parts,
                body,
                decisions,
                (&model_name, model_version.as_deref()),
            );
        }
        return Ok(answer(
            wire,
            &model_name,
            model_version.clone(),
            &infer,
            settings,
            &scores,
            "FP32",
            Stamp::local(stage1),
            request_id,
        ));
    }

    // 3. Escalate the uncertain rows, unless the deadline cannot fit stage 2.
    let target = choose_target(route, &parts.headers)?;
    let remaining = match (deadline::client_timeout(&parts.headers), route.timeout) {
        (Some(client), Some(route)) => Some(client.min(route)),
        (a, b) => a.or(b),
    };
    if let (Some(remaining), Some(p95)) = (remaining, stage2_p95(target)) {
        if remaining < p95 {
            bump(&stats.degraded_deadline, 1);
            return Ok(answer(
                wire,
                &model_name,
                model_version,
                &infer,
                settings,
                &scores,
                "FP32",
                Stamp::degraded(stage1, "deadline"),
                request_id,
            ));
        }
    }
    bump(&stats.rows_escalated, escalate.len() as u64);
    let sub = || rows::select_rows(&infer, features.rows, &escalate);
    let (sub_body, path_and_query) = match (wire, body) {
        (Wire::Rest, body) => {
            let sub_body = match body {
                Some(body) if escalate.len() == features.rows => body,
                _ => Bytes::from(
                    serde_json::to_vec(&sub())
                        .map_err(|_| GatewayError::BadRequest("request could not be re-encoded"))?,
                ),
            };
            let oip = OipPath {
                kind: OipKind::ModelInfer,
                model: Some(&model_name),
                version: model_version.as_deref(),
            };
            (sub_body, upstream_path(target, Some(oip), &parts.uri)?)
        }
        (Wire::Grpc, _) => {
            use prost::Message;
            // The message names the model, so the upstream's names go in it.
            let upstream_model = target.upstream_model.as_deref().unwrap_or(&model_name);
            let upstream_version = target
                .upstream_version
                .as_deref()
                .or(model_version.as_deref())
                .unwrap_or_default();
            let message =
                cascadia_cascade::grpc::to_grpc_request(&sub(), upstream_model, upstream_version);
            let frame = cascadia_oip::grpc::encode_frame(&message.encode_to_vec());
            let path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            (frame, path)
        }
    };
    let mut upstream_parts = parts;
    upstream_parts.headers.remove(header::CONTENT_LENGTH);
    let outcome = proxy
        .forward(
            route,
            target,
            upstream_parts,
            path_and_query,
            RequestBody::Buffered(sub_body),
            request_id,
        )
        .await;

    let unavailable =
        |error: Option<GatewayError>| -> Result<Response<ResponseBody>, GatewayError> {
            match (settings.on_unavailable, error) {
                (OnUnavailable::Error, Some(error)) => Err(error),
                (OnUnavailable::Error, None) => Err(GatewayError::NoHealthyBackend {
                    version: target.version.to_string(),
                }),
                (OnUnavailable::Degrade, _) => {
                    bump(&stats.degraded_unavailable, 1);
                    Ok(answer(
                        wire,
                        &model_name,
                        model_version.clone(),
                        &infer,
                        settings,
                        &scores,
                        "FP32",
                        Stamp::degraded(stage1.clone(), "unavailable"),
                        request_id,
                    ))
                }
            }
        };
    let response = match outcome {
        Ok(response) => response,
        Err(
            error @ (GatewayError::BodyTooLarge { .. }
            | GatewayError::RequestBody(_)
            | GatewayError::BadRequest(_)),
        ) => return Err(error),
        Err(error) => return unavailable(Some(error)),
    };
    let status = response.status();
    if status.is_client_error() && wire == Wire::Rest {
        // Stage 2 refused the request itself (e.g. its own validation):
        // the client should see that answer as it is.
        return Ok(response);
    }
    if !status.is_success() {
        return unavailable(None);
    }
    let served_by = response.headers().get(headers::X_CASCADIA_BACKEND).cloned();
    // The upstream deadline covers the headers; the body gets what is left
    // of the request's budget (or the backend timeout), and a size bound.
    let body_budget = remaining.unwrap_or_else(|| {
        target
            .pools
            .first()
            .map_or(Duration::from_secs(2), |p| p.timeout())
    });
    let limit =
        usize::try_from(snapshot.config.gateway.limits.max_body_bytes).unwrap_or(usize::MAX);
    let stage2 = match tokio::time::timeout(
        body_budget,
        http_body_util::Limited::new(response.into_body(), limit).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected,
        _ => return unavailable(None),
    };
    let parsed = match wire {
        Wire::Rest => serde_json::from_slice::<InferResponse>(&stage2.to_bytes()).ok(),
        Wire::Grpc => {
            let ok = stage2
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .is_some_and(|s| s == "0");
            let bytes = stage2.to_bytes();
            ok.then(|| decode_grpc_response(&bytes)).flatten()
        }
    };
    let Some((stage2_scores, datatype, stage2_version)) = parsed.and_then(|r| {
        rows::stage2_scores(&r, &settings.output, escalate.len())
            .map(|(s, d)| (s, d, r.model_version))
    }) else {
        tracing::warn!(
            request_id = request_id.to_str().unwrap_or_default(),
            "stage 2 answered without the expected output"
        );
        return unavailable(None);
    };

    // 4. Merge in row order.
    for (row, score) in escalate.iter().zip(stage2_scores) {
        scores[*row] = score;
    }
    let stamp = Stamp {
        stage: if escalate.len() == features.rows {
            "escalated"
        } else {
            "mixed"
        },
        stage1,
        degraded: None,
        stage2_version: Some(target.version_header.clone()),
        backend: served_by,
    };
    Ok(answer(
        wire,
        &model_name,
        stage2_version.or(model_version),
        &infer,
        settings,
        &scores,
        &datatype,
        stamp,
        request_id,
    ))
}

/// Every row's features in model order: the request's own, plus entity
/// features from the feature cache when the route has them. Also returns,
/// per row, whether entity features were missing (no default configured).
async fn assemble_features(
    stage: &CascadeStage,
    infer: &InferRequest,
    headers: &http::HeaderMap,
    layout: Layout<'_>,
) -> Result<(rows::Features, Vec<bool>), String> {
    let model = &stage.settings.model;
    let Some(entity) = &stage.entity else {
        let features = rows::features(infer, model, layout).map_err(|e| e.to_string())?;
        let forced = vec![false; features.rows];
        return Ok((features, forced));
    };
    let from_store = &entity.settings.features;
    let request_names: Vec<String> = model
        .features
        .iter()
        .filter(|f| !from_store.contains(f))
        .cloned()
        .collect();
    let own = rows::features_named(infer, &request_names, layout).map_err(|e| e.to_string())?;
    let keys: Vec<String> = match &entity.settings.key {
        cascadia_config::EntityKey::Header(name) => {
            let key = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("missing entity key header {:?}", name.as_str()))?;
            vec![key.to_owned(); own.rows]
        }
        cascadia_config::EntityKey::Input(name) => {
            let keys = rows::string_column(infer, name).ok_or_else(|| {
                format!("missing entity key input {name:?} (strings, one per row)")
            })?;
            if keys.len() != own.rows {
                return Err(format!(
                    "entity key input {name:?} has {} values for {} rows",
                    keys.len(),
                    own.rows
                ));
            }
            keys
        }
    };
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    let found = entity.get(&distinct).await;

    let default = stage.settings.missing_feature_default;
    let mut data = Vec::with_capacity(own.rows * model.width());
    let mut forced = Vec::with_capacity(own.rows);
    for (row, key) in keys.iter().enumerate() {
        let values = match found.get(key) {
            Some(Ok(Some(values))) => Some(values.clone()),
            _ => None,
        };
        forced.push(values.is_none() && default.is_none());
        let mut own_values = own.row(row).iter();
        for name in &model.features {
            match from_store.iter().position(|f| f == name) {
                Some(i) => data.push(values.as_ref().map_or(default.unwrap_or(0.0), |v| v[i])),
                None => data.push(own_values.next().copied().unwrap_or(0.0)),
            }
        }
    }
    let features = rows::Features {
        rows: own.rows,
        data,
        defaulted: own.defaulted,
    };
    Ok((features, forced))
}

/// A framed gRPC `ModelInferResponse` as the JSON model.
fn decode_grpc_response(bytes: &[u8]) -> Option<InferResponse> {
    use prost::Message;
    let (compressed, message) = cascadia_oip::grpc::decode_frame(bytes).ok()?;
    if compressed {
        return None;
    }
    let response = cascadia_oip::grpc::ModelInferResponse::decode(message).ok()?;
    cascadia_cascade::grpc::to_json_response(&response).ok()
}

/// What the response headers say about who answered.
struct Stamp {
    stage: &'static str,
    stage1: HeaderValue,
    degraded: Option<&'static str>,
    stage2_version: Option<HeaderValue>,
    backend: Option<HeaderValue>,
}

impl Stamp {
    fn local(stage1: HeaderValue) -> Self {
        Self {
            stage: "local",
            stage1,
            degraded: None,
            stage2_version: None,
            backend: None,
        }
    }

    fn degraded(stage1: HeaderValue, why: &'static str) -> Self {
        Self {
            stage: "local",
            stage1,
            degraded: Some(why),
            stage2_version: None,
            backend: None,
        }
    }
}

fn stage1_header(settings: &Cascade) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{}/{}",
        settings.model.name, settings.model.version
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("stage1"))
}

/// Stage 2's recent p95: the preferred pool's, which is where an escalation
/// would go first.
fn stage2_p95(target: &Target) -> Option<Duration> {
    target.pools.first()?.latency_percentile(95.0)
}

#[allow(clippy::too_many_arguments)]
fn answer(
    wire: Wire,
    model_name: &str,
    model_version: Option<String>,
    request: &InferRequest,
    settings: &Cascade,
    scores: &[f64],
    datatype: &str,
    stamp: Stamp,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = rows::response(
        model_name,
        model_version,
        request.id.clone(),
        &settings.output,
        datatype,
        scores,
        settings.output_columns,
    );
    let mut response = match wire {
        Wire::Rest => {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let mut response = Response::new(ResponseBody::full(Bytes::from(bytes)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Wire::Grpc => {
            use prost::Message;
            let message = cascadia_cascade::grpc::to_grpc_response(&body).encode_to_vec();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let mut response = Response::new(ResponseBody::with_trailers(
                cascadia_oip::grpc::encode_frame(&message),
                trailers,
            ));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            response
        }
    };
    let map = response.headers_mut();
    map.insert(headers::X_REQUEST_ID, request_id.clone());
    map.insert(X_CASCADIA_STAGE, HeaderValue::from_static(stamp.stage));
    map.insert(X_CASCADIA_STAGE1_MODEL, stamp.stage1);
    if let Some(why) = stamp.degraded {
        map.insert(X_CASCADIA_DEGRADED, HeaderValue::from_static(why));
    }
    if let Some(version) = stamp.stage2_version {
        map.insert(headers::X_CASCADIA_VERSION, version);
    }
    if let Some(backend) = stamp.backend {
        map.insert(headers::X_CASCADIA_BACKEND, backend);
    }
    response
}

/// A 400 (gRPC: INVALID_ARGUMENT) whose message describes the client's
/// payload.
fn payload_error(wire: Wire, message: &str, request_id: &HeaderValue) -> Response<ResponseBody> {
    match wire {
        Wire::Rest => json_error(StatusCode::BAD_REQUEST, message, request_id),
        Wire::Grpc => crate::errors::grpc_status(3, message, request_id),
    }
}

/// Bounds of an audit's stage-2 answer: audits run in the background, so
/// nothing else would stop a stalled one.
const AUDIT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
const AUDIT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Sends a sample of confidently answered requests to stage 2 in the
/// background and counts disagreements by band. Never delays the client.
fn maybe_audit(
    proxy: &Proxy,
    snapshot: &Arc<Snapshot>,
    route: &Arc<Route>,
    parts: &http::request::Parts,
    body: Bytes,
    decisions: Vec<Decision>,
    (model_name, model_version): (&str, Option<&str>),
) {
    let Some(stage) = &route.cascade else { return };
    let fraction = stage.settings.audit_fraction;
    if fraction <= 0.0 || fastrand::f64() >= fraction {
        return;
    }
    let (proxy, snapshot, route) = (proxy.clone(), Arc::clone(snapshot), Arc::clone(route));
    let mut audit_parts = Request::new(()).into_parts().0;
    audit_parts.method = Method::POST;
    audit_parts.uri = parts.uri.clone();
    audit_parts.headers = parts.headers.clone();
    audit_parts.headers.remove(header::CONTENT_LENGTH);
    let (model_name, model_version) = (model_name.to_owned(), model_version.map(str::to_owned));
    tokio::spawn(async move {
        let _snapshot = snapshot; // keeps the route's snapshot alive
        let Some(stage) = &route.cascade else { return };
        let stats = &stage.stats;
        bump(&stats.audits, 1);
        let Ok(target) = choose_target(&route, &audit_parts.headers) else {
            return;
        };
        let oip = OipPath {
            kind: OipKind::ModelInfer,
            model: Some(&model_name),
            version: model_version.as_deref(),
        };
        let Ok(path_and_query) = upstream_path(target, Some(oip), &audit_parts.uri) else {
            return;
        };
        let request_id = headers::request_id(&http::HeaderMap::new());
        let result = proxy
            .forward(
                &route,
                target,
                audit_parts,
                path_and_query,
                RequestBody::Buffered(body),
                &request_id,
            )
            .await;
        let scores = match result {
            Ok(response) if response.status().is_success() => {
                let body = http_body_util::Limited::new(response.into_body(), AUDIT_BODY_LIMIT);
                match tokio::time::timeout(AUDIT_BODY_TIMEOUT, body.collect()).await {
                    Ok(Ok(collected)) => {
                        serde_json::from_slice::<InferResponse>(&collected.to_bytes())
                            .ok()
                            .and_then(|r| {
                                rows::stage2_scores(&r, &stage.settings.output, decisions.len())
                                    .map(|(s, _)| s)
                            })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(scores) = scores else {
            bump(&stats.audit_failures, 1);
            return;
        };
        bump(&stats.audit_rows, decisions.len() as u64);
        for (decision, score) in decisions.iter().zip(scores) {
            match decision {
                Decision::Accept if score >= 0.5 => bump(&stats.audit_disagree_accept, 1),
                Decision::Reject if score < 0.5 => bump(&stats.audit_disagree_reject, 1),
                _ => {}
            }
        }
    });
}
