//! Layer 2, forwarding: phases select, forward and respond for one request
//! on its chosen version. Up to the route's attempts, each to an endpoint
//! the request has not tried (preferably in another region), within the
//! request's deadline and the route's retry budget; a slow first attempt
//! may be hedged. Whose fault a failed attempt was is decided here, in
//! `blame`, the same way for REST and gRPC. Used by the proxy, the
//! cascade's escalations and shadow mirrors; knows none of them.

mod blame;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cascadia_backends::{
    choose_pool, BackendPool, Endpoint, Fault, InFlight, Outcome, UpstreamBody, UpstreamError,
    UpstreamErrorKind,
};
use cascadia_config::UpstreamProtocol;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::core::body::{self, BodyLimitExceeded, ReceivedBody, ResponseBody};
use crate::core::errors::GatewayError;
use crate::core::{deadline, headers};
use crate::routing::{Route, Target};
use crate::telemetry::trace;
use blame::{Failure, FailureLedger, FailureSignature, Verdict};

/// Who sent the request, for the `forwarded` headers.
#[derive(Clone, Copy, Debug)]
pub struct Downstream {
    /// The peer of the client connection.
    pub peer: SocketAddr,
    /// Whether the peer is a trusted proxy, whose `forwarded` chain is
    /// kept.
    pub trusted: bool,
}

/// One request to forward on its chosen version.
pub struct Exchange<'a> {
    pub route: &'a Route,
    pub target: &'a Target,
    /// The client's head, rewritten here for the upstream.
    pub parts: http::request::Parts,
    pub path_and_query: PathAndQuery,
    pub body: RequestBody,
    pub request_id: &'a HeaderValue,
}

/// The future of one upstream attempt. Boxed so that [`Upstream`] can be a
/// trait object: the proxy holds one, and unit tests put a mock there.
pub type UpstreamFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<ReceivedBody>, UpstreamError>> + Send + 'a>>;

/// Where attempts go: the backends' own connections ([`Pools`]) in
/// production; a scripted mock under paused time in unit tests.
pub trait Upstream: Send + Sync {
    /// Sends `request` to `endpoint` of `pool`, giving up after `timeout`
    /// for the response head.
    fn send<'a>(
        &'a self,
        pool: &'a BackendPool,
        endpoint: &'a Endpoint,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> UpstreamFuture<'a>;
}

/// The real upstreams: each pool's HTTP client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pools;

impl Upstream for Pools {
    fn send<'a>(
        &'a self,
        pool: &'a BackendPool,
        endpoint: &'a Endpoint,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> UpstreamFuture<'a> {
        Box::pin(async move {
            let response = pool.client().send(endpoint, request, timeout).await?;
            Ok(response.map(ReceivedBody::from))
        })
    }
}

/// Phases select, forward and respond, shared by REST, gRPC and the
/// cascade's escalations: up to the route's attempts, each to an endpoint
/// this request has not tried (preferably in another region), within the
/// request's deadline and the route's retry budget.
pub async fn forward(
    upstream: &dyn Upstream,
    downstream: Downstream,
    exchange: Exchange<'_>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let started = Instant::now();
    let target = exchange.target;
    // Boxed: the attempt loop's future is several KB (hedging keeps two
    // attempts in it), and every layer above would otherwise hold it
    // inline and copy it each time it is moved.
    let result = Box::pin(forward_attempts(upstream, downstream, exchange)).await;
    // Per version, for canary analysis: the time to the answer's head.
    let status = match &result {
        Ok(response) => response.status().as_u16(),
        Err(error) => error.status().as_u16(),
    };
    target.stats.record(status, started.elapsed());
    result
}

