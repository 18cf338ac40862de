//! The OIP gRPC endpoints, served straight off hyper: unary calls only, no compression.
//!
//! Responses are `HEADERS, DATA(frame), TRAILERS(grpc-status: 0)`; errors are
//! "trailers-only" (one HEADERS frame carrying `grpc-status` and `grpc-message`).

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use prost::Message;

use cascadia_oip::grpc::{
    decode_frame, encode_frame, methods, model_infer_response, model_metadata_response, status,
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveResponse,
    ServerMetadataResponse, ServerReadyResponse,
};

use crate::body::SimBody;
use crate::model;
use crate::service::{metadata, read_body, Shared, X_SIM_SAW_MODEL, X_SIM_SAW_VERSION};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// True when the request asks for gRPC (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A gRPC failure: status code and a plain-ASCII message (no percent-encoding needed).
struct Failure(u32, &'static str);

pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let mut saw = Saw::default();
    let mut resp = match call(shared, req, &mut saw).await {
        Ok(resp) => resp,
        Err(Failure(code, message)) => failure(code, message),
    };
    let headers = resp.headers_mut();
    if let Some(Ok(v)) = saw.model.as_deref().map(HeaderValue::from_str) {
        headers.insert(X_SIM_SAW_MODEL, v);
    }
    if let Some(Ok(v)) = saw.version.as_deref().map(HeaderValue::from_str) {
        headers.insert(X_SIM_SAW_VERSION, v);
    }
    resp
}

/// The model and version named in the request message, echoed for rewrite tests.
#[derive(Default)]
struct Saw {
    model: Option<String>,
    version: Option<String>,
}

impl Saw {
    fn record(&mut self, model: &str, version: &str) {
        self.model = Some(model.to_owned());
        self.version = (!version.is_empty()).then(|| version.to_owned());
    }
}

async fn call(
    shared: &Shared,
    req: Request<Incoming>,
    saw: &mut Saw,
) -> Result<Response<SimBody>, Failure> {
    if req.method() != Method::POST {
        return Err(Failure(status::UNIMPLEMENTED, "gRPC requires POST"));
    }
    let path = req.uri().path().to_owned();
    let is_infer = path == methods::MODEL_INFER;
    if is_infer {
        shared.control.count_infer();
    }
    let body = read_body(req)
        .await
        .map_err(|_| Failure(status::INTERNAL, "could not read the request body"))?;
    let msg = match decode_frame(&body) {
        Ok((false, msg)) => msg,
        Ok((true, _)) => {
            return Err(Failure(
                status::UNIMPLEMENTED,
                "compressed messages are not supported",
            ))
        }
        Err(_) => return Err(Failure(status::INTERNAL, "malformed gRPC frame")),
    };
    let cfg = &shared.config;
    let not_found = Failure(status::NOT_FOUND, "model is not served here");
    match path.as_str() {
        methods::SERVER_LIVE => Ok(ok(&ServerLiveResponse { live: true })),
        methods::SERVER_READY => Ok(ok(&ServerReadyResponse { ready: true })),
        methods::SERVER_METADATA => Ok(ok(&ServerMetadataResponse {
            name: cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: Vec::new(),
        })),
        methods::MODEL_READY => {
            let req = ModelReadyRequest::decode(msg).map_err(invalid)?;
            saw.record(&req.name, &req.version);
            if req.name != cfg.model {
                return Err(not_found);
            }
            Ok(ok(&ModelReadyResponse { ready: true }))
        }
        methods::MODEL_METADATA => {
            let req = ModelMetadataRequest::decode(msg).map_err(invalid)?;
            saw.record(&req.name, &req.version);
            if req.name != cfg.model {
                return Err(not_found);
            }
            let m = metadata(cfg);
            let tensor =
                |t: cascadia_oip::json::TensorMetadata| model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                };
            Ok(ok(&ModelMetadataResponse {
                name: m.name,
                versions: m.versions,
                platform: m.platform,
                inputs: m.inputs.into_iter().map(tensor).collect(),
                outputs: m.outputs.into_iter().map(tensor).collect(),
            }))
        }
        methods::MODEL_INFER => {
            let req = ModelInferRequest::decode(msg).map_err(invalid)?;
            saw.record(&req.model_name, &req.model_version);
            if req.model_name != cfg.model {
                return Err(not_found);
            }
            if shared.data_plane().await {
                return Err(Failure(status::INTERNAL, "injected failure"));
            }
            let probs = shared.control.biased(infer(&req)?);
            Ok(ok(&ModelInferResponse {
                model_name: cfg.model.clone(),
                model_version: cfg.version.clone(),
                id: req.id,
                parameters: Default::default(),
                outputs: vec![model_infer_response::InferOutputTensor {
                    name: model::OUTPUT.to_owned(),
                    datatype: "FP32".to_owned(),
                    shape: vec![probs.len() as i64, 1],
                    parameters: Default::default(),
                    contents: Some(InferTensorContents {
                        fp32_contents: probs,
                        ..Default::default()
                    }),
                }],
                raw_output_contents: Vec::new(),
            }))
        }
        _ => Err(Failure(status::UNIMPLEMENTED, "unknown method")),
    }
}

