//! The pooled upstream HTTP client and the error an upstream attempt can end with.
//!
//! One [`UpstreamClient`] exists per backend protocol and connect settings;
//! its connection pool is keyed by endpoint authority, so a reload that keeps
//! an endpoint keeps its warm keep-alive connections too.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use cascadia_config::UpstreamProtocol;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Errors a request body stream may produce while it is forwarded.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of a request on its way upstream. Boxed so that streamed,
/// buffered and empty bodies share one client type.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an idle upstream connection is kept in the pool. Below the
/// shortest keep-alive timeout common among model servers (uvicorn's 5 s,
/// under MLServer and KServe), so the gateway closes an idle connection
/// before the server does and never sends a request into one that is being
/// closed under it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per endpoint; enough for bursts at a few thousand
/// requests per second without reconnecting.
const POOL_MAX_IDLE_PER_ENDPOINT: usize = 256;

/// A keep-alive client for one upstream protocol.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Client<HttpConnector, UpstreamBody>,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
}

impl UpstreamClient {
    /// Builds a client speaking `protocol`, giving up on a TCP connect after
    /// `connect_timeout`.
    pub fn new(protocol: UpstreamProtocol, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_ENDPOINT);
        if protocol == UpstreamProtocol::H2c {
            builder.http2_only(true);
        }
        Self {
            inner: builder.build(connector),
            protocol,
            connect_timeout,
        }
    }

    /// The protocol this client speaks upstream.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// The connect timeout this client was built with.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sends one attempt. The request URI must be absolute (`http://host:port/path`).
    ///
    /// `timeout` bounds the wait for the response *headers*; the body then
    /// streams back without a deadline of its own.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(timeout, self.inner.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(UpstreamError::from_client(error)),
            Err(_elapsed) => Err(UpstreamError::new(UpstreamErrorKind::Timeout, None)),
        }
    }
}

/// What went wrong with an upstream attempt, from the gateway's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    Connect,
    /// No response headers arrived within the attempt's deadline.
    Timeout,
    /// The connection broke or the upstream spoke invalid HTTP.
    Protocol,
    /// The request body failed while it was streamed upstream (the client
    /// went away, or the body broke a limit). The downstream side failed.
    RequestBody,
}

/// The error of one upstream attempt. Keeps the cause for the log; the
/// client only ever sees the kind (mapped to a status in one place).
#[derive(Debug, thiserror::Error)]
#[error("upstream {kind:?} error")]
pub struct UpstreamError {
    kind: UpstreamErrorKind,
    #[source]
    source: Option<BoxError>,
}

impl UpstreamError {
    /// An error of `kind` with an optional underlying cause.
    pub fn new(kind: UpstreamErrorKind, source: Option<BoxError>) -> Self {
        Self { kind, source }
    }

    /// What went wrong.
    pub fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// Finds a request-body error of type `E` in the cause chain, for the
    /// caller that put it there (for example a body size limit).
    pub fn find_body_error<E: StdError + 'static>(&self) -> Option<&E> {
        let mut cause: Option<&(dyn StdError + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static));
        while let Some(error) = cause {
            if let Some(found) = error.downcast_ref::<E>() {
                return Some(found);
            }
            cause = error.source();
        }
        None
    }

    fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        let kind = if error.is_connect() {
            UpstreamErrorKind::Connect
        } else if is_user_body_error(&error) {
            UpstreamErrorKind::RequestBody
        } else {
            UpstreamErrorKind::Protocol
        };
        Self::new(kind, Some(Box::new(error)))
    }
}

/// True when hyper reports that *our* request body failed, as opposed to the
/// connection or the upstream.
fn is_user_body_error(error: &hyper_util::client::legacy::Error) -> bool {
    let mut cause = error.source();
    while let Some(inner) = cause {
        if let Some(hyper_error) = inner.downcast_ref::<hyper::Error>() {
            return hyper_error.is_user();
        }
        cause = inner.source();
    }
    false
}
