//! The proxy: the tower [`Service`] that takes a downstream request through
//! its phases and streams the upstream response back.
//!
//! # Phases
//! Each request runs these phases in order, once (see the crate docs' chart):
//! 1. **admit**: assign the request id; enforce the head and body limits.
//! 2. **match**: find the route (OIP model, gRPC `model_name`, or path prefix),
//!    or answer the gateway's own health endpoints.
//! 3. **split**: pick the version (forced, sticky by key, or weighted random).
//! 4. **select**: pick the backend pool (preference order) and an endpoint.
//! 5. **forward**: rewrite the request for the upstream and send it.
//! 6. **respond**: stream the response back, stamped with the request id,
//!    version and backend name. Every failure becomes a response in
//!    [`crate::core::errors`]; nothing is dropped without an answer.

mod blame;
mod grpc;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cascadia_backends::{
    choose_pool, BackendPool, Endpoint, Fault, InFlight, Outcome, UpstreamBody, UpstreamErrorKind,
};
use cascadia_config::UpstreamProtocol;
use cascadia_oip::path::{self as oip_path, OipKind};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::core::body::{BodyLimitExceeded, LimitedBody, ResponseBody};
use crate::core::errors::GatewayError;
use crate::core::{body, budget, coding, deadline, headers};
use crate::routing::{Route, SplitError, Target};
use crate::shadow::Mirror;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::telemetry::trace;
use blame::{Failure, FailureLedger, FailureSignature, Verdict};

/// The proxy service for one downstream connection.
#[derive(Clone, Debug)]
pub struct Proxy {
    snapshot: SharedSnapshot,
    /// The peer of the downstream connection, for `forwarded` headers.
    client: SocketAddr,
}

impl Proxy {
    /// A proxy for requests arriving from `client`.
    pub fn new(snapshot: SharedSnapshot, client: SocketAddr) -> Self {
        Self { snapshot, client }
    }

