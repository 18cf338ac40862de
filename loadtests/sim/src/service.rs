//! Per-request handling: dispatch (gRPC, OIP REST, `/sim/*` control, echo) and the
//! `x-sim-*` headers every response carries.
//!
//! # Which requests are slowed down or failed
//! Only the *data plane* — inference (REST and gRPC) and the echo route — waits for the
//! latency model and rolls for injected errors. Health, readiness, metadata and `/sim/*`
//! answer at once, so a test that sets `error_rate = 1.0` breaks inference without also
//! making health checks flap. A REST inference request with the parameter
//! `"sim_poison": true` always gets a 500, like a model server's query of death, and one
//! whose input holds the value [`REFUSED_VALUE`] a 400 for the whole request (a bad row
//! in a batch).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use cascadia_oip::json::{
    flatten_f32, ErrorBody, InferOutputTensor, InferRequest, InferResponse, ModelMetadata,
    TensorMetadata,
};
use cascadia_oip::path::{self, OipKind, OipPath};

use crate::body::SimBody;
use crate::control::{settings_json, ControlRequest, SimControl};
use crate::{grpc, model, SimConfig};

/// Request parameter that makes an inference call fail with a 500.
pub const POISON_PARAMETER: &str = "sim_poison";
/// An input value the simulated model refuses (400), failing every row sent with it.
pub const REFUSED_VALUE: f32 = -999.0;

pub(crate) const X_SIM_NAME: HeaderName = HeaderName::from_static("x-sim-name");
pub(crate) const X_SIM_VERSION: HeaderName = HeaderName::from_static("x-sim-version");
pub(crate) const X_SIM_REGION: HeaderName = HeaderName::from_static("x-sim-region");
pub(crate) const X_SIM_SAW_PATH: HeaderName = HeaderName::from_static("x-sim-saw-path");
pub(crate) const X_SIM_SAW_MODEL: HeaderName = HeaderName::from_static("x-sim-saw-model");
pub(crate) const X_SIM_SAW_VERSION: HeaderName = HeaderName::from_static("x-sim-saw-version");
pub(crate) const X_SIM_SAW_XFF: HeaderName = HeaderName::from_static("x-sim-saw-xff");
pub(crate) const X_SIM_SAW_FORWARDED: HeaderName = HeaderName::from_static("x-sim-saw-forwarded");
/// The deadline the gateway propagated (`x-request-timeout-ms`).
pub(crate) const X_SIM_SAW_DEADLINE: HeaderName = HeaderName::from_static("x-sim-saw-deadline-ms");
pub(crate) const X_SIM_SAW_TRACEPARENT: HeaderName =
    HeaderName::from_static("x-sim-saw-traceparent");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_REQUEST_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-request-timeout-ms");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// State shared by every connection of one simulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SimConfig,
    pub control: Arc<SimControl>,
    /// Identity headers, validated once at spawn so a bad label fails there, not per request.
    name: HeaderValue,
    version: HeaderValue,
    region: HeaderValue,
}

impl Shared {
    pub fn new(config: SimConfig, control: Arc<SimControl>) -> std::io::Result<Self> {
        let hv = |field: &str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("sim config `{field}` is not a valid header value: {v:?}"),
                )
            })
        };
        Ok(Self {
            name: hv("name", &config.name)?,
            version: hv("version", &config.version)?,
            region: hv("region", &config.region)?,
            config,
            control,
        })
    }

    /// Waits out the sampled latency, then rolls for an injected failure (true = fail).
    pub async fn data_plane(&self) -> bool {
        let settings = self.control.settings();
        let delay = settings.latency.sample();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.control.inject_error(&settings)
    }
}

