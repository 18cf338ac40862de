//! Routing: which configured route a request belongs to, and which version
//! of it serves the request (the canary [`split`]).
//!
//! Routes match in this order:
//! 1. Open Inference Protocol paths (`/v2/models/{name}/...`) and gRPC
//!    `inference.GRPCInferenceService` calls, by model name (exact lookup).
//! 2. Path prefixes, longest first, on a `/` boundary (`/echo` matches
//!    `/echo` and `/echo/x`, never `/echoes`).

pub mod record;
pub mod split;
pub mod stages;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::Duration;

use cascadia_backends::{BackendPool, RetryBudget};
use cascadia_config::{Config, RouteMatch};
use http::HeaderName;

use crate::features::RedisTier;

pub use split::{Split, SplitError, Target};

use crate::core::admission::Admission;
use crate::core::errors::GatewayError;

/// One route, resolved against the snapshot's pools.
#[derive(Debug)]
pub struct Route {
    /// The route's name from config (for logs).
    pub name: Arc<str>,
    /// The model this route serves, for OIP routes.
    pub model: Option<Arc<str>>,
    /// Header whose value makes the split sticky (e.g. `x-user-id`).
    pub key_header: Option<HeaderName>,
    /// Header a tester sets to force a version.
    pub force_header: HeaderName,
    /// Deadline for the upstream response headers; overrides the backend's.
    pub timeout: Option<Duration>,
    /// The versions and their weights.
    pub split: Split,
    /// Whether a failed request may be sent again.
    pub idempotent: bool,
    /// Requests of this route in flight, against `max_concurrency`.
    pub admission: Option<Arc<Admission>>,
    /// The route's rate limit, per API key or route-wide.
    pub rate_limit: Option<RouteLimiter>,
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Caps retries to a share of this route's requests.
    pub retry_budget: Arc<RetryBudget>,
    /// Hedging of slow first attempts, when configured.
    pub hedge: Option<Hedge>,
    /// Regions whose p95 is above this count as degraded.
    pub latency_slo: Option<Duration>,
    /// Stage 1 of a cascade route.
    pub cascade: Option<stages::CascadeStage>,
    /// Mirrors some inference calls to a candidate and compares answers.
    pub shadow: Option<Arc<stages::Shadow>>,
    /// The route's rollout plan, run by the rollout controller.
    pub rollout: Option<cascadia_config::Rollout>,
    /// Weights a running rollout set, by version; carried across reloads
    /// so a rebuilt table starts with them rather than the file's.
    pub weight_override: WeightOverride,
    /// Request counters and latency, for `/metrics`.
    pub stats: Arc<crate::core::stats::RouteStats>,
}

/// Runtime state of every route, kept across reloads by route name: a
/// reload must not reset counters, free in-flight slots, refill budgets or
/// empty the feature cache (that would stampede the feature store).
#[derive(Debug, Default)]
pub struct RouteRuntimes {
    routes: std::sync::Mutex<HashMap<String, Arc<RouteRuntime>>>,
    /// Requests that matched no route.
    pub unmatched: Arc<crate::core::stats::RouteStats>,
    /// Request bytes buffered across the gateway (not per route: memory is
    /// the process's), against `limits.max_buffered_bytes`.
    pub buffers: Arc<crate::core::budget::BufferBudget>,
}

/// One route's carried state. Pieces whose settings changed are replaced.
#[derive(Debug, Default)]
pub struct RouteRuntime {
    stats: Arc<crate::core::stats::RouteStats>,
    cascade_stats: Arc<stages::CascadeStats>,
    lookup_stats: Arc<crate::features::LookupStats>,
    admission: std::sync::Mutex<Option<Arc<Admission>>>,
    retry_budget: Carried<(u32, u32), RetryBudget>,
    hedge_budget: Carried<u32, RetryBudget>,
    l1: Carried<usize, crate::features::l1::L1>,
    /// Shadow comparisons, by candidate version.
    shadow_stats: Carried<String, stages::ShadowStats>,
    /// Weights set by a running rollout.
    weight_override: WeightOverride,
    /// Answers and latency by version, for canary analysis.
    version_stats: std::sync::Mutex<HashMap<String, Arc<crate::core::stats::VersionStats>>>,
    /// Response counters by (version, backend).
    served: std::sync::Mutex<HashMap<(String, String), Arc<crate::core::stats::ClassCounters>>>,
    /// The cascade's online watch, drift window and recorder, each kept
    /// while what it was built for stays the same.
    guarantee: Carried<String, stages::Guarantee>,
    drift: Carried<String, std::sync::Mutex<cascadia_cascade::drift::DriftWindow>>,
    recorder: Carried<cascadia_config::Record, record::Recorder>,
}

