//! The cascade's stage 1, for inference calls on cascade routes: score every
//! row with the in-gateway logistic model, answer the confident rows at
//! once, and send only the uncertain ones to stage 2 (the route's split, with
//! its regions, retries and failover) in one request, merging the answers
//! back in row order.
//!
//! # Phases (inside the proxy's match → respond)
//! 1. read and parse the OIP request (400 with what is wrong);
//! 2. score and decide per row (the band in force: the configured one, or
//!    one the online watch's policy tightened), and count each row toward
//!    its feature's drift window;
//! 3. if any row is uncertain: answer from stage 1 when the deadline is
//!    shorter than stage 2's recent p95, else escalate those rows with a
//!    request the gateway owns (`stage2`), alone or combined with other
//!    requests' rows (`batch`); an answer it cannot use is a 502, never
//!    stage 1's numbers;
//! 4. merge, stamp `x-cascadia-stage`, the row counts and the model
//!    versions, record per row who answered (the `cascadia_rows`
//!    parameter), respond in the route's one output datatype;
//! 5. maybe audit: a sample of confident requests also goes to stage 2 in
//!    the background, and disagreements are counted; audited rows, and the
//!    escalated rows of requests sampled alike, feed the online watch and
//!    the recorder (`guarantee`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
mod batch;
mod guarantee;
mod stage2;

pub use stage2::UnusableReason;

use cascadia_cascade::rows::{self, Layout};
use cascadia_cascade::{Decision, RowStage, StageCounts};
use cascadia_config::OnUnavailable;
use cascadia_oip::json::InferRequest;
use cascadia_oip::path::{OipKind, OipPath};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};

use crate::core::body::{DownstreamBody, ResponseBody};
use crate::core::errors::GatewayError;
use crate::core::{deadline, headers};
use crate::forward::{upstream_path, Downstream, Upstream};
use crate::routing::choose_target;
use crate::routing::stages::{CascadeStage, CascadeStats};
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
/// How many rows each stage answered: `local=3, stage2=1, degraded=0`. The
/// response's `cascadia_rows` parameter says which rows.
pub const X_CASCADIA_ROWS: HeaderName = HeaderName::from_static("x-cascadia-rows");

impl CascadeStats {
    fn record_answered(&self, counts: StageCounts) {
        bump(&self.answered_local, counts.local as u64);
        bump(&self.answered_stage2, counts.stage2 as u64);
        bump(&self.answered_degraded, counts.degraded as u64);
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// How the client speaks: OIP REST JSON or OIP gRPC. The cascade works on
/// the JSON model either way; only parsing and answering differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Rest,
    Grpc,
}

/// What the proxy hands the cascade for one inference call on a cascade
/// route: the request's place in the gateway.
#[derive(Clone, Copy)]
pub struct Stage1<'a> {
    /// Where escalations and audits go.
    pub upstream: &'a Arc<dyn Upstream>,
    /// Who sent the request, for the escalation's `forwarded` headers.
    pub downstream: Downstream,
    /// The snapshot the request started on.
    pub snapshot: &'a Arc<Snapshot>,
    pub route: &'a Arc<Route>,
    /// The route's stage 1 (`route.cascade`).
    pub stage: &'a CascadeStage,
    pub request_id: &'a HeaderValue,
}

/// A parsed inference call, as either wire gave it.
struct Parsed {
    parts: http::request::Parts,
    infer: InferRequest,
    /// The client's REST body, for audits.
    body: Option<Bytes>,
    /// What a shadow candidate is sent.
    mirror_body: Option<Bytes>,
    wire: Wire,
    /// The model name and version the client asked for.
    model: (String, Option<String>),
}

