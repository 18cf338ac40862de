//! The config snapshot the data plane reads: routes resolved to backend
//! pools, built whole off the hot path and published with one atomic store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use cascadia_backends::{BackendPool, Registry};
use cascadia_config::{Config, LoadedConfig};

use crate::features::RedisTier;
use crate::routing::{RouteRuntimes, RouteTable};

/// Everything a request needs from config, immutable once published.
///
/// A request loads the current snapshot once, at admission, and keeps it
/// to the end, so a reload never changes the rules under a request.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with every applied reload, starting at 1.
    pub version: u64,
    /// SHA-256 of the config file's bytes.
    pub hash: String,
    /// When this snapshot was published.
    pub loaded_at: SystemTime,
    /// The validated config it was built from.
    pub config: Arc<Config>,
    /// The routes, resolved to `pools`.
    pub routes: RouteTable,
    /// One pool per backend, keyed by backend name.
    pub pools: HashMap<String, Arc<BackendPool>>,
    /// The feature cache's Redis tier, created once at start-up and handed
    /// from snapshot to snapshot (its settings apply at restart).
    pub redis: Option<Arc<RedisTier>>,
    /// The admin API's bearer token; reloads with the config.
    pub admin_token: Option<cascadia_config::Secret>,
    /// Requests that matched no route, for `/metrics`.
    pub unmatched: Arc<crate::core::stats::RouteStats>,
    /// Per-route runtime state, handed from snapshot to snapshot.
    pub runtimes: Arc<RouteRuntimes>,
}

impl Snapshot {
    /// Builds a snapshot, reusing endpoint state and connection pools from
    /// `registry` for endpoints that stay in the config.
    pub fn build(
        version: u64,
        loaded: &LoadedConfig,
        registry: &Registry,
        redis: Option<Arc<RedisTier>>,
        runtimes: Arc<RouteRuntimes>,
    ) -> Self {
        runtimes
            .buffers
            .set_limit(loaded.config.gateway.limits.max_buffered_bytes);
        let pools = registry.build(&loaded.config);
        let routes = RouteTable::build(&loaded.config, &pools, redis.as_ref(), &runtimes);
        Self {
            version,
            hash: loaded.hash.clone(),
            loaded_at: SystemTime::now(),
            config: Arc::clone(&loaded.config),
            routes,
            pools,
            redis,
            admin_token: loaded.admin_token.clone(),
            unmatched: Arc::clone(&runtimes.unmatched),
            runtimes,
        }
    }
}

/// The published snapshot. Readers take a cheap guard; the reloader
/// replaces it with one store.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
