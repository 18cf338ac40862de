//! Bodies on the data plane: the response body the gateway sends (streamed
//! from upstream, or a small local answer), the request-body size limit,
//! and the progress of a streamed request body (whose side a timeout is).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cascadia_backends::{InFlight, UpstreamResponseBody};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

/// Error type of bodies flowing through the gateway.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The body of every response the gateway sends downstream.
    ///
    /// An enum rather than a boxed trait object so the common case (stream
    /// the upstream body through) costs no allocation.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        /// Streams the upstream response. Holds the endpoint's in-flight slot
        /// until the body ends or the client goes away, so the endpoint's
        /// in-flight count covers the whole exchange.
        Upstream {
            #[pin]
            body: ReceivedBody,
            // Fails the body when the upstream sends nothing for this long
            // (headers, then a stall): the client sees an abort, and the
            // route's slot is released.
            idle: Duration,
            #[pin]
            idle_timer: tokio::time::Sleep,
            // The timer runs only while the gateway waits on the upstream,
            // never while the client is slow to read.
            idle_armed: bool,
            in_flight: Option<InFlight>,
            // The route's concurrency slot, held until the body ends.
            admitted: Option<crate::core::admission::Admitted>,
            // A copy of the body for shadow comparison, if one was asked for.
            capture: Option<Box<Capture>>,
        },
        /// A complete body produced by the gateway (errors, health, admin),
        /// with trailers for the gRPC answers it gives itself.
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
    }
}

impl ResponseBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self::Full {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::Full {
            data: None,
            trailers: None,
        }
    }

    /// A complete body followed by trailers (a gRPC message and its status).
    pub fn with_trailers(data: Bytes, trailers: HeaderMap) -> Self {
        Self::Full {
            data: Some(data),
            trailers: Some(trailers),
        }
    }

    /// Holds the route's concurrency slot until a streamed body ends (a
    /// complete body releases it at once).
    pub fn hold(&mut self, slot: Option<crate::core::admission::Admitted>) {
        if let Self::Upstream { admitted, .. } = self {
            *admitted = slot;
        }
    }

    /// Streams an upstream body, releasing `in_flight` when it ends, and
    /// failing it when the upstream goes quiet for `idle`.
    pub fn upstream(body: ReceivedBody, in_flight: InFlight, idle: Duration) -> Self {
        Self::Upstream {
            body,
            idle,
            idle_timer: tokio::time::sleep(idle),
            idle_armed: false,
            in_flight: Some(in_flight),
            admitted: None,
            capture: None,
        }
    }

    /// A copy of the body as the client receives it, delivered once the
    /// body ends; nothing if it is longer than `limit`, fails, or the client
    /// leaves before the end. Never slows the body down.
    pub fn capture(&mut self, limit: usize) -> tokio::sync::oneshot::Receiver<Bytes> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self {
            Self::Upstream { capture, .. } => {
                *capture = Some(Box::new(Capture {
                    buffer: bytes::BytesMut::new(),
                    limit,
                    done: Some(tx),
                }));
            }
            Self::Full { data, .. } => {
                let data = data.clone().unwrap_or_default();
                if data.len() <= limit {
                    let _ = tx.send(data);
                }
            }
        }
        rx
    }
}

/// The copy [`ResponseBody::capture`] makes.
#[derive(Debug)]
pub struct Capture {
    buffer: bytes::BytesMut,
    limit: usize,
    done: Option<tokio::sync::oneshot::Sender<Bytes>>,
}

impl Capture {
    fn data(&mut self, data: &Bytes) {
        if self.done.is_some() && self.buffer.len() + data.len() <= self.limit {
            self.buffer.extend_from_slice(data);
        } else {
            // Too long to compare: give up (the receiver sees a drop).
            self.done = None;
        }
    }

    fn end(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(std::mem::take(&mut self.buffer).freeze());
        }
    }
}