    /// Runs one request through every phase. Never fails: errors become
    /// responses here.
    pub async fn handle(self, request: Request<Incoming>) -> Response<ResponseBody> {
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
        let span = trace::request_span(request.headers(), &method, uri.path());
        let result = if is_grpc {
            span.scope(grpc::handle(
                &self,
                &snapshot,
                request,
                &request_id,
                &mut matched,
            ))
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
        match result {
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
        }
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
        request: Request<Incoming>,
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
                let json =
                    match cascadia_oip::json::binary_request_to_json(&body, json_len, max_json) {
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
                proxy: self,
                snapshot,
                route: &route,
                stage: cascade,
                request_id,
            };
            return match (preread, incoming) {
                (Some(body), _) => crate::cascade::handle_body(cx, parts, body, model).await,
                (None, Some(incoming)) => {
                    crate::cascade::handle(cx, Request::from_parts(parts, incoming), model).await
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
        let mut response = self
            .forward(route, target, parts, path_and_query, body, request_id)
            .await?;
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

    /// Phases select, forward and respond, shared by REST, gRPC and the
    /// cascade's escalations: up to
    /// the route's attempts, each to an endpoint this request has not tried
    /// (preferably in another region), within the request's deadline and
    /// the route's retry budget.
    pub(crate) async fn forward(
        &self,
        route: &Route,
        target: &Target,
        parts: http::request::Parts,
        path_and_query: PathAndQuery,
        body: RequestBody,
        request_id: &HeaderValue,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let started = Instant::now();
        let result = self
            .forward_attempts(route, target, parts, path_and_query, body, request_id)
            .await;
        // Per version, for canary analysis: the time to the answer's head.
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(error) => error.status().as_u16(),
        };
        target.stats.record(status, started.elapsed());
        result
    }

    async fn forward_attempts(
        &self,
        route: &Route,
        target: &Target,
        mut parts: http::request::Parts,
        path_and_query: PathAndQuery,
        mut body: RequestBody,
        request_id: &HeaderValue,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let started = Instant::now();
        let grpc = grpc::is_grpc_parts(&parts);
        // The client's deadline, capped by the route's.
        let budget = match (deadline::client_timeout(&parts.headers), route.timeout) {
            (Some(client), Some(route)) => Some(client.min(route)),
            (a, b) => a.or(b),
        };
        let deadline = budget.map(|b| started + b);

        // The upstream head, prepared once for every attempt.
        let host = parts.headers.remove(header::HOST).or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_hop_by_hop(&mut parts.headers, true);
        let trusted = self
            .snapshot
            .load()
            .config
            .gateway
            .trusted_proxies
            .iter()
            .any(|net| net.contains(self.client.ip()));
        headers::append_forwarded(&mut parts.headers, self.client, host, trusted);
        parts
            .headers
            .insert(headers::X_REQUEST_ID, request_id.clone());

        route.retry_budget.deposit();
        if let Some(hedge) = &route.hedge {
            hedge.budget.deposit();
        }
        let max_attempts = if route.idempotent && body.is_replayable() {
            route.attempts.min(MAX_ATTEMPTS as u32) as usize
        } else {
            1
        };
        let mut tried = Tried::default();
        // Declared after `tried`, whose endpoints it borrows: dropped first.
        let mut ledger = FailureLedger::default();
        let mut last_error = None;
        let mut last_response = None;
        // Every failed attempt, for the log line of a request that no
        // attempt could serve (the client sees only the last).
        let mut failed_attempts = AttemptLog::default();
        let mut attempts_made = 0;

        for attempt in 0..max_attempts {
            if attempt > 0 && !route.retry_budget.withdraw() {
                break;
            }
            let now = Instant::now();
            let remaining = deadline.map(|d| d.saturating_duration_since(now));
            if remaining == Some(Duration::ZERO) {
                last_error = Some(GatewayError::DeadlineExceeded);
                break;
            }

            // Phase: select.
            let Some((index, endpoint)) = tried.select(target, now, grpc, route.latency_slo) else {
                last_error.get_or_insert(GatewayError::NoHealthyBackend {
                    version: target.version.to_string(),
                });
                break;
            };
            tried.record(index, endpoint);
            let is_last = attempt + 1 == max_attempts;
            // Only the first attempt hedges, and only a body that can be
            // sent twice.
            let hedge = route
                .hedge
                .as_ref()
                .filter(|_| attempt == 0 && body.is_replayable());

            // Phase: forward.
            let upstream = UpstreamHead {
                parts: &mut parts,
                path_and_query: &path_and_query,
                grpc,
            };
            let request = upstream.build(
                &mut body,
                target,
                index,
                endpoint,
                remaining,
                is_last && hedge.is_none(),
            )?;
            let per_try = per_try_timeout(&target.pools[index], remaining);
            attempts_made += 1;
            if attempt > 0 {
                bump(&route.stats.retries);
            }
            let primary = send_attempt(target, index, endpoint, request, per_try, body.progress());
            let (finished, also_failed) = match hedge {
                None => (primary.await, None),
                Some(hedge) => {
                    tokio::pin!(primary);
                    let delay = hedge.delay(endpoint);
                    tokio::select! {
                        done = &mut primary => (done, None),
                        () = tokio::time::sleep(delay) => {
                            // The first attempt is slow: race a second one
                            // elsewhere, if the hedge budget allows.
                            let now = Instant::now();
                            let second = if hedge.budget.withdraw() { tried.select(target, now, grpc, route.latency_slo) } else { None };
                            match second {
                                None => (primary.await, None),
                                Some((index, endpoint)) => {
                                    tried.record(index, endpoint);
                                    attempts_made += 1;
                                    bump(&route.stats.hedges);
                                    let remaining = deadline.map(|d| d.saturating_duration_since(now));
                                    let upstream = UpstreamHead { parts: &mut parts, path_and_query: &path_and_query, grpc };
                                    let request = upstream.build(&mut body, target, index, endpoint, remaining, false)?;
                                    let per_try = per_try_timeout(&target.pools[index], remaining);
                                    let secondary = send_attempt(target, index, endpoint, request, per_try, None);
                                    tokio::pin!(secondary);
                                    first_good(primary, secondary).await
                                }
                            }
                        }
                    }
                }
            };

            // A hedged pair that both failed: the loser's failure is
            // weighed first, so the same failure twice is the request's.
            if let Some(Attempt {
                index,
                endpoint,
                failure: Some(failure),
                ..
            }) = also_failed
            {
                failed_attempts.push(&target.pools[index], endpoint, format_args!("hedge lost"));
                ledger.failed(&target.pools[index], endpoint, failure);
            }
            let Attempt {
                index,
                endpoint,
                in_flight,
                result,
                failure,
            } = finished;
            let pool = &target.pools[index];
            let requests_fault = failure
                .is_some_and(|failure| ledger.failed(pool, endpoint, failure) == Verdict::Request);
            if requests_fault {
                bump(&route.stats.request_faults);
                tracing::debug!(
                    request_id = request_id.to_str().unwrap_or_default(),
                    backend = pool.name(),
                    endpoint = %endpoint.authority(),
                    "the same failure on a second endpoint: the request's; not retried, nothing ejected"
                );
            }
            match result {
                Ok(response) => {
                    if failure.is_some() {
                        failed_attempts.push(
                            pool,
                            endpoint,
                            format_args!("status {}", response.status()),
                        );
                    }
                    if failure.is_some_and(|f| f.counts) && !is_last && !requests_fault {
                        // Kept: if no further attempt can run, the client
                        // gets the upstream's own answer, not a generic one.
                        last_error = None;
                        last_response = Some((response, in_flight, index));
                        continue;
                    }
                    // A small response of a request that could still be
                    // retried is read whole before anything goes to the
                    // client: an upstream dying mid-body then costs a retry,
                    // not a truncated answer.
                    let small = response
                        .body()
                        .size_hint()
                        .exact()
                        .is_some_and(|n| n <= REPLAY_LIMIT);
                    // gRPC answers end in trailers: they always stream.
                    if !is_last && !requests_fault && small && !grpc {
                        let (head, incoming) = response.into_parts();
                        let per_try = per_try_timeout(&target.pools[index], remaining);
                        let kind = match tokio::time::timeout(per_try, incoming.collect()).await {
                            Ok(Ok(collected)) => {
                                count_failover(route, index);
                                let mut buffered =
                                    respond_head(head, request_id, target, index, attempts_made);
                                *buffered.body_mut() = ResponseBody::full(collected.to_bytes());
                                return Ok(buffered);
                            }
                            Ok(Err(_)) => UpstreamErrorKind::Protocol,
                            Err(_elapsed) => UpstreamErrorKind::Timeout,
                        };
                        let failure = Failure {
                            signature: FailureSignature::of_error(kind),
                            counts: true,
                        };
                        let error = GatewayError::Upstream {
                            backend: pool.name().to_owned(),
                            source: cascadia_backends::UpstreamError::new(kind, None),
                        };
                        if ledger.failed(pool, endpoint, failure) == Verdict::Request {
                            bump(&route.stats.request_faults);
                            return Err(error);
                        }
                        failed_attempts.push(
                            pool,
                            endpoint,
                            format_args!("response body {kind:?}"),
                        );
                        tracing::debug!(
                            request_id = request_id.to_str().unwrap_or_default(),
                            backend = pool.name(),
                            "response body failed; retrying"
                        );
                        last_error = Some(error);
                        last_response = None;
                        continue;
                    }
                    // Phase: respond.
                    count_failover(route, index);
                    return Ok(respond(
                        response,
                        in_flight,
                        request_id,
                        target,
                        index,
                        attempts_made,
                    ));
                }
                Err(source) => {
                    if source.kind() == UpstreamErrorKind::RequestBody {
                        // The client's body failed; the endpoint is fine.
                        if source.find_body_error::<body::BodyReadTimeout>().is_some() {
                            return Err(GatewayError::BodyTimeout);
                        }
                        return Err(match source.find_body_error::<BodyLimitExceeded>() {
                            Some(exceeded) => GatewayError::BodyTooLarge {
                                limit: exceeded.limit,
                            },
                            None => GatewayError::RequestBody(source),
                        });
                    }
                    let out_of_time = source.kind() == UpstreamErrorKind::Timeout
                        && remaining.is_some_and(|r| r <= pool.timeout());
                    tracing::debug!(
                        request_id = request_id.to_str().unwrap_or_default(),
                        backend = pool.name(),
                        endpoint = %endpoint.authority(),
                        attempt,
                        error = %source,
                        "attempt failed"
                    );
                    failed_attempts.push(pool, endpoint, format_args!("{:?}", source.kind()));
                    last_error = Some(if out_of_time {
                        GatewayError::DeadlineExceeded
                    } else {
                        GatewayError::Upstream {
                            backend: pool.name().to_owned(),
                            source,
                        }
                    });
                    if out_of_time || requests_fault {
                        // Nothing more to try: this error is the answer.
                        last_response = None;
                        break;
                    }
                }
            }
        }
        failed_attempts.log(request_id);
        if let Some((response, in_flight, index)) = last_response {
            count_failover(route, index);
            return Ok(respond(
                response,
                in_flight,
                request_id,
                target,
                index,
                attempts_made,
            ));
        }
        Err(last_error.unwrap_or(GatewayError::NoHealthyBackend {
            version: target.version.to_string(),
        }))
    }
}

/// The failed attempts of one request, as `backend endpoint: what` items.
#[derive(Default)]
struct AttemptLog(Vec<String>);

impl AttemptLog {
    fn push(&mut self, pool: &BackendPool, endpoint: &Endpoint, what: std::fmt::Arguments<'_>) {
        // Bounded: at most MAX_ATTEMPTS plus a hedge per request.
        self.0
            .push(format!("{} {}: {what}", pool.name(), endpoint.authority()));
    }

    /// Logs them when more than one failed: the request's own failure
    /// log names only the last.
    fn log(&self, request_id: &HeaderValue) {
        if self.0.len() > 1 {
            tracing::warn!(
                request_id = request_id.to_str().unwrap_or_default(),
                attempts = %self.0.join("; "),
                "every attempt failed"
            );
        }
    }
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// An answer from a backend other than the version's first choice is a
/// failover (a retry elsewhere, or priority failover to another region).
fn count_failover(route: &Route, pool_index: usize) {
    if pool_index > 0 {
        bump(&route.stats.failovers);
    }
}

/// The parts of the upstream request shared by every attempt.
struct UpstreamHead<'a> {
    parts: &'a mut http::request::Parts,
    path_and_query: &'a PathAndQuery,
    grpc: bool,
}

impl UpstreamHead<'_> {
    /// The request for one attempt at `endpoint`. With `take_headers`, the
    /// head's headers are moved rather than cloned (the last attempt).
    fn build(
        self,
        body: &mut RequestBody,
        target: &Target,
        index: usize,
        endpoint: &Endpoint,
        remaining: Option<Duration>,
        take_headers: bool,
    ) -> Result<Request<UpstreamBody>, GatewayError> {
        let pool = &target.pools[index];
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority().clone())
            .path_and_query(self.path_and_query.clone())
            .build()
            .map_err(|_| GatewayError::BadRequest("invalid path"))?;
        let mut request = Request::new(body.for_attempt());
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = match pool.client().protocol() {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c => Version::HTTP_2,
        };
        *request.headers_mut() = if take_headers {
            std::mem::take(&mut self.parts.headers)
        } else {
            self.parts.headers.clone()
        };
        if let Some(remaining) = remaining {
            deadline::propagate(request.headers_mut(), remaining, self.grpc);
        }
        Ok(request)
    }
}

/// An attempt's deadline: the backend's per-attempt timeout, or what is
/// left of the request's deadline if that is shorter.
fn per_try_timeout(pool: &BackendPool, remaining: Option<Duration>) -> Duration {
    remaining.map_or(pool.timeout(), |r| r.min(pool.timeout()))
}

/// One finished attempt.
struct Attempt<'t> {
    index: usize,
    endpoint: &'t Arc<Endpoint>,
    in_flight: InFlight,
    result: Result<Response<Incoming>, cascadia_backends::UpstreamError>,
    /// Set when the attempt failed: a transport error or a 5xx. Whether it
    /// counts against the endpoint is decided by the caller's ledger, see
    /// [`blame`].
    failure: Option<Failure>,
}

