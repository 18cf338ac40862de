//! The upstream HTTP client, over each endpoint's own connections, and the
//! error an upstream attempt can end with.
//!
//! One [`UpstreamClient`] exists per backend protocol and connect timeout
//! (and per backend when it speaks TLS).
//! It holds no connections: they live in each [`Endpoint`] (see
//! [`connections`](crate::connections)), so a request reaches its
//! connection without a lookup, and a reload that keeps an endpoint keeps
//! its warm keep-alive connections too.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cascadia_config::UpstreamProtocol;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::connections::UpstreamResponseBody;
use crate::endpoint::Endpoint;
use crate::tls::{UpstreamStream, UpstreamTlsConnector};

/// Errors a request body stream may produce while it is forwarded.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of a request on its way upstream. Boxed so that streamed,
/// buffered and empty bodies share one client type.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// A client for one upstream protocol.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    tls: Option<UpstreamTlsConnector>,
}

impl UpstreamClient {
    /// Builds a client speaking `protocol`, giving up on a TCP connect after
    /// `connect_timeout`.
    pub fn new(protocol: UpstreamProtocol, connect_timeout: Duration) -> Self {
        Self {
            protocol,
            connect_timeout,
            tls: None,
        }
    }

    /// The same client, speaking TLS through `tls` after each connect.
    pub fn with_tls(mut self, tls: UpstreamTlsConnector) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether `other` connects the same way: protocol, connect timeout
    /// and TLS settings.
    pub fn same_as(&self, other: &UpstreamClient) -> bool {
        self.protocol == other.protocol
            && self.connect_timeout == other.connect_timeout
            && self.tls.as_ref().map(UpstreamTlsConnector::settings)
                == other.tls.as_ref().map(UpstreamTlsConnector::settings)
    }

    /// The TLS this client speaks, if any.
    pub fn tls(&self) -> Option<&UpstreamTlsConnector> {
        self.tls.as_ref()
    }

    /// The protocol this client speaks upstream.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// The connect timeout this client was built with.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sends one attempt to `endpoint`. The request URI may be absolute
    /// (`http://host:port/path`) or, for HTTP/1.1, origin-form (`/path`);
    /// a missing `Host` is the endpoint's authority.
    ///
    /// `timeout` bounds the wait for the response *headers*, connecting
    /// included; the body then streams back without a deadline of its own.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamResponseBody>, UpstreamError> {
        let exchange = async {
            match self.protocol {
                UpstreamProtocol::Http1 => self.send_http1(endpoint, request).await,
                UpstreamProtocol::H2c => self.send_h2(endpoint, request).await,
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(UpstreamError::new(UpstreamErrorKind::Timeout, None)),
        }
    }

