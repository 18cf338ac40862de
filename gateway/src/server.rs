//! Starts a whole gateway from a loaded config: the data-plane listener, the
//! admin listener and the reloader, with one shutdown switch for all three.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cascadia_backends::Registry;
use cascadia_config::LoadedConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, Admin};
use crate::features::RedisTier;
use crate::listener;
use crate::reload::{self, ReloadHandle};
use crate::snapshot::{SharedSnapshot, Snapshot};

/// Overrides for the addresses in the config file, and the seams tests use.
#[derive(Clone, Default)]
pub struct GatewayOptions {
    /// Data-plane address; the config's `gateway.listen` when `None`.
    pub listen: Option<SocketAddr>,
    /// Admin address; the config's `gateway.admin_listen` when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// Reload when the config file changes (SIGHUP and the admin API
    /// always work).
    pub watch_config: bool,
    /// Resolves `dns` backends; the system's resolver when `None`.
    pub resolver: Option<Arc<dyn cascadia_backends::discovery::Resolver>>,
}

impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayOptions")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("watch_config", &self.watch_config)
            .field("resolver", &self.resolver.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// A running gateway.
pub struct Gateway {
    /// The bound data-plane address (resolved when the config says port 0).
    pub listen_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    snapshot: SharedSnapshot,
    reload: ReloadHandle,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Binds both listeners and starts serving `loaded`.
    pub async fn start(loaded: LoadedConfig, options: GatewayOptions) -> io::Result<Self> {
        let settings = &loaded.config.gateway;
        let listen = options.listen.unwrap_or(settings.listen);
        let admin_listen = options.admin_listen.unwrap_or(settings.admin_listen);
        // Before binding: a certificate that cannot serve stops the start.
        let tls = match &settings.tls {
            None => None,
            Some(tls) => Some(listener::TlsListener::new(tls).map_err(|(field, message)| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("gateway.tls.{field}: {message}"),
                )
            })?),
        };
        let listener = bind(listen, "listen").await?;
        let admin_listener = bind(admin_listen, "admin_listen").await?;

        if let Some(tracing) = &settings.tracing {
            match crate::telemetry::trace::install(tracing) {
                Ok(()) => {
                    tracing::info!(endpoint = %tracing.otlp_endpoint, ratio = tracing.sample_ratio, "exporting traces over OTLP")
                }
                Err(error) => tracing::error!(%error, "tracing is off"),
            }
        }
        let registry = Arc::new(Registry::new());
        let redis = settings.redis.clone().and_then(|redis| match RedisTier::new(redis) {
            Ok(tier) => Some(Arc::new(tier)),
            Err(error) => {
                tracing::error!(%error, "cannot set up the Redis feature cache; running on the in-process tier");
                None
            }
        });
        let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            1,
            &loaded,
            &registry,
            redis,
            Arc::default(),
        )));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let reload = reload::spawn(
            loaded.source.clone(),
            Arc::clone(&snapshot),
            Arc::clone(&registry),
            options.watch_config,
            shutdown_rx.clone(),
        );

        // `dns` backends get their first endpoints before the listener
        // serves, so the first requests do not find empty pools.
        let resolver = options
            .resolver
            .clone()
            .unwrap_or_else(|| Arc::new(cascadia_backends::discovery::SystemResolver));
        let mut discovery = crate::discovery::Discovery::new(
            Arc::clone(&snapshot),
            Arc::clone(&registry),
            reload.clone(),
            resolver,
        );
        let discovering = loaded.config.backends.iter().any(|b| b.dns.is_some());
        if discovering {
            discovery.resolve_due().await;
        }

        let listen_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let config_dir = loaded
            .source
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let rollouts = Arc::new(crate::rollout::Rollouts::new(
            snapshot.load().redis.clone(),
            &config_dir,
        ));
        // A replica (re)starting mid-rollout serves the plan's weights from
        // its first request, not the config file's.
        rollouts.prime(&snapshot).await;
        let mut tasks = JoinSet::new();
        if let Some(tls) = &tls {
            tasks.spawn(Arc::clone(tls).watch(shutdown_rx.clone()));
        }
        tasks.spawn(listener::serve(
            listener,
            Arc::clone(&snapshot),
            tls,
            shutdown_rx.clone(),
        ));
        tasks.spawn(Arc::clone(&rollouts).run(Arc::clone(&snapshot), shutdown_rx.clone()));
        // Always running: a reload may add a `dns` backend.
        tasks.spawn(discovery.run(shutdown_rx.clone()));
        // With Redis, drains and drill faults reach every replica.
        if let Some(redis) = snapshot.load().redis.clone() {
            tasks.spawn(crate::fleet::run(
                redis,
                Arc::clone(&registry),
                Arc::clone(&snapshot),
                rollouts.replica().to_owned(),
                shutdown_rx.clone(),
            ));
        }
        tasks.spawn(admin::serve(
            admin_listener,
            Admin::new(Arc::clone(&snapshot), reload.clone(), registry, rollouts),
            shutdown_rx,
        ));
        Ok(Self {
            listen_addr,
            admin_addr,
            snapshot,
            reload,
            shutdown,
            tasks,
        })
    }

    /// The serving snapshot.
    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// The reloader.
    pub fn reload_handle(&self) -> &ReloadHandle {
        &self.reload
    }

    /// The Kubernetes way out (SIGTERM): readiness fails at once, serving
    /// goes on for `gateway.drain_delay` while the load balancer stops
    /// sending, then [`Self::shutdown`].
    pub async fn drain(self) {
        crate::core::lifecycle::begin_draining();
        let delay = self.snapshot.load().config.gateway.drain_delay;
        tracing::info!(
            ?delay,
            "draining: readiness fails; serving until the drain delay passes"
        );
        tokio::time::sleep(delay).await;
        self.shutdown().await;
    }

    /// Stops accepting, lets in-flight requests finish (bounded by
    /// `gateway.drain_timeout`), and returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // The last spans go out after the last requests; the flush blocks.
        if crate::telemetry::trace::enabled() {
            let _ = tokio::task::spawn_blocking(crate::telemetry::trace::shutdown).await;
        }
    }
}

async fn bind(addr: SocketAddr, field: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen on {addr} (gateway.{field}): {error}"),
        )
    })
}

/// Prints the bound addresses in a fixed format that scripts and tests read.
pub fn announce(gateway: &Gateway) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let scheme = if gateway.snapshot.load().config.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let _ = writeln!(
        out,
        "cascadia gateway listening on {scheme}://{}",
        gateway.listen_addr
    );
    let _ = writeln!(
        out,
        "cascadia admin listening on http://{}",
        gateway.admin_addr
    );
    let _ = out.flush();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