impl Attempt<'_> {
    /// A response worth giving the client (not a transport error or a
    /// failure status, which another endpoint may do better).
    fn is_good(&self) -> bool {
        self.result.is_ok() && !self.failure.is_some_and(|f| f.counts)
    }
}

/// Sends one attempt and records its outcome for balancing and outlier
/// detection.
async fn send_attempt<'t>(
    target: &'t Target,
    index: usize,
    endpoint: &'t Arc<Endpoint>,
    mut request: Request<UpstreamBody>,
    per_try: Duration,
    body_progress: Option<Arc<body::BodyProgress>>,
) -> Attempt<'t> {
    let pool = &target.pools[index];
    let span = trace::upstream_span();
    if span.is_active() {
        span.set("cascadia.backend", pool.name().to_owned());
        span.set("cascadia.region", pool.region().to_owned());
        span.set("server.address", endpoint.authority().to_string());
        span.inject(request.headers_mut());
    }
    let in_flight = endpoint.start_attempt();
    let sent = Instant::now();
    // A failover drill's fault, injected on the way to the region.
    let injected = match pool.region_state().fault() {
        None => None,
        Some(Fault::Blackhole) => Some(()),
        Some(Fault::Errors { per_million }) => {
            (fastrand::u32(..1_000_000) < per_million).then_some(())
        }
        Some(Fault::Latency(delay)) => {
            tokio::time::sleep(delay.min(per_try)).await;
            None
        }
    };
    let result = match injected {
        Some(()) => Err(cascadia_backends::UpstreamError::new(
            UpstreamErrorKind::Connect,
            None,
        )),
        None => {
            let left = per_try.saturating_sub(sent.elapsed());
            match pool.client().send(request, left).await {
                // Out of time while waiting on the client for its body: a
                // slow upload, the client's failure like any other of its
                // body's (a 408, no endpoint blamed), not the endpoint's.
                Err(error)
                    if error.kind() == UpstreamErrorKind::Timeout
                        && body_progress
                            .as_ref()
                            .is_some_and(|p| p.waiting_on_client()) =>
                {
                    Err(cascadia_backends::UpstreamError::new(
                        UpstreamErrorKind::RequestBody,
                        Some(Box::new(body::BodyReadTimeout(per_try))),
                    ))
                }
                other => other,
            }
        }
    };
    // Successes are recorded at once; a failure is left to the caller's
    // ledger, which blames it only once the request is ruled out.
    let failure = match &result {
        Ok(response) if response.status().is_server_error() => Some(Failure {
            signature: Some(FailureSignature::Status(response.status())),
            // Another 5xx (a 500, by default) may be the request's own
            // fault: it neither ejects the endpoint nor counts as a fast
            // success that would draw more traffic to it.
            counts: pool.counts_as_failure(response.status()),
        }),
        Ok(_) => {
            pool.record(endpoint, Outcome::Success(sent.elapsed()), Instant::now());
            None
        }
        // The client's body failed: says nothing about the endpoint.
        Err(error) if error.kind() == UpstreamErrorKind::RequestBody => None,
        Err(error) => Some(Failure {
            signature: FailureSignature::of_error(error.kind()),
            counts: true,
        }),
    };
    match &result {
        Ok(response) => {
            span.set(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            );
            if response.status().is_server_error() {
                span.fail("upstream error status");
            }
        }
        Err(error) if error.kind() == UpstreamErrorKind::RequestBody => {
            span.fail("client body failed")
        }
        Err(_) => span.fail(if injected.is_some() {
            "drill fault"
        } else {
            "upstream failed"
        }),
    }
    Attempt {
        index,
        endpoint,
        in_flight,
        result,
        failure,
    }
}