/// The carried value for `key`, or a new one from `make` (which may
/// decline) when the key changed.
fn carry<S: PartialEq, T>(
    slot: &Carried<S, T>,
    key: S,
    make: impl FnOnce() -> Option<T>,
) -> Option<Arc<T>> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, value)) = &*slot {
        if *k == key {
            return Some(Arc::clone(value));
        }
    }
    let value = Arc::new(make()?);
    *slot = Some((key, Arc::clone(&value)));
    Some(value)
}

/// (version, weight) pairs a running rollout set on a route's split.
pub type WeightOverride = Arc<std::sync::Mutex<Option<Vec<(String, u32)>>>>;

/// A carried piece of state with the settings it was built for.
type Carried<S, T> = std::sync::Mutex<Option<(S, Arc<T>)>>;

impl RouteRuntime {
    fn admission(&self, limit: usize) -> Arc<Admission> {
        let mut slot = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        let admission = slot.get_or_insert_with(|| Arc::new(Admission::new(limit)));
        admission.set_limit(limit);
        Arc::clone(admission)
    }

    fn shadow_stats(&self, version: &str) -> Arc<stages::ShadowStats> {
        let mut slot = self.shadow_stats.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((v, stats)) if v == version => Arc::clone(stats),
            _ => {
                let stats = Arc::new(stages::ShadowStats::default());
                *slot = Some((version.to_owned(), Arc::clone(&stats)));
                stats
            }
        }
    }

    fn version_stats(&self, version: &str) -> Arc<crate::core::stats::VersionStats> {
        let mut stats = self.version_stats.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(stats.entry(version.to_owned()).or_default())
    }

    fn served(&self, version: &str, backend: &str) -> Arc<crate::core::stats::ClassCounters> {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            served
                .entry((version.to_owned(), backend.to_owned()))
                .or_default(),
        )
    }

    fn retry_budget(&self, percent: u32, min_per_second: u32) -> Arc<RetryBudget> {
        let mut slot = self.retry_budget.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((params, budget)) if *params == (percent, min_per_second) => Arc::clone(budget),
            _ => {
                let budget = Arc::new(RetryBudget::new(percent, min_per_second));
                *slot = Some(((percent, min_per_second), Arc::clone(&budget)));
                budget
            }
        }
    }

    fn hedge_budget(&self, percent: u32) -> Arc<RetryBudget> {
        let mut slot = self.hedge_budget.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((p, budget)) if *p == percent => Arc::clone(budget),
            _ => {
                // Hedges get no per-second floor: they are an optimisation,
                // never needed for correctness.
                let budget = Arc::new(RetryBudget::new(percent, 0));
                *slot = Some((percent, Arc::clone(&budget)));
                budget
            }
        }
    }

    fn feature_cache(
        &self,
        capacity: usize,
    ) -> (
        Arc<crate::features::l1::L1>,
        Arc<crate::features::LookupStats>,
    ) {
        let mut slot = self.l1.lock().unwrap_or_else(|e| e.into_inner());
        let l1 = match &*slot {
            Some((c, l1)) if *c == capacity => Arc::clone(l1),
            _ => {
                let l1 = Arc::new(crate::features::l1::L1::new(capacity));
                *slot = Some((capacity, Arc::clone(&l1)));
                l1
            }
        };
        (l1, Arc::clone(&self.lookup_stats))
    }
}

