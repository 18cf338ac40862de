//! The proxy: the [`tower::Service`] that takes a downstream request through
//! its phases and streams the upstream response back.
//!
//! # Phases
//! This is the one place their order is written: [`Proxy::handle`] runs
//! them for REST in `handle_http`, and `grpc::handle` in the same order for
//! gRPC. Each runs once per request, in this order, and each is a function:
//! 1. **admit** (`admit`, then `admit_to_route` once the route is known):
//!    the request id; head and declared-body limits; the route's rate limits
//!    and load shedding.
//! 2. **match** ([`match_request`]): the route (OIP model, gRPC
//!    `model_name`, or path prefix), or the gateway's own health answers.
//! 3. **stage 1** ([`crate::cascade`], cascade routes' inference calls
//!    only): score the rows, answer the confident ones, escalate the rest
//!    through phases 4–5 and merge the answers.
//! 4. **split** ([`choose_target`]): the version (forced, sticky by key, or
//!    weighted random).
//! 5. **select**, **forward**, **respond** ([`crate::forward::forward`]):
//!    the endpoint, the attempts (retry, hedge, deadline, blame) and the
//!    answer stamped with the request id, version and backend.
//!
//! Every failure becomes a response in [`crate::core::errors`]; nothing is
//! dropped without an answer. The per-phase context is explicit: the
//! cascade gets a [`crate::cascade::Stage1`], forwarding an
//! [`Exchange`], and the [`Upstream`] they send to is this proxy's (the
//! endpoints' connections, or a unit test's mock).

mod access;
mod grpc;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cascadia_oip::path::{self as oip_path, OipKind};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::core::body::{read_limited, DownstreamBody, LimitedBody, ResponseBody};
use crate::core::errors::GatewayError;
use crate::core::{body, budget, coding, headers};
use crate::forward::{
    forward, upstream_path, Downstream, Exchange, Pools, RequestBody, Upstream, REPLAY_LIMIT,
};
use crate::routing::{choose_target, Route};
use crate::shadow::Mirror;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::telemetry::trace;

/// The proxy service for one downstream connection.
#[derive(Clone, Debug)]
pub struct Proxy {
    snapshot: SharedSnapshot,
    /// The peer of the downstream connection, for `forwarded` headers.
    client: SocketAddr,
    /// Where attempts go: the endpoints' connections, or a unit test's mock.
    upstream: Arc<dyn Upstream>,
}

impl std::fmt::Debug for dyn Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

impl Proxy {
    /// A proxy for requests arriving from `client`, to the real upstreams.
    pub fn new(snapshot: SharedSnapshot, client: SocketAddr) -> Self {
        static POOLS: std::sync::OnceLock<Arc<dyn Upstream>> = std::sync::OnceLock::new();
        let upstream = POOLS.get_or_init(|| Arc::new(Pools));
        Self::with_upstream(snapshot, client, Arc::clone(upstream))
    }

    /// A proxy whose attempts go to `upstream`.
    pub fn with_upstream(
        snapshot: SharedSnapshot,
        client: SocketAddr,
        upstream: Arc<dyn Upstream>,
    ) -> Self {
        Self {
            snapshot,
            client,
            upstream,
        }
    }

