//! An endpoint's own upstream connections: idle HTTP/1.1 connections in a
//! bounded lock-free queue, and one shared, multiplexed h2 connection.
//!
//! They live in the [`Endpoint`](crate::Endpoint), so finding them costs no
//! lookup, and a reload that keeps the endpoint keeps them warm.
//!
//! An HTTP/1.1 connection is taken out of the queue for one exchange and
//! goes back when its response body has been read to the end (see
//! [`UpstreamResponseBody`]). A body dropped early leaves the connection
//! mid-response, so it is not reused: hyper closes it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use crate::client::UpstreamBody;

/// How long an idle upstream connection may be reused. Below the shortest
/// keep-alive timeout common among model servers (uvicorn's 5 s, under
/// MLServer and KServe), so the gateway never sends a request into a
/// connection the server is closing under it.
pub const IDLE_REUSE_LIMIT: Duration = Duration::from_secs(4);
/// Idle HTTP/1.1 connections kept per endpoint; enough for bursts at a few
/// thousand requests per second without reconnecting. A connection that
/// finds the queue full is closed.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// Idle connections looked at for one checkout before a new one is opened.
/// Bounds the work of a checkout while connections finish their last
/// exchange.
const CHECKOUT_TRIES: usize = 8;

/// The connections of one endpoint.
#[derive(Debug)]
pub struct Connections {
    /// Idle HTTP/1.1 connections, oldest first.
    http1: ArrayQueue<Idle>,
    /// The endpoint's h2 connection, while it is open.
    h2: ArcSwapOption<http2::SendRequest<UpstreamBody>>,
    /// Held while an h2 connection is being opened, so concurrent requests
    /// wait for one handshake instead of racing their own.
    h2_opening: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            http1: ArrayQueue::new(MAX_IDLE_PER_ENDPOINT),
            h2: ArcSwapOption::empty(),
            h2_opening: tokio::sync::Mutex::new(()),
        }
    }
}

impl Connections {
    /// An idle HTTP/1.1 connection that can take a request now, if any.
    ///
    /// Connections that closed or sat idle past [`IDLE_REUSE_LIMIT`] are
    /// dropped. One that has not yet finished its last exchange (its
    /// response was read, but hyper has not seen the end yet) goes back to
    /// the queue for a later checkout.
    pub(crate) fn checkout_http1(&self, now: Instant) -> Option<http1::SendRequest<UpstreamBody>> {
        // Not ready yet: back in after the loop, so this checkout does not
        // pop them again. (No allocation unless one is found.)
        let mut busy = Vec::new();
        let mut found = None;
        for _ in 0..CHECKOUT_TRIES {
            let Some(idle) = self.http1.pop() else { break };
            if idle.sender.is_closed() || now.duration_since(idle.since) > IDLE_REUSE_LIMIT {
                continue;
            }
            if idle.sender.is_ready() {
                found = Some(idle.sender);
                break;
            }
            busy.push(idle);
        }
        for idle in busy {
            self.release(idle);
        }
        found
    }

    /// Puts a connection whose exchange ended back in the queue.
    pub(crate) fn checkin_http1(&self, sender: http1::SendRequest<UpstreamBody>) {
        if !sender.is_closed() {
            self.release(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn release(&self, idle: Idle) {
        // A full queue closes the connection: the bound on idle sockets.
        let _ = self.http1.push(idle);
    }

    /// The open h2 connection, if there is one.
    pub(crate) fn h2(&self) -> Option<http2::SendRequest<UpstreamBody>> {
        self.h2
            .load()
            .as_deref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// The h2 connection, opened by `open` when there is none; concurrent
    /// callers share one handshake.
    pub(crate) async fn h2_or_open<E, F>(
        &self,
        open: F,
    ) -> Result<http2::SendRequest<UpstreamBody>, E>
    where
        F: std::future::Future<Output = Result<http2::SendRequest<UpstreamBody>, E>>,
    {
        if let Some(sender) = self.h2() {
            return Ok(sender);
        }
        let _opening = self.h2_opening.lock().await;
        if let Some(sender) = self.h2() {
            return Ok(sender);
        }
        let sender = open.await?;
        self.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    /// Idle HTTP/1.1 connections held now (closed ones not yet noticed
    /// included).
    pub fn idle_http1(&self) -> usize {
        self.http1.len()
    }
}

/// A response body from an upstream connection. When an HTTP/1.1 body ends,
/// its connection goes back to the endpoint's queue.
#[derive(Debug)]
pub struct UpstreamResponseBody {
    body: Incoming,
    lease: Option<Lease>,
}

#[derive(Debug)]
struct Lease {
    sender: http1::SendRequest<UpstreamBody>,
    home: Arc<Connections>,
}

impl UpstreamResponseBody {
    /// A body on a multiplexed connection, which nothing has to give back.
    pub(crate) fn shared(body: Incoming) -> Self {
        Self { body, lease: None }
    }

    /// A body on an HTTP/1.1 connection taken from `home`.
    pub(crate) fn leased(
        body: Incoming,
        sender: http1::SendRequest<UpstreamBody>,
        home: Arc<Connections>,
    ) -> Self {
        Self {
            body,
            lease: Some(Lease { sender, home }),
        }
    }

    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.home.checkin_http1(lease.sender);
        }
    }
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            // A broken body leaves a broken connection: hyper closes it.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamResponseBody {
    fn drop(&mut self) {
        // An empty body is often never polled; it ended all the same.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}