    async fn send_http1(
        &self,
        endpoint: &Endpoint,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamResponseBody>, UpstreamError> {
        to_origin_form(&mut request);
        if !request.headers().contains_key(HOST) {
            request
                .headers_mut()
                .insert(HOST, endpoint.host_header().clone());
        }
        let home = endpoint.connections();
        // An idle connection the server closed before it took the request
        // hands the request back: it goes to the next connection. Each
        // checkout uses up an idle connection, so this ends.
        while let Some(mut sender) = home.checkout_http1(Instant::now()) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let home = Arc::clone(home);
                    return Ok(
                        response.map(|body| UpstreamResponseBody::leased(body, sender, home))
                    );
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::from_hyper(error.into_error())),
                },
            }
        }
        // Boxed: connecting is the rare path, and its futures (resolve,
        // connect, handshake) would otherwise make every request's larger.
        let mut sender = Box::pin(self.open_http1(endpoint)).await?;
        match sender.send_request(request).await {
            Ok(response) => {
                let home = Arc::clone(home);
                Ok(response.map(|body| UpstreamResponseBody::leased(body, sender, home)))
            }
            Err(error) => Err(UpstreamError::from_hyper(error)),
        }
    }

    /// A new HTTP/1.1 connection to `endpoint`, its driver spawned.
    async fn open_http1(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let io = self.connect(endpoint).await?;
        let (sender, connection) = http1::handshake(io).await.map_err(UpstreamError::connect)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn send_h2(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamResponseBody>, UpstreamError> {
        let mut sender = endpoint
            .connections()
            .h2_or_open(Box::pin(async {
                let io = self.connect(endpoint).await?;
                let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(UpstreamError::connect)?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "upstream h2 connection ended");
                    }
                });
                Ok::<_, UpstreamError>(sender)
            }))
            .await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(response.map(UpstreamResponseBody::shared)),
            Err(error) => Err(UpstreamError::from_hyper(error)),
        }
    }

    /// A new connection to `endpoint`, TLS included when configured, all
    /// within the connect timeout.
    async fn connect(&self, endpoint: &Endpoint) -> Result<TokioIo<UpstreamStream>, UpstreamError> {
        let timed_out =
            || UpstreamError::new(UpstreamErrorKind::Connect, Some("connect timed out".into()));
        let deadline = Instant::now() + self.connect_timeout;
        let authority = endpoint.authority().as_str();
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(UpstreamError::connect(error)),
            Err(_elapsed) => return Err(timed_out()),
        };
        stream.set_nodelay(true).map_err(UpstreamError::connect)?;
        let Some(tls) = &self.tls else {
            return Ok(TokioIo::new(UpstreamStream::Plain(stream)));
        };
        // A failed handshake (an unknown CA, a wrong name, a refused client
        // certificate) is the endpoint's side: it counts like a refused
        // connect.
        match tokio::time::timeout_at(deadline, tls.connect(endpoint.authority().host(), stream))
            .await
        {
            Ok(Ok(stream)) => Ok(TokioIo::new(UpstreamStream::Tls(Box::new(stream)))),
            Ok(Err(error)) => Err(UpstreamError::new(
                UpstreamErrorKind::Connect,
                Some(format!("TLS handshake failed: {error}").into()),
            )),
            Err(_elapsed) => Err(timed_out()),
        }
    }
}

/// Rewrites an absolute URI to the origin form HTTP/1.1 sends
/// (`/path?query`); the authority travels in `Host`.
fn to_origin_form(request: &mut Request<UpstreamBody>) {
    let uri = request.uri();
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
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

    fn connect(error: impl Into<BoxError>) -> Self {
        Self::new(UpstreamErrorKind::Connect, Some(error.into()))
    }

    fn from_hyper(error: hyper::Error) -> Self {
        // A user error is *our* request body failing (the client went
        // away, or the body broke a limit), not the connection or the
        // upstream.
        let kind = if error.is_user() {
            UpstreamErrorKind::RequestBody
        } else {
            UpstreamErrorKind::Protocol
        };
        Self::new(kind, Some(Box::new(error)))
    }
}

#[cfg(test)]
mod tests {
    //! The client over real sockets: a local hyper server that counts the
    //! connections it accepts.

    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    use http::{HeaderValue, StatusCode};
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::connections::IDLE_REUSE_LIMIT;

    /// How the test server answers.
    #[derive(Clone, Copy)]
    enum Serve {
        /// `host path` of the request, as the body.
        Echo,
        /// A long streamed body, in many frames.
        Long,
        /// The echo, with `Connection: close`.
        ThenClose,
    }

    struct Server {
        endpoint: Arc<Endpoint>,
        accepted: Arc<AtomicUsize>,
    }

