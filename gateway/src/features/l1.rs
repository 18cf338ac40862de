//! The in-process tier: a bounded map with per-entry expiry, split in
//! shards so concurrent requests rarely touch the same lock, and read under
//! a shared lock.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;
use std::time::Duration;

use tokio::time::Instant;

use super::Entry;

const SHARDS: usize = 16;

/// A bounded TTL map of entity entries.
#[derive(Debug)]
pub struct L1 {
    shards: Vec<RwLock<HashMap<String, (Instant, Entry)>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl L1 {
    /// A cache holding about `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<String, (Instant, Entry)>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// A live entry (`Some(None)` is a cached unknown entity).
    pub fn get(&self, key: &str) -> Option<Entry> {
        let shard = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        match shard.get(key) {
            Some((expires, entry)) if *expires > Instant::now() => Some(entry.clone()),
            _ => None,
        }
    }

    /// Caches `entry` for `ttl`. A full shard first drops expired entries,
    /// then an arbitrary one: the bound matters more than perfect LRU.
    pub fn insert(&self, key: &str, entry: Entry, ttl: Duration) {
        let now = Instant::now();
        let mut shard = self.shard(key).write().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            shard.retain(|_, (expires, _)| *expires > now);
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key.to_owned(), (now + ttl, entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_negative_entries_are_cached() {
        let l1 = L1::new(100);
        l1.insert(
            "known",
            Some(Arc::from(vec![1.0, 2.0])),
            Duration::from_secs(60),
        );
        l1.insert("unknown", None, Duration::from_secs(10));
        assert_eq!(l1.get("known").unwrap().unwrap().as_ref(), &[1.0, 2.0]);
        assert_eq!(l1.get("unknown"), Some(None));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(l1.get("unknown"), None, "negative entry expired");
        assert!(l1.get("known").is_some());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(l1.get("known"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn size_is_bounded() {
        let l1 = L1::new(32);
        for i in 0..1000 {
            l1.insert(&format!("k{i}"), None, Duration::from_secs(60));
        }
        let total: usize = l1.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert!(total <= 32, "{total}");
    }
}
