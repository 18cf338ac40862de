//! Hot reload: one task that reloads the config file when it changes, on
//! SIGHUP, and when the admin API asks, and publishes each good config as a
//! new snapshot with a single atomic store.
//!
//! An invalid file is rejected whole: the last good snapshot keeps serving
//! and the error is kept for `GET /admin/config`. A file whose bytes did not
//! change (editors and ConfigMap swaps produce several events per save) is
//! not rebuilt.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cascadia_backends::Registry;
use cascadia_config::watch::ConfigWatcher;
use cascadia_config::{ConfigError, LoadError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::snapshot::{SharedSnapshot, Snapshot};

/// How long the file watch waits for a burst of events to settle.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(100);

/// What asked for a reload; logged with the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Signal,
    Admin,
    /// A `dns` backend's addresses changed: the serving config is built
    /// again (same version and hash), the file is not read.
    Discovery,
}

/// The result of one reload attempt.
#[derive(Clone, Debug)]
pub enum ReloadOutcome {
    /// A new snapshot is serving.
    Applied { version: u64, hash: String },
    /// The file's bytes match the serving config; nothing was rebuilt.
    Unchanged { version: u64, hash: String },
    /// The file was rejected; the previous snapshot keeps serving.
    Rejected(ReloadFailure),
}

/// Why the last reload failed, as shown by the admin API.
#[derive(Clone, Debug)]
pub struct ReloadFailure {
    /// One-line summary.
    pub message: String,
    /// Every validation error with its field path (empty for I/O errors).
    pub errors: Vec<ConfigError>,
    /// When the reload was attempted.
    pub at: SystemTime,
}

/// Reload counters and the last error, for the admin API.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    pub applied: u64,
    pub rejected: u64,
    /// The most recent rejection; cleared by the next applied reload.
    pub last_error: Option<ReloadFailure>,
}

struct ReloadRequest {
    trigger: Trigger,
    reply: oneshot::Sender<ReloadOutcome>,
}

/// A handle to ask the reloader for a reload and to read its status.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<ReloadRequest>,
    status: Arc<Mutex<ReloadStatus>>,
    source: Arc<PathBuf>,
}

impl ReloadHandle {
    /// Reloads now and returns the outcome.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(ReloadRequest { trigger, reply })
            .await
            .ok()?;
        outcome.await.ok()
    }

    /// Counters and the last error.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The config file being served.
    pub fn source(&self) -> &std::path::Path {
        &self.source
    }
}

/// Starts the reloader for the config at `source`, serving `snapshot`.
/// With `watch_file`, changes to the file trigger reloads too.
pub fn spawn(
    source: PathBuf,
    snapshot: SharedSnapshot,
    registry: Arc<Registry>,
    watch_file: bool,
    mut shutdown: watch::Receiver<bool>,
) -> ReloadHandle {
    let (requests, mut incoming) = mpsc::channel::<ReloadRequest>(8);
    let status = Arc::new(Mutex::new(ReloadStatus::default()));
    let handle = ReloadHandle {
        requests,
        status: Arc::clone(&status),
        source: Arc::new(source.clone()),
    };
    let mut watcher = if watch_file {
        match ConfigWatcher::new(&source, WATCH_DEBOUNCE) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, path = %source.display(), "cannot watch config file; reload with SIGHUP or the admin API");
                None
            }
        }
    } else {
        None
    };
    let reloader = Reloader {
        source,
        snapshot,
        registry,
        status,
    };

    // Installed before the gateway reports ready: a SIGHUP that arrives
    // between start-up and the task's first poll must reload, not kill
    // the process (SIGHUP's default action).
    let mut hangups = hangup_signals();
    tokio::spawn(async move {
        loop {
            let (trigger, reply) = tokio::select! {
                request = incoming.recv() => match request {
                    Some(request) => (request.trigger, Some(request.reply)),
                    None => break,
                },
                changed = next_change(&mut watcher) => {
                    if changed.is_none() {
                        tracing::warn!("config file watch stopped");
                        watcher = None;
                        continue;
                    }
                    (Trigger::FileChange, None)
                }
                Some(()) = next_hangup(&mut hangups) => (Trigger::Signal, None),
                _ = crate::listener::stopped(&mut shutdown) => break,
            };
            let outcome = reloader.reload(trigger).await;
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    });
    handle
}

/// Longest a reload may spend reading its files.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct Reloader {
    source: PathBuf,
    snapshot: SharedSnapshot,
    registry: Arc<Registry>,
    status: Arc<Mutex<ReloadStatus>>,
}

