//! Integration tests: the real `cascadia` binary on port 0, in front of
//! simulated model servers on port 0, over real sockets.
//!
//! Shared harness code lives in [`support`]; each module covers one area.

mod support;

mod cascade;
mod check;
mod cli;
mod demo;
mod discovery;
mod failover;
mod features;
mod fleet;
mod grpc;
mod guarantee;
mod lifecycle;
mod limits;
mod metrics;
mod mlserver;
mod openapi;
mod redis_cluster;
mod reload;
mod rollout;
mod routing;
mod shadow;
mod telemetry;
mod tls;