async fn forward_attempts<'t>(
    upstream: &dyn Upstream,
    downstream: Downstream,
    exchange: Exchange<'t>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Exchange {
        route,
        target,
        mut parts,
        path_and_query,
        mut body,
        request_id,
    } = exchange;
    let started = Instant::now();
    let grpc = headers::is_grpc(&parts.headers);
    // The client's deadline, capped by the route's.
    let client_budget = deadline::client_timeout(&parts.headers);
    let budget = match (client_budget, route.timeout) {
        (Some(client), Some(route)) => Some(client.min(route)),
        (a, b) => a.or(b),
    };
    let deadline = budget.map(|b| started + b);
    let client_deadline = client_budget.map(|b| started + b);

    // The upstream head, prepared once for every attempt.
    let host = parts.headers.remove(header::HOST).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut parts.headers, true);
    headers::append_forwarded(
        &mut parts.headers,
        downstream.peer,
        host,
        downstream.trusted,
    );
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
        let head = UpstreamHead {
            parts: &mut parts,
            path_and_query: &path_and_query,
            grpc,
        };
        let request = head.build(
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
        let primary = send_attempt(
            upstream,
            target,
            index,
            endpoint,
            request,
            per_try,
            body.progress(),
        );
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
                                let head = UpstreamHead { parts: &mut parts, path_and_query: &path_and_query, grpc };
                                let request = head.build(&mut body, target, index, endpoint, remaining, false)?;
                                let per_try = per_try_timeout(&target.pools[index], remaining);
                                // Boxed: a hedge is rare, and inline it would
                                // double every request's attempt-loop future.
                                let mut secondary = Box::pin(send_attempt(upstream, target, index, endpoint, request, per_try, None));
                                Box::pin(first_good(primary, secondary.as_mut())).await
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
        // Out of time because the client asked for less time than the
        // endpoint is allowed: the client's deadline, not the endpoint's
        // fault, so it is not blamed (a client sending 1 ms deadlines
        // must not eject healthy endpoints).
        let cut_by_client = client_deadline.is_some_and(|d| {
            d.saturating_duration_since(now) < pool.timeout() && Some(d) <= deadline
        });
        let failure = failure.map(|f| match &result {
            Err(e) if e.kind() == UpstreamErrorKind::Timeout && cut_by_client => {
                Failure { counts: false, ..f }
            }
            _ => f,
        });
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
                    failed_attempts.push(pool, endpoint, format_args!("response body {kind:?}"));
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
        let (uri, version) = match pool.client().protocol() {
            // Origin form; the client names the endpoint in `Host`.
            UpstreamProtocol::Http1 => (Uri::from(self.path_and_query.clone()), Version::HTTP_11),
            // h2 carries the authority in the URI (`:authority`).
            UpstreamProtocol::H2c => (
                Uri::builder()
                    .scheme("http")
                    .authority(endpoint.authority().clone())
                    .path_and_query(self.path_and_query.clone())
                    .build()
                    .map_err(|_| GatewayError::BadRequest("invalid path"))?,
                Version::HTTP_2,
            ),
        };
        let mut request = Request::new(body.for_attempt());
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
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
    result: Result<Response<ReceivedBody>, UpstreamError>,
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
    upstream: &dyn Upstream,
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
            // Boxed: only drills take this path.
            Box::pin(tokio::time::sleep(delay.min(per_try))).await;
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
            match upstream.send(pool, endpoint, request, left).await {
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
pub fn select_one(target: &Target, now: Instant, grpc: bool) -> Option<(usize, &Arc<Endpoint>)> {
    Tried::default().select(target, now, grpc, None)
}

/// Sends a single attempt (a shadow mirror), recorded like any other for
/// the endpoint's health; the response on any answer, `None` on failure.
pub async fn send_one(
    target: &Target,
    index: usize,
    endpoint: &Arc<Endpoint>,
    request: Request<UpstreamBody>,
    per_try: Duration,
) -> Option<Response<ReceivedBody>> {
    let attempt = send_attempt(&Pools, target, index, endpoint, request, per_try, None).await;
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
    response: Response<ReceivedBody>,
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
pub enum RequestBody {
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

/// The upstream path: the client's, unless the target serves the model
/// under another name or version, in which case the OIP path is rebuilt.
pub fn upstream_path(
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
            let mut rebuilt = cascadia_oip::path::model_path(p.kind, model, version);
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

/// A boxed upstream body from bytes already in memory.
fn buffered_body(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Bodies up to this size are kept in memory on retryable routes so a failed
/// attempt can be sent again; larger ones stream through once.
pub const REPLAY_LIMIT: u64 = 64 * 1024;
