//! Region drains and drill faults shared by every replica through Redis:
//! an operator's drain, or a drill's fault, applied on one replica reaches
//! the others within [`TICK`], and a restore through any replica undoes it.
//!
//! # How
//! Each region has one entry in the hash `cascadia:fleet:regions`: what it
//! should be (drained, and the fault injected), which replica set it, when,
//! and until when. Every replica, every [`TICK`]:
//! - applies an entry newer than the last one it applied;
//! - publishes a change made on itself (the admin API's drain or restore, a
//!   drill starting or ending) as a new entry;
//! - renews the entries it set while they still drain or fault a region.
//!
//! An entry lasts [`LEASE`] unless its replica renews it, so a replica that
//! dies mid-drill (or mid-drain) cannot leave a region faulted or drained
//! for the fleet: the others clear it once the lease lapses. A drain
//! therefore lasts while the replica that took it runs; a fleet-wide drain
//! that must outlive it belongs in the config (take the region's backends
//! out of the route).
//!
//! With `gateway.shared_ejections`, an endpoint one replica's outlier
//! detection ejects is avoided by every replica until that ejection ends
//! (`cascadia:fleet:ejections`, one field per endpoint with the wall-clock
//! end), within a tick.
//!
//! Every replica also publishes its traffic totals every tick
//! (`cascadia:fleet:traffic`), so a drill's report can add what the whole
//! fleet's clients saw ([`fleet_traffic`]).
//!
//! Without Redis nothing is shared: drains and drills stay on the replica
//! they were sent to, and a drill reports its own replica's traffic only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cascadia_backends::{Fault, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::features::RedisTier;

/// How often each replica reads and writes the shared region state.
pub const TICK: Duration = Duration::from_millis(200);
/// How long an entry lasts without its replica renewing it.
pub const LEASE: Duration = Duration::from_secs(2);

const KEY: &str = "cascadia:fleet:regions";
const TRAFFIC_KEY: &str = "cascadia:fleet:traffic";
const EJECTIONS_KEY: &str = "cascadia:fleet:ejections";
/// A replica's published traffic counts as the fleet's while this fresh.
const TRAFFIC_FRESH: Duration = Duration::from_secs(5);

/// One replica's answers so far, over every route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    /// Per `stats::BUCKETS` bucket.
    pub buckets: Vec<u64>,
    #[serde(default)]
    at_ms: u64,
}

impl Traffic {
    /// This replica's totals now.
    pub fn of(snapshot: &crate::snapshot::Snapshot) -> Self {
        let mut traffic = Traffic {
            buckets: vec![0; crate::core::stats::BUCKETS.len()],
            ..Self::default()
        };
        for route in snapshot.routes.iter() {
            let (requests, errors) = route.stats.totals();
            traffic.requests += requests;
            traffic.errors += errors;
            for (sum, n) in traffic.buckets.iter_mut().zip(route.stats.bucket_counts()) {
                *sum += n;
            }
        }
        traffic
    }

    /// What happened between `earlier` and `self`; `None` when the counts
    /// went backwards (the replica restarted in between).
    pub fn since(&self, earlier: &Traffic) -> Option<Traffic> {
        if self.requests < earlier.requests || self.buckets.len() != earlier.buckets.len() {
            return None;
        }
        Some(Traffic {
            requests: self.requests - earlier.requests,
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            at_ms: self.at_ms,
        })
    }

    /// Adds another replica's counts.
    pub fn add(&mut self, other: &Traffic) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (sum, n) in self.buckets.iter_mut().zip(&other.buckets) {
            *sum += n;
        }
    }
}

