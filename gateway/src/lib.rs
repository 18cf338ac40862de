//! Cascadia: a latency-aware API gateway for ML model routing.
//!
//! # A request's path
//! ```text
//!  client ──► listener ──► proxy ─────────────────────────────────────────► upstream
//!            (h1 / h2c,    admit ──► match ──► split ──► select ──► forward ──► respond
//!             timeouts)    limits    route     version   pool +     rewrite     stream back,
//!                          req id    (model,   (forced,  endpoint   headers,    stamp version
//!                                    gRPC,     sticky,   (backends  stream      and backend
//!                                    prefix)   random)   crate)     body
//! ```
//! Every failure on the way becomes a response in [`errors`], in one place.
//!
//! # Layout
//! - [`cli`] and [`demo`]: the binary's commands (`run`, `check`, `demo`).
//! - [`server`]: starts the listeners and the reloader around one snapshot.
//! - [`listener`]: accepts connections, HTTP/1.1 and HTTP/2 on one port,
//!   head-read and idle timeouts, graceful drain.
//! - [`proxy`]: the request phases, header rules and bodies.
//! - [`cascade`]: stage 1 of cascade routes: score in the gateway, escalate
//!   the uncertain rows, merge.
//! - [`routing`]: the route table and the canary [`routing::split`].
//! - [`snapshot`] and [`reload`]: the config snapshot behind one `ArcSwap`,
//!   and the task that rebuilds and swaps it.
//! - [`features`]: the feature cache (in-process, Redis, feature store).
//! - [`admin`]: the admin API on its own port; [`metrics`]: its `/metrics`;
//!   [`drills`]: failover drills it runs.
//! - [`errors`]: every failure mapped to an HTTP or gRPC status.
//! - [`rollout`]: automated canary analysis, promotion and rollback.
//! - [`shadow`]: shadow traffic to a candidate version, compared online.
//! - [`telemetry`]: logs, and OpenTelemetry traces over OTLP.
//!
//! Config parsing lives in `cascadia-config`, upstream pools and the HTTP
//! client in `cascadia-backends`, and the OIP wire types in `cascadia-oip`.

pub mod admin;
pub mod cascade;
pub mod cli;
pub mod core;
pub mod demo;
pub mod drills;
pub mod features;
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
