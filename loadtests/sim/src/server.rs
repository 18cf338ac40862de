//! The accept loop: one task per connection, HTTP/1.1 and h2c on the same listener.
//!
//! Shutdown is abrupt on purpose — open connections are dropped, like a crashed backend —
//! so gateway tests can watch failover happen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::control::{Settings, SimControl};
use crate::service::{self, Shared};
use crate::SimConfig;

/// A running simulator. Dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct SimHandle {
    /// Where it listens (use this with a listener bound to port 0).
    pub addr: SocketAddr,
    /// Live settings and counters.
    pub control: Arc<SimControl>,
    /// Dropping the sender is the shutdown signal.
    shutdown: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, drops every connection and waits until that is done.
    pub async fn shutdown(self) {
        let SimHandle { shutdown, task, .. } = self;
        drop(shutdown);
        // The task only ends by returning; a panic in it is a bug worth surfacing.
        if let Err(e) = task.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// Serves `config` on `listener` in a spawned task (call inside a Tokio runtime).
///
/// Fails only if the listener has no local address or a label is not a valid header value.
pub async fn spawn(listener: TcpListener, config: SimConfig) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let control = Arc::new(SimControl::new(Settings {
        latency: config.latency,
        error_rate: config.error_rate,
    }));
    let shared = Arc::new(Shared::new(config, control.clone())?);
    let (shutdown, signal) = watch::channel(());
    let task = tokio::spawn(accept_loop(listener, shared, signal));
    Ok(SimHandle {
        addr,
        control,
        shutdown,
        task,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut signal: watch::Receiver<()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    // Owning the connection tasks lets shutdown abort them all and wait for them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // `changed` errs once the sender (SimHandle) is gone.
            _ = signal.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Latency numbers must not include Nagle delays.
                    let _ = stream.set_nodelay(true);
                    let builder = builder.clone();
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(service::handle(&shared, req).await) }
                        });
                        if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                            tracing::debug!(%peer, error = %e, "sim connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Usually fd exhaustion under load; back off instead of spinning.
                    tracing::warn!(error = %e, "sim accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}
