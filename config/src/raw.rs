//! The file format as serde sees it: every field optional where the
//! validated type has a default, and no field checked beyond its TOML type.
//!
//! Strings that become richer types (addresses, durations, header names) stay
//! strings here so that `validate` can report all of their problems at once;
//! a serde error would stop at the first. Every struct denies unknown fields,
//! so a typo such as `time_out` is an error rather than a silent default.

use serde::Deserialize;

use crate::model::{Balancer, UpstreamProtocol};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Config")]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Gateway")]
pub(crate) struct RawGateway {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub limits: RawLimits,
    pub redis: Option<RawRedis>,
    pub admin: Option<RawAdmin>,
    pub tracing: Option<RawTracing>,
    pub allow_no_routes: Option<bool>,
    pub shared_ejections: Option<bool>,
    pub drain_delay: Option<String>,
    pub drain_timeout: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub tls: Option<RawListenerTls>,
    pub access_log: Option<RawAccessLog>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AccessLog")]
pub(crate) struct RawAccessLog {
    pub enabled: Option<bool>,
    pub sample: Option<f64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ListenerTls")]
pub(crate) struct RawListenerTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub client_ca_file: Option<String>,
    pub require_client_cert: Option<bool>,
    pub reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "UpstreamTls")]
pub(crate) struct RawUpstreamTls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tracing")]
pub(crate) struct RawTracing {
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub tls_ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Admin")]
pub(crate) struct RawAdmin {
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub insecure: Option<bool>,
    pub allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Limits")]
pub(crate) struct RawLimits {
    pub max_body_bytes: Option<u64>,
    pub max_buffered_bytes: Option<u64>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub body_total_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub write_timeout: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Backend")]
pub(crate) struct RawBackend {
    pub name: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    pub endpoints: Option<Vec<RawEndpoint>>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub balancer: Balancer,
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub outlier: RawOutlier,
    pub hold_down: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    pub dns: Option<String>,
    pub resolve_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HealthCheck")]
pub(crate) struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Outlier")]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejected_percent: Option<u32>,
    pub failure_statuses: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RateLimit")]
pub(crate) struct RawRateLimit {
    pub per_second: Option<u32>,
    pub burst: Option<u32>,
    pub key_header: Option<String>,
    pub shared: Option<bool>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Retries")]
pub(crate) struct RawRetries {
    pub attempts: Option<u32>,
    pub budget_percent: Option<u32>,
    pub min_per_second: Option<u32>,
}

/// `"host:port"` or `{ address = "host:port", weight = 3 }`.
///
/// Deserialized by hand rather than with `#[serde(untagged)]`, whose only
/// error is "did not match any variant": this way a typo inside the table
/// (`{ adress = ... }`) is reported as the unknown field it is.
#[derive(Debug)]
pub(crate) enum RawEndpoint {
    Address(String),
    Table(RawEndpointTable),
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEndpoint;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""host:port" or { address = "host:port", weight = N }"#)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawEndpoint::Address(v.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawEndpointTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawEndpoint::Table)
            }
        }
        de.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EndpointTable")]
pub(crate) struct RawEndpointTable {
    pub address: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub(crate) struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub key_header: Option<String>,
    pub force_header: Option<String>,
    pub timeout: Option<String>,
    pub split: Option<Vec<RawSplitTarget>>,
    /// Shorthand for a one-version split; see `validate::split`.
    pub backends: Option<Vec<String>>,
    pub upstream_model: Option<String>,
    pub upstream_version: Option<String>,
    pub idempotent: Option<bool>,
    pub max_concurrency: Option<usize>,
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub retries: RawRetries,
    pub hedge: Option<RawHedge>,
    pub latency_slo: Option<String>,
    pub cascade: Option<RawCascade>,
    pub shadow: Option<RawShadow>,
    pub rollout: Option<RawRollout>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rollout")]
pub(crate) struct RawRollout {
    pub canary: Option<String>,
    pub steps: Option<Vec<u32>>,
    pub min_dwell: Option<String>,
    pub min_requests: Option<u64>,
    pub interval: Option<String>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p95_ratio: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub latency_slack: Option<String>,
    pub max_disagreement: Option<f64>,
    pub state_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Shadow")]
pub(crate) struct RawShadow {
    pub version: Option<String>,
    pub backends: Option<Vec<String>>,
    pub fraction: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub upstream_model: Option<String>,
    pub upstream_version: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Cascade")]
pub(crate) struct RawCascade {
    pub model: Option<String>,
    pub input: Option<String>,
    pub accept_below: Option<f64>,
    pub reject_above: Option<f64>,
    pub confirm_positives: Option<bool>,
    pub output: Option<String>,
    pub on_unavailable: Option<String>,
    pub audit_fraction: Option<f64>,
    pub priority: Option<u32>,
    pub max_batch: Option<usize>,
    pub missing_feature_default: Option<f64>,
    pub output_columns: Option<usize>,
    pub output_datatype: Option<String>,
    pub entity: Option<RawEntity>,
    pub calibration: Option<String>,
    pub watch: Option<RawWatch>,
    pub drift: Option<RawDrift>,
    pub record: Option<RawRecord>,
    pub batch: Option<RawBatch>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Batch")]
pub(crate) struct RawBatch {
    pub max_rows: Option<usize>,
    pub max_wait: Option<String>,
    pub deadline_share: Option<f64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Watch")]
pub(crate) struct RawWatch {
    pub max_recall_drop: Option<f64>,
    pub confidence: Option<f64>,
    pub window_positives: Option<u64>,
    pub windows: Option<usize>,
    pub policy: Option<String>,
    pub tighten_factor: Option<f64>,
    pub min_accept_below: Option<f64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Drift")]
pub(crate) struct RawDrift {
    pub window_rows: Option<u64>,
    pub slices: Option<usize>,
    pub threshold: Option<f64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Record")]
pub(crate) struct RawRecord {
    pub file: Option<String>,
    pub redis_stream: Option<String>,
    pub sample: Option<f64>,
    pub max_rows: Option<u64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Entity")]
pub(crate) struct RawEntity {
    pub key_header: Option<String>,
    pub key_input: Option<String>,
    pub features: Option<Vec<String>>,
    pub store: Option<String>,
    pub ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub l1_capacity: Option<usize>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Redis")]
pub(crate) struct RawRedis {
    pub url: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub key_prefix: Option<String>,
    pub tls_ca_file: Option<String>,
    pub cluster_nodes: Option<Vec<String>>,
    pub sentinel_nodes: Option<Vec<String>>,
    pub sentinel_master: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Hedge")]
pub(crate) struct RawHedge {
    pub percentile: Option<f64>,
    pub floor: Option<String>,
    pub cap: Option<String>,
    pub budget_percent: Option<u32>,
}

/// Both keys are optional here so that "neither" and "both" get a clear
/// message from `validate` instead of serde's enum wording.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Match")]
pub(crate) struct RawMatch {
    pub model: Option<String>,
    pub path_prefix: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SplitTarget")]
pub(crate) struct RawSplitTarget {
    pub version: Option<String>,
    /// A plain integer so that an out-of-range weight is one collected error
    /// rather than the end of parsing.
    pub weight: Option<u32>,
    pub backends: Option<Vec<String>>,
    pub upstream_model: Option<String>,
    pub upstream_version: Option<String>,
}

/// An endpoint is `"host:port"` or `{ address = "host:port", weight = N }`.
impl schemars::JsonSchema for RawEndpoint {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Endpoint".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "type": "string", "description": "host:port" },
                generator.subschema_for::<RawEndpointTable>()
            ]
        })
    }
}

/// The config file's JSON Schema (draft 2020-12), from these structs: what
/// `cascadia check --schema` prints and `config/cascadia.schema.json` holds.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert("title".into(), "Cascadia config".into());
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}
