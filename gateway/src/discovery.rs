//! DNS discovery: every `dns` backend's name is resolved every
//! `resolve_interval`, and when its addresses change the reloader builds
//! the serving config again. Endpoints that stay keep their connections,
//! latency and health (the registry hands them over); new ones join with
//! fresh state; gone ones leave once no request holds them.
//!
//! Resolution goes through [`Resolver`], the system's by default; a name
//! that fails or resolves to nothing keeps its last addresses
//! ([`next_addresses`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cascadia_backends::discovery::{next_addresses, Resolver};
use cascadia_backends::Registry;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reload::{ReloadHandle, Trigger};
use crate::snapshot::SharedSnapshot;

/// Longest one resolution may take; past it the name counts as failed
/// this round.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves the serving config's `dns` backends until `shutdown`.
pub struct Discovery {
    snapshot: SharedSnapshot,
    registry: Arc<Registry>,
    reload: ReloadHandle,
    resolver: Arc<dyn Resolver>,
    /// When each (backend, `host:port`) is due again.
    due: HashMap<(String, String), Instant>,
    /// Names whose last resolution failed, so a failure is logged once.
    failing: HashSet<(String, String)>,
}

impl Discovery {
    pub fn new(
        snapshot: SharedSnapshot,
        registry: Arc<Registry>,
        reload: ReloadHandle,
        resolver: Arc<dyn Resolver>,
    ) -> Self {
        Self {
            snapshot,
            registry,
            reload,
            resolver,
            due: HashMap::new(),
            failing: HashSet::new(),
        }
    }

    /// Resolves whatever is due; rebuilds the pools when an answer
    /// changed them. When the next name is due.
    pub async fn resolve_due(&mut self) -> Instant {
        let config = Arc::clone(&self.snapshot.load().config);
        let now = Instant::now();
        let mut changed = false;
        // Looked at again within a second even without `dns` backends: a
        // reload may add one.
        let mut next = now + Duration::from_secs(1);
        let mut named = HashSet::new();
        for backend in &config.backends {
            let Some(dns) = &backend.dns else {
                continue;
            };
            let key = (backend.name.clone(), dns.name());
            named.insert(key.clone());
            let due = self.due.get(&key).copied().unwrap_or(now);
            if due <= now {
                let answer = tokio::time::timeout(
                    RESOLVE_TIMEOUT,
                    self.resolver.resolve(&dns.host, dns.port),
                )
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                let error = answer.as_ref().err().map(ToString::to_string);
                match next_addresses(answer) {
                    Some(addresses) => {
                        if self.failing.remove(&key) {
                            tracing::info!(backend = %backend.name, name = %key.1, "DNS name resolves again");
                        }
                        let count = addresses.len();
                        if self.registry.set_resolved(&backend.name, &key.1, addresses) {
                            tracing::info!(backend = %backend.name, name = %key.1, endpoints = count, "DNS answer changed the endpoints");
                            changed = true;
                        }
                    }
                    None => {
                        if self.failing.insert(key.clone()) {
                            tracing::warn!(
                                backend = %backend.name,
                                name = %key.1,
                                error = error.as_deref().unwrap_or("no addresses"),
                                "DNS name does not resolve; keeping its last endpoints"
                            );
                        }
                    }
                }
                self.due
                    .insert(key.clone(), now + dns.resolve_interval.get());
            }
            next = next.min(self.due[&key]);
        }
        // Names the config no longer has are forgotten.
        self.due.retain(|key, _| named.contains(key));
        self.failing.retain(|key| named.contains(key));
        if changed {
            self.reload.reload(Trigger::Discovery).await;
        }
        next
    }

    /// Resolves every name as it falls due, until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self.resolve_due().await;
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                _ = crate::listener::stopped(&mut shutdown) => return,
            }
        }
    }
}