/// Every replica's published traffic (fresh ones only), by replica; `None`
/// when Redis cannot answer.
pub async fn fleet_traffic(redis: &RedisTier) -> Option<HashMap<String, Traffic>> {
    let now = unix_ms();
    let fields = redis.all_fields(TRAFFIC_KEY).await?;
    Some(
        fields
            .into_iter()
            .filter_map(|(replica, bytes)| {
                let traffic: Traffic = serde_json::from_slice(&bytes).ok()?;
                (now.saturating_sub(traffic.at_ms) <= TRAFFIC_FRESH.as_millis() as u64)
                    .then_some((replica, traffic))
            })
            .collect(),
    )
}

/// What a region should be, as one replica set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    drained: bool,
    fault: Option<SharedFault>,
    origin: String,
    set_at_ms: u64,
    until_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SharedFault {
    Blackhole,
    Latency { ms: u64 },
    Errors { per_million: u32 },
}

impl From<Fault> for SharedFault {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Blackhole => Self::Blackhole,
            Fault::Latency(d) => Self::Latency {
                ms: d.as_millis() as u64,
            },
            Fault::Errors { per_million } => Self::Errors { per_million },
        }
    }
}

impl From<SharedFault> for Fault {
    fn from(fault: SharedFault) -> Self {
        match fault {
            SharedFault::Blackhole => Fault::Blackhole,
            SharedFault::Latency { ms } => Fault::Latency(Duration::from_millis(ms)),
            SharedFault::Errors { per_million } => Fault::Errors { per_million },
        }
    }
}

/// A region's (drained, fault), as it stands or should stand.
type Wanted = (bool, Option<SharedFault>);