/// A route's rate limit: GCRA per key, with the key set bounded. Local
/// (governor) by default; a shared limit runs the same GCRA in Redis so
/// every replica draws on one budget, and falls back to the local limiter
/// while Redis cannot answer.
pub struct RouteLimiter {
    /// Keyed by a hash of the client key, so memory is bounded in bytes
    /// (a fixed size per key, however long the key), not only in count.
    limiter: governor::DefaultKeyedRateLimiter<u64>,
    /// Seeded per process: a client cannot choose keys that collide with
    /// another client's and spend its budget.
    hasher: std::collections::hash_map::RandomState,
    clock: governor::clock::DefaultClock,
    key_header: Option<HeaderName>,
    shared: Option<SharedLimit>,
    /// With a key header: a client address may bring in new keys only at
    /// the limit's own rate, so inventing a key per request is no way
    /// around it.
    new_keys: Option<NewKeys>,
}

/// Which keys the limiter has seen lately, and how fast each client
/// address may add new ones.
struct NewKeys {
    /// Recently seen keys in a fixed table, so its memory is fixed however
    /// many keys arrive: sets of [`SEEN_WAYS`] entries, each a 40-bit tag
    /// of the key's hash and the 24-bit millisecond time it was last seen.
    /// A new key takes the place of the one seen longest ago in its set,
    /// so a flood of one-off keys pushes out other one-off keys, not a key
    /// in steady use. A known key pushed out anyway is new again once,
    /// which costs its address one unit of new-key budget.
    seen: Box<[std::sync::atomic::AtomicU64]>,
    /// New keys per client address, on the route limit's own quota.
    per_address: governor::DefaultKeyedRateLimiter<u64>,
    /// A tokio instant, so tests can drive the recency under paused time.
    epoch: tokio::time::Instant,
}

/// Entries in [`NewKeys::seen`]: 64 Ki keys, 512 KiB per limited route.
const SEEN_KEY_SLOTS: usize = 1 << 16;
/// Entries per set of [`NewKeys::seen`].
const SEEN_WAYS: usize = 4;
const SEEN_TIME_BITS: u32 = 24;
const SEEN_TIME_MASK: u64 = (1 << SEEN_TIME_BITS) - 1;

impl NewKeys {
    fn new(quota: governor::Quota) -> Self {
        Self {
            seen: (0..SEEN_KEY_SLOTS).map(|_| Default::default()).collect(),
            per_address: governor::RateLimiter::keyed(quota),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// `Ok` when `key` is known or `address` may bring in a new one now
    /// (it is then known); else how long to wait.
    fn admit(
        &self,
        key: u64,
        address: u64,
        clock: &governor::clock::DefaultClock,
    ) -> Result<(), Duration> {
        use governor::clock::Clock;
        use std::sync::atomic::Ordering;
        let now = self.epoch.elapsed().as_millis() as u64 & SEEN_TIME_MASK;
        // The tag is never 0, so 0 marks an empty entry.
        let tag = (key >> SEEN_TIME_BITS).max(1);
        let set = (key as usize % (SEEN_KEY_SLOTS / SEEN_WAYS)) * SEEN_WAYS;
        let entries = &self.seen[set..set + SEEN_WAYS];
        let mut oldest = (0, 0u64);
        for (way, entry) in entries.iter().enumerate() {
            let value = entry.load(Ordering::Relaxed);
            if value >> SEEN_TIME_BITS == tag {
                entry.store(tag << SEEN_TIME_BITS | now, Ordering::Relaxed);
                return Ok(());
            }
            // Empty entries are the oldest of all; ages wrap every 4.6 h,
            // which only makes the choice of whom to push out less apt.
            let age = if value == 0 {
                u64::MAX
            } else {
                now.wrapping_sub(value & SEEN_TIME_MASK) & SEEN_TIME_MASK
            };
            if age >= oldest.1 {
                oldest = (way, age);
            }
        }
        if self.per_address.len() > MAX_RATE_LIMIT_KEYS {
            self.per_address.retain_recent();
        }
        self.per_address
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(clock.now()))?;
        entries[oldest.0].store(tag << SEEN_TIME_BITS | now, Ordering::Relaxed);
        Ok(())
    }
}

/// The Redis side of a shared limit.
struct SharedLimit {
    redis: Arc<RedisTier>,
    /// `cascadia:ratelimit:{route}:`; the client key is appended hashed,
    /// so API keys are never written to Redis.
    prefix: String,
    per_second: u32,
    burst: u32,
    /// Checks decided locally because Redis could not answer.
    fallbacks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("key_header", &self.key_header)
            .finish_non_exhaustive()
    }
}