/// One endpoint of `target` for a single attempt (a shadow mirror).
pub(crate) fn select_one(
    target: &Target,
    now: Instant,
    grpc: bool,
) -> Option<(usize, &Arc<Endpoint>)> {
    Tried::default().select(target, now, grpc, None)
}

/// Sends a single attempt (a shadow mirror), recorded like any other for
/// the endpoint's health; the response on any answer, `None` on failure.
pub(crate) async fn send_one(
    target: &Target,
    index: usize,
    endpoint: &Arc<Endpoint>,
    request: Request<UpstreamBody>,
    per_try: Duration,
) -> Option<Response<Incoming>> {
    let attempt = send_attempt(target, index, endpoint, request, per_try, None).await;
    if attempt.failure.is_some_and(|f| f.counts) {
        // A lone attempt: no second endpoint to compare with.
        target.pools[index].record(endpoint, Outcome::Failure, Instant::now());
    }
    attempt.result.ok()
}

/// Races a hedged pair: the first good answer wins and the other attempt is
/// dropped (cancelled). When both fail, the first failure is kept and the
/// second comes back beside it, so its failure is weighed too.
async fn first_good<'t>(
    mut primary: Pin<&mut impl Future<Output = Attempt<'t>>>,
    mut secondary: Pin<&mut impl Future<Output = Attempt<'t>>>,
) -> (Attempt<'t>, Option<Attempt<'t>>) {
    let (first, rest) = tokio::select! {
        first = &mut primary => {
            if first.is_good() { return (first, None); }
            (first, secondary.await)
        }
        second = &mut secondary => {
            if second.is_good() { return (second, None); }
            (second, primary.await)
        }
    };
    if rest.is_good() {
        (rest, Some(first))
    } else {
        (first, Some(rest))
    }
}

