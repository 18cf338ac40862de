//! Builds the backend pools of a config snapshot, reusing runtime state.
//!
//! A reload must not reset what the gateway has learned about endpoints that
//! stay in the config, nor drop their warm connections or their health. The
//! registry keeps every live [`Endpoint`] keyed by backend name and
//! authority, one [`UpstreamClient`] per protocol and connect timeout (and
//! per TLS backend), the
//! operator state of each region, and the active health checkers, and hands
//! them to the next snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascadia_config::{Config, UpstreamProtocol};

use crate::client::UpstreamClient;
use crate::endpoint::Endpoint;
use crate::health::{self, Checker};
use crate::pool::{BackendPool, PoolSettings, RegionState};
use crate::tls::UpstreamTlsConnector;

/// Backend name, authority, and whether it speaks TLS: an endpoint that
/// turns TLS on or off starts afresh, so no plaintext connection is reused
/// for it.
type EndpointKey = (String, String, bool);
/// Protocol, connect timeout, and the backend's name when it speaks TLS
/// (each such backend has its own client config).
type ClientKey = (UpstreamProtocol, Duration, Option<String>);

/// Long-lived owner of endpoint state and connection pools, shared across
/// snapshots. Only touched while a snapshot is built or by the admin API
/// (off the hot path), so a Mutex is fine here.
#[derive(Debug, Default)]
pub struct Registry {
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// The addresses each `dns` backend resolved to last, by backend name
    /// and the `host:port` it names (a reload that changes the name does
    /// not inherit the old name's addresses).
    resolved: HashMap<(String, String), Vec<std::net::SocketAddr>>,
    endpoints: HashMap<EndpointKey, Arc<Endpoint>>,
    clients: HashMap<ClientKey, UpstreamClient>,
    regions: HashMap<String, Arc<RegionState>>,
    checkers: HashMap<EndpointKey, Checker>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what `backend`'s DNS name `name` (`host:port`) resolved
    /// to; true when that differs from before (the pools must be built
    /// again to use it).
    pub fn set_resolved(
        &self,
        backend: &str,
        name: &str,
        addresses: Vec<std::net::SocketAddr>,
    ) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = (backend.to_owned(), name.to_owned());
        if state.resolved.get(&key) == Some(&addresses) {
            return false;
        }
        state.resolved.insert(key, addresses);
        true
    }

    /// Builds one pool per configured backend, keyed by backend name.
    ///
    /// Endpoints, clients, region states and health checkers that the
    /// previous build also had are reused; those the new config no longer
    /// names are dropped (checkers stop, connections close once the last
    /// snapshot using them is gone). Must run inside a tokio runtime when
    /// any backend has active health checks.
    pub fn build(&self, config: &Config) -> HashMap<String, Arc<BackendPool>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Only the names the config still has are remembered.
        state.resolved.retain(|(backend, name), _| {
            config
                .backends
                .iter()
                .any(|b| b.name == *backend && b.dns.as_ref().is_some_and(|d| d.name() == *name))
        });
        let mut endpoints = HashMap::new();
        let mut clients = HashMap::new();
        let mut checkers = HashMap::new();
        let mut pools = HashMap::with_capacity(config.backends.len());

        for backend in &config.backends {
            let client_key = (
                backend.protocol,
                backend.connect_timeout.get(),
                backend.tls.as_ref().map(|_| backend.name.clone()),
            );
            let same_tls = |client: &&UpstreamClient| {
                client.tls().map(|tls| tls.settings()) == backend.tls.as_ref()
            };
            let client = state
                .clients
                .get(&client_key)
                .or_else(|| clients.get(&client_key))
                .filter(same_tls)
                .cloned()
                .unwrap_or_else(|| {
                    let client = UpstreamClient::new(backend.protocol, client_key.1);
                    match &backend.tls {
                        None => client,
                        Some(tls) => client.with_tls(UpstreamTlsConnector::new(
                            &backend.name,
                            tls,
                            backend.protocol,
                        )),
                    }
                });
            clients.insert(client_key, client.clone());

            let region_state = Arc::clone(state.regions.entry(backend.region.clone()).or_default());

            // A `dns` backend's endpoints are the addresses its name
            // resolved to last (none before the first answer).
            let discovered: Vec<cascadia_config::Endpoint> = backend
                .dns
                .as_ref()
                .and_then(|dns| {
                    let key = (backend.name.clone(), dns.name());
                    state.resolved.get(&key)
                })
                .into_iter()
                .flatten()
                .filter_map(|addr| {
                    let authority = addr.to_string().parse().ok()?;
                    Some(cascadia_config::Endpoint {
                        authority,
                        weight: 1,
                    })
                })
                .collect();
            let mut members = Vec::with_capacity(backend.endpoints.len() + discovered.len());
            for endpoint in backend.endpoints.iter().chain(&discovered) {
                let key = (
                    backend.name.clone(),
                    endpoint.authority.to_string(),
                    backend.tls.is_some(),
                );
                let shared = state
                    .endpoints
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(endpoint.authority.clone())));
                endpoints.insert(key.clone(), Arc::clone(&shared));

                // Keep a checker whose settings and client did not change;
                // restart one whose did; stop checking when the config no
                // longer asks.
                match &backend.health_check {
                    Some(settings) => {
                        let checker = match state.checkers.remove(&key) {
                            Some(existing) if existing.runs_with(settings, &client) => existing,
                            _ => {
                                health::spawn(Arc::clone(&shared), client.clone(), settings.clone())
                            }
                        };
                        checkers.insert(key, checker);
                    }
                    None => shared.set_check_healthy(true),
                }
                members.push((shared, endpoint.weight));
            }

            let pool = BackendPool::new(PoolSettings {
                name: backend.name.clone(),
                region: backend.region.clone(),
                region_state,
                endpoints: members,
                balancer: backend.balancer,
                outlier: backend.outlier.clone(),
                client,
                timeout: backend.timeout.get(),
                hold_down: backend.hold_down.get(),
            });
            pools.insert(backend.name.clone(), Arc::new(pool));
        }

        state.endpoints = endpoints;
        state.clients = clients;
        // Dropping the old map stops checkers of removed endpoints.
        state.checkers = checkers;
        pools
    }

    /// The operator state of `region`, when some backend is in it.
    pub fn region(&self, region: &str) -> Option<Arc<RegionState>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.regions.get(region).cloned()
    }

    /// Every endpoint, as `backend/authority` with its state.
    pub fn endpoints(&self) -> Vec<(String, Arc<Endpoint>)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .endpoints
            .iter()
            .map(|((backend, authority, _tls), endpoint)| {
                (format!("{backend}/{authority}"), Arc::clone(endpoint))
            })
            .collect()
    }

    /// Every region some backend has been in, with its operator state.
    pub fn regions(&self) -> Vec<(String, Arc<RegionState>)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .regions
            .iter()
            .map(|(name, region)| (name.clone(), Arc::clone(region)))
            .collect()
    }

    /// Drains or restores a region; false when no backend has ever been in
    /// that region.
    pub fn set_region_drained(&self, region: &str, drained: bool) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.regions.get(region) {
            Some(region) => {
                region.set_drained(drained);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(connect_timeout: &str) -> Config {
        cascadia_config::parse(&format!(
            r#"
[[backends]]
name = "a"
region = "r"
endpoints = ["127.0.0.1:9"]
connect_timeout = "{connect_timeout}"
health_check = {{ interval = "1h" }}

[[routes]]
name = "r"
match = {{ model = "m" }}
backends = ["a"]
"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn a_health_checker_restarts_when_its_backends_client_changes() {
        let registry = Registry::new();
        let probing_with = |registry: &Registry| {
            let state = registry.state.lock().unwrap();
            let checker = state.checkers.values().next().expect("a checker");
            checker.client_connect_timeout()
        };
        registry.build(&config("1s"));
        assert_eq!(probing_with(&registry), Duration::from_secs(1));
        // The requests' client changes with the connect timeout; the
        // probes must follow it, not keep the old one.
        registry.build(&config("2s"));
        assert_eq!(probing_with(&registry), Duration::from_secs(2));
    }
}