impl Reloader {
    /// Builds the serving config again, with the registry's latest DNS
    /// answers: new endpoints join, gone ones leave, and those that stay
    /// keep their state (the registry hands them over).
    async fn rebuild(&self) -> ReloadOutcome {
        let current = self.snapshot.load_full();
        let loaded = cascadia_config::LoadedConfig {
            config: Arc::clone(&current.config),
            hash: current.hash.clone(),
            source: self.source.clone(),
            admin_token: current.admin_token.clone(),
        };
        let registry = Arc::clone(&self.registry);
        let redis = current.redis.clone();
        let runtimes = Arc::clone(&current.runtimes);
        let version = current.version;
        let next = tokio::task::spawn_blocking(move || {
            Snapshot::build(version, &loaded, &registry, redis, runtimes)
        })
        .await
        .expect("snapshot build does not panic");
        self.snapshot.store(Arc::new(next));
        ReloadOutcome::Unchanged {
            version,
            hash: current.hash.clone(),
        }
    }

    async fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        if trigger == Trigger::Discovery {
            return self.rebuild().await;
        }
        let path = self.source.clone();
        // Bounded: inputs are regular files under a size cap, but a stalled
        // filesystem (or a file swapped for a FIFO after its check) could
        // still block the read. A reload that takes too long is rejected,
        // and its thread left behind, so it never holds up the next one.
        let read = tokio::task::spawn_blocking(move || cascadia_config::load_file(&path));
        let loaded = match tokio::time::timeout(LOAD_TIMEOUT, read).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(join_error)) => Err(LoadError::Io {
                path: self.source.clone(),
                source: std::io::Error::other(join_error.to_string()),
            }),
            Err(_) => Err(LoadError::Io {
                path: self.source.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("reading the config took over {LOAD_TIMEOUT:?}"),
                ),
            }),
        };
        let current = self.snapshot.load_full();
        let outcome = match loaded {
            Ok(loaded) if loaded.hash == current.hash => ReloadOutcome::Unchanged {
                version: current.version,
                hash: current.hash.clone(),
            },
            Ok(loaded) => {
                if loaded.config.gateway.listen != current.config.gateway.listen
                    || loaded.config.gateway.admin_listen != current.config.gateway.admin_listen
                {
                    tracing::warn!("listen addresses changed; they apply at the next restart");
                }
                if loaded.config.gateway.tls != current.config.gateway.tls {
                    tracing::warn!(
                        "gateway.tls changed; it applies at the next restart (the certificate files themselves are reloaded when they change)"
                    );
                }
                let registry = Arc::clone(&self.registry);
                let redis = current.redis.clone();
                let runtimes = Arc::clone(&current.runtimes);
                let version = current.version + 1;
                // Building resolves every route and pool before anything is
                // published; the store below is the only thing readers see.
                let next = tokio::task::spawn_blocking(move || {
                    Snapshot::build(version, &loaded, &registry, redis, runtimes)
                })
                .await
                .expect("snapshot build does not panic");
                let hash = next.hash.clone();
                self.snapshot.store(Arc::new(next));
                ReloadOutcome::Applied { version, hash }
            }
            Err(error) => {
                let errors = match &error {
                    LoadError::Invalid(errors) => errors.0.clone(),
                    LoadError::Io { .. } => Vec::new(),
                };
                ReloadOutcome::Rejected(ReloadFailure {
                    message: match &error {
                        LoadError::Invalid(errors) => {
                            format!("invalid config: {} error(s)", errors.0.len())
                        }
                        other => other.to_string(),
                    },
                    errors,
                    at: SystemTime::now(),
                })
            }
        };

        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match &outcome {
            ReloadOutcome::Applied { version, hash } => {
                status.applied += 1;
                status.last_error = None;
                tracing::info!(
                    ?trigger,
                    version,
                    hash = &hash[..12.min(hash.len())],
                    "config reloaded"
                );
            }
            ReloadOutcome::Unchanged { .. } => {
                tracing::debug!(?trigger, "config unchanged");
            }
            ReloadOutcome::Rejected(failure) => {
                status.rejected += 1;
                status.last_error = Some(failure.clone());
                let details: Vec<String> = failure
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect();
                tracing::error!(?trigger, error = %failure.message, details = ?details, "config reload rejected; keeping the last good config");
            }
        }
        outcome
    }
}

async fn next_change(watcher: &mut Option<ConfigWatcher>) -> Option<()> {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

#[cfg(unix)]
async fn next_hangup(signals: &mut Hangups) -> Option<()> {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}