/// Most attempts one request may make (config allows 1..=5).
const MAX_ATTEMPTS: usize = 5;

/// Phase respond: the upstream response, stamped with what served it.
fn respond(
    response: Response<Incoming>,
    in_flight: InFlight,
    request_id: &HeaderValue,
    target: &Target,
    pool_index: usize,
    attempts: usize,
) -> Response<ResponseBody> {
    let (head, incoming) = response.into_parts();
    let mut response = respond_head(head, request_id, target, pool_index, attempts);
    let idle = target.pools[pool_index].timeout();
    *response.body_mut() = ResponseBody::upstream(incoming, in_flight, idle);
    response
}

/// The client's response head: the upstream's, minus hop-by-hop headers,
/// plus the request id and what served it. The body is set by the caller.
fn respond_head(
    mut parts: http::response::Parts,
    request_id: &HeaderValue,
    target: &Target,
    pool_index: usize,
    attempts: usize,
) -> Response<ResponseBody> {
    if let Some(served) = target.served.get(pool_index) {
        served.record(parts.status.as_u16());
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    parts
        .headers
        .insert(headers::X_REQUEST_ID, request_id.clone());
    parts
        .headers
        .insert(headers::X_CASCADIA_VERSION, target.version_header.clone());
    parts.headers.insert(
        headers::X_CASCADIA_BACKEND,
        target.pool_headers[pool_index].clone(),
    );
    if attempts > 1 {
        parts
            .headers
            .insert(headers::X_CASCADIA_ATTEMPTS, HeaderValue::from(attempts));
    }
    Response::from_parts(parts, ResponseBody::empty())
}

/// What one request already tried, so retries go somewhere new.
#[derive(Default)]
struct Tried {
    /// `Arc::as_ptr` of endpoints attempted.
    endpoints: [usize; MAX_ATTEMPTS],
    count: usize,
    /// Bit per pool index where an attempt failed: prefer other pools.
    failed_pools: u64,
}

impl Tried {
    fn record(&mut self, pool: usize, endpoint: &Arc<Endpoint>) {
        if self.count < MAX_ATTEMPTS {
            self.endpoints[self.count] = Arc::as_ptr(endpoint) as usize;
            self.count += 1;
        }
        self.failed_pools |= 1 << pool.min(63);
    }

    /// Picks a pool by failover priority and an endpoint in it: first among
    /// pools this request has not failed in, then among all. gRPC only goes
    /// to h2c pools, since its status travels in trailers.
    fn select<'t>(
        &self,
        target: &'t Target,
        now: Instant,
        grpc: bool,
        latency_slo: Option<Duration>,
    ) -> Option<(usize, &'t Arc<Endpoint>)> {
        let pools = &target.pools;
        // gRPC needs HTTP/2 end to end (its status travels in trailers).
        // REST prefers HTTP/1.1 pools when the version has both kinds: model
        // servers such as MLServer and Triton serve REST and gRPC on
        // different ports, configured as separate backends.
        let rest_has_http1 = !grpc && target.has_http1;
        let usable = |i: usize| {
            let protocol = pools[i].client().protocol();
            if grpc {
                protocol == UpstreamProtocol::H2c
            } else {
                !rest_has_http1 || protocol == UpstreamProtocol::Http1
            }
        };
        let tried = &self.endpoints[..self.count];
        let mut exhausted = 0u64;
        for _ in 0..=pools.len() {
            let draw = fastrand::f64();
            let fresh =
                |i: usize| usable(i) && (self.failed_pools | exhausted) & (1 << i.min(63)) == 0;
            let any = |i: usize| usable(i) && exhausted & (1 << i.min(63)) == 0;
            let index = choose_pool(pools, now, |i| !fresh(i), draw, latency_slo)
                .or_else(|| choose_pool(pools, now, |i| !any(i), draw, latency_slo))?;
            match pools[index].pick(now, tried) {
                Some(endpoint) => return Some((index, endpoint)),
                None => exhausted |= 1 << index.min(63),
            }
        }
        None
    }
}

