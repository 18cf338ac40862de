//! The escalation's I/O: the stage-2 call on the route's split, with the
//! headers the gateway owns, and the answer read, decoded and checked.
//!
//! # Why the gateway owns this request
//! The client's headers describe what the *client* can read. The stage-2
//! answer is read by the gateway, so the client's `Accept-Encoding: gzip`
//! (Python `requests`' default) or `grpc-accept-encoding` must not reach
//! stage 2: MLServer gzips answers of 500 bytes and more when asked. The
//! gateway asks for `identity`, and still decodes gzip and deflate should a
//! server compress anyway, within the body limit.
//!
//! # Outcomes
//! [`Outcome`] keeps the three failures apart, because each is answered
//! differently: stage 2 refusing the request (its 4xx goes to the client),
//! stage 2 unavailable (the route's `on_unavailable` decides), and an
//! answer that cannot be used (always a 502: stage 1's numbers are never
//! passed off as stage 2's).

use std::time::Duration;

use bytes::Bytes;
use cascadia_oip::json::InferResponse;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;

use super::Wire;
use crate::core::body::ResponseBody;
use crate::core::errors::GatewayError;
use crate::core::headers;
use crate::forward::{self, Downstream, RequestBody, Upstream};
pub use crate::routing::stages::UnusableReason;
use crate::routing::{Route, Target};

/// One stage-2 call, ready to send.
pub struct Call<'a> {
    /// Where the call goes.
    pub upstream: &'a dyn Upstream,
    pub downstream: Downstream,
    pub route: &'a Route,
    pub target: &'a Target,
    pub wire: Wire,
    /// The client's request head; its headers are rewritten here.
    pub parts: http::request::Parts,
    pub path_and_query: PathAndQuery,
    /// JSON for REST, a framed `ModelInferRequest` for gRPC.
    pub body: Bytes,
    /// Rows in the request; the answer must have as many.
    pub rows: usize,
    /// The cascade's output name.
    pub output: &'a str,
    /// Bound on reading the answer's body (after its head).
    pub body_budget: Duration,
    /// Bound on the answer's bytes, compressed and decoded.
    pub body_limit: usize,
    pub request_id: &'a HeaderValue,
}

/// What stage 2 answered for the escalated rows.
#[derive(Debug)]
pub struct Answer {
    /// Positive-class probabilities, one per escalated row, in order.
    pub scores: Vec<f64>,
    pub model_version: Option<String>,
    /// `x-cascadia-backend` of the endpoint that answered.
    pub backend: Option<HeaderValue>,
}

/// How a stage-2 call ended.
pub enum Outcome {
    Answered(Answer),
    /// Stage 2 refused the request itself (REST 4xx, gRPC
    /// `INVALID_ARGUMENT`): the client sees that answer.
    Refused(Box<Response<ResponseBody>>),
    /// Stage 2 could not be reached or failed (connect error, timeout,
    /// 5xx): the route's `on_unavailable` decides.
    Unavailable(Option<GatewayError>),
    /// The request failed on the client's side (its body): passed on.
    Client(GatewayError),
    /// Stage 2 answered, but not with something the cascade can use.
    Unusable(Unusable),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answered(answer) => f.debug_tuple("Answered").field(answer).finish(),
            Self::Refused(response) => f.debug_tuple("Refused").field(&response.status()).finish(),
            Self::Unavailable(error) => f.debug_tuple("Unavailable").field(error).finish(),
            Self::Client(error) => f.debug_tuple("Client").field(error).finish(),
            Self::Unusable(unusable) => f.debug_tuple("Unusable").field(unusable).finish(),
        }
    }
}

/// Why an answer could not be used.
#[derive(Debug)]
pub struct Unusable {
    pub reason: UnusableReason,
    /// For the log only.
    pub detail: String,
}

/// The counted reason for an answer stage 2's checks refused.
fn reason_of(error: &cascadia_cascade::stage2::AnswerError) -> UnusableReason {
    use cascadia_cascade::stage2::AnswerError as E;
    match error {
        E::MissingOutput(_) => UnusableReason::MissingOutput,
        E::Datatype { .. } => UnusableReason::Datatype,
        E::Shape { .. } => UnusableReason::Shape,
        E::NotProbability { .. } => UnusableReason::NotProbability,
    }
}