    /// Runs one request through every phase. Never fails: errors become
    /// responses here.
    pub async fn handle<B: Into<DownstreamBody>>(
        self,
        request: Request<B>,
    ) -> Response<ResponseBody> {
        let request = request.map(Into::into);
        let request_id = headers::request_id(request.headers());
        // Loaded once: the request finishes on the snapshot it started with.
        let snapshot = self.snapshot.load_full();
        let is_grpc = grpc::is_grpc(&request);
        let method = request.method().clone();
        // Kept for the error log; a `Uri` clone shares its bytes.
        let uri = request.uri().clone();
        let started = Instant::now();
        let mut matched = None;
        // An HTTP/1 request refused before its body was read leaves that
        // body on the connection; hyper then closes it rather than reading
        // it, so the refusal must say so or the client's next request on
        // the connection fails (a broken pipe).
        let unread_body_closes =
            request.version() < Version::HTTP_2 && !request.body().is_end_stream();
        let http_version = request.version();
        let bytes_in = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| request.body().is_end_stream().then_some(0));
        let span = trace::request_span(request.headers(), &method, uri.path());
        // gRPC is boxed: its future is several KB, and inline it would make
        // every REST request's future that large too.
        let result = if is_grpc {
            span.scope(Box::pin(grpc::handle(
                &self,
                &snapshot,
                request,
                &request_id,
                &mut matched,
            )))
            .await
        } else {
            span.scope(self.handle_http(&snapshot, request, &request_id, &mut matched))
                .await
        };
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(error) => error.status().as_u16(),
        };
        if span.is_active() {
            span.set("http.response.status_code", i64::from(status));
            if let Some(route) = &matched {
                span.set("cascadia.route", route.name.to_string());
            }
        }
        if let Err(error) = &result {
            span.fail(error.label());
        }
        drop(span);
        let stats = matched.as_ref().map_or(&snapshot.unmatched, |r| &r.stats);
        stats.record(status, started.elapsed());
        // Only a cascade route answers from the gateway itself.
        if let (Ok(response), Some(true)) = (&result, matched.as_ref().map(|r| r.cascade.is_some()))
        {
            let stage = response.headers().get(crate::cascade::X_CASCADIA_STAGE);
            if stage.is_some_and(|v| v == "local") {
                stats.record_local(status);
            }
        }
        match &result {
            Err(GatewayError::Overloaded { .. }) => {
                stats
                    .shed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(GatewayError::RateLimited { .. }) => {
                stats
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => {}
        }
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let status = error.status();
                if status.is_server_error() {
                    tracing::warn!(
                        request_id = request_id.to_str().unwrap_or_default(),
                        %method, path = uri.path(), side = %error.side(), error = error.label(),
                        detail = %ErrorChain(&error),
                        "request failed"
                    );
                } else {
                    tracing::debug!(
                        request_id = request_id.to_str().unwrap_or_default(),
                        %method, path = uri.path(), side = %error.side(), error = error.label(),
                        detail = %ErrorChain(&error),
                        "request refused"
                    );
                }
                if is_grpc {
                    error.to_grpc(&request_id)
                } else {
                    let mut response = error.to_http(&request_id);
                    if unread_body_closes {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    response
                }
            }
        };
        access::log(
            &snapshot,
            access::AccessRecord {
                method: &method,
                path: uri.path(),
                version: http_version,
                route: matched.as_ref().map(|r| &*r.name),
                status: response.status().as_u16(),
                elapsed: started.elapsed(),
                request_headers_length: bytes_in,
                response_headers: Some(response.headers()),
                response_body_length: http_body::Body::size_hint(response.body()).exact(),
                request_id: request_id.to_str().unwrap_or_default(),
                peer: self.client,
            },
        );
        response
    }

    /// Where this proxy's attempts go.
    pub(crate) fn upstream(&self) -> &Arc<dyn Upstream> {
        &self.upstream
    }

    /// Who sent the request, for the `forwarded` headers upstream.
    pub(crate) fn downstream(&self, snapshot: &Snapshot) -> Downstream {
        let peer = self.client;
        let trusted = snapshot
            .config
            .gateway
            .trusted_proxies
            .iter()
            .any(|net| net.contains(peer.ip()));
        Downstream { peer, trusted }
    }

    /// The address a request came from: the peer, or, when the peer is a
    /// trusted proxy, the nearest address in `x-forwarded-for` that is not
    /// one.
    pub(crate) fn client_address(
        &self,
        snapshot: &Snapshot,
        headers: &http::HeaderMap,
    ) -> std::net::IpAddr {
        let trusted = &snapshot.config.gateway.trusted_proxies;
        headers::client_address(headers, self.client.ip(), trusted)
    }

    async fn handle_http(
        &self,
        snapshot: &Arc<Snapshot>,
        request: Request<DownstreamBody>,
        request_id: &HeaderValue,
        matched: &mut Option<Arc<Route>>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        // Phase: admit.
        admit(snapshot, &request)?;

        // Phase: match.
        // A `Uri` clone shares its bytes: the path outlives `request`.
        let uri = request.uri().clone();
        let (route, oip) = match match_request(&snapshot.routes, uri.path())? {
            Matched::Health(kind) => {
                return Ok(health_response(kind, request.method(), request_id));
            }
            Matched::Route { route, oip } => (route, oip),
        };
        *matched = Some(Arc::clone(route));
        let is_infer = oip.is_some_and(|p| p.kind == OipKind::ModelInfer);
        let client = self.client_address(snapshot, request.headers());
        let admitted = admit_to_route(route, request.headers(), client).await?;
        let (mut parts, incoming) = request.into_parts();

        // Triton's binary tensor extension (tritonclient's default) becomes
        // plain OIP JSON, which every model server accepts.
        let json_len = parts
            .headers
            .get(INFERENCE_HEADER_CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let limit = snapshot.config.gateway.limits.max_body_bytes;
        let body_timeout = body::BodyTimeouts::of(&snapshot.config.gateway.limits);
        let (preread, incoming) = match json_len {
            Some(json_len) if is_infer => {
                let buffers = &snapshot.runtimes.buffers;
                let body = read_limited(incoming, limit, body_timeout, buffers).await?;
                // tritonclient's `request_compression_algorithm`.
                let body = coding::decode_request(&mut parts.headers, body, limit)?;
                // The JSON must fit the same limit as the body it replaces.
                let max_json = usize::try_from(limit).unwrap_or(usize::MAX);
                let json = match convert_binary(body, json_len, max_json).await {
                    Ok(json) => buffers.account(Bytes::from(json))?,
                    Err(cascadia_oip::json::BinaryError::TooLarge { .. }) => {
                        return Err(GatewayError::BodyTooLarge { limit })
                    }
                    Err(cascadia_oip::json::BinaryError::Invalid(message)) => {
                        return Err(GatewayError::InvalidPayload(message))
                    }
                };
                parts.headers.remove(INFERENCE_HEADER_CONTENT_LENGTH);
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                (Some(json), None)
            }
            _ => (None, Some(incoming)),
        };

        // Phase: stage 1, for cascade routes' inference calls.
        if let (Some(cascade), Some(p), true) = (&route.cascade, oip, is_infer) {
            let route = Arc::clone(route);
            let model = (
                p.model.unwrap_or_default().to_owned(),
                p.version.map(str::to_owned),
            );
            let cx = crate::cascade::Stage1 {
                upstream: &self.upstream,
                downstream: self.downstream(snapshot),
                snapshot,
                route: &route,
                stage: cascade,
                request_id,
            };
            // Boxed: the cascade's future is several KB, and inline it
            // would make every request's future (and each move of it) that
            // large, whatever its route.
            return match (preread, incoming) {
                (Some(body), _) => {
                    Box::pin(crate::cascade::handle_body(cx, parts, body, model)).await
                }
                (None, Some(incoming)) => {
                    let request = Request::from_parts(parts, incoming);
                    Box::pin(crate::cascade::handle(cx, request, model)).await
                }
                (None, None) => unreachable!("the body is either read or not"),
            };
        }

        // Phase: split.
        let target = choose_target(route, &parts.headers)?;

        // Phase: forward. The path changes only when the target serves the
        // model under another name or version.
        let path_and_query = upstream_path(target, oip, &parts.uri)?;
        let shadow = route.shadow.as_ref().filter(|_| is_infer);
        let body = match (preread, incoming) {
            (Some(body), _) => RequestBody::Buffered(body),
            (None, Some(incoming)) => {
                let buffers = &snapshot.runtimes.buffers;
                request_body(
                    route,
                    incoming,
                    limit,
                    body_timeout,
                    shadow.is_some(),
                    buffers,
                )
                .await?
            }
            (None, None) => unreachable!("the body is either read or not"),
        };
        // Shadow traffic: decided now (the body is still here), sent once
        // the primary has answered.
        let mirror = match (shadow, &body) {
            (Some(shadow), RequestBody::Buffered(bytes)) => {
                let load = route.admission.as_ref().map(|a| a.load());
                Mirror::prepare(shadow, load, &parts.headers, bytes)
                    .zip(upstream_path(&shadow.target, oip, &parts.uri).ok())
            }
            _ => None,
        };
        let started = Instant::now();
        let downstream = self.downstream(snapshot);
        let exchange = Exchange {
            route,
            target,
            parts,
            path_and_query,
            body,
            request_id,
        };
        let mut response = forward(&*self.upstream, downstream, exchange).await?;
        if let Some((mirror, path)) = mirror {
            if response.status().is_success() {
                let primary = response.body_mut().capture(crate::shadow::COMPARE_LIMIT);
                mirror.send(
                    path,
                    Arc::clone(&target.version),
                    started.elapsed(),
                    primary,
                );
            }
        }
        response.body_mut().hold(admitted);
        Ok(response)
    }
}