/// Shares `registry`'s region drains and faults through `redis` until
/// `shutdown`, as replica `replica`.
pub async fn run(
    redis: Arc<RedisTier>,
    registry: Arc<Registry>,
    snapshot: crate::snapshot::SharedSnapshot,
    replica: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sharing = Sharing {
        replica,
        applied: HashMap::new(),
        seen: HashMap::new(),
        ejections: HashMap::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                sharing.tick(&redis, &registry).await;
                if snapshot.load().config.gateway.shared_ejections {
                    sharing.share_ejections(&redis, &registry).await;
                }
                let mut traffic = Traffic::of(&snapshot.load());
                traffic.at_ms = unix_ms();
                if let Ok(bytes) = serde_json::to_vec(&traffic) {
                    redis
                        .put_field(TRAFFIC_KEY, &sharing.replica, &bytes, TRAFFIC_FRESH * 2)
                        .await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

struct Sharing {
    replica: String,
    /// What this replica last applied or published, per region.
    applied: HashMap<String, Wanted>,
    /// The newest entry this replica has acted on, per region.
    seen: HashMap<String, Entry>,
    /// The end (wall-clock ms) of each endpoint's ejection, published or
    /// applied, so an ejection is shared once and not echoed back.
    ejections: HashMap<String, u64>,
}

impl Sharing {
    async fn tick(&mut self, redis: &RedisTier, registry: &Registry) {
        let Some(fields) = redis.all_fields(KEY).await else {
            return;
        };
        let now = unix_ms();
        let regions = registry.regions();
        let entries: HashMap<String, Entry> = fields
            .into_iter()
            .filter_map(|(region, bytes)| Some((region, serde_json::from_slice(&bytes).ok()?)))
            .collect();
        for (name, state) in &regions {
            let local: Wanted = (state.is_drained(), state.fault().map(SharedFault::from));
            let applied = self.applied.get(name).cloned().unwrap_or((false, None));
            let entry = entries.get(name);
            let newer = entry.filter(|e| {
                self.seen
                    .get(name)
                    .is_none_or(|seen| e.set_at_ms > seen.set_at_ms)
            });
            if local != applied {
                // A change made on this replica (the admin API, a drill):
                // the fleet's, from now.
                self.publish(redis, name, local, now).await;
                continue;
            }
            if let Some(entry) = newer {
                if entry.origin != self.replica {
                    let wanted = if now < entry.until_ms {
                        (entry.drained, entry.fault)
                    } else {
                        (false, None)
                    };
                    apply(state, wanted);
                    self.applied.insert(name.clone(), wanted);
                }
                self.seen.insert(name.clone(), entry.clone());
                continue;
            }
            match self.seen.get(name) {
                // Ours, still in force: renew it.
                Some(seen) if seen.origin == self.replica && local != (false, None) => {
                    let mut renewed = seen.clone();
                    renewed.until_ms = now + LEASE.as_millis() as u64;
                    if put(redis, name, &renewed).await {
                        self.seen.insert(name.clone(), renewed);
                    }
                }
                // Another replica's, lapsed: it died or stopped renewing.
                Some(seen)
                    if seen.origin != self.replica
                        && now >= seen.until_ms
                        && entry.is_none_or(|e| now >= e.until_ms)
                        && applied != (false, None) =>
                {
                    tracing::warn!(region = %name, origin = %seen.origin, "fleet: a region's drain or fault lapsed without its replica; clearing it");
                    apply(state, (false, None));
                    self.applied.insert(name.clone(), (false, None));
                }
                _ => {}
            }
        }
    }

    /// Publishes this replica's new ejections, and applies the others'.
    async fn share_ejections(&mut self, redis: &RedisTier, registry: &Registry) {
        let now = unix_ms();
        let instant = tokio::time::Instant::now();
        let endpoints = registry.endpoints();
        for (name, endpoint) in &endpoints {
            let Some(left) = endpoint.ejected_for(instant) else {
                continue;
            };
            let until = now + left.as_millis() as u64;
            // Already shared (by us or to us) if it ends when we know it
            // ends, give or take a tick.
            let known = self
                .ejections
                .get(name)
                .is_some_and(|&end| end + TICK.as_millis() as u64 >= until);
            if !known {
                // The hash outlives any ejection; each field carries its end.
                if redis
                    .put_field(
                        EJECTIONS_KEY,
                        name,
                        until.to_string().as_bytes(),
                        Duration::from_secs(3600),
                    )
                    .await
                {
                    tracing::info!(endpoint = %name, ejected_ms = left.as_millis() as u64, "fleet: shared an ejection");
                    self.ejections.insert(name.clone(), until);
                }
            }
        }
        let Some(fields) = redis.all_fields(EJECTIONS_KEY).await else {
            return;
        };
        for (name, bytes) in fields {
            let Some(until) = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if until <= now || self.ejections.get(&name).is_some_and(|&end| end >= until) {
                continue;
            }
            if let Some((_, endpoint)) = endpoints.iter().find(|(n, _)| *n == name) {
                endpoint.eject_until(instant + Duration::from_millis(until - now));
                self.ejections.insert(name, until);
            }
        }
        self.ejections.retain(|_, end| *end > now);
    }

    async fn publish(&mut self, redis: &RedisTier, region: &str, wanted: Wanted, now: u64) {
        let entry = Entry {
            drained: wanted.0,
            fault: wanted.1,
            origin: self.replica.clone(),
            // Strictly after any entry this replica has seen, whatever the
            // clocks say.
            set_at_ms: now.max(self.seen.get(region).map_or(0, |e| e.set_at_ms + 1)),
            until_ms: now + LEASE.as_millis() as u64,
        };
        if put(redis, region, &entry).await {
            tracing::info!(region, drained = wanted.0, fault = ?wanted.1, "fleet: shared a region's state");
            self.applied.insert(region.to_owned(), wanted);
            self.seen.insert(region.to_owned(), entry);
        }
    }
}

fn apply(state: &cascadia_backends::RegionState, (drained, fault): Wanted) {
    state.set_drained(drained);
    state.set_fault(fault.map(Fault::from));
}

async fn put(redis: &RedisTier, region: &str, entry: &Entry) -> bool {
    let Ok(bytes) = serde_json::to_vec(entry) else {
        return false;
    };
    // The hash itself outlives any entry by far; entries expire by their
    // `until_ms`.
    redis
        .put_field(KEY, region, &bytes, Duration::from_secs(3600))
        .await
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