/// Handles an OIP gRPC `ModelInfer` call on a cascade route. `message` is
/// the (unframed) protobuf request the proxy already read.
pub async fn handle_grpc(
    cx: Stage1<'_>,
    parts: http::request::Parts,
    message: &[u8],
) -> Result<Response<ResponseBody>, GatewayError> {
    use prost::Message;
    let request = match cascadia_oip::grpc::ModelInferRequest::decode(message) {
        Ok(request) => request,
        Err(_) => {
            return Err(GatewayError::InvalidPayload(
                "malformed ModelInferRequest".to_owned(),
            ))
        }
    };
    // A value is at least two bytes of JSON (`0,`): a REST body within
    // the limit holds no more, and neither may a message once expanded.
    let limit = cx.snapshot.config.gateway.limits.max_body_bytes;
    let max_values = usize::try_from(limit / 2).unwrap_or(usize::MAX);
    if cascadia_cascade::grpc::value_count(&request) > max_values {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let infer = match cascadia_cascade::grpc::to_json_request(&request) {
        Ok(infer) => infer,
        Err(error) => return Err(GatewayError::InvalidPayload(error.to_string())),
    };
    let model_version = (!request.model_version.is_empty()).then(|| request.model_version.clone());
    // The shadow's copy: the message under the candidate's model name.
    let mirror_body = cx.route.shadow.as_ref().and_then(|shadow| {
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
    let parsed = Parsed {
        parts,
        infer,
        body: None,
        mirror_body,
        wire: Wire::Grpc,
        model: (request.model_name.clone(), model_version),
    };
    run(cx, parsed).await
}

/// Handles an OIP REST inference call on a cascade route.
pub async fn handle(
    cx: Stage1<'_>,
    request: Request<DownstreamBody>,
    model: (String, Option<String>),
) -> Result<Response<ResponseBody>, GatewayError> {
    if request.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed);
    }
    let limits = &cx.snapshot.config.gateway.limits;
    let (mut parts, incoming) = request.into_parts();
    let body = crate::core::body::read_limited(
        incoming,
        limits.max_body_bytes,
        crate::core::body::BodyTimeouts::of(limits),
        &cx.snapshot.runtimes.buffers,
    )
    .await?;
    // The cascade reads the body itself, so a compressed one (a client's
    // `Content-Encoding: gzip`) is decoded here, within the body limit.
    let compressed = parts.headers.contains_key(http::header::CONTENT_ENCODING);
    let mut body =
        crate::core::coding::decode_request(&mut parts.headers, body, limits.max_body_bytes)?;
    if compressed {
        body = cx.snapshot.runtimes.buffers.account(body)?;
    }
    handle_body(cx, parts, body, model).await
}

/// [`handle`] for a body already read (e.g. rewritten from Triton's binary
/// extension).
pub async fn handle_body(
    cx: Stage1<'_>,
    parts: http::request::Parts,
    body: Bytes,
    model: (String, Option<String>),
) -> Result<Response<ResponseBody>, GatewayError> {
    // 1. Parse. Payload errors describe the client's own request, so their
    //    text is safe to return.
    let infer: InferRequest = match serde_json::from_slice(&body) {
        Ok(infer) => infer,
        Err(error) => {
            return Err(GatewayError::InvalidPayload(format!(
                "invalid inference request: {error}"
            )))
        }
    };
    let parsed = Parsed {
        parts,
        infer,
        body: Some(body.clone()),
        mirror_body: Some(body),
        wire: Wire::Rest,
        model,
    };
    run(cx, parsed).await
}

/// Stage 1 and the escalation, on a parsed request, plus the route's
/// shadow: the request (`mirror_body`, what the candidate is sent) may be
/// mirrored to a candidate, whose answer is compared with the cascade's
/// (label `cascade`).
async fn run(cx: Stage1<'_>, parsed: Parsed) -> Result<Response<ResponseBody>, GatewayError> {
    let Parsed {
        parts,
        infer,
        body,
        mirror_body,
        wire,
        model: (model_name, model_version),
    } = parsed;
    let route = cx.route;
    let mirror = match (&route.shadow, &mirror_body) {
        (Some(shadow), Some(bytes)) => {
            let load = route.admission.as_ref().map(|a| a.load());
            match wire {
                Wire::Rest => {
                    let oip = cascadia_oip::path::parse(parts.uri.path());
                    upstream_path(&shadow.target, oip, &parts.uri)
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
    let call = Call {
        cx,
        wire,
        model_name: &model_name,
        model_version: model_version.as_deref(),
    };
    let mut response = call.run(parts, infer, body).await?;
    if let Some((mirror, path)) = mirror {
        if response.status().is_success() {
            let primary = response.body_mut().capture(crate::shadow::COMPARE_LIMIT);
            mirror.send(path, Arc::from("cascade"), started.elapsed(), primary);
        }
    }
    Ok(response)
}

/// One request's cascade: what every step needs to know about it.
struct Call<'a> {
    cx: Stage1<'a>,
    wire: Wire,
    model_name: &'a str,
    model_version: Option<&'a str>,
}

impl Call<'_> {
    /// Stage 1 and the escalation. `body` is the client's REST body, for
    /// audits.
    async fn run(
        &self,
        parts: http::request::Parts,
        infer: InferRequest,
        body: Option<Bytes>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let settings = &self.cx.stage.settings;
        let layout = Layout {
            matrix_input: settings.input.as_deref(),
            max_batch: settings.max_batch,
            default: settings.missing_feature_default,
        };
        let (features, forced) =
            match assemble_features(self.cx.stage, &infer, &parts.headers, layout).await {
                Ok(found) => found,
                Err(message) => return Err(GatewayError::InvalidPayload(message)),
            };
        // The split comes first: every row is counted under the version the
        // request belongs to, whoever answers it.
        let target = choose_target(self.cx.route, &parts.headers)?;

        // 2. Score and decide. Rows whose entity features could not be
        //    found (and have no default) escalate: stage 2 has its own
        //    features. So do rows whose score is not a number.
        let span = trace::child("cascadia.stage1");
        let thresholds = self.cx.stage.thresholds();
        let mut scores: Vec<f64> = (0..features.rows)
            .map(|i| settings.model.score(features.row(i)))
            .collect();
        if let Some(drift) = &self.cx.stage.drift {
            let mut window = drift.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..features.rows {
                window.record(features.row(i));
            }
        }
        let decisions: Vec<Decision> = scores
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if forced.get(i).copied().unwrap_or(false) {
                    Decision::Escalate
                } else {
                    thresholds.decide(*p, settings.confirm_positives)
                }
            })
            .collect();
        let escalate: Vec<usize> = (0..decisions.len())
            .filter(|&i| decisions[i] == Decision::Escalate)
            .collect();
        span.set("cascadia.rows", features.rows as i64);
        span.set("cascadia.rows_escalated", escalate.len() as i64);
        drop(span);
        let stats = &self.cx.stage.stats;
        bump(&stats.requests, 1);
        bump(
            &stats.rows_accepted,
            decisions.iter().filter(|d| **d == Decision::Accept).count() as u64,
        );
        bump(
            &stats.rows_rejected,
            decisions.iter().filter(|d| **d == Decision::Reject).count() as u64,
        );
        let mut stages = vec![RowStage::Local; features.rows];

        if escalate.is_empty() {
            if let Some(body) = body {
                maybe_audit(self, &parts, &infer, body, decisions, &scores, &features);
            }
            return Ok(self.answer(target, &infer, &scores, &stages, Stamp::default()));
        }
        // Stage 1 may stand in for stage 2 only with a number of its own.
        let can_degrade = escalate.iter().all(|&i| scores[i].is_finite());
        let mark_degraded = |stages: &mut [RowStage]| {
            for &row in &escalate {
                stages[row] = RowStage::Degraded;
            }
        };

        // 3. Escalate the uncertain rows, unless the deadline cannot fit
        //    stage 2.
        let remaining = match (
            deadline::client_timeout(&parts.headers),
            self.cx.route.timeout,
        ) {
            (Some(client), Some(route)) => Some(client.min(route)),
            (a, b) => a.or(b),
        };
        if let (Some(remaining), Some(p95), true) = (remaining, stage2_p95(target), can_degrade) {
            if remaining < p95 {
                bump(&stats.degraded_deadline, 1);
                mark_degraded(&mut stages);
                return Ok(self.answer(
                    target,
                    &infer,
                    &scores,
                    &stages,
                    Stamp::degraded("deadline"),
                ));
            }
        }
        bump(&stats.rows_escalated, escalate.len() as u64);
        let sub = cascadia_cascade::stage2::request(
            &infer,
            features.rows,
            &escalate,
            settings.input.as_deref(),
            &settings.output,
        );
        // The upstream deadline covers the headers; the body gets what is
        // left of the request's budget (or the backend timeout), and a
        // size bound.
        let body_budget = remaining.unwrap_or_else(|| {
            target
                .pools
                .first()
                .map_or(Duration::from_secs(2), |p| p.timeout())
        });
        let outcome = match (&self.cx.stage.batcher, settings.batch, self.wire) {
            (Some(batcher), Some(batching), Wire::Rest) => {
                let rebuild = || {
                    cascadia_cascade::stage2::request(
                        &infer,
                        features.rows,
                        &escalate,
                        settings.input.as_deref(),
                        &settings.output,
                    )
                };
                let escalation = batch::Escalation {
                    target,
                    parts,
                    sub,
                    rows: escalate.len(),
                    body_budget,
                    rebuild: &rebuild,
                };
                // Boxed, like the call below: inline, these futures would
                // make every cascade request's future (copied whole when the
                // proxy boxes it) that much larger, local answers included.
                Box::pin(self.escalate_batched(batcher, batching, escalation)).await?
            }
            _ => Box::pin(self.send(target, parts, sub, escalate.len(), body_budget)).await?,
        };

        let error = match outcome {
            stage2::Outcome::Answered(answer) => {
                if guarantee::sampled(self.cx.stage) {
                    guarantee::observe(
                        self.cx.stage,
                        &self.cx.route.name,
                        escalate.iter().zip(&answer.scores).map(|(&row, &stage2)| {
                            guarantee::Sampled {
                                features: features.row(row),
                                stage1: scores[row],
                                stage2,
                                decision: Decision::Escalate,
                            }
                        }),
                    );
                }
                // 4. Merge in row order.
                for (&row, score) in escalate.iter().zip(answer.scores) {
                    scores[row] = score;
                    stages[row] = RowStage::Stage2;
                }
                let stamp = Stamp {
                    degraded: None,
                    stage2_version: Some(target.version_header.clone()),
                    stage2_model_version: answer.model_version,
                    backend: answer.backend,
                };
                return Ok(self.answer(target, &infer, &scores, &stages, stamp));
            }
            stage2::Outcome::Refused(response) => return Ok(*response),
            stage2::Outcome::Client(error) => return Err(error),
            stage2::Outcome::Unusable(unusable) => {
                stats.stage2_unusable.bump(unusable.reason);
                tracing::warn!(
                    request_id = self.cx.request_id.to_str().unwrap_or_default(),
                    route = &*self.cx.route.name,
                    reason = unusable.reason.label(),
                    detail = %unusable.detail,
                    "stage 2 gave an unusable answer"
                );
                return Err(GatewayError::Stage2Unusable {
                    reason: unusable.reason.label(),
                });
            }
            stage2::Outcome::Unavailable(error) => error,
        };
        match (settings.on_unavailable, can_degrade) {
            (OnUnavailable::Degrade, true) => {
                bump(&stats.degraded_unavailable, 1);
                mark_degraded(&mut stages);
                Ok(self.answer(
                    target,
                    &infer,
                    &scores,
                    &stages,
                    Stamp::degraded("unavailable"),
                ))
            }
            _ => Err(error.unwrap_or_else(|| GatewayError::NoHealthyBackend {
                version: target.version.to_string(),
            })),
        }
    }

    /// One stage-2 call for `rows` escalated rows (`sub`), bounded by
    /// `body_budget`.
    async fn send(
        &self,
        target: &Target,
        parts: http::request::Parts,
        mut sub: InferRequest,
        rows: usize,
        body_budget: Duration,
    ) -> Result<stage2::Outcome, GatewayError> {
        // Stage 2 learns how long the gateway waits, so a server that
        // honours it (Triton) drops rows nobody will read.
        let priority = self.cx.stage.settings.priority;
        cascadia_cascade::stage2::schedule(&mut sub, Some(body_budget), priority);
        let (body, path_and_query) = self.stage2_body(target, &sub, &parts.uri)?;
        Ok(stage2::call(stage2::Call {
            upstream: &**self.cx.upstream,
            downstream: self.cx.downstream,
            route: self.cx.route,
            target,
            wire: self.wire,
            parts,
            path_and_query,
            body,
            rows,
            output: &self.cx.stage.settings.output,
            body_budget,
            body_limit: self.body_limit(),
            request_id: self.cx.request_id,
        })
        .await)
    }

    /// The escalation's body and path: OIP JSON for REST, a framed
    /// `ModelInferRequest` (typed contents) for gRPC.
    fn stage2_body(
        &self,
        target: &Target,
        sub: &InferRequest,
        uri: &http::Uri,
    ) -> Result<(Bytes, http::uri::PathAndQuery), GatewayError> {
        match self.wire {
            Wire::Rest => {
                let body = serde_json::to_vec(sub)
                    .map_err(|_| GatewayError::BadRequest("request could not be re-encoded"))?;
                let oip = OipPath {
                    kind: OipKind::ModelInfer,
                    model: Some(self.model_name),
                    version: self.model_version,
                };
                Ok((Bytes::from(body), upstream_path(target, Some(oip), uri)?))
            }
            Wire::Grpc => {
                use prost::Message;
                // The message names the model, so the upstream's names go in it.
                let upstream_model = target.upstream_model.as_deref().unwrap_or(self.model_name);
                let upstream_version = target
                    .upstream_version
                    .as_deref()
                    .or(self.model_version)
                    .unwrap_or_default();
                let message =
                    cascadia_cascade::grpc::to_grpc_request(sub, upstream_model, upstream_version);
                let frame = cascadia_oip::grpc::encode_frame(&message.encode_to_vec());
                let path = uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                Ok((frame, path))
            }
        }
    }

    fn body_limit(&self) -> usize {
        usize::try_from(self.cx.snapshot.config.gateway.limits.max_body_bytes).unwrap_or(usize::MAX)
    }

    /// The client's answer, counted by the stage that answered each row.
    fn answer(
        &self,
        target: &Target,
        request: &InferRequest,
        scores: &[f64],
        stages: &[RowStage],
        stamp: Stamp,
    ) -> Response<ResponseBody> {
        let settings = &self.cx.stage.settings;
        let counts = StageCounts::of(stages);
        self.cx.stage.stats.record_answered(counts);
        target.stats.record_cascade_rows(counts);
        let body = rows::response(rows::Answer {
            model_name: self.model_name,
            model_version: stamp
                .stage2_model_version
                .clone()
                .or(self.model_version.map(str::to_owned)),
            id: request.id.clone(),
            output: &settings.output,
            datatype: settings.output_datatype,
            columns: settings.output_columns,
            scores,
            stages,
        });
        let mut response = match self.wire {
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
        let stage = if counts.stage2 == 0 {
            "local"
        } else if counts.stage2 == stages.len() {
            "escalated"
        } else {
            "mixed"
        };
        let map = response.headers_mut();
        map.insert(headers::X_REQUEST_ID, self.cx.request_id.clone());
        map.insert(X_CASCADIA_STAGE, HeaderValue::from_static(stage));
        map.insert(X_CASCADIA_STAGE1_MODEL, self.cx.stage.model_header.clone());
        map.insert(X_CASCADIA_ROWS, rows_header(counts));
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
    if let Some(bad) = keys.iter().find_map(|key| entity_key_problem(key)) {
        return Err(bad);
    }
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

/// Longest entity key, in bytes: keys become Redis keys, cache entries and
/// feature-store paths, so their size is bounded where they enter.
pub const MAX_ENTITY_KEY_BYTES: usize = 128;

/// Why `key` cannot name an entity, if it cannot: too long, characters
/// outside `A-Z a-z 0-9 - _ . : @ + =`, or only dots (which a store could
/// resolve as a path segment).
fn entity_key_problem(key: &str) -> Option<String> {
    if key.len() > MAX_ENTITY_KEY_BYTES {
        return Some(format!(
            "entity key of {} bytes is over the limit of {MAX_ENTITY_KEY_BYTES}",
            key.len()
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:@+=".contains(&b))
    {
        return Some(
            "entity key has characters other than letters, digits and - _ . : @ + =".to_owned(),
        );
    }
    if key.bytes().all(|b| b == b'.') {
        return Some("entity key cannot be only dots".to_owned());
    }
    None
}

/// What the response headers say about stage 2, beyond the row counts.
#[derive(Default)]
struct Stamp {
    /// Why stage 1 stood in for stage 2.
    degraded: Option<&'static str>,
    stage2_version: Option<HeaderValue>,
    /// The `model_version` stage 2 answered with.
    stage2_model_version: Option<String>,
    backend: Option<HeaderValue>,
}

impl Stamp {
    fn degraded(why: &'static str) -> Self {
        Self {
            degraded: Some(why),
            ..Self::default()
        }
    }
}

/// `x-cascadia-rows`: `local=L, stage2=S, degraded=D`, written by hand
/// (the formatting machinery cost more than the rest of the answer's
/// headers).
fn rows_header(counts: StageCounts) -> HeaderValue {
    let mut text = String::with_capacity(48);
    for (label, count) in [
        ("local=", counts.local),
        (", stage2=", counts.stage2),
        (", degraded=", counts.degraded),
    ] {
        text.push_str(label);
        push_decimal(&mut text, count);
    }
    HeaderValue::from_str(&text).expect("digits, letters and punctuation")
}

fn push_decimal(out: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// Stage 2's recent p95: the preferred pool's, which is where an escalation
/// would go first.
fn stage2_p95(target: &Target) -> Option<Duration> {
    target.pools.first()?.latency_percentile(95.0)
}

/// Bounds of an audit's stage-2 answer: audits run in the background, so
/// nothing else would stop a stalled one.
const AUDIT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
const AUDIT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Sends a sample of confidently answered requests to stage 2 in the
/// background and counts disagreements by band. Never delays the client.
/// The audit asks stage 2 exactly as an escalation would (the same owned
/// request and the same checks), so a disagreement is never an artefact
/// of a gzipped or incomplete answer.
fn maybe_audit(
    call: &Call<'_>,
    parts: &http::request::Parts,
    infer: &InferRequest,
    body: Bytes,
    decisions: Vec<Decision>,
    scores: &[f64],
    features: &rows::Features,
) {
    let settings = &call.cx.stage.settings;
    let fraction = settings.audit_fraction;
    if fraction <= 0.0 || fastrand::f64() >= fraction {
        return;
    }
    let rows = features.rows;
    // What the watch and the recorder need of the rows, only when they are on.
    let observed = (call.cx.stage.guarantee.is_some() || call.cx.stage.recorder.is_some())
        .then(|| (scores.to_vec(), features.data.clone()));
    let all: Vec<usize> = (0..rows).collect();
    let sub = cascadia_cascade::stage2::request(
        infer,
        rows,
        &all,
        settings.input.as_deref(),
        &settings.output,
    );
    let body = serde_json::to_vec(&sub).map(Bytes::from).unwrap_or(body);
    let (upstream, downstream, snapshot, route) = (
        Arc::clone(call.cx.upstream),
        call.cx.downstream,
        Arc::clone(call.cx.snapshot),
        Arc::clone(call.cx.route),
    );
    let mut audit_parts = Request::new(()).into_parts().0;
    audit_parts.method = Method::POST;
    audit_parts.uri = parts.uri.clone();
    audit_parts.headers = parts.headers.clone();
    let (model_name, model_version) = (
        call.model_name.to_owned(),
        call.model_version.map(str::to_owned),
    );
    tokio::spawn(async move {
        let _snapshot = &snapshot; // keeps the route's snapshot alive
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
        let outcome = stage2::call(stage2::Call {
            upstream: &*upstream,
            downstream,
            route: &route,
            target,
            wire: Wire::Rest,
            parts: audit_parts,
            path_and_query,
            body,
            rows,
            output: &stage.settings.output,
            body_budget: AUDIT_BODY_TIMEOUT,
            body_limit: AUDIT_BODY_LIMIT,
            request_id: &request_id,
        })
        .await;
        let stage2::Outcome::Answered(answer) = outcome else {
            bump(&stats.audit_failures, 1);
            return;
        };
        bump(&stats.audit_rows, decisions.len() as u64);
        for (decision, &score) in decisions.iter().zip(&answer.scores) {
            match decision {
                Decision::Accept if score >= 0.5 => bump(&stats.audit_disagree_accept, 1),
                Decision::Reject if score < 0.5 => bump(&stats.audit_disagree_reject, 1),
                _ => {}
            }
        }
        if let Some((scores, data)) = observed {
            let width = data.len() / rows.max(1);
            guarantee::observe(
                stage,
                &route.name,
                (0..rows.min(answer.scores.len())).map(|i| guarantee::Sampled {
                    features: &data[i * width..(i + 1) * width],
                    stage1: scores[i],
                    stage2: answer.scores[i],
                    decision: decisions[i],
                }),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_are_bounded_and_plain() {
        for ok in ["acme.com", "user-17", "a@b.c", "k:1+2=3"] {
            assert_eq!(entity_key_problem(ok), None, "{ok}");
        }
        let long = "x".repeat(MAX_ENTITY_KEY_BYTES + 1);
        for bad in ["..", ".", "a/b", "a b", "é", "%2e%2e", long.as_str()] {
            assert!(entity_key_problem(bad).is_some(), "{bad}");
        }
    }
}