fn unusable(reason: UnusableReason, detail: impl Into<String>) -> Unusable {
    Unusable {
        reason,
        detail: detail.into(),
    }
}

/// The stage-2 request's headers: the client's, minus everything that
/// would let the client decide what the gateway has to parse.
pub fn own_headers(headers: &mut HeaderMap, wire: Wire) {
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ACCEPT_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.remove("grpc-encoding");
    headers.remove("grpc-accept-encoding");
    headers.remove("inference-header-content-length");
    match wire {
        Wire::Rest => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        Wire::Grpc => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
        }
    }
}

/// Sends the call on the route's split (retries, failover and all) and
/// reads the answer.
pub async fn call(mut call: Call<'_>) -> Outcome {
    own_headers(&mut call.parts.headers, call.wire);
    let exchange = forward::Exchange {
        route: call.route,
        target: call.target,
        parts: call.parts,
        path_and_query: call.path_and_query,
        body: RequestBody::Buffered(call.body),
        request_id: call.request_id,
    };
    let sent = forward::forward(call.upstream, call.downstream, exchange).await;
    let response = match sent {
        Ok(response) => response,
        Err(
            error @ (GatewayError::BodyTooLarge { .. }
            | GatewayError::RequestBody(_)
            | GatewayError::BadRequest(_)),
        ) => return Outcome::Client(error),
        Err(error) => return Outcome::Unavailable(Some(error)),
    };
    let status = response.status();
    if status.is_client_error() && call.wire == Wire::Rest {
        return Outcome::Refused(Box::new(response));
    }
    if !status.is_success() {
        return Outcome::Unavailable(None);
    }
    let backend = response.headers().get(headers::X_CASCADIA_BACKEND).cloned();
    let (head, body) = response.into_parts();
    let collected = match tokio::time::timeout(
        call.body_budget,
        http_body_util::Limited::new(body, call.body_limit).collect(),
    )
    .await
    {
        Err(_) => return Outcome::Unavailable(None),
        Ok(Err(error)) => {
            if error.is::<http_body_util::LengthLimitError>() {
                return Outcome::Unusable(unusable(
                    UnusableReason::TooLarge,
                    format!("answer over {} bytes", call.body_limit),
                ));
            }
            // Reset or cut off mid-body: the upstream failed.
            return Outcome::Unavailable(None);
        }
        Ok(Ok(collected)) => collected,
    };
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    let parsed = match call.wire {
        Wire::Rest => rest_answer(&head.headers, &bytes, call.body_limit),
        Wire::Grpc => {
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| head.headers.get("grpc-status"));
            match status.map(HeaderValue::as_bytes) {
                Some(b"0") => grpc_answer(&head.headers, &bytes, call.body_limit),
                // The request's own fault, as stage 2 saw it.
                Some(b"3") => {
                    let message = trailers
                        .as_ref()
                        .and_then(|t| t.get("grpc-message"))
                        .or_else(|| head.headers.get("grpc-message"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("invalid argument");
                    return Outcome::Refused(Box::new(crate::core::errors::grpc_status(
                        3,
                        message,
                        call.request_id,
                    )));
                }
                _ => return Outcome::Unavailable(None),
            }
        }
    };
    let response = match parsed {
        Ok(response) => response,
        Err(unusable) => return Outcome::Unusable(unusable),
    };
    match cascadia_cascade::stage2::scores(&response, call.output, call.rows) {
        Ok(scores) => Outcome::Answered(Answer {
            scores,
            model_version: response.model_version,
            backend,
        }),
        Err(error) => Outcome::Unusable(unusable(reason_of(&error), error.to_string())),
    }
}

/// A REST answer's JSON, decoded first if stage 2 compressed it anyway.
fn rest_answer(
    headers: &HeaderMap,
    bytes: &Bytes,
    limit: usize,
) -> Result<InferResponse, Unusable> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let decoded;
    let json: &[u8] = match encoding.as_deref() {
        None | Some("identity") => bytes,
        Some(coding) => {
            decoded = decode(coding, bytes, limit)?;
            &decoded
        }
    };
    serde_json::from_slice(json).map_err(|error| {
        unusable(
            UnusableReason::Malformed,
            format!("answer is not OIP JSON: {error}"),
        )
    })
}