    async fn server(serve: Serve, h2: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(move |request: Request<Incoming>| async move {
                    let echo = format!(
                        "{} {}",
                        request
                            .headers()
                            .get(HOST)
                            .map_or("-", |h| h.to_str().unwrap()),
                        request.uri()
                    );
                    let body: UnsyncBoxBody<Bytes, Infallible> = match serve {
                        Serve::Echo | Serve::ThenClose => Full::from(echo).boxed_unsync(),
                        Serve::Long => StreamBody::new(futures_stream(4096)).boxed_unsync(),
                    };
                    let mut response = Response::new(body);
                    if matches!(serve, Serve::ThenClose) {
                        response
                            .headers_mut()
                            .insert("connection", HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        Server {
            endpoint: Arc::new(Endpoint::new(authority.parse().unwrap())),
            accepted,
        }
    }

    /// `frames` frames of 1 KiB each.
    fn futures_stream(
        frames: usize,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
        let mut left = frames;
        futures_util::stream::poll_fn(move |_| {
            if left == 0 {
                return Poll::Ready(None);
            }
            left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))))
        })
    }

    fn get(uri: &str) -> Request<UpstreamBody> {
        Request::get(uri)
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn http1() -> UpstreamClient {
        UpstreamClient::new(UpstreamProtocol::Http1, Duration::from_secs(1))
    }

    async fn text(response: Response<UpstreamResponseBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection_and_name_the_endpoint_in_host() {
        let server = server(Serve::Echo, false).await;
        let client = http1();
        let absolute = format!("http://{}/v2/models/m/ready", server.endpoint.authority());
        for uri in [absolute.as_str(), "/v2/health/live", "/v2?x=1"] {
            let response = client
                .send(&server.endpoint, get(uri), TIMEOUT)
                .await
                .unwrap();
            let path = uri.trim_start_matches(&format!("http://{}", server.endpoint.authority()));
            assert_eq!(
                text(response).await,
                format!("{} {path}", server.endpoint.authority())
            );
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(server.endpoint.connections().idle_http1(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_give_its_connection_back() {
        let server = server(Serve::Long, false).await;
        let client = http1();
        let response = client
            .send(&server.endpoint, get("/"), TIMEOUT)
            .await
            .unwrap();
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(server.endpoint.connections().idle_http1(), 0);
        // The next request gets a connection of its own, and all of its body.
        let response = client
            .send(&server.endpoint, get("/"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(text(response).await.len(), 4096 * 1024);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(server.endpoint.connections().idle_http1(), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_reuse_limit_is_not_used() {
        let server = server(Serve::Echo, false).await;
        let response = http1()
            .send(&server.endpoint, get("/"), TIMEOUT)
            .await
            .unwrap();
        text(response).await;
        let connections = server.endpoint.connections();
        assert_eq!(connections.idle_http1(), 1);
        let later = Instant::now() + IDLE_REUSE_LIMIT + Duration::from_millis(1);
        assert!(connections.checkout_http1(later).is_none());
        assert_eq!(
            connections.idle_http1(),
            0,
            "the stale connection is dropped"
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_replaced_without_a_failed_request() {
        let server = server(Serve::ThenClose, false).await;
        let client = http1();
        for _ in 0..3 {
            let response = client
                .send(&server.endpoint, get("/"), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            text(response).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = Endpoint::new(format!("127.0.0.1:{port}").parse().unwrap());
        let error = http1()
            .send(&endpoint, get("/"), TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), UpstreamErrorKind::Connect);
    }

    #[tokio::test]
    async fn concurrent_h2_requests_share_one_connection() {
        let server = server(Serve::Echo, true).await;
        let client = UpstreamClient::new(UpstreamProtocol::H2c, Duration::from_secs(1));
        let uri = format!("http://{}/v2", server.endpoint.authority());
        let answers = futures_util::future::join_all((0..16).map(|_| {
            let mut request = get(&uri);
            *request.version_mut() = http::Version::HTTP_2;
            let client = client.clone();
            let endpoint = Arc::clone(&server.endpoint);
            async move { text(client.send(&endpoint, request, TIMEOUT).await.unwrap()).await }
        }))
        .await;
        // h2 names the endpoint in `:authority`, not in `Host`.
        let expected = format!("- http://{}/v2", server.endpoint.authority());
        assert!(answers.iter().all(|a| *a == expected), "{answers:?}");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }
}
