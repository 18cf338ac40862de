//! The downstream listener: accepts TCP connections and serves HTTP/1.1 and
//! HTTP/2 (prior knowledge, so gRPC clients work) on the same port.
//!
//! # How it works
//! Each plaintext connection is sniffed for the HTTP/2 preface, then
//! handed to the matching hyper connection; a TLS one (`[gateway.tls]`,
//! see [`TlsListener`]) goes by the protocol ALPN agreed. HTTP/1.1 connections are wrapped in
//! [`HeadTimeoutIo`], which enforces two timers hyper does not answer the
//! way we want: a request head that takes longer than
//! `limits.header_read_timeout` gets a JSON `408` and the connection closes
//! (slowloris), and a keep-alive connection idle for `limits.idle_timeout`
//! is closed quietly. An idle watch beside every connection (HTTP/1.1 and
//! h2) closes it, gracefully, once no request has been in flight for
//! `limits.idle_timeout`, whether or not hyper polls the socket. An h2
//! client that takes no response data for `limits.write_timeout` (its
//! flow-control window stays shut) is cut off (`Delivery`). Shutdown
//! stops accepting, lets every connection finish
//! its in-flight requests (hyper's graceful shutdown), and then returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::proxy::Proxy;
use crate::snapshot::SharedSnapshot;

mod tls;
pub use tls::TlsListener;

