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
use crate::telemetry::trace;
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
    /// Shared with fetch tasks, which outlive the request that started them.
    inner: Arc<Inner>,
}

struct Inner {
    settings: EntityFeatures,
    store: Arc<BackendPool>,
    l1: Arc<L1>,
    redis: Option<Arc<RedisTier>>,
    /// Fetches in progress, by key: later misses join them.
    flights: Mutex<HashMap<String, Flight>>,
    /// Counters for the admin API and tests.
    stats: Arc<LookupStats>,
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
            .field("store", &self.inner.store.name())
            .field("redis", &self.inner.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl EntityLookup {
    /// A lookup for `settings`, fetching from `store`, with an optional
    /// shared Redis tier.
    /// `l1` and `stats` come from the route's carried state, so a reload
    /// keeps the cached entities and the counters.
    pub fn new(
        settings: EntityFeatures,
        store: Arc<BackendPool>,
        redis: Option<Arc<RedisTier>>,
        l1: Arc<L1>,
        stats: Arc<LookupStats>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                l1,
                settings: settings.clone(),
                store,
                redis,
                flights: Mutex::default(),
                stats,
            }),
            settings,
        }
    }

    /// How lookups were answered.
    pub fn stats(&self) -> &LookupStats {
        &self.inner.stats
    }

    /// The features of every key (distinct keys), `Err` for keys whose
    /// fetch failed (store down): the caller treats those as missing.
    pub async fn get(&self, keys: &[String]) -> HashMap<String, Result<Entry, ()>> {
        let this = &self.inner;
        let mut found = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        let span = trace::child("cascadia.features.l1");
        span.set("cascadia.keys", keys.len() as i64);
        for key in keys {
            match this.l1.get(key) {
                Some(entry) => {
                    bump(&this.stats.l1_hits);
                    found.insert(key.clone(), Ok(entry));
                }
                None => missing.push(key.clone()),
            }
        }
        span.set("cascadia.hits", (keys.len() - missing.len()) as i64);
        drop(span);
        if missing.is_empty() {
            return found;
        }

        if let Some(redis) = &this.redis {
            let width = this.settings.features.len();
            let span = trace::child("cascadia.features.redis");
            span.set("cascadia.keys", missing.len() as i64);
            let values = redis.mget(&missing, width).await;
            if values.is_none() {
                span.fail("redis unavailable");
            }
            if let Some(values) = values {
                let asked = missing.len();
                let mut still = Vec::new();
                for (key, value) in missing.into_iter().zip(values) {
                    match value {
                        Some(entry) => {
                            bump(&this.stats.redis_hits);
                            this.l1.insert(&key, entry.clone(), this.ttl_for(&entry));
                            found.insert(key, Ok(entry));
                        }
                        None => still.push(key),
                    }
                }
                span.set("cascadia.hits", (asked - still.len()) as i64);
                missing = still;
            }
        }
        if missing.is_empty() {
            return found;
        }
        let span = trace::child("cascadia.features.store");
        span.set("cascadia.keys", missing.len() as i64);

        // At most FETCH_CONCURRENCY store fetches per request: a request
        // with a thousand new keys must not open a thousand connections.
        use futures_util::stream::StreamExt;
        let results: Vec<Result<Entry, ()>> = futures_util::stream::iter(missing.iter().cloned())
            .map(|key| self.fetch(key))
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        for (key, result) in missing.into_iter().zip(results) {
            if result.is_err() {
                span.fail("feature store fetch failed");
            }
            found.insert(key, result);
        }
        found
    }

    /// One key from the store, joined with any fetch of it in progress.
    /// The fetch runs as its own task: it finishes, caches its result and
    /// leaves the in-progress map even if every request waiting on it went
    /// away.
    async fn fetch(&self, key: String) -> Result<Entry, ()> {
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let inner = Arc::clone(&self.inner);
                    let task_key = key.clone();
                    let task = tokio::spawn(async move {
                        let result = store::fetch(
                            &inner.store,
                            &task_key,
                            &inner.settings.features,
                            inner.settings.timeout.get(),
                        )
                        .await;
                        inner.finish(&task_key, &result);
                        result
                    });
                    let flight: Flight = async move { task.await.unwrap_or(Err(())) }
                        .boxed()
                        .shared();
                    flights.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }
}

/// Most store fetches one request runs at once.
const FETCH_CONCURRENCY: usize = 16;

impl Inner {
    fn ttl_for(&self, entry: &Entry) -> Duration {
        match entry {
            Some(_) => self.settings.ttl.get(),
            None => self.settings.negative_ttl.get(),
        }
    }

    /// Caches a finished fetch and takes it off the in-progress map.
    fn finish(&self, key: &str, result: &Result<Entry, ()>) {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        bump(&self.stats.store_fetches);
        match result {
            Ok(entry) => {
                let ttl = self.ttl_for(entry);
                self.l1.insert(key, entry.clone(), ttl);
                if let Some(redis) = &self.redis {
                    redis.set_in_background(key, entry, ttl);
                }
            }
            Err(()) => bump(&self.stats.store_failures),
        }
    }
}