pin_project! {
    /// A request body as a client sends it: off a hyper connection, or any
    /// other body (a unit test's, driving the proxy with `oneshot`). An
    /// enum so the real one costs no allocation.
    #[project = DownstreamProj]
    pub enum DownstreamBody {
        Wire {
            #[pin]
            body: Incoming,
        },
        Other {
            #[pin]
            body: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
        },
    }
}

impl DownstreamBody {
    /// Any body, boxed.
    pub fn other<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt as _;
        Self::Other {
            body: body.map_err(Into::into).boxed_unsync(),
        }
    }
}

impl From<Incoming> for DownstreamBody {
    fn from(body: Incoming) -> Self {
        Self::Wire { body }
    }
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            DownstreamProj::Wire { body } => body.poll_frame(cx).map_err(Into::into),
            DownstreamProj::Other { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Wire { body } => body.is_end_stream(),
            Self::Other { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Wire { body } => body.size_hint(),
            Self::Other { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// A response body as an upstream sent it: off the wire, or whole from
    /// memory (an upstream that is not a socket: a test's mock).
    #[project = ReceivedProj]
    pub enum ReceivedBody {
        Wire {
            #[pin]
            body: UpstreamResponseBody,
        },
        Memory { data: Option<Bytes> },
    }
}

impl ReceivedBody {
    /// A whole body already in memory.
    pub fn memory(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self::Memory {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl From<UpstreamResponseBody> for ReceivedBody {
    fn from(body: UpstreamResponseBody) -> Self {
        Self::Wire { body }
    }
}

impl Body for ReceivedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ReceivedProj::Wire { body } => body.poll_frame(cx),
            ReceivedProj::Memory { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Wire { body } => body.is_end_stream(),
            Self::Memory { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Wire { body } => body.size_hint(),
            Self::Memory { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The upstream sent nothing for this long in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for {0:?}")]
pub struct UpstreamBodyTimeout(pub Duration);

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Upstream {
                mut body,
                idle,
                mut idle_timer,
                idle_armed,
                in_flight,
                admitted,
                capture,
            } => {
                let frame = match body.as_mut().poll_frame(cx) {
                    Poll::Ready(frame) => {
                        *idle_armed = false;
                        frame.map(|f| f.map_err(BoxError::from))
                    }
                    Poll::Pending => {
                        if !*idle_armed {
                            *idle_armed = true;
                            idle_timer
                                .as_mut()
                                .reset(tokio::time::Instant::now() + *idle);
                        }
                        ready!(idle_timer.as_mut().poll(cx));
                        // Dropping the slots here, not at the end: a stalled
                        // upstream must not hold them until the client
                        // gives up.
                        in_flight.take();
                        admitted.take();
                        if let Some(capture) = capture {
                            capture.done = None;
                        }
                        return Poll::Ready(Some(Err(Box::new(UpstreamBodyTimeout(*idle)))));
                    }
                };
                if let Some(capture) = capture {
                    match &frame {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                capture.data(data);
                            }
                            // hyper stops polling once the body says it has
                            // ended (after trailers, say): end here too.
                            if frame.is_trailers() || body.is_end_stream() {
                                capture.end();
                            }
                        }
                        Some(Err(_)) => capture.done = None,
                        None => capture.end(),
                    }
                }
                if frame.is_none() {
                    in_flight.take();
                    admitted.take();
                }
                Poll::Ready(frame)
            }
            ResponseBodyProj::Full { data, trailers } => match data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Full { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The request body went over the configured maximum while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyLimitExceeded {
    pub limit: u64,
}

pin_project! {
    /// Streams a request body, failing with [`BodyLimitExceeded`] as soon as
    /// more than `limit` bytes have passed, so an oversized chunked body is
    /// cut off instead of being forwarded whole.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
        // Fails the body when the client makes the gateway wait too long.
        clock: Option<BodyClock>,
    }
}

/// The body's timeouts, armed lazily: a body that arrives with its head
/// (most do) never makes the gateway wait, so it costs no timer at all.
/// One timer serves both bounds: it is set, each time the client makes
/// the gateway wait after sending something, to the nearer of "idle from
/// now" and "the whole body's deadline".
struct BodyClock {
    timeouts: BodyTimeouts,
    started: tokio::time::Instant,
    /// A frame arrived since the timer was last set.
    progressed: bool,
    /// The armed timer, and which timeout it stands for.
    timer: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl BodyClock {
    /// Called when the client has nothing for the gateway: `Some(timeout)`
    /// once the gateway has waited past one.
    fn wait(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        if self.progressed || self.timer.is_none() {
            self.progressed = false;
            let idle_at = tokio::time::Instant::now() + self.timeouts.idle;
            let total_at = self.started + self.timeouts.total;
            let (deadline, which) = if total_at < idle_at {
                (total_at, self.timeouts.total)
            } else {
                (idle_at, self.timeouts.idle)
            };
            match &mut self.timer {
                Some((sleep, armed_for)) => {
                    sleep.as_mut().reset(deadline);
                    *armed_for = which;
                }
                None => self.timer = Some((Box::pin(tokio::time::sleep_until(deadline)), which)),
            }
        }
        let (sleep, which) = self.timer.as_mut()?;
        sleep.as_mut().poll(cx).is_ready().then_some(*which)
    }
}

/// The client stopped sending its body mid-way, or sent it too slowly.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time ({0:?})")]
pub struct BodyReadTimeout(pub Duration);

/// How long a client may take over its request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// Longest gap between two pieces (`limits.body_read_timeout`).
    pub idle: Duration,
    /// Longest time for the whole body (`limits.body_total_timeout`).
    pub total: Duration,
}

impl BodyTimeouts {
    /// The timeouts `limits` sets.
    pub fn of(limits: &cascadia_config::Limits) -> Self {
        Self {
            idle: limits.body_read_timeout.get(),
            total: limits.body_total_timeout.get(),
        }
    }
}

impl<B> LimitedBody<B> {
    /// Wraps `inner` with a limit of `limit` bytes.
    pub fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            clock: None,
        }
    }

    /// Also fails the body on either of `timeouts`, counted from now.
    pub fn with_timeouts(mut self, timeouts: BodyTimeouts) -> Self {
        self.clock = Some(BodyClock {
            timeouts,
            started: tokio::time::Instant::now(),
            progressed: false,
            timer: None,
        });
        self
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(clock) = this.clock.as_mut() {
            if polled.is_ready() {
                clock.progressed = true;
            } else if let Some(timeout) = clock.wait(cx) {
                return Poll::Ready(Some(Err(Box::new(BodyReadTimeout(timeout)))));
            }
        }
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.remaining {
                        *this.remaining = 0;
                        let limit = *this.limit;
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded { limit }))));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a streamed request body stands. An attempt that times out while
/// the gateway is waiting on the *client* for body data failed because of
/// the client (a slow upload), not the endpoint: it must not count toward
/// ejection. Waiting on the upstream to take data it was handed, or for
/// its answer, is the upstream's.
#[derive(Debug, Default)]
pub struct BodyProgress(AtomicU8);

const NOT_POLLED: u8 = 0;
const WAITING_ON_CLIENT: u8 = 1;
const HANDED_OVER: u8 = 2;
const DONE: u8 = 3;

impl BodyProgress {
    /// The last poll found no data from the client yet.
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(Ordering::Relaxed) == WAITING_ON_CLIENT
    }
}

pin_project! {
    /// A request body that reports its [`BodyProgress`].
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        progress: Arc<BodyProgress>,
    }
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, progress: Arc<BodyProgress>) -> Self {
        progress.0.store(NOT_POLLED, Ordering::Relaxed);
        Self { inner, progress }
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let state = match &polled {
            Poll::Pending => WAITING_ON_CLIENT,
            Poll::Ready(Some(Ok(_))) => HANDED_OVER,
            Poll::Ready(_) => DONE,
        };
        this.progress.0.store(state, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_limited(
    incoming: DownstreamBody,
    limit: u64,
    timeouts: BodyTimeouts,
    buffers: &std::sync::Arc<crate::core::budget::BufferBudget>,
) -> Result<Bytes, crate::core::errors::GatewayError> {
    use crate::core::errors::GatewayError;
    use http_body_util::BodyExt as _;
    let mut body = LimitedBody::new(incoming, limit).with_timeouts(timeouts);
    // Charged as it arrives, so the gateway-wide budget bounds what is
    // in memory while bodies are still coming in.
    let mut reservation = buffers.reservation();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if error.is::<BodyLimitExceeded>() {
                GatewayError::BodyTooLarge { limit }
            } else if error.is::<BodyReadTimeout>() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_cut_at_the_total_timeout_not_the_idle_one() {
        // A byte every 100 ms, for ever.
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                (),
            ))
        });
        let timeouts = BodyTimeouts {
            idle: Duration::from_secs(1),
            total: Duration::from_secs(5),
        };
        let body = LimitedBody::new(StreamBody::new(trickle), 1 << 20).with_timeouts(timeouts);
        let started = tokio::time::Instant::now();
        let error = body.collect().await.expect_err("cut off");
        let timeout = error.downcast_ref::<BodyReadTimeout>().expect("a timeout");
        assert_eq!(timeout.0, Duration::from_secs(5));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_cut_at_the_idle_timeout_counted_from_the_last_piece() {
        // Two pieces 900 ms apart, then nothing.
        let pieces = futures_util::stream::unfold(0, |sent| async move {
            if sent == 2 {
                std::future::pending::<()>().await;
            }
            if sent == 1 {
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                sent + 1,
            ))
        });
        let timeouts = BodyTimeouts {
            idle: Duration::from_secs(1),
            total: Duration::from_secs(60),
        };
        let body = LimitedBody::new(StreamBody::new(pieces), 1 << 20).with_timeouts(timeouts);
        let started = tokio::time::Instant::now();
        let error = body.collect().await.expect_err("cut off");
        let timeout = error.downcast_ref::<BodyReadTimeout>().expect("a timeout");
        assert_eq!(timeout.0, Duration::from_secs(1));
        assert_eq!(started.elapsed(), Duration::from_millis(1900));
    }

