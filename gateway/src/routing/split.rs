//! The canary split: picks which version of a route serves a request.
//!
//! # How it works
//! - **Forced**: a tester's force header names a version; it wins, weight 0 included.
//! - **Sticky**: when the route has a key header and the request carries it,
//!   the version is chosen by *weighted rendezvous hashing*. Each version `v`
//!   scores the key as `w_v / -ln(u_v)`, where `u_v` in (0, 1) is a hash of
//!   the key seeded by the version's name, and the highest score wins. That
//!   gives each version a share of keys proportional to its weight, the
//!   same key always gets the same version for a given weight set, and when
//!   weight moves from one version to another only keys *into* the version
//!   that gained weight move (a key's score only changes by its version's
//!   weight factor, so no key leaves a version whose weight grew).
//! - **Random**: otherwise, a weighted random pick.

use std::sync::Arc;

use cascadia_backends::BackendPool;
use http::HeaderValue;

/// One version of a route, resolved against the snapshot's backend pools.
#[derive(Debug)]
pub struct Target {
    /// The version's name from config; also the `x-cascadia-version` value.
    pub version: Arc<str>,
    /// Precomputed header value for `x-cascadia-version`.
    pub version_header: HeaderValue,
    /// Share of traffic in percent; a rollout changes it live.
    weight: std::sync::atomic::AtomicU32,
    /// Hash seed derived from the version name, so a version's scores do not
    /// depend on its position in the list.
    seed: u64,
    /// Pools in preference order.
    pub pools: Vec<Arc<BackendPool>>,
    /// `x-cascadia-backend` values for `pools`, precomputed so the request
    /// path does not build header values.
    pub pool_headers: Vec<HeaderValue>,
    /// Whether any pool speaks HTTP/1.1 (REST then goes only to those).
    pub has_http1: bool,
    /// Model name to use upstream, when it differs from the route's.
    pub upstream_model: Option<Arc<str>>,
    /// Model version to ask the upstream for.
    pub upstream_version: Option<Arc<str>>,
    /// Responses served by each of `pools`, carried across reloads; empty
    /// until the route table fills it in.
    pub served: Vec<Arc<crate::core::stats::ClassCounters>>,
    /// This version's answers and latency, for canary analysis; carried
    /// across reloads.
    pub stats: Arc<crate::core::stats::VersionStats>,
}

impl Target {
    /// Share of traffic in percent, now.
    pub fn weight(&self) -> u32 {
        self.weight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the share (a rollout step); the split's other weights are
    /// the caller's to keep summing to 100.
    pub fn set_weight(&self, weight: u32) {
        self.weight
            .store(weight, std::sync::atomic::Ordering::Relaxed);
    }

    /// Builds a target.
    pub fn new(
        version: &str,
        weight: u32,
        pools: Vec<Arc<BackendPool>>,
        upstream_model: Option<&str>,
        upstream_version: Option<&str>,
    ) -> Self {
        Self {
            version: version.into(),
            version_header: HeaderValue::from_str(version)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            weight: weight.into(),
            seed: hash64(0x5eed_cafe, version.as_bytes()),
            pool_headers: pools
                .iter()
                .map(|pool| {
                    HeaderValue::from_str(pool.name())
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
                })
                .collect(),
            has_http1: pools
                .iter()
                .any(|p| p.client().protocol() == cascadia_config::UpstreamProtocol::Http1),
            pools,
            upstream_model: upstream_model.map(Into::into),
            upstream_version: upstream_version.map(Into::into),
            served: Vec::new(),
            stats: Arc::default(),
        }
    }
}

/// The versions of one route and how traffic splits between them.
#[derive(Debug)]
pub struct Split {
    targets: Vec<Target>,
}

/// Why the split could not choose.
#[derive(Debug, PartialEq, Eq)]
pub enum SplitError {
    /// The force header named a version the route does not have.
    UnknownVersion,
}

impl Split {
    /// A split over `targets`. Validation guarantees weights sum to 100.
    pub fn new(targets: Vec<Target>) -> Self {
        Self { targets }
    }

    /// The version named `version`.
    pub fn target(&self, version: &str) -> Option<&Target> {
        self.targets.iter().find(|t| &*t.version == version)
    }

    /// Every version.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Chooses a version: `forced` wins, then `key` (sticky), then random.
    pub fn choose(&self, forced: Option<&[u8]>, key: Option<&[u8]>) -> Result<&Target, SplitError> {
        if let Some(forced) = forced {
            return self
                .targets
                .iter()
                .find(|t| t.version.as_bytes() == forced)
                .ok_or(SplitError::UnknownVersion);
        }
        if self.targets.len() == 1 {
            return Ok(&self.targets[0]);
        }
        match key {
            Some(key) => Ok(self.sticky(key)),
            None => {
                let total: u32 = self.targets.iter().map(Target::weight).sum();
                Ok(self.random(fastrand::u32(0..total.max(1))))
            }
        }
    }

