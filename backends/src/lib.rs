//! Upstream model endpoints: the pools that serve each model version in each
//! region, how an endpoint is chosen, how health is tracked, and how traffic
//! fails over between regions.
//!
//! # Layout
//! - [`endpoint`]: per-endpoint runtime state in atomics (in-flight,
//!   peak-EWMA latency, outlier ejection, active health).
//! - [`pool`]: a [`BackendPool`] is one named endpoint pool in one region,
//!   with its balancer (P2C over peak-EWMA, round-robin, least-request).
//! - [`failover`]: which pool of a preference list takes an attempt, with
//!   proportional spill-over as a region's health drops.
//! - [`health`]: active health-check tasks.
//! - [`latency`]: an endpoint's recent latency distribution, for hedging.
//! - [`budget`]: the retry budget.
//! - [`registry`]: builds the pools for a new config snapshot, carrying the
//!   runtime state of endpoints and regions across reloads.
//! - [`client`]: the upstream HTTP client (HTTP/1.1 or h2c) and
//!   [`UpstreamError`], the side an attempt failed on.
//! - [`connections`]: each endpoint's own keep-alive connections.
//!
//! The gateway decides *which version* a request goes to (routing, canary
//! split); this crate decides *which region and endpoint* serve it.

pub mod budget;
pub mod client;
pub mod connections;
pub mod discovery;
pub mod endpoint;
pub mod failover;
pub mod health;
pub mod latency;
pub mod pool;
pub mod registry;
pub mod tls;

pub use budget::RetryBudget;
pub use client::{UpstreamBody, UpstreamClient, UpstreamError, UpstreamErrorKind};
pub use connections::UpstreamResponseBody;
pub use endpoint::{Endpoint, InFlight, Outcome};
pub use failover::choose_pool;
pub use latency::LatencyHistogram;
pub use pool::{BackendPool, Fault, PoolSettings, RegionState};
pub use registry::Registry;