/// A gRPC answer's message, decompressed when its frame says so.
fn grpc_answer(
    headers: &HeaderMap,
    bytes: &Bytes,
    limit: usize,
) -> Result<InferResponse, Unusable> {
    use prost::Message;
    let (compressed, message) = cascadia_oip::grpc::decode_frame(bytes)
        .map_err(|_| unusable(UnusableReason::Malformed, "not one gRPC frame"))?;
    let decoded;
    let message = if compressed {
        let coding = headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_ascii_lowercase();
        decoded = decode(&coding, message, limit)?;
        &decoded[..]
    } else {
        message
    };
    let response = cascadia_oip::grpc::ModelInferResponse::decode(message)
        .map_err(|_| unusable(UnusableReason::Malformed, "not a ModelInferResponse"))?;
    cascadia_cascade::grpc::to_json_response(&response)
        .map_err(|error| unusable(UnusableReason::Malformed, error.to_string()))
}

/// Decodes a compressed answer within the body limit.
fn decode(coding: &str, bytes: &[u8], limit: usize) -> Result<Vec<u8>, Unusable> {
    use crate::core::coding::CodingError;
    crate::core::coding::decode(coding, bytes, limit).map_err(|error| {
        let reason = match error {
            CodingError::TooLarge(_) => UnusableReason::TooLarge,
            CodingError::Unsupported(_) | CodingError::Corrupt { .. } => UnusableReason::Encoding,
        };
        unusable(reason, format!("stage-2 answer: {error}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::coding::gzip;
    use std::io::Write;

    fn reason(unusable: Unusable) -> UnusableReason {
        unusable.reason
    }

    #[test]
    fn the_clients_encoding_preferences_never_reach_stage_2() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        headers.insert("grpc-accept-encoding", HeaderValue::from_static("gzip"));
        headers.insert("x-user-id", HeaderValue::from_static("u1"));
        own_headers(&mut headers, Wire::Rest);
        assert_eq!(headers[header::ACCEPT_ENCODING], "identity");
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
        assert!(headers.get("grpc-accept-encoding").is_none());
        assert_eq!(headers["x-user-id"], "u1", "other headers stay");
        own_headers(&mut headers, Wire::Grpc);
        assert_eq!(headers["grpc-accept-encoding"], "identity");
        assert!(headers.get(header::ACCEPT_ENCODING).is_none());
    }

    #[test]
    fn gzipped_and_deflated_answers_are_read_within_the_limit() {
        let json = br#"{"model_name":"m","outputs":[]}"#;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let parsed = rest_answer(&headers, &Bytes::from(gzip(json)), 1024).unwrap();
        assert_eq!(parsed.model_name, "m");

        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(json).unwrap();
        assert_eq!(
            decode("deflate", &zlib.finish().unwrap(), 1024).unwrap(),
            json
        );

        // A small bomb: 1 MB of zeros is over a 1 KB limit once decoded.
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert_eq!(
            reason(decode("gzip", &bomb, 1024).unwrap_err()),
            UnusableReason::TooLarge
        );
        assert_eq!(
            reason(decode("br", json, 1024).unwrap_err()),
            UnusableReason::Encoding
        );
        assert_eq!(
            reason(decode("gzip", b"not gzip at all", 1024).unwrap_err()),
            UnusableReason::Encoding
        );
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert_eq!(
            reason(rest_answer(&headers, &Bytes::from_static(b"<html>"), 1024).unwrap_err()),
            UnusableReason::Malformed
        );
    }

    #[test]
    fn a_compressed_grpc_answer_is_decoded_by_its_grpc_encoding() {
        use prost::Message;
        let message = cascadia_oip::grpc::ModelInferResponse {
            model_name: "m".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let compressed = gzip(&message);
        let mut frame = vec![1u8];
        frame.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        frame.extend_from_slice(&compressed);
        let frame = Bytes::from(frame);
        let mut headers = HeaderMap::new();
        assert_eq!(
            reason(grpc_answer(&headers, &frame, 1024).unwrap_err()),
            UnusableReason::Encoding,
            "a compressed frame without grpc-encoding"
        );
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(grpc_answer(&headers, &frame, 1024).unwrap().model_name, "m");
    }
}