/// A request body on its way upstream: kept in memory when it may be sent
/// more than once, streamed otherwise.
pub(crate) enum RequestBody {
    /// The whole body, replayable for retries.
    Buffered(Bytes),
    /// A body streamed through once; its request is never retried.
    Streaming {
        body: Option<UpstreamBody>,
        /// Whether the gateway is waiting on the client for more of it.
        progress: Arc<body::BodyProgress>,
    },
}

impl RequestBody {
    fn is_replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    /// The body for one attempt. A streaming body can only be sent once.
    fn for_attempt(&mut self) -> UpstreamBody {
        match self {
            Self::Buffered(bytes) => buffered_body(bytes.clone()),
            Self::Streaming { body, .. } => {
                body.take().unwrap_or_else(|| buffered_body(Bytes::new()))
            }
        }
    }

    /// The streamed body's progress; `None` for a body in memory, which is
    /// never the client's to delay.
    fn progress(&self) -> Option<Arc<body::BodyProgress>> {
        match self {
            Self::Buffered(_) => None,
            Self::Streaming { progress, .. } => Some(Arc::clone(progress)),
        }
    }
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
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

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    incoming: Incoming,
    limit: u64,
    timeouts: body::BodyTimeouts,
    buffers: &Arc<budget::BufferBudget>,
) -> Result<Bytes, GatewayError> {
    let mut body = LimitedBody::new(incoming, limit).with_timeouts(timeouts);
    // Charged as it arrives, so the gateway-wide budget bounds what is
    // in memory while bodies are still coming in.
    let mut reservation = buffers.reservation();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if error.is::<BodyLimitExceeded>() {
                GatewayError::BodyTooLarge { limit }
            } else if error.is::<body::BodyReadTimeout>() {
                GatewayError::BodyTimeout
            } else {
                GatewayError::BadRequest("request body failed")
            }
        })?;
        if let Ok(data) = frame.into_data() {
            reservation.grow(data.len())?;
            chunks.push(data);
        }
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => Bytes::from(chunks.concat()),
    };
    Ok(reservation.attach(bytes))
}