fn invalid(_: prost::DecodeError) -> Failure {
    Failure(status::INVALID_ARGUMENT, "malformed request message")
}

/// Scores the first numeric input, read from `raw_input_contents` if present, else from
/// its typed `contents`.
fn infer(req: &ModelInferRequest) -> Result<Vec<f32>, Failure> {
    let bad = |m| Failure(status::INVALID_ARGUMENT, m);
    let (index, input) = req
        .inputs
        .iter()
        .enumerate()
        .find(|(_, t)| model::is_numeric(&t.datatype))
        .ok_or(bad("no numeric input tensor"))?;
    let values = if req.raw_input_contents.is_empty() {
        let c = input
            .contents
            .as_ref()
            .ok_or(bad("input has no contents"))?;
        match input.datatype.as_str() {
            "FP32" => c.fp32_contents.clone(),
            "FP64" => c.fp64_contents.iter().map(|&x| x as f32).collect(),
            "INT8" | "INT16" | "INT32" => c.int_contents.iter().map(|&x| x as f32).collect(),
            "INT64" => c.int64_contents.iter().map(|&x| x as f32).collect(),
            "UINT8" | "UINT16" | "UINT32" => c.uint_contents.iter().map(|&x| x as f32).collect(),
            "UINT64" => c.uint64_contents.iter().map(|&x| x as f32).collect(),
            _ => return Err(bad("datatype needs raw contents")),
        }
    } else {
        let raw = req
            .raw_input_contents
            .get(index)
            .ok_or(bad("raw_input_contents has no entry for the input"))?;
        raw_values(&input.datatype, raw).ok_or(bad("raw contents do not match the datatype"))?
    };
    model::score(&input.shape, &values).map_err(|_| bad("input shape does not match its data"))
}

/// Little-endian raw tensor bytes as f32s, for the common numeric types.
fn raw_values(datatype: &str, raw: &[u8]) -> Option<Vec<f32>> {
    fn chunks<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> f32) -> Option<Vec<f32>> {
        if raw.len() % N != 0 {
            return None;
        }
        Some(
            raw.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
                .collect(),
        )
    }
    match datatype {
        "FP32" => chunks::<4>(raw, f32::from_le_bytes),
        "FP64" => chunks::<8>(raw, |b| f64::from_le_bytes(b) as f32),
        "INT32" => chunks::<4>(raw, |b| i32::from_le_bytes(b) as f32),
        "INT64" => chunks::<8>(raw, |b| i64::from_le_bytes(b) as f32),
        _ => None,
    }
}

fn grpc_response(body: SimBody) -> Response<SimBody> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

fn ok(msg: &impl Message) -> Response<SimBody> {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    grpc_response(SimBody::new(encode_frame(&msg.encode_to_vec())).with_trailers(trailers))
}

fn failure(code: u32, message: &'static str) -> Response<SimBody> {
    let mut resp = grpc_response(SimBody::empty());
    let headers = resp.headers_mut();
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    headers.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_decode_little_endian() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(raw_values("FP32", &raw), Some(vec![1.5, -2.0]));
        assert_eq!(raw_values("FP32", &raw[..5]), None);
        assert_eq!(raw_values("BYTES", &raw), None);
    }
}