/// Handles one request; never fails (errors become responses).
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let path = req.uri().path().to_owned();
    let echo = |name: &HeaderName| req.headers().get(name).cloned();
    let (request_id, xff, forwarded, deadline, traceparent) = (
        echo(&X_REQUEST_ID),
        echo(&X_FORWARDED_FOR),
        echo(&FORWARDED),
        echo(&X_REQUEST_TIMEOUT_MS),
        echo(&TRACEPARENT),
    );

    let is_control = path.starts_with("/sim/");
    if !is_control {
        shared.control.count_request();
    }
    let mut resp = if grpc::is_grpc(&req) {
        grpc::handle(shared, req).await
    } else if is_control {
        control(shared, req).await
    } else if path == "/v2" || path.starts_with("/v2/") {
        rest(shared, req).await
    } else if path.starts_with("/features/") {
        feature_store(shared, req).await
    } else {
        echo_route(shared, req).await
    };

    let headers = resp.headers_mut();
    headers.insert(X_SIM_NAME, shared.name.clone());
    headers.insert(X_SIM_VERSION, shared.version.clone());
    headers.insert(X_SIM_REGION, shared.region.clone());
    if let Ok(v) = HeaderValue::from_str(&path) {
        headers.insert(X_SIM_SAW_PATH, v);
    }
    for (name, value) in [
        (X_REQUEST_ID, request_id),
        (X_SIM_SAW_XFF, xff),
        (X_SIM_SAW_FORWARDED, forwarded),
        (X_SIM_SAW_DEADLINE, deadline),
        (X_SIM_SAW_TRACEPARENT, traceparent),
    ] {
        if let Some(value) = value {
            headers.insert(name, value);
        }
    }
    resp
}

/// Reads the whole request body (so streamed uploads are fully consumed).
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, hyper::Error> {
    Ok(req.into_body().collect().await?.to_bytes())
}

pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<SimBody> {
    let bytes = serde_json::to_vec(body).expect("JSON values always serialize");
    let mut resp = Response::new(SimBody::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<SimBody> {
    json_response(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn injected() -> Response<SimBody> {
    error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure")
}

fn set_saw(resp: &mut Response<SimBody>, model: &str, version: Option<&str>) {
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(model) {
        headers.insert(X_SIM_SAW_MODEL, v);
    }
    if let Some(Ok(v)) = version.map(HeaderValue::from_str) {
        headers.insert(X_SIM_SAW_VERSION, v);
    }
}

/// The OIP REST endpoints.
async fn rest(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let uri_path = req.uri().path().to_owned();
    let Some(OipPath {
        kind,
        model,
        version,
    }) = path::parse(&uri_path)
    else {
        return error(StatusCode::NOT_FOUND, "not an OIP endpoint");
    };
    let cfg = &shared.config;
    let want = if kind == OipKind::ModelInfer {
        Method::POST
    } else {
        Method::GET
    };
    if kind == OipKind::ModelInfer {
        shared.control.count_infer();
    }
    if req.method() != want && !(want == Method::GET && req.method() == Method::HEAD) {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let model = model.unwrap_or_default();
    let mut resp = match kind {
        OipKind::ServerLive => json_response(StatusCode::OK, &json!({ "live": true })),
        OipKind::ServerReady => json_response(StatusCode::OK, &json!({ "ready": true })),
        OipKind::ServerMetadata => json_response(
            StatusCode::OK,
            &json!({ "name": cfg.name, "version": env!("CARGO_PKG_VERSION"), "extensions": [] }),
        ),
        _ if model != cfg.model => error(
            StatusCode::NOT_FOUND,
            format!("model {model:?} is not served here"),
        ),
        OipKind::ModelReady => {
            json_response(StatusCode::OK, &json!({ "name": cfg.model, "ready": true }))
        }
        OipKind::ModelMetadata => json_response(StatusCode::OK, &metadata(cfg)),
        OipKind::ModelInfer => infer_rest(shared, req).await,
    };
    if kind.is_model() {
        set_saw(&mut resp, model, version);
    }
    resp
}

/// The metadata of the one simulated model.
pub(crate) fn metadata(cfg: &SimConfig) -> ModelMetadata {
    ModelMetadata {
        name: cfg.model.clone(),
        versions: vec![cfg.version.clone()],
        platform: "cascadia-sim".to_owned(),
        inputs: vec![TensorMetadata {
            name: "input".to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![-1, -1],
        }],
        outputs: vec![TensorMetadata {
            name: model::OUTPUT.to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![-1, 1],
        }],
    }
}

async fn infer_rest(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let Ok(body) = read_body(req).await else {
        return error(StatusCode::BAD_REQUEST, "could not read the request body");
    };
    if shared.data_plane().await {
        return injected();
    }
    let request: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")),
    };
    // A "query of death": a request this server fails on, every time and on
    // every endpoint, with a 500, as MLServer answers a tensor its model
    // cannot take ("Expected 2D array").
    if request
        .parameters
        .as_ref()
        .and_then(|p| p.get(POISON_PARAMETER))
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Expected 2D array, got 1D array instead",
        );
    }
    let Some(input) = request
        .inputs
        .iter()
        .find(|t| model::is_numeric(&t.datatype))
    else {
        return error(StatusCode::BAD_REQUEST, "no numeric input tensor");
    };
    let Some(values) = flatten_f32(&input.data) else {
        return error(
            StatusCode::BAD_REQUEST,
            "input data must be a (nested) array of numbers",
        );
    };
    if values.contains(&REFUSED_VALUE) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("input value {REFUSED_VALUE} is out of range"),
        );
    }
    let probs = match model::score(&input.shape, &values) {
        Ok(p) => shared.control.biased(p),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let cfg = &shared.config;
    json_response(
        StatusCode::OK,
        &InferResponse {
            model_name: cfg.model.clone(),
            model_version: Some(cfg.version.clone()),
            id: request.id,
            parameters: None,
            outputs: vec![InferOutputTensor {
                name: model::OUTPUT.to_owned(),
                shape: vec![probs.len() as i64, 1],
                datatype: "FP32".to_owned(),
                parameters: None,
                data: json!(probs),
            }],
        },
    )
}

/// `GET /sim/stats` and `POST /sim/control`.
async fn control(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let cfg = &shared.config;
    let ctl = &shared.control;
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/sim/stats") => {
            let mut stats = json!({
                "requests": ctl.requests(),
                "infer": ctl.infer_requests(),
                "errors_injected": ctl.errors_injected(),
                "name": cfg.name,
                "model": cfg.model,
                "version": cfg.version,
                "region": cfg.region,
            });
            stats["settings"] = settings_json(&ctl.settings());
            json_response(StatusCode::OK, &stats)
        }
        (Method::POST, "/sim/control") => {
            let Ok(body) = read_body(req).await else {
                return error(StatusCode::BAD_REQUEST, "could not read the request body");
            };
            let update = serde_json::from_slice::<ControlRequest>(&body)
                .map_err(|e| format!("malformed control request: {e}"))
                .and_then(ControlRequest::validate);
            match update {
                Ok(update) => json_response(StatusCode::OK, &settings_json(&ctl.apply(update))),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        (_, "/sim/stats" | "/sim/control") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "unknown control endpoint"),
    }
}

