//! Builds the backend pools of a config snapshot, reusing runtime state.
//!
//! A reload must not reset what the gateway has learned about endpoints that
//! stay in the config, nor drop their warm connections. The registry keeps
//! every live [`Endpoint`] keyed by backend name and authority, and one
//! [`UpstreamClient`] per protocol and connect timeout, and hands the same
//! objects to the next snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascadia_config::{Config, UpstreamProtocol};

use crate::client::UpstreamClient;
use crate::pool::{BackendPool, Endpoint};

type EndpointKey = (String, String);
type ClientKey = (UpstreamProtocol, Duration);

/// Long-lived owner of endpoint state and connection pools, shared across
/// snapshots. Only touched while a snapshot is built (off the hot path),
/// so a Mutex is fine here.
#[derive(Debug, Default)]
pub struct Registry {
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    endpoints: HashMap<EndpointKey, Arc<Endpoint>>,
    clients: HashMap<ClientKey, UpstreamClient>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds one pool per configured backend, keyed by backend name.
    ///
    /// Endpoints and clients that the previous build also had are reused;
    /// the ones the new config no longer names are forgotten (their
    /// connections close once the last snapshot using them is dropped).
    pub fn build(&self, config: &Config) -> HashMap<String, Arc<BackendPool>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut endpoints = HashMap::new();
        let mut clients = HashMap::new();
        let mut pools = HashMap::with_capacity(config.backends.len());

        for backend in &config.backends {
            let client_key = (backend.protocol, backend.connect_timeout.get());
            let client = state
                .clients
                .get(&client_key)
                .or_else(|| clients.get(&client_key))
                .cloned()
                .unwrap_or_else(|| UpstreamClient::new(backend.protocol, client_key.1));
            clients.insert(client_key, client.clone());

            let members = backend
                .endpoints
                .iter()
                .map(|endpoint| {
                    let key = (backend.name.clone(), endpoint.authority.to_string());
                    let state = state
                        .endpoints
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Endpoint::new(endpoint.authority.clone())));
                    endpoints.insert(key, Arc::clone(&state));
                    (state, endpoint.weight)
                })
                .collect();

            let pool = BackendPool::new(
                &backend.name,
                &backend.region,
                members,
                client,
                backend.timeout.get(),
            );
            pools.insert(backend.name.clone(), Arc::new(pool));
        }

        state.endpoints = endpoints;
        state.clients = clients;
        pools
    }
}