/// The HTTP/2 client preface every h2 prior-knowledge connection starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The canned answer to a request head that did not arrive in time. Fixed
/// bytes: by then there is no request to attach an id to.
const HEAD_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/json\r\n\
content-length: 44\r\n\
connection: close\r\n\
\r\n\
{\"error\":\"timed out reading request headers\"}";

/// Accepts connections on `listener` until `shutdown` turns true, then
/// drains the open connections. With `tls`, every connection is TLS, and
/// ALPN chooses HTTP/2 or HTTP/1.1.
pub async fn serve(
    listener: TcpListener,
    snapshot: SharedSnapshot,
    tls: Option<Arc<TlsListener>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning, and keep serving the connections we have.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            Arc::clone(&snapshot),
            tls.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    let drain_timeout = snapshot.load().config.gateway.drain_timeout.get();
    let drained = tokio::time::timeout(drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "drain timeout passed; closing connections"
        );
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    snapshot: SharedSnapshot,
    tls: Option<Arc<TlsListener>>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limits = snapshot.load().config.gateway.limits.clone();
    let head_timeout = limits.header_read_timeout.get();
    let Some(tls) = tls else {
        let is_h2 = match tokio::time::timeout(head_timeout, sniff_h2(&stream)).await {
            Ok(Ok(is_h2)) => is_h2,
            Ok(Err(_)) => return,
            Err(_elapsed) => {
                write_head_timeout(stream).await;
                return;
            }
        };
        return serve_http(stream, is_h2, peer, snapshot, &limits, shutdown).await;
    };
    // The handshake counts against the head timeout: a client that opens a
    // connection and never says hello holds nothing for long.
    match tokio::time::timeout(head_timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => {
            let is_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_http(stream, is_h2, peer, snapshot, &limits, shutdown).await;
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_elapsed) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves one connection's requests, HTTP/2 or HTTP/1.1, over plaintext or
/// TLS.
async fn serve_http<S>(
    stream: S,
    is_h2: bool,
    peer: SocketAddr,
    snapshot: SharedSnapshot,
    limits: &cascadia_config::Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head_timeout = limits.header_read_timeout.get();
    let proxy = Proxy::new(snapshot, peer);
    let idle_timeout = limits.idle_timeout.get();
    let activity = Arc::new(Activity::new());

    if is_h2 {
        let watched = Arc::clone(&activity);
        let delivery = Arc::new(Delivery::new());
        let delivering = Arc::clone(&delivery);
        let service = hyper::service::service_fn(move |request| {
            let proxy = proxy.clone();
            let activity = Arc::clone(&watched);
            let delivery = Arc::clone(&delivering);
            async move {
                let _request = activity.begin();
                let response = proxy.handle(request).await;
                Ok::<_, Infallible>(response.map(|body| DeliveredBody::new(body, delivery)))
            }
        });
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .max_header_list_size(
                u32::try_from(limits.max_header_bytes * 2 + 4096).unwrap_or(u32::MAX),
            );
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        // Idle: a GOAWAY, whatever PINGs the client answers. A client that
        // takes no response data for `write_timeout` (a zero flow-control
        // window) is cut off at once: a graceful close would wait on the
        // very streams it stalls, with their route slots.
        let write_timeout = limits.write_timeout.get();
        tokio::select! {
            biased;
            _ = connection.as_mut() => return,
            () = WokenOnly::new(stopped(&mut shutdown)) => connection.as_mut().graceful_shutdown(),
            () = WokenOnly::new(activity.idle_for(idle_timeout)) => connection.as_mut().graceful_shutdown(),
            () = WokenOnly::new(delivery.stalled_for(write_timeout)) => {
                tracing::info!(%peer, "h2 client took no response data within the write timeout; closing");
                return;
            }
        }
        tokio::select! {
            _ = connection.as_mut() => {}
            () = delivery.stalled_for(write_timeout) => {}
        }
        return;
    }

    let io = HeadTimeoutIo::new(
        stream,
        head_timeout,
        idle_timeout,
        limits.write_timeout.get(),
    );
    let phase = io.phase();
    let watched = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request| {
        phase.store(IN_REQUEST, Ordering::Relaxed);
        let proxy = proxy.clone();
        let activity = Arc::clone(&watched);
        // Boxed: hyper keeps a slot the size of this future in every
        // connection, idle or not, so inline it would cost each idle
        // connection the request future's 3 KB.
        Box::pin(async move {
            let _request = activity.begin();
            Ok::<_, Infallible>(proxy.handle(request).await)
        })
    });
    let mut builder = http1::Builder::new();
    // hyper's own limits sit above the configured ones so that a request
    // just over a limit reaches the proxy and gets a JSON 431; hyper still
    // guards against heads far beyond it.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(limits.max_headers * 2 + 16)
        .max_buf_size((limits.max_header_bytes * 4).max(64 * 1024));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // The socket's own idle timer fires only when hyper polls it again
    // after a response, which it need not do: this watch closes the
    // connection whatever hyper is waiting on.
    tokio::select! {
        biased;
        _ = connection.as_mut() => return,
        () = WokenOnly::new(stopped(&mut shutdown)) => connection.as_mut().graceful_shutdown(),
        () = WokenOnly::new(activity.idle_for(idle_timeout)) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// A watcher future (shutdown, idle) polled only when its own waker fired.
/// `select!` polls every branch each time the task wakes, and a
/// connection's task wakes several times per request; re-polling the
/// watchers then cost more than the rest of the listener's work.
struct WokenOnly<F> {
    future: Pin<Box<F>>,
    flag: Arc<WakeFlag>,
    waker: std::task::Waker,
}

#[derive(Default)]
struct WakeFlag {
    woken: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WokenOnly<F> {
    fn new(future: F) -> Self {
        let flag = Arc::new(WakeFlag::default());
        // Polled once at the start, to register its own wakers.
        flag.woken.store(true, Ordering::Relaxed);
        Self {
            future: Box::pin(future),
            waker: std::task::Waker::from(Arc::clone(&flag)),
            flag,
        }
    }
}

impl<F: Future> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&this.waker))
    }
}

/// Requests in flight on one connection, and when the last one began or
/// ended, for the idle watch.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `epoch` of the last change.
    last_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

/// Marks a request in flight until dropped (its response head is out;
/// a streamed body may go on, and graceful shutdown lets it finish).
struct InRequest<'a>(&'a Activity);

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: Default::default(),
            last_ms: Default::default(),
            epoch: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn begin(&self) -> InRequest<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InRequest(self)
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            // Busy or not yet due: look again at the next possible moment.
            tokio::time::sleep_until(due.max(Instant::now() + idle / 4)).await;
        }
    }
}