/// Any other path: read the whole body, then describe what arrived.
/// Feature-store mode: `GET /features/{entity}?features=a,b` answers
/// `{"entity": ..., "features": {"a": x, "b": y}}` with values derived from
/// a hash of entity and name (so they are stable), or 404 for entities
/// whose key starts with `unknown` (for negative caching). Obeys the
/// latency and error knobs like inference does.
async fn feature_store(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let entity = req.uri().path().trim_start_matches("/features/").to_owned();
    let names: Vec<String> = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("features=")))
        .map(|list| {
            list.split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if shared.data_plane().await {
        return injected();
    }
    if entity.is_empty() || entity.starts_with("unknown") {
        return error(StatusCode::NOT_FOUND, "unknown entity");
    }
    let features: serde_json::Map<String, serde_json::Value> = names
        .into_iter()
        .map(|name| {
            let value = feature_value(&entity, &name);
            (name, json!(value))
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "entity": entity, "features": features }),
    )
}

/// A stable pseudo-random value in 0..10 for (entity, feature).
pub fn feature_value(entity: &str, feature: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in entity.bytes().chain([0u8]).chain(feature.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 1000) as f64 / 100.0
}

async fn echo_route(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let Ok(body) = read_body(req).await else {
        return error(StatusCode::BAD_REQUEST, "could not read the request body");
    };
    if shared.data_plane().await {
        return injected();
    }
    json_response(
        StatusCode::OK,
        &json!({ "path": path, "method": method, "body_bytes": body.len() }),
    )
}
