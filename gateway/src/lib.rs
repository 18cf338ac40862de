//! Cascadia: a latency-aware API gateway for ML model routing.
//!
//! # A request's path
//! ```text
//!  client ──► listener ──► proxy ────────────────────────────────────────────────────► upstream
//!            (h1 / h2c,    admit ──► match ──► stage 1 ──► split ──► select ──► forward ──► respond
//!             timeouts)    limits    route     cascade     version   pool +     attempts    stream back,
//!                          req id    (model,   routes:     (forced,  endpoint   (retry,     stamp version
//!                                    gRPC,     score,      sticky,   (backends  hedge,      and backend
//!                                    prefix)   answer or   random)   crate)     deadline)
//!                                              escalate
//! ```
//! [`proxy`] is the one place this order is written. Every failure on the
//! way becomes a response in [`core::errors`], in one place.
//!
//! # Layers
//! Each module uses only the layers below it; `layers.rs` is the test that
//! fails on an upward `use crate::` edge.
//! - L0 [`core`] (bodies, headers, errors, budgets, deadlines, stats) and
//!   [`telemetry`] (logs, OpenTelemetry traces over OTLP).
//! - L1 [`routing`] (the route table, the canary [`routing::split`], stage
//!   and shadow data), [`features`] (the feature cache: in-process, Redis,
//!   store) and [`snapshot`] (the config snapshot behind one `ArcSwap`).
//! - L2 [`forward`]: the attempt loop behind the [`forward::Upstream`] trait.
//! - L3 [`cascade`] (stage 1: score in the gateway, escalate the uncertain
//!   rows, merge) and [`shadow`] (mirrors to a candidate, compared online).
//! - L4 [`proxy`] (the phases) and [`listener`] (HTTP/1.1 and h2c on one
//!   port, head-read, idle and write timeouts, graceful drain).
//! - L5 [`reload`] (rebuilds and swaps the snapshot), [`rollout`]
//!   (automated canary analysis, promotion and rollback), [`drills`]
//!   (failover drills) and [`fleet`] (drains and drill faults shared by
//!   every replica).
//! - L6 [`metrics`], [`admin`] (the admin API on its own port), [`server`]
//!   (starts the listeners and the reloader), [`demo`] and [`cli`] (the
//!   binary's commands).
//!
//! Config parsing lives in `cascadia-config`, upstream pools, connections
//! and the HTTP client in `cascadia-backends`, and the OIP wire types in
//! `cascadia-oip`.

pub mod admin;
pub mod calibrate;
pub mod cascade;
pub mod cli;
pub mod core;
pub mod demo;
pub mod discovery;
pub mod drills;
pub mod features;
pub mod fleet;
pub mod forward;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod snapshot;
pub mod telemetry;

#[cfg(test)]
mod layers;
