//! The feature cache: an entity's features (a sender domain's age, a
//! user's history) for the cascade's stage 1, so scoring does not pay a
//! feature-store round trip per request.
//!
//! # How it works
//! Three tiers, tried in order for the keys a request needs:
//! 1. [`l1`]: in-process, bounded, with a TTL; found and unknown entities
//!    (negative caching) alike.
//! 2. [`redis`]: shared by every gateway, one `MGET` per request, bounded
//!    by its response timeout and guarded by a circuit breaker: Redis
//!    never fails or stalls a request, it only saves store fetches.
//! 3. The feature store ([`store`]): `GET /features/{key}?features=a,b`
//!    on a configured backend. Concurrent misses for one key share one
//!    fetch (single flight); results are written back to both tiers.

pub mod l1;
pub mod redis;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascadia_backends::BackendPool;
use cascadia_config::EntityFeatures;
use futures_util::future::{FutureExt, Shared};

pub use self::redis::RedisTier;
use l1::L1;

/// An entity's features in the configured order, or `None` for an entity
/// the store does not know.
pub type Entry = Option<Arc<[f64]>>;

/// Where a lookup was answered, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    L1,
    Redis,
    Store,
}

type Flight = Shared<Pin<Box<dyn Future<Output = Result<Entry, ()>> + Send>>>;

/// The entity lookup of one cascade route.
pub struct EntityLookup {
    pub settings: EntityFeatures,
    store: Arc<BackendPool>,
    l1: L1,
    redis: Option<Arc<RedisTier>>,
    /// Fetches in progress, by key: later misses join them.
    flights: Mutex<HashMap<String, Flight>>,
    /// Counters for the admin API and tests.
    pub stats: LookupStats,
}

/// How lookups were answered.
#[derive(Debug, Default, serde::Serialize)]
pub struct LookupStats {
    pub l1_hits: std::sync::atomic::AtomicU64,
    pub redis_hits: std::sync::atomic::AtomicU64,
    pub store_fetches: std::sync::atomic::AtomicU64,
    pub store_failures: std::sync::atomic::AtomicU64,
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl std::fmt::Debug for EntityLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityLookup")
            .field("store", &self.store.name())
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl EntityLookup {
    /// A lookup for `settings`, fetching from `store`, with an optional
    /// shared Redis tier.
    pub fn new(
        settings: EntityFeatures,
        store: Arc<BackendPool>,
        redis: Option<Arc<RedisTier>>,
    ) -> Self {
        Self {
            l1: L1::new(settings.l1_capacity),
            settings,
            store,
            redis,
            flights: Mutex::default(),
            stats: LookupStats::default(),
        }
    }

    /// The features of every key (distinct keys), `Err` for keys whose
    /// fetch failed (store down): the caller treats those as missing.
    pub async fn get(&self, keys: &[String]) -> HashMap<String, Result<Entry, ()>> {
        let mut found = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            match self.l1.get(key) {
                Some(entry) => {
                    bump(&self.stats.l1_hits);
                    found.insert(key.clone(), Ok(entry));
                }
                None => missing.push(key.clone()),
            }
        }
        if missing.is_empty() {
            return found;
        }

        if let Some(redis) = &self.redis {
            let width = self.settings.features.len();
            if let Some(values) = redis.mget(&missing, width).await {
                let mut still = Vec::new();
                for (key, value) in missing.into_iter().zip(values) {
                    match value {
                        Some(entry) => {
                            bump(&self.stats.redis_hits);
                            self.l1.insert(&key, entry.clone(), self.ttl_for(&entry));
                            found.insert(key, Ok(entry));
                        }
                        None => still.push(key),
                    }
                }
                missing = still;
            }
        }

        let fetches = missing.iter().map(|key| self.fetch(key.clone()));
        let results = futures_util::future::join_all(fetches).await;
        for (key, result) in missing.into_iter().zip(results) {
            found.insert(key, result);
        }
        found
    }

    fn ttl_for(&self, entry: &Entry) -> Duration {
        match entry {
            Some(_) => self.settings.ttl.get(),
            None => self.settings.negative_ttl.get(),
        }
    }

    /// One key from the store, joined with any fetch of it in progress.
    async fn fetch(&self, key: String) -> Result<Entry, ()> {
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let store = Arc::clone(&self.store);
                    let names = self.settings.features.clone();
                    let timeout = self.settings.timeout.get();
                    let fetch_key = key.clone();
                    let flight: Flight =
                        async move { store::fetch(&store, &fetch_key, &names, timeout).await }
                            .boxed()
                            .shared();
                    flights.insert(key.clone(), flight.clone());
                    (flight, true)
                }
            }
        };
        let result = flight.await;
        if leader {
            self.flights
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            bump(&self.stats.store_fetches);
            match &result {
                Ok(entry) => {
                    let ttl = self.ttl_for(entry);
                    self.l1.insert(&key, entry.clone(), ttl);
                    if let Some(redis) = &self.redis {
                        redis.set_in_background(&key, entry, ttl);
                    }
                }
                Err(()) => bump(&self.stats.store_failures),
            }
        }
        result
    }
}