impl Drop for InRequest<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether an h2 client takes the response data it is sent. hyper polls a
/// response body for its next frame only once the previous one has been
/// handed to the connection, which waits on the client's flow-control
/// window: a body that has yielded a frame and is not polled again is
/// waiting on the client. The watch fires when some body has waited and no
/// body of the connection has been polled for the write timeout; a client
/// that stalls one stream while reading others is not caught here.
struct Delivery {
    /// Bodies that yielded a frame (or were just made) and wait for hyper.
    waiting: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `epoch` of the last progress: a body polled, or
    /// the first body to wait after none did.
    progress_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl Delivery {
    fn new() -> Self {
        Self {
            waiting: Default::default(),
            progress_ms: Default::default(),
            epoch: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    fn start_waiting(&self) {
        if self.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            self.touch();
        }
    }

    fn stop_waiting(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// Resolves once a body has waited `limit` with no progress.
    async fn stalled_for(&self, limit: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
            let due = last + limit;
            if Instant::now() >= due && self.waiting.load(Ordering::Relaxed) > 0 {
                return;
            }
            tokio::time::sleep_until(due.max(Instant::now() + limit / 4)).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body on an h2 connection, reporting to its [`Delivery`]
    /// whether it waits on the client.
    struct DeliveredBody<B> {
        #[pin]
        inner: B,
        ticket: WaitTicket,
    }
}

/// One body's place in its connection's [`Delivery`]; dropping it (hyper
/// is done with the body) ends any wait.
struct WaitTicket {
    delivery: Arc<Delivery>,
    waiting: bool,
}

impl WaitTicket {
    fn wait(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.delivery.start_waiting();
        }
    }

    fn polled(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.delivery.stop_waiting();
        }
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        self.polled();
    }
}

impl<B: hyper::body::Body> DeliveredBody<B> {
    fn new(inner: B, delivery: Arc<Delivery>) -> Self {
        let mut ticket = WaitTicket {
            delivery,
            waiting: false,
        };
        if !inner.is_end_stream() {
            ticket.wait();
        }
        Self { inner, ticket }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for DeliveredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        this.ticket.polled();
        let polled = this.inner.poll_frame(cx);
        // A frame handed over waits on the client until the next poll, or
        // until hyper, done with it, drops the body.
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.ticket.wait();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once shutdown has been signalled (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Peeks at the first bytes until they either are the HTTP/2 preface or
/// cannot be. Nothing is consumed, so hyper reads the bytes again.
async fn sniff_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface. `peek` leaves the socket readable, so
        // waiting for readiness would return at once and spin: back off
        // briefly instead (the head timeout still bounds the whole wait).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn write_head_timeout(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.write_all(HEAD_TIMEOUT_RESPONSE).await;
    let _ = stream.shutdown().await;
}

/// Between requests: waiting for the first byte of the next head.
const IDLE: u8 = 0;
/// Reading a request head.
const AWAIT_HEAD: u8 = 1;
/// The head was parsed and the request is being served.
const IN_REQUEST: u8 = 2;
/// In a request, and the response has started to be written.
const RESPONDING: u8 = 3;

pin_project_lite::pin_project! {
    /// An HTTP/1.1 connection's socket with the head-read and idle timers.
    ///
    /// The service marks `IN_REQUEST` when hyper hands it a parsed request.
    /// The first write after that means the response is going out; the next
    /// read that finds no bytes means hyper is waiting for another request,
    /// so the connection is idle again.
    pub struct HeadTimeoutIo<S> {
        #[pin]
        stream: S,
        phase: Arc<AtomicU8>,
        // Boxed so the wrapper stays `Unpin`, as hyper requires of its IO.
        // It may be set earlier than `deadline` (a past phase's), never
        // later: when it fires early it is set again, so moving the
        // deadline later, as every request does, costs no timer work.
        timer: Pin<Box<Sleep>>,
        head_timeout: Duration,
        idle_timeout: Duration,
        // The phase `deadline` was set for; `None` when not timed.
        armed_for: Option<u8>,
        // When the current phase times out.
        deadline: Instant,
        // hyper's own answer to a head it could not parse (400, 431) has no
        // body; it is replaced by a JSON one, written from here (bytes and
        // how many are out).
        replacement: Option<(Vec<u8>, usize)>,
        // A client that stops reading stalls every write: past
        // `write_timeout` the connection fails, and the response (with its
        // route slot) is dropped. Made on the first stall only.
        write_timeout: Duration,
        write_stall: Option<Pin<Box<Sleep>>>,
    }
}

impl<S> HeadTimeoutIo<S> {
    /// Wraps a freshly accepted stream; its first request head is due
    /// within `head_timeout`.
    pub fn new(
        stream: S,
        head_timeout: Duration,
        idle_timeout: Duration,
        write_timeout: Duration,
    ) -> Self {
        let deadline = Instant::now() + head_timeout;
        Self {
            stream,
            phase: Arc::new(AtomicU8::new(AWAIT_HEAD)),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            head_timeout,
            idle_timeout,
            armed_for: Some(AWAIT_HEAD),
            deadline,
            replacement: None,
            write_timeout,
            write_stall: None,
        }
    }

    /// The phase cell the service sets when a request arrives.
    pub fn phase(&self) -> Arc<AtomicU8> {
        Arc::clone(&self.phase)
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for HeadTimeoutIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let before = buf.filled().len();
        let result = this.stream.as_mut().poll_read(cx, buf);
        let got_bytes = matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        let mut phase = this.phase.load(Ordering::Relaxed);

        if got_bytes {
            if phase == IDLE || phase == RESPONDING {
                // First bytes of the next request head.
                this.phase.store(AWAIT_HEAD, Ordering::Relaxed);
                *this.deadline = Instant::now() + *this.head_timeout;
                *this.armed_for = Some(AWAIT_HEAD);
            }
            return result;
        }
        if result.is_ready() {
            // EOF or an error: hyper handles it.
            return result;
        }

        // No bytes yet.
        if phase == RESPONDING {
            // The response went out and hyper is back to reading: idle.
            phase = IDLE;
            this.phase.store(IDLE, Ordering::Relaxed);
        }
        match phase {
            IDLE | AWAIT_HEAD => {
                if *this.armed_for != Some(phase) {
                    let timeout = if phase == IDLE {
                        *this.idle_timeout
                    } else {
                        *this.head_timeout
                    };
                    *this.deadline = Instant::now() + timeout;
                    *this.armed_for = Some(phase);
                }
                let deadline = *this.deadline;
                if this.timer.deadline() > deadline {
                    this.timer.as_mut().reset(deadline);
                }
                while this.timer.as_mut().poll(cx).is_ready() {
                    if this.timer.deadline() < deadline {
                        // It fired for an earlier phase's deadline.
                        this.timer.as_mut().reset(deadline);
                        continue;
                    }
                    if phase == AWAIT_HEAD {
                        // Best effort: a slowloris client rarely has a full
                        // receive window, so this write completes at once.
                        let _ = this.stream.as_mut().poll_write(cx, HEAD_TIMEOUT_RESPONSE);
                    }
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
            }
            _ => *this.armed_for = None,
        }
        Poll::Pending
    }
}

/// A write that stays pending (the client stopped reading) for `timeout`
/// fails with `TimedOut`; any progress starts the clock again.
fn stall_bound<T>(
    polled: Poll<io::Result<T>>,
    stall: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    if polled.is_ready() {
        *stall = None;
        return polled;
    }
    let timer = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    if timer.as_mut().poll(cx).is_ready() {
        *stall = None;
        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
    }
    Poll::Pending
}

/// hyper answers a head it cannot parse itself, before any request exists,
/// with an empty body (`400`, `431`). While no request is in flight (the
/// phase is still `AWAIT_HEAD`), such a write becomes the same status with
/// a JSON error body, as every other refusal has. `None`: not such a write.
/// Reports the original `consumed` bytes as written once the replacement
/// is out, so hyper goes on to close the connection as it meant to.
fn replace_parse_error<S: AsyncWrite>(
    phase: &AtomicU8,
    replacement: &mut Option<(Vec<u8>, usize)>,
    mut stream: Pin<&mut S>,
    cx: &mut Context<'_>,
    first: &[u8],
    consumed: usize,
) -> Option<Poll<io::Result<usize>>> {
    if replacement.is_none() {
        if phase.load(Ordering::Relaxed) != AWAIT_HEAD || !first.starts_with(b"HTTP/1.1 4") {
            return None;
        }
        let status_line = first.split(|b| *b == b'\r').next().unwrap_or_default();
        let message = match status_line.get(9..12) {
            Some(b"431") => "request headers too large",
            _ => "malformed request",
        };
        let body = format!("{{\"error\":\"{message}\"}}");
        let mut bytes = status_line.to_vec();
        bytes.extend_from_slice(
            format!(
                "\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        *replacement = Some((bytes, 0));
    }
    let (bytes, sent) = replacement.as_mut()?;
    while *sent < bytes.len() {
        match stream.as_mut().poll_write(cx, &bytes[*sent..]) {
            Poll::Ready(Ok(0)) => return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into()))),
            Poll::Ready(Ok(n)) => *sent += n,
            Poll::Ready(Err(error)) => return Some(Poll::Ready(Err(error))),
            Poll::Pending => return Some(Poll::Pending),
        }
    }
    Some(Poll::Ready(Ok(consumed)))
}

/// A write means a response is going out: the connection is responding,
/// not idle, however long the response streams. Disarming the timer makes
/// the next idle wait start afresh, so only 60 s with neither reads nor
/// writes closes the connection.
fn mark_writing(phase: &AtomicU8, armed_for: &mut Option<u8>) {
    let current = phase.load(Ordering::Relaxed);
    if current == IN_REQUEST || current == IDLE {
        phase.store(RESPONDING, Ordering::Relaxed);
    }
    *armed_for = None;
}

impl<S: AsyncWrite> AsyncWrite for HeadTimeoutIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if let Some(poll) = replace_parse_error(
            this.phase,
            this.replacement,
            this.stream.as_mut(),
            cx,
            data,
            data.len(),
        ) {
            return poll;
        }
        mark_writing(this.phase, this.armed_for);
        let polled = this.stream.poll_write(cx, data);
        stall_bound(polled, this.write_stall, *this.write_timeout, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let total = bufs.iter().map(|b| b.len()).sum();
        if let Some(poll) = replace_parse_error(
            this.phase,
            this.replacement,
            this.stream.as_mut(),
            cx,
            first,
            total,
        ) {
            return poll;
        }
        mark_writing(this.phase, this.armed_for);
        let polled = this.stream.poll_write_vectored(cx, bufs);
        stall_bound(polled, this.write_stall, *this.write_timeout, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.stream.poll_flush(cx);
        stall_bound(polled, this.write_stall, *this.write_timeout, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its polls; resolves on the third.
    struct Counted<'a>(&'a AtomicUsize);

    impl Future for Counted<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 2 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_watcher_is_polled_again_only_after_its_own_waker_fired() {
        let polls = AtomicUsize::new(0);
        // Woken by nothing: only the first poll may reach it.
        let mut watcher = std::pin::pin!(WokenOnly::new(std::future::poll_fn(|_| {
            polls.fetch_add(1, Ordering::SeqCst);
            Poll::<()>::Pending
        })));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..5 {
            assert!(watcher.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        // One that wakes itself is polled each time, and finishes.
        let polls = AtomicUsize::new(0);
        let mut watcher = std::pin::pin!(WokenOnly::new(Counted(&polls)));
        assert!(watcher.as_mut().poll(&mut cx).is_pending());
        assert!(watcher.as_mut().poll(&mut cx).is_pending());
        assert!(watcher.as_mut().poll(&mut cx).is_ready());
    }
}
