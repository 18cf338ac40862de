//! Upstream model endpoints: the pools that serve each model version in each
//! region, and the pooled HTTP client that reaches them.
//!
//! # Layout
//! - [`pool`]: a [`BackendPool`] is one named endpoint pool in one region;
//!   [`Endpoint`] keeps the per-endpoint runtime state (in-flight count) in
//!   atomics so the request path takes no lock.
//! - [`registry`]: builds the pools for a new config snapshot, carrying the
//!   runtime state of endpoints that stay in the config across a reload.
//! - [`client`]: the keep-alive connection pools (HTTP/1.1 or h2c per
//!   backend) and the [`UpstreamError`] type with its side and retry flag.
//!
//! The gateway decides *which* pool a request goes to (routing, canary
//! split); this crate decides *which endpoint* of the pool and performs the
//! attempt.

pub mod client;
pub mod pool;
pub mod registry;

pub use client::{UpstreamBody, UpstreamClient, UpstreamError, UpstreamErrorKind};
pub use pool::{BackendPool, Endpoint, InFlight};
pub use registry::Registry;
