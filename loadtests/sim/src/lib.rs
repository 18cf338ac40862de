//! A simulated OIP model server for the demo, the tests and the load tests.
//!
//! One port serves HTTP/1.1 and h2c (prior knowledge): the KServe V2 REST API, the
//! `inference.GRPCInferenceService` gRPC API, an echo route for every other path, and
//! `/sim/*` control endpoints. The "model" is a fixed logistic regression, so answers are
//! deterministic; latency and failures are injected on demand.
//!
//! Every response carries `x-sim-name`, `x-sim-version` and `x-sim-region`, plus what the
//! simulator *saw* — `x-sim-saw-path`, `x-sim-saw-model`, `x-sim-saw-version`,
//! `x-sim-saw-xff`, `x-sim-saw-forwarded`, `x-sim-saw-deadline-ms`, `x-sim-saw-traceparent` —
//! and echoes `x-request-id`, so gateway tests can
//! check routing, rewriting and forwarding headers from the response alone.
//!
//! # Layout
//! - [`spawn`] / [`SimHandle`] (in `server`): bind-agnostic accept loop; tests pass a
//!   listener on `127.0.0.1:0`.
//! - `service`: dispatch, REST handlers, `/sim/stats` and `/sim/control`, the `x-sim-*`
//!   headers.
//! - `grpc`: the gRPC handlers (hand-framed on hyper, no tonic server).
//! - [`control`]: live settings (`ArcSwap`) and counters (atomics).
//! - [`latency`]: the latency model; `model`: the scoring function.
//! - `main.rs`: the `cascadia-sim` binary (CLI, signals, the "listening on" line).

mod body;
pub mod control;
mod grpc;
pub mod latency;
pub mod model;
mod server;
mod service;

pub use control::{Settings, SimControl};
pub use latency::LatencyModel;
pub use server::{spawn, SimHandle};
pub use service::{feature_value, REFUSED_VALUE};

/// Typed configuration of one simulated backend.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Label returned in `x-sim-name`, e.g. the backend's name in the gateway config.
    pub name: String,
    /// The only model name served; other names get 404 / `NOT_FOUND`.
    pub model: String,
    /// Reported as the model version; any version in a request path is accepted.
    pub version: String,
    /// Returned in `x-sim-region`, for region-aware routing tests.
    pub region: String,
    /// Initial latency model (changeable at runtime through [`SimControl`]).
    pub latency: LatencyModel,
    /// Initial probability in `[0, 1]` of an injected failure on a data-plane request.
    pub error_rate: f64,
}

impl SimConfig {
    /// A config serving `model` version `"1"` in region `"local"`, no latency, no errors.
    pub fn new(name: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            model: model.into(),
            version: "1".to_owned(),
            region: "local".to_owned(),
            latency: LatencyModel::None,
            error_rate: 0.0,
        }
    }
}