/// The proxy as a `tower` service, over any request body the gateway can
/// take (hyper's, or a test's).
impl<B: Into<DownstreamBody> + Send + 'static> tower::Service<Request<B>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move { Ok(proxy.handle(request).await) })
    }
}

/// Phase admit: refuses heads and declared bodies over the limits before
/// anything is read or forwarded.
pub(crate) fn admit<B>(snapshot: &Snapshot, request: &Request<B>) -> Result<(), GatewayError> {
    let limits = &snapshot.config.gateway.limits;
    let (count, size) = headers::head_size(request.headers());
    if count > limits.max_headers {
        return Err(GatewayError::TooManyHeaders {
            count,
            limit: limits.max_headers,
        });
    }
    if size > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            size,
            limit: limits.max_header_bytes,
        });
    }
    if let Some(length) = request.headers().get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or(GatewayError::BadRequest("invalid content-length"))?;
        if length > limits.max_body_bytes {
            return Err(GatewayError::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
    }
    // hyper frames a `gzip, chunked` body as chunked, and the coding (a
    // hop-by-hop header) would be dropped on the way upstream: the backend
    // would read gzip bytes as the body. Only plain `chunked` is taken.
    for coding in request.headers().get_all(header::TRANSFER_ENCODING) {
        let plain = coding
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !plain {
            return Err(GatewayError::TransferCoding);
        }
    }
    Ok(())
}