    #[tokio::test]
    async fn a_body_that_never_makes_the_gateway_wait_arms_no_timer() {
        let timeouts = BodyTimeouts {
            idle: Duration::from_secs(1),
            total: Duration::from_secs(5),
        };
        let mut body =
            LimitedBody::new(Full::new(Bytes::from_static(b"12345")), 5).with_timeouts(timeouts);
        while let Some(frame) = body.frame().await {
            frame.expect("within limit");
        }
        assert!(body.clock.expect("timeouts set").timer.is_none());
    }

    #[tokio::test]
    async fn limited_body_passes_bodies_within_the_limit() {
        let body = LimitedBody::new(Full::new(Bytes::from_static(b"12345")), 5);
        let collected = body.collect().await.expect("within limit").to_bytes();
        assert_eq!(&collected[..], b"12345");
    }

    #[tokio::test]
    async fn limited_body_fails_once_the_limit_is_crossed() {
        let chunks = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"1234"))),
            Ok(Frame::data(Bytes::from_static(b"5678"))),
        ];
        let body = LimitedBody::new(StreamBody::new(futures_util::stream::iter(chunks)), 6);
        let error = body.collect().await.expect_err("over the limit");
        let exceeded = error
            .downcast_ref::<BodyLimitExceeded>()
            .expect("limit error");
        assert_eq!(exceeded.limit, 6);
    }
}
