//! Every way a request can fail, and the one place that maps each failure to
//! what the client sees: an HTTP status with a JSON body, or a gRPC status.
//!
//! Clients get a short generic message and the request id; the detail (the
//! cause chain, the endpoint address) goes to the log only, so no internal
//! host, port or panic text ever leaves the gateway.

use std::fmt;

use bytes::Bytes;
use cascadia_backends::{UpstreamError, UpstreamErrorKind};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

use crate::core::body::ResponseBody;

/// Which side of the gateway a failure came from. Logged with every error
/// so an operator can tell a bad client from a bad backend at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// The gateway's own config has no answer for the request.
    Gateway,
    /// The backend failed or was unreachable.
    Upstream,
}

/// A request the gateway could not complete.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("request body exceeds the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("request has {count} headers, limit is {limit}")]
    TooManyHeaders { count: usize, limit: usize },
    #[error("request headers are {size} bytes, limit is {limit}")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("no route matches the request")]
    NoRoute,
    #[error("forced version {0:?} is not in the route's split")]
    UnknownVersion(String),
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// The payload is well-formed HTTP but not a valid inference request;
    /// the message (written by the gateway's own validators, never an
    /// upstream's or a library's text) says what is wrong with it.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("gRPC method {0} is not supported")]
    Unimplemented(String),
    #[error("no healthy backend for version {version}")]
    NoHealthyBackend { version: String },
    #[error("the request's deadline passed")]
    DeadlineExceeded,
    #[error("route {route} is at its concurrency limit")]
    Overloaded { route: String },
    /// The gateway-wide budget for buffered request bytes is spent.
    #[error("the gateway's buffered request bytes are at limits.max_buffered_bytes")]
    BufferBudget,
    #[error("rate limit exceeded; retry in {retry_after_secs}s")]
    RateLimited { retry_after_secs: u64 },
    #[error("upstream attempt to {backend} failed")]
    Upstream {
        backend: String,
        #[source]
        source: UpstreamError,
    },
    #[error("request body failed while streaming")]
    RequestBody(#[source] UpstreamError),
    #[error("the request body stalled")]
    BodyTimeout,
    #[error("a transfer coding other than chunked")]
    TransferCoding,
    /// Stage 2 answered a cascade's escalation with something the cascade
    /// cannot use (compressed in an unknown coding, not OIP, the wrong
    /// output, shape or datatype).
    #[error("stage 2 gave an unusable answer ({reason})")]
    Stage2Unusable { reason: &'static str },
}

/// How a failure is presented to a client.
struct Presentation<'e> {
    status: StatusCode,
    /// gRPC status code for gRPC clients (see `grpc/status.h`).
    grpc_code: u8,
    /// What the client reads. Generic on purpose: no addresses, no causes.
    message: &'e str,
}