/// The error for a rate-limited request, rounding the wait up to whole
/// seconds for `Retry-After`.
/// Phase admit, per route: the rate limits, then load shedding (a full
/// route answers at once instead of queueing). The slot, if any, is held
/// until the response body ends.
pub(crate) async fn admit_to_route(
    route: &Route,
    headers: &http::HeaderMap,
    client: std::net::IpAddr,
) -> Result<Option<crate::core::admission::Admitted>, GatewayError> {
    let span = trace::child("cascadia.admission");
    if let Some(limiter) = &route.rate_limit {
        if let Err(wait) = limiter.check(headers, client).await {
            span.fail("rate limited");
            return Err(rate_limited(wait));
        }
    }
    match &route.admission {
        Some(admission) => match admission.try_admit() {
            Some(admitted) => Ok(Some(admitted)),
            None => {
                span.fail("shed");
                Err(GatewayError::Overloaded {
                    route: route.name.to_string(),
                })
            }
        },
        None => Ok(None),
    }
}

pub(crate) fn rate_limited(wait: Duration) -> GatewayError {
    GatewayError::RateLimited {
        retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    }
}

/// Triton's binary-extension header: the length of the JSON part.
const INFERENCE_HEADER_CONTENT_LENGTH: http::HeaderName =
    http::HeaderName::from_static("inference-header-content-length");

/// Bodies above this size are converted from Triton's binary format off
/// the worker: a few MB of tensor take milliseconds of CPU to spell out
/// as JSON, which would stall every other request on the worker.
const INLINE_CONVERSION_LIMIT: usize = 64 * 1024;

/// Triton binary request → OIP JSON, on a blocking thread when large.
async fn convert_binary(
    body: Bytes,
    json_len: usize,
    max_json: usize,
) -> Result<Vec<u8>, cascadia_oip::json::BinaryError> {
    use cascadia_oip::json::binary_request_to_json;
    if body.len() <= INLINE_CONVERSION_LIMIT {
        return binary_request_to_json(&body, json_len, max_json);
    }
    tokio::task::spawn_blocking(move || binary_request_to_json(&body, json_len, max_json))
        .await
        // A panic in the converter is a gateway bug: it surfaces as one
        // here too (the fuzz target runs the same function).
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

/// What the match phase found for a REST path.
#[derive(Debug)]
pub enum Matched<'a> {
    /// The gateway's own `/v2/health/live` or `/v2/health/ready`.
    Health(OipKind),
    /// A route: by the OIP model in the path (`oip` is then the parsed
    /// path), else by the longest path prefix.
    Route {
        route: &'a Arc<Route>,
        oip: Option<oip_path::OipPath<'a>>,
    },
}