/// Keys tracked before idle ones are pruned: a flood of distinct keys
/// cannot grow the limiter without bound (each key is a fixed-size hash).
const MAX_RATE_LIMIT_KEYS: usize = 100_000;

impl RouteLimiter {
    fn new(
        limit: &cascadia_config::RateLimit,
        route: &str,
        redis: Option<&Arc<RedisTier>>,
    ) -> Self {
        let one = std::num::NonZeroU32::MIN;
        let quota =
            governor::Quota::per_second(std::num::NonZeroU32::new(limit.per_second).unwrap_or(one))
                .allow_burst(std::num::NonZeroU32::new(limit.burst).unwrap_or(one));
        Self {
            limiter: governor::RateLimiter::keyed(quota),
            hasher: std::collections::hash_map::RandomState::new(),
            clock: governor::clock::DefaultClock::default(),
            new_keys: limit.key_header.as_ref().map(|_| NewKeys::new(quota)),
            key_header: limit.key_header.clone(),
            shared: match (limit.shared, redis) {
                (true, Some(redis)) => Some(SharedLimit {
                    redis: Arc::clone(redis),
                    prefix: format!("cascadia:ratelimit:{route}:"),
                    per_second: limit.per_second,
                    burst: limit.burst,
                    fallbacks: Default::default(),
                }),
                _ => None,
            },
        }
    }