impl GatewayError {
    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            Self::BodyTooLarge { .. }
            | Self::TooManyHeaders { .. }
            | Self::HeadersTooLarge { .. }
            | Self::UnknownVersion(_)
            | Self::BadRequest(_)
            | Self::InvalidPayload(_)
            | Self::MethodNotAllowed
            | Self::Unimplemented(_)
            | Self::RateLimited { .. }
            | Self::BodyTimeout
            | Self::TransferCoding
            | Self::RequestBody(_) => Side::Downstream,
            Self::NoRoute | Self::Overloaded { .. } | Self::BufferBudget => Side::Gateway,
            Self::NoHealthyBackend { .. }
            | Self::DeadlineExceeded
            | Self::Upstream { .. }
            | Self::Stage2Unusable { .. } => Side::Upstream,
        }
    }

    /// A low-cardinality label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::TooManyHeaders { .. } => "too_many_headers",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::NoRoute => "no_route",
            Self::UnknownVersion(_) => "unknown_version",
            Self::BadRequest(_) => "bad_request",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unimplemented(_) => "unimplemented",
            Self::NoHealthyBackend { .. } => "no_healthy_backend",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Overloaded { .. } => "overloaded",
            Self::RateLimited { .. } => "rate_limited",
            Self::BufferBudget => "buffer_budget",
            Self::BodyTimeout => "body_timeout",
            Self::TransferCoding => "transfer_coding",
            Self::Stage2Unusable { .. } => "stage2_unusable",
            Self::Upstream { source, .. } => match source.kind() {
                UpstreamErrorKind::Connect => "upstream_connect",
                UpstreamErrorKind::Timeout => "upstream_timeout",
                UpstreamErrorKind::Protocol => "upstream_protocol",
                UpstreamErrorKind::RequestBody => "request_body",
            },
            Self::RequestBody(_) => "request_body",
        }
    }

    fn presentation(&self) -> Presentation<'_> {
        use StatusCode as S;
        let (status, grpc_code, message) = match self {
            Self::BodyTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, 8, "request body too large"),
            Self::TooManyHeaders { .. } => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                8,
                "too many request headers",
            ),
            Self::HeadersTooLarge { .. } => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                8,
                "request headers too large",
            ),
            Self::NoRoute => (S::NOT_FOUND, 5, "no route for this request"),
            Self::UnknownVersion(_) => (S::BAD_REQUEST, 3, "unknown version requested"),
            Self::BadRequest(what) => (S::BAD_REQUEST, 3, *what),
            Self::InvalidPayload(what) => (S::BAD_REQUEST, 3, what.as_str()),
            Self::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, 12, "method not allowed"),
            Self::Unimplemented(_) => (S::NOT_IMPLEMENTED, 12, "method not supported"),
            Self::NoHealthyBackend { .. } => (S::SERVICE_UNAVAILABLE, 14, "no backend available"),
            Self::DeadlineExceeded => (S::GATEWAY_TIMEOUT, 4, "deadline exceeded"),
            Self::Overloaded { .. } => (S::SERVICE_UNAVAILABLE, 8, "overloaded, retry later"),
            Self::RateLimited { .. } => (S::TOO_MANY_REQUESTS, 8, "rate limit exceeded"),
            Self::BufferBudget => (S::SERVICE_UNAVAILABLE, 8, "overloaded, retry later"),
            Self::BodyTimeout => (S::REQUEST_TIMEOUT, 4, "timed out reading the request body"),
            // RFC 9112 §6.1: an unknown transfer coding is a 501.
            Self::TransferCoding => (
                S::NOT_IMPLEMENTED,
                3,
                "only the chunked transfer coding is supported",
            ),
            Self::Stage2Unusable { .. } => (S::BAD_GATEWAY, 13, "stage 2 gave an unusable answer"),
            Self::Upstream { source, .. } => match source.kind() {
                UpstreamErrorKind::Connect => (S::BAD_GATEWAY, 14, "backend unavailable"),
                UpstreamErrorKind::Timeout => (S::GATEWAY_TIMEOUT, 4, "backend timed out"),
                UpstreamErrorKind::Protocol => (S::BAD_GATEWAY, 14, "backend failed"),
                UpstreamErrorKind::RequestBody => (S::BAD_REQUEST, 3, "request body failed"),
            },
            Self::RequestBody(_) => (S::BAD_REQUEST, 3, "request body failed"),
        };
        Presentation {
            status,
            grpc_code,
            message,
        }
    }

    /// The HTTP status a REST client gets.
    pub fn status(&self) -> StatusCode {
        self.presentation().status
    }

    /// The response for a REST client: `{"error": "...", "request_id": "..."}`.
    pub fn to_http(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let p = self.presentation();
        let mut response = json_error(p.status, p.message, request_id);
        self.add_retry_after(response.headers_mut());
        response
    }

    /// Every backend being down is a state that lasts: tell clients when to
    /// come back instead of letting them hammer the gateway.
    fn add_retry_after(&self, headers: &mut HeaderMap) {
        match self {
            Self::NoHealthyBackend { .. } | Self::Overloaded { .. } | Self::BufferBudget => {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_secs).max(1)),
                );
            }
            _ => {}
        }
    }

    /// The response for a gRPC client: a trailers-only response carrying
    /// `grpc-status` and `grpc-message`, as gRPC over HTTP/2 specifies.
    pub fn to_grpc(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let p = self.presentation();
        let mut response = grpc_status(p.grpc_code, p.message, request_id);
        self.add_retry_after(response.headers_mut());
        response
    }
}

/// A JSON error response. `message` must be a fixed, client-safe string.
pub fn json_error(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": message,
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(crate::core::headers::X_REQUEST_ID, request_id.clone());
    response
}

/// A gRPC trailers-only status response.
pub fn grpc_status(code: u8, message: &str, request_id: &HeaderValue) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", value);
    }
    headers.insert(crate::core::headers::X_REQUEST_ID, request_id.clone());
    response
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Downstream => "downstream",
            Side::Gateway => "gateway",
            Side::Upstream => "upstream",
        })
    }
}