/// Bodies up to this size are kept in memory on retryable routes so a failed
/// attempt can be sent again; larger ones stream through once.
const REPLAY_LIMIT: u64 = 64 * 1024;

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
    if has_dot_segment(path) {
        return Err(GatewayError::BadRequest("path has dot segments"));
    }
    if has_encoded_separator(path) {
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
    incoming: Incoming,
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

/// The upstream path: the client's, unless the target serves the model
/// under another name or version, in which case the OIP path is rebuilt.
pub(crate) fn upstream_path(
    target: &Target,
    oip: Option<cascadia_oip::path::OipPath<'_>>,
    uri: &Uri,
) -> Result<PathAndQuery, GatewayError> {
    match oip {
        Some(p) if target.upstream_model.is_some() || target.upstream_version.is_some() => {
            let model = target
                .upstream_model
                .as_deref()
                .or(p.model)
                .unwrap_or_default();
            let version = target.upstream_version.as_deref().or(p.version);
            let mut rebuilt = oip_path::model_path(p.kind, model, version);
            if let Some(query) = uri.query() {
                rebuilt.push('?');
                rebuilt.push_str(query);
            }
            PathAndQuery::try_from(rebuilt).map_err(|_| GatewayError::BadRequest("invalid path"))
        }
        _ => Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))),
    }
}

/// Phase split: the version for this request.
pub(crate) fn choose_target<'r>(
    route: &'r Route,
    headers: &http::HeaderMap,
) -> Result<&'r Target, GatewayError> {
    let forced = headers.get(&route.force_header).map(HeaderValue::as_bytes);
    let key = route
        .key_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .map(HeaderValue::as_bytes);
    route
        .split
        .choose(forced, key)
        .map_err(|SplitError::UnknownVersion| {
            GatewayError::UnknownVersion(
                String::from_utf8_lossy(forced.unwrap_or_default()).into_owned(),
            )
        })
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
    let body: &'static [u8] = match kind {
        OipKind::ServerLive => br#"{"live":true}"#,
        _ => br#"{"ready":true}"#,
    };
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(body)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID, request_id.clone());
    response
}

/// A boxed upstream body from bytes already in memory.
fn buffered_body(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
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