    fn sticky(&self, key: &[u8]) -> &Target {
        let mut best = &self.targets[0];
        let mut best_score = f64::NEG_INFINITY;
        for target in &self.targets {
            let weight = target.weight();
            if weight == 0 {
                continue;
            }
            let score = f64::from(weight) / -unit_interval(hash64(target.seed, key)).ln();
            if score > best_score {
                best_score = score;
                best = target;
            }
        }
        best
    }

    fn random(&self, mut ticket: u32) -> &Target {
        for target in &self.targets {
            let weight = target.weight();
            if ticket < weight {
                return target;
            }
            ticket -= weight;
        }
        &self.targets[self.targets.len() - 1]
    }
}

/// Maps a hash to the open interval (0, 1), never 0 or 1 so `ln` is finite
/// and negative.
fn unit_interval(hash: u64) -> f64 {
    // 53 bits fill an f64 mantissa exactly.
    ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// FNV-1a over the bytes, finished with the SplitMix64 mixer. Stable across
/// builds and Rust versions, which `std`'s hasher does not promise; sticky
/// assignments must not change when the gateway is upgraded.
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[(&str, u32)]) -> Split {
        Split::new(
            weights
                .iter()
                .map(|(v, w)| Target::new(v, *w, Vec::new(), None, None))
                .collect(),
        )
    }

    fn share(split: &Split, version: &str, keys: u32) -> f64 {
        let hits = (0..keys)
            .filter(|k| {
                &*split
                    .choose(None, Some(format!("user-{k}").as_bytes()))
                    .unwrap()
                    .version
                    == version
            })
            .count();
        hits as f64 / f64::from(keys)
    }

    #[test]
    fn sticky_shares_follow_weights() {
        let split = split(&[("stable", 90), ("canary", 10)]);
        let canary = share(&split, "canary", 100_000);
        // 100k keys: one standard deviation is ~0.1%; allow 5 sigma.
        assert!((canary - 0.10).abs() < 0.005, "canary share {canary}");
    }

    #[test]
    fn same_key_same_version() {
        let split = split(&[("stable", 50), ("canary", 50)]);
        for k in 0..1000 {
            let key = format!("k{k}");
            let first = split
                .choose(None, Some(key.as_bytes()))
                .unwrap()
                .version
                .clone();
            for _ in 0..3 {
                assert_eq!(
                    split.choose(None, Some(key.as_bytes())).unwrap().version,
                    first
                );
            }
        }
    }

    #[test]
    fn moving_weight_only_moves_keys_into_the_gaining_version() {
        let before = split(&[("stable", 90), ("canary", 10)]);
        let after = split(&[("stable", 80), ("canary", 20)]);
        let mut moved = 0;
        for k in 0..50_000 {
            let key = format!("user-{k}");
            let a = before.choose(None, Some(key.as_bytes())).unwrap();
            let b = after.choose(None, Some(key.as_bytes())).unwrap();
            if a.version != b.version {
                assert_eq!(&*a.version, "stable", "a canary key moved back to stable");
                moved += 1;
            }
        }
        // Exactly the 10% that must move, within sampling noise.
        let moved = f64::from(moved) / 50_000.0;
        assert!((moved - 0.10).abs() < 0.01, "moved share {moved}");
    }

    #[test]
    fn forced_version_wins_even_at_zero_weight() {
        let split = split(&[("stable", 100), ("canary", 0)]);
        assert_eq!(
            &*split.choose(Some(b"canary"), Some(b"u")).unwrap().version,
            "canary"
        );
        assert_eq!(
            split.choose(Some(b"nope"), None).unwrap_err(),
            SplitError::UnknownVersion
        );
    }

    #[test]
    fn zero_weight_versions_get_no_unforced_traffic() {
        let split = split(&[("stable", 100), ("canary", 0)]);
        for k in 0..1000 {
            assert_eq!(
                &*split
                    .choose(None, Some(format!("{k}").as_bytes()))
                    .unwrap()
                    .version,
                "stable"
            );
            assert_eq!(&*split.choose(None, None).unwrap().version, "stable");
        }
    }

    #[test]
    fn random_pick_follows_weights() {
        let split = split(&[("a", 70), ("b", 30)]);
        let b = (0..100)
            .filter(|t| &*split.random(*t).version == "b")
            .count();
        assert_eq!(b, 30);
    }
}