    /// Checks decided locally because Redis could not answer (0 for a
    /// local limit).
    pub fn fallbacks(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| {
            s.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Whether the limit is shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// `Ok` to proceed, or how long the caller must wait. `client` is the
    /// address the request came from, for the limit on new keys.
    pub async fn check(
        &self,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
    ) -> Result<(), Duration> {
        use governor::clock::Clock;
        let key = self
            .key_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .map_or(&[][..], |v| v.as_bytes());
        let hashed = std::hash::BuildHasher::hash_one(&self.hasher, key);
        if let Some(new_keys) = &self.new_keys {
            let address = std::hash::BuildHasher::hash_one(&self.hasher, client);
            new_keys.admit(hashed, address, &self.clock)?;
        }
        if let Some(shared) = &self.shared {
            let redis_key = format!("{}{:016x}", shared.prefix, fnv1a(key));
            match shared
                .redis
                .rate_limit(&redis_key, shared.per_second, shared.burst)
                .await
            {
                Some(verdict) => return verdict,
                None => {
                    shared
                        .fallbacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        if self.limiter.len() > MAX_RATE_LIMIT_KEYS {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&hashed)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// FNV-1a: a hash every replica computes the same way, for Redis keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A route's hedging policy and budget.
#[derive(Debug)]
pub struct Hedge {
    /// Percentile of the endpoint's recent latency after which to hedge.
    pub percentile: f64,
    pub floor: Duration,
    pub cap: Duration,
    /// Caps hedges to a share of the route's requests.
    pub budget: Arc<RetryBudget>,
}

impl Hedge {
    /// How long to wait for the first attempt at `endpoint` before hedging:
    /// its recent latency percentile within [floor, cap], or the cap until
    /// the endpoint has enough history.
    pub fn delay(&self, endpoint: &cascadia_backends::Endpoint) -> Duration {
        endpoint
            .latency()
            .percentile(self.percentile)
            .unwrap_or(self.cap)
            .clamp(self.floor, self.cap)
    }
}

/// All routes of one snapshot, indexed for matching.
/// FNV-1a, for the model table: its keys come from the config, so a
/// client cannot grow a collision chain in it, and a lookup per request
/// need not pay for SipHash's resistance to that.
#[derive(Default)]
struct Fnv1a(u64);

impl std::hash::Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
        self.0 = hash;
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    by_model: HashMap<String, Arc<Route>, BuildHasherDefault<Fnv1a>>,
    /// Sorted longest prefix first.
    prefixes: Vec<(String, Arc<Route>)>,
}

impl RouteTable {
    /// Builds the table. Validation guarantees every backend name a route
    /// uses exists in `pools`.
    pub fn build(
        config: &Config,
        pools: &HashMap<String, Arc<BackendPool>>,
        redis: Option<&Arc<crate::features::RedisTier>>,
        runtimes: &RouteRuntimes,
    ) -> Self {
        let mut table = RouteTable::default();
        let mut state = runtimes.routes.lock().unwrap_or_else(|e| e.into_inner());
        state.retain(|name, _| config.routes.iter().any(|r| &r.name == name));
        for route in &config.routes {
            let carried = Arc::clone(state.entry(route.name.clone()).or_default());
            let targets: Vec<Target> = route
                .split
                .targets()
                .iter()
                .map(|target| {
                    let pools: Vec<_> = target
                        .backends
                        .iter()
                        .filter_map(|name| pools.get(name).cloned())
                        .collect();
                    let served = pools
                        .iter()
                        .map(|pool| carried.served(&target.version, pool.name()))
                        .collect();
                    let mut compiled = Target::new(
                        &target.version,
                        target.weight.get(),
                        pools,
                        target.upstream_model.as_deref(),
                        target.upstream_version.as_deref(),
                    );
                    compiled.served = served;
                    compiled.stats = carried.version_stats(&target.version);
                    compiled
                })
                .collect();
            // A rollout in progress owns the weights; the file's apply
            // again once the route has no plan.
            let overridden = if route.rollout.is_some() {
                carried
                    .weight_override
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            } else {
                None
            };
            if let Some(weights) = overridden {
                for (version, weight) in weights {
                    if let Some(target) = targets.iter().find(|t| *t.version == *version) {
                        target.set_weight(weight);
                    }
                }
            }
            let model = match &route.matcher {
                RouteMatch::Model(model) => Some(Arc::from(model.as_str())),
                RouteMatch::PathPrefix(_) => None,
            };
            let compiled = Arc::new(Route {
                name: route.name.as_str().into(),
                model,
                key_header: route.key_header.clone(),
                force_header: route.force_header.clone(),
                timeout: route.timeout.map(|t| t.get()),
                split: Split::new(targets),
                idempotent: route.idempotent,
                admission: route.max_concurrency.map(|limit| carried.admission(limit)),
                rate_limit: route
                    .rate_limit
                    .as_ref()
                    .map(|limit| RouteLimiter::new(limit, &route.name, redis)),
                attempts: route.retries.attempts.max(1),
                retry_budget: carried
                    .retry_budget(route.retries.budget_percent, route.retries.min_per_second),
                hedge: route.hedge.as_ref().map(|h| Hedge {
                    percentile: h.percentile,
                    floor: h.floor.get(),
                    cap: h.cap.get(),
                    // Hedges get no per-second floor: they are an
                    // optimisation, never needed for correctness.
                    budget: carried.hedge_budget(h.budget_percent),
                }),
                latency_slo: route.latency_slo.map(|t| t.get()),
                stats: Arc::clone(&carried.stats),
                cascade: route.cascade.clone().map(|settings| {
                    let entity = settings.entity.clone().and_then(|entity| {
                        let store = pools.get(&entity.store).cloned()?;
                        let (l1, lookup_stats) = carried.feature_cache(entity.l1_capacity);
                        Some(crate::features::EntityLookup::new(
                            entity,
                            store,
                            redis.cloned(),
                            l1,
                            lookup_stats,
                        ))
                    });
                    let model = &settings.model;
                    let model_header =
                        http::HeaderValue::from_str(&format!("{}/{}", model.name, model.version))
                            .unwrap_or_else(|_| http::HeaderValue::from_static("stage1"));
                    let guarantee = settings.watch.and_then(|watch| {
                        // The evidence (and a tightened band) is about this
                        // model and band: a new model or band starts over.
                        let key = format!(
                            "{} {watch:?} {:?}",
                            settings.model.sha256, settings.thresholds
                        );
                        carry(&carried.guarantee, key, || {
                            Some(stages::Guarantee::new(watch, settings.thresholds))
                        })
                    });
                    let drift = settings.drift.and_then(|drift| {
                        let reference = settings.model.reference.clone()?;
                        let key = format!("{} {drift:?}", settings.model.sha256);
                        carry(&carried.drift, key, || {
                            let slice = (drift.window_rows / drift.slices as u64).max(1);
                            Some(std::sync::Mutex::new(
                                cascadia_cascade::drift::DriftWindow::new(
                                    reference,
                                    slice,
                                    drift.slices,
                                ),
                            ))
                        })
                    });
                    let recorder = settings.record.clone().and_then(|record| {
                        carry(&carried.recorder, record.clone(), || {
                            record::Recorder::start(&record, &route.name, redis)
                        })
                    });
                    let batcher = settings
                        .batch
                        .map(|_| Arc::new(stages::EscalationBatcher::default()));
                    stages::CascadeStage {
                        model_header,
                        settings,
                        entity,
                        stats: Arc::clone(&carried.cascade_stats),
                        guarantee,
                        drift,
                        recorder,
                        batcher,
                    }
                }),
                rollout: route.rollout.clone(),
                weight_override: Arc::clone(&carried.weight_override),
                shadow: route.shadow.clone().map(|settings| {
                    let pools = settings
                        .backends
                        .iter()
                        .filter_map(|name| pools.get(name).cloned())
                        .collect();
                    let target = Target::new(
                        &settings.version,
                        0,
                        pools,
                        settings.upstream_model.as_deref(),
                        settings.upstream_version.as_deref(),
                    );
                    let stats = carried.shadow_stats(&settings.version);
                    Arc::new(stages::Shadow {
                        settings,
                        target,
                        stats,
                    })
                }),
            });
            match &route.matcher {
                RouteMatch::Model(model) => {
                    table.by_model.insert(model.clone(), compiled);
                }
                RouteMatch::PathPrefix(prefix) => {
                    table
                        .prefixes
                        .push((prefix.trim_end_matches('/').to_owned(), compiled));
                }
            }
        }
        table
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        table
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_model
            .values()
            .chain(self.prefixes.iter().map(|(_, route)| route))
    }

    /// The route serving `model`.
    pub fn by_model(&self, model: &str) -> Option<&Arc<Route>> {
        self.by_model.get(model)
    }

    /// The route with the longest prefix matching `path` on a segment boundary.
    pub fn by_path(&self, path: &str) -> Option<&Arc<Route>> {
        self.prefixes
            .iter()
            .find(|(prefix, _)| {
                prefix.is_empty()
                    || (path.starts_with(prefix.as_str())
                        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
            })
            .map(|(_, route)| route)
    }
}

/// Phase split: the version for this request.
pub fn choose_target<'r>(
    route: &'r Route,
    headers: &http::HeaderMap,
) -> Result<&'r Target, GatewayError> {
    let forced = headers
        .get(&route.force_header)
        .map(http::HeaderValue::as_bytes);
    let key = route
        .key_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .map(http::HeaderValue::as_bytes);
    route
        .split
        .choose(forced, key)
        .map_err(|SplitError::UnknownVersion| {
            GatewayError::UnknownVersion(
                String::from_utf8_lossy(forced.unwrap_or_default()).into_owned(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> std::net::IpAddr {
        text.parse().unwrap()
    }

    fn key_headers(key: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-api-key", key.parse().unwrap());
        headers
    }

    /// Whether `key` is in the table (without touching it).
    fn knows(keys: &NewKeys, key: u64) -> bool {
        let tag = (key >> SEEN_TIME_BITS).max(1);
        keys.seen
            .iter()
            .any(|e| e.load(std::sync::atomic::Ordering::Relaxed) >> SEEN_TIME_BITS == tag)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_new_keys_does_not_push_out_a_key_in_steady_use() {
        let plenty = std::num::NonZeroU32::new(1_000_000).unwrap();
        let keys = NewKeys::new(governor::Quota::per_second(plenty).allow_burst(plenty));
        let clock = governor::clock::DefaultClock::default();
        let steady = 0x5eed_0000_0000_1234_u64;
        keys.admit(steady, 1, &clock).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        // Four times the table's size in one-off keys from another address,
        // while the steady key is used every millisecond.
        for i in 0..(4 * SEEN_KEY_SLOTS) {
            keys.admit(rng.u64(..), 2, &clock).unwrap();
            if i % 50 == 0 {
                tokio::time::advance(Duration::from_millis(1)).await;
                assert!(knows(&keys, steady), "pushed out after {i} new keys");
                keys.admit(steady, 1, &clock).unwrap();
            }
        }
        let full = keys
            .seen
            .iter()
            .filter(|e| e.load(std::sync::atomic::Ordering::Relaxed) != 0)
            .count();
        assert_eq!(full, SEEN_KEY_SLOTS, "the flood filled the table");
    }

    #[tokio::test]
    async fn a_client_that_invents_a_key_per_request_is_limited_like_one_key() {
        let limit = cascadia_config::RateLimit {
            per_second: 1,
            burst: 3,
            key_header: Some(http::HeaderName::from_static("x-api-key")),
            shared: false,
        };
        let limiter = RouteLimiter::new(&limit, "r", None);
        let flooder = ip("10.0.0.9");
        let mut allowed = 0;
        for i in 0..100 {
            if limiter
                .check(&key_headers(&format!("fresh-{i}")), flooder)
                .await
                .is_ok()
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3, "the burst's worth of new keys, no more");
        // A key it already brought in keeps its own budget...
        assert!(limiter
            .check(&key_headers("fresh-0"), flooder)
            .await
            .is_ok());
        // ...and another address brings in its keys as before.
        assert!(limiter
            .check(&key_headers("honest"), ip("10.0.0.1"))
            .await
            .is_ok());
        let wait = limiter
            .check(&key_headers("fresh-100"), flooder)
            .await
            .unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn long_keys_cost_a_hash_each_and_keep_their_own_budgets() {
        let limit = cascadia_config::RateLimit {
            per_second: 1,
            burst: 1,
            key_header: Some(http::HeaderName::from_static("x-api-key")),
            shared: false,
        };
        let limiter = RouteLimiter::new(&limit, "r", None);
        let headers = |key: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-api-key", key.parse().unwrap());
            headers
        };
        let (a, b) = ("a".repeat(15_000), "b".repeat(15_000));
        let (one, two) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(limiter.check(&headers(&a), one).await.is_ok());
        assert!(
            limiter.check(&headers(&a), one).await.is_err(),
            "a's burst is spent"
        );
        assert!(
            limiter.check(&headers(&b), two).await.is_ok(),
            "b has its own"
        );
        // Two entries, each a u64 hash (the limiter's key type), not the
        // 15 KB keys.
        assert_eq!(limiter.limiter.len(), 2);
    }

    fn table(toml: &str) -> RouteTable {
        let config = cascadia_config::parse(toml).expect("valid config");
        let registry = cascadia_backends::Registry::new();
        RouteTable::build(
            &config,
            &registry.build(&config),
            None,
            &RouteRuntimes::default(),
        )
    }

    const CONFIG: &str = r#"
        [[backends]]
        name = "b"
        region = "r"
        endpoints = ["127.0.0.1:1"]

        [[routes]]
        name = "echo"
        match = { path_prefix = "/echo" }
        backends = ["b"]

        [[routes]]
        name = "echo-deep"
        match = { path_prefix = "/echo/deep/" }
        backends = ["b"]

        [[routes]]
        name = "fraud"
        match = { model = "fraud" }
        backends = ["b"]
    "#;

    #[test]
    fn prefixes_match_on_segment_boundaries_longest_first() {
        let table = table(CONFIG);
        assert_eq!(&*table.by_path("/echo").unwrap().name, "echo");
        assert_eq!(&*table.by_path("/echo/x").unwrap().name, "echo");
        assert_eq!(&*table.by_path("/echo/deep/x").unwrap().name, "echo-deep");
        assert_eq!(&*table.by_path("/echo/deep").unwrap().name, "echo-deep");
        assert!(table.by_path("/echoes").is_none());
        assert!(table.by_path("/").is_none());
    }

    #[test]
    fn models_match_exactly() {
        let table = table(CONFIG);
        assert_eq!(&*table.by_model("fraud").unwrap().name, "fraud");
        assert!(table.by_model("fraud2").is_none());
    }
}
