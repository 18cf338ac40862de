//! Cascadia's configuration: schema, validation, loading and watching.
//!
//! The gateway's binary reads the file ([`load_file`]), watches it
//! ([`watch::ConfigWatcher`]) and publishes each new [`Config`] as one
//! snapshot; everything else takes a `Config` and never touches the file.
//!
//! # Layout
//!
//! - `value`: [`Weight`] and [`Timeout`], numbers with a legal range.
//! - `raw`: the TOML format as serde sees it (private).
//! - `validate`: raw → [`Config`], collecting every error with its field
//!   path (private; entry point [`parse`]).
//! - `model`: the validated types the gateway reads (re-exported here).
//! - `load`: reading and hashing a file ([`load_file`], [`hash_bytes`]).
//! - `watch`: file watching for hot reload.
//!
//! The format is described in this crate's `README.md`, and
//! `examples/demo.toml` is a complete example.

mod error;
mod load;
mod model;
mod raw;
pub mod tls;
mod validate;
pub mod value;
pub mod watch;

pub use error::{ConfigError, ConfigErrors};
pub use load::{hash_bytes, load_file, read_input, LoadError, LoadedConfig, MAX_CA_BYTES};
pub use model::redact_url;
pub use model::{
    AccessLog, Backend, Balancer, Batching, Calibration, Cascade, Config, DnsDiscovery, Drift,
    Endpoint, EntityFeatures, EntityKey, FailureStatuses, GatewaySettings, HealthCheck,
    HedgePolicy, IpNet, Limits, ListenerTls, OnUnavailable, OutlierDetection, RateLimit, Record,
    RecordSink, RedisSettings, RetryPolicy, Rollout, Route, RouteMatch, Secret, Shadow, Split,
    SplitTarget, TokenSource, TracingSettings, UpstreamProtocol, UpstreamTls, Watch, WatchPolicy,
};
pub use raw::json_schema;
pub use validate::{parse, parse_with_models, FileLoader};
pub use value::{Timeout, TimeoutError, Weight, WeightError};