/// Phase match for a REST request: refuses paths that could escape a
/// prefix route (dot segments, encoded slashes), then finds the route.
/// Public so the fuzz target and the bench run the proxy's own matching.
pub fn match_request<'a>(
    routes: &'a crate::routing::RouteTable,
    path: &'a str,
) -> Result<Matched<'a>, GatewayError> {
    // Most paths have no byte either check looks for: one pass decides.
    let suspect = path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\'));
    if suspect && has_dot_segment(path) {
        return Err(GatewayError::BadRequest("path has dot segments"));
    }
    if suspect && has_encoded_separator(path) {
        return Err(GatewayError::BadRequest("path has encoded slashes"));
    }
    let oip = oip_path::parse(path);
    if let Some(p) = oip {
        if matches!(p.kind, OipKind::ServerLive | OipKind::ServerReady) {
            return Ok(Matched::Health(p.kind));
        }
        if let Some(route) = p.model.and_then(|m| routes.by_model(m)) {
            return Ok(Matched::Route {
                route,
                oip: Some(p),
            });
        }
    }
    let route = routes.by_path(path).ok_or(GatewayError::NoRoute)?;
    Ok(Matched::Route { route, oip: None })
}

/// The request body: in memory when it may be sent more than once (a
/// retry, a hedge, or a shadow mirror: `mirrored`), streamed otherwise.
async fn request_body(
    route: &Route,
    incoming: DownstreamBody,
    limit: u64,
    timeouts: body::BodyTimeouts,
    mirrored: bool,
    buffers: &Arc<budget::BufferBudget>,
) -> Result<RequestBody, GatewayError> {
    if incoming.is_end_stream() {
        return Ok(RequestBody::Buffered(Bytes::new()));
    }
    let declared = incoming.size_hint().exact();
    let retryable = route.idempotent && (route.attempts > 1 || route.hedge.is_some());
    match declared {
        Some(length) if (retryable || mirrored) && length <= REPLAY_LIMIT => Ok(
            RequestBody::Buffered(read_limited(incoming, limit, timeouts, buffers).await?),
        ),
        // A declared length was checked at admission and hyper enforces it;
        // the limit matters for bodies of unknown length. Every streamed
        // body gets the idle timeout (slow bodies).
        _ => {
            let progress = Arc::new(body::BodyProgress::default());
            let limited = LimitedBody::new(incoming, limit).with_timeouts(timeouts);
            Ok(RequestBody::Streaming {
                body: Some(body::TrackedBody::new(limited, Arc::clone(&progress)).boxed_unsync()),
                progress,
            })
        }
    }
}

/// True for paths with an encoded `/` or `\\` (or a raw `\\`): an upstream
/// that decodes or normalises them would see other segments than the
/// route matched (`/echo/..%2fadmin`).
fn has_encoded_separator(path: &str) -> bool {
    path.contains('\\')
        || path.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
        })
}

/// True for paths with `.` or `..` segments, which an upstream might
/// resolve to somewhere the route did not intend.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        // Percent-encoded dots (`%2e%2e`) are dot segments too, for any
        // upstream that decodes before it resolves.
        let decoded;
        let segment = if segment.contains('%') {
            decoded = segment.replace("%2e", ".").replace("%2E", ".");
            decoded.as_str()
        } else {
            segment
        };
        segment == "." || segment == ".."
    })
}

/// The gateway's own `/v2/health/live` and `/v2/health/ready`: it is live
/// while it answers, and ready once it serves a config (always, since it
/// starts only with a valid one).
fn health_response(
    kind: OipKind,
    method: &Method,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        return GatewayError::MethodNotAllowed.to_http(request_id);
    }
    // Draining (after SIGTERM): still live, no longer ready, so the load
    // balancer takes this replica out while it finishes its work.
    let draining = crate::core::lifecycle::is_draining();
    let (status, body): (StatusCode, &'static [u8]) = match kind {
        OipKind::ServerLive => (StatusCode::OK, br#"{"live":true}"#),
        _ if draining => (StatusCode::SERVICE_UNAVAILABLE, br#"{"ready":false}"#),
        _ => (StatusCode::OK, br#"{"ready":true}"#),
    };
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID, request_id.clone());
    response
}

/// Displays an error with its whole cause chain, for the log.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod cascade_tests;

#[cfg(test)]
mod tests {
    use super::has_dot_segment;

    #[test]
    fn dot_segments_are_found_plain_or_encoded() {
        for path in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/a/b", "/a/..b/c", "/v2/models/m.v1/infer", "/a/%2ex"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }
}
