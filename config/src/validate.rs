//! Raw → validated: turns the TOML text into a [`Config`] or into every
//! problem it has, each named by its field path.
//!
//! How it works: serde first checks syntax, types and unknown fields; it can
//! only report one error, because it stops. Everything past that (ranges,
//! references between sections, uniqueness) is checked here, and all of it
//! is collected, so an operator sees every problem in one go.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;

use http::uri::Authority;
use http::HeaderName;

use crate::error::{Collector, ConfigError, ConfigErrors};
use crate::model::{
    Backend, Batching, Calibration, Cascade, Config, DnsDiscovery, Drift, Endpoint, EntityFeatures,
    EntityKey, GatewaySettings, HealthCheck, HedgePolicy, Limits, ListenerTls, OnUnavailable,
    OutlierDetection, RateLimit, Record, RecordSink, RedisSettings, RetryPolicy, Rollout, Route,
    RouteMatch, Shadow, Split, SplitTarget, TokenSource, TracingSettings, UpstreamTls, Watch,
    WatchPolicy,
};
use crate::raw::{
    RawBackend, RawBatch, RawCascade, RawConfig, RawEndpoint, RawEntity, RawGateway,
    RawHealthCheck, RawHedge, RawLimits, RawListenerTls, RawMatch, RawOutlier, RawRedis,
    RawRetries, RawRollout, RawRoute, RawShadow, RawSplitTarget, RawTracing, RawUpstreamTls,
    RawWatch,
};
use crate::value::{Timeout, Weight};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_FORCE_HEADER: &str = "x-cascadia-version";
const DEFAULT_BACKEND_TIMEOUT: Timeout = Timeout::from_secs_unchecked(2);
const DEFAULT_CONNECT_TIMEOUT: Timeout = Timeout::from_secs_unchecked(1);
/// The version name given to a route's `backends = [...]` shorthand.
const SHORTHAND_VERSION: &str = "default";
/// Caps an endpoint's weight so a pool's total can never overflow a `u32`.
const MAX_ENDPOINT_WEIGHT: u32 = 10_000;

/// Reads a file a cascade names (its model, its calibration) given the path
/// as written in the config, and returns its text. The loader does the
/// I/O, so parsing stays pure.
pub type FileLoader<'a> = dyn FnMut(&str) -> Result<String, String> + 'a;

/// Parses and validates a config file's text. A config with cascade routes
/// needs their model files: use [`parse_with_models`] (or `load_file`).
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_with_models(text, &mut |path: &str| {
        Err(format!(
            "cannot load {path:?} here: load the config from a file"
        ))
    })
}

/// Parses and validates a config, reading the files cascades name with
/// `load_model`.
pub fn parse_with_models(
    text: &str,
    load_model: &mut FileLoader<'_>,
) -> Result<Config, ConfigErrors> {
    let raw = deserialize(text).map_err(|e| ConfigErrors(vec![e]))?;
    validate(raw, load_model)
}

fn deserialize(text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        path: String::new(),
        message: with_position(text, &e),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = normalise_path(e.path());
        let inner = e.into_inner();
        ConfigError {
            path,
            message: with_position(text, &inner),
        }
    })
}

/// `message (line L, column C)`, or `line L, column C: message` for a syntax
/// error, which has no path to go with it.
fn with_position(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return error.message().to_owned();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{} (line {line}, column {column})", error.message())
}

/// serde_path_to_error writes `routes[1].split[0].weight` already; this
/// rebuilds it from the segments so the root is `""` rather than `"."` and
/// untagged-enum or unknown segments, which mean nothing to an operator,
/// are left out.
fn normalise_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

fn validate(raw: RawConfig, load_model: &mut FileLoader<'_>) -> Result<Config, ConfigErrors> {
    let mut errors = Collector::default();
    let gateway = gateway(raw.gateway, &mut errors);
    let backends = backends(raw.backends, &mut errors);
    let known: HashSet<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let has_redis = gateway.redis.is_some();
    // Any prefix of a valid file that TOML accepts is a valid config with
    // fewer (or no) routes: refuse the no-routes case unless it is meant.
    if raw.routes.is_empty() && !gateway.allow_no_routes {
        errors.push(
            "routes",
            "the config has no routes (an empty or cut-short file?); \
             set gateway.allow_no_routes = true to serve none",
        );
    }
    let routes = routes(raw.routes, &known, has_redis, load_model, &mut errors);
    errors.finish(Config {
        gateway,
        backends,
        routes,
    })
}

fn gateway(raw: RawGateway, errors: &mut Collector) -> GatewaySettings {
    let listen = socket_addr(
        raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        "gateway.listen",
        errors,
    );
    let admin_listen = socket_addr(
        raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        "gateway.admin_listen",
        errors,
    );
    // Port 0 means "any free port", so two of those never collide.
    if let (Some(l), Some(a)) = (listen, admin_listen) {
        if l == a && l.port() != 0 {
            errors.push(
                "gateway.admin_listen",
                format!("must differ from gateway.listen ({l})"),
            );
        }
    }
    // The placeholder is never served: an error was recorded, so the whole
    // config is rejected.
    let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
    let (insecure, allowed_hosts) = raw.admin.as_ref().map_or((false, Vec::new()), |a| {
        (
            a.insecure.unwrap_or(false),
            a.allowed_hosts
                .iter()
                .flatten()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        )
    });
    let has_token = raw
        .admin
        .as_ref()
        .is_some_and(|a| a.token_file.is_some() || a.token_env.is_some());
    // The admin API can drain regions and swap configs: reachable from
    // other hosts, it needs a token unless the operator says otherwise.
    if let Some(addr) = admin_listen {
        if !addr.ip().is_loopback() && !has_token && !insecure {
            errors.push(
                "gateway.admin_listen",
                format!(
                    "{addr} is reachable from other hosts and the admin API has no token: \
                     set gateway.admin.token_file or token_env (or gateway.admin.insecure = true)"
                ),
            );
        }
    }
    GatewaySettings {
        admin_insecure: insecure,
        admin_allowed_hosts: allowed_hosts,
        listen: listen.unwrap_or(placeholder),
        admin_listen: admin_listen.unwrap_or(placeholder),
        limits: limits(raw.limits, errors),
        redis: raw.redis.map(|r| redis(r, errors)),
        tracing: raw.tracing.map(|t| tracing_settings(t, errors)),
        allow_no_routes: raw.allow_no_routes.unwrap_or(false),
        shared_ejections: raw.shared_ejections.unwrap_or(false),
        drain_delay: match raw.drain_delay.as_deref() {
            None => std::time::Duration::from_secs(5),
            // Zero is a real choice here (stop at once), not a typo.
            Some("0" | "0s" | "0ms") => std::time::Duration::ZERO,
            Some(text) => timeout(Some(text), "gateway.drain_delay", errors)
                .map_or(std::time::Duration::from_secs(5), |t| t.get()),
        },
        tls: raw.tls.map(|t| listener_tls(t, errors)),
        access_log: {
            let raw = raw.access_log.unwrap_or_default();
            let sample = raw.sample.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&sample) {
                errors.push(
                    "gateway.access_log.sample",
                    format!("{sample} must be between 0.0 and 1.0"),
                );
            }
            crate::model::AccessLog {
                enabled: raw.enabled.unwrap_or(true),
                sample,
            }
        },
        drain_timeout: timeout(
            raw.drain_timeout.as_deref(),
            "gateway.drain_timeout",
            errors,
        )
        .unwrap_or(Timeout::from_secs_unchecked(30)),
        trusted_proxies: raw
            .trusted_proxies
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, text)| {
                let net = crate::model::IpNet::parse(text);
                if net.is_none() {
                    errors.push(
                        format!("gateway.trusted_proxies[{i}]"),
                        format!("{text:?} is not an IP address or network (e.g. \"10.0.0.0/8\")"),
                    );
                }
                net
            })
            .collect(),
        admin_token: raw
            .admin
            .and_then(|admin| match (admin.token_file, admin.token_env) {
                (Some(file), None) => Some(TokenSource::File(file)),
                (None, Some(env)) => Some(TokenSource::Env(env)),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    errors.push("gateway.admin", "set token_file or token_env, not both");
                    None
                }
            }),
    }
}

fn socket_addr(text: &str, path: &str, errors: &mut Collector) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(
                path,
                format!("invalid socket address {text:?} (expected e.g. \"0.0.0.0:8080\")"),
            );
            None
        }
    }
}

fn limits(raw: RawLimits, errors: &mut Collector) -> Limits {
    let mut limits = Limits::default();
    if let Some(v) = raw.max_body_bytes {
        if v < 1 {
            errors.push("gateway.limits.max_body_bytes", "must be at least 1");
        }
        limits.max_body_bytes = v;
    }
    if let Some(v) = raw.max_buffered_bytes {
        limits.max_buffered_bytes = v;
    }
    if limits.max_buffered_bytes < limits.max_body_bytes {
        errors.push(
            "gateway.limits.max_buffered_bytes",
            format!(
                "{} is under max_body_bytes ({}): no body could ever be read",
                limits.max_buffered_bytes, limits.max_body_bytes
            ),
        );
    }
    if let Some(v) = raw.max_header_bytes {
        // Below this, ordinary browsers and SDKs fail on their own headers.
        if v < 1024 {
            errors.push(
                "gateway.limits.max_header_bytes",
                format!("{v} is under the minimum of 1024"),
            );
        }
        limits.max_header_bytes = v;
    }
    if let Some(v) = raw.max_headers {
        if !(1..=1000).contains(&v) {
            errors.push(
                "gateway.limits.max_headers",
                format!("{v} is out of range, must be 1..=1000"),
            );
        }
        limits.max_headers = v;
    }
    if let Some(t) = timeout(
        raw.header_read_timeout.as_deref(),
        "gateway.limits.header_read_timeout",
        errors,
    ) {
        limits.header_read_timeout = t;
    }
    if let Some(t) = timeout(
        raw.body_read_timeout.as_deref(),
        "gateway.limits.body_read_timeout",
        errors,
    ) {
        limits.body_read_timeout = t;
    }
    if let Some(t) = timeout(
        raw.body_total_timeout.as_deref(),
        "gateway.limits.body_total_timeout",
        errors,
    ) {
        limits.body_total_timeout = t;
    }
    if let Some(t) = timeout(
        raw.idle_timeout.as_deref(),
        "gateway.limits.idle_timeout",
        errors,
    ) {
        limits.idle_timeout = t;
    }
    if let Some(t) = timeout(
        raw.write_timeout.as_deref(),
        "gateway.limits.write_timeout",
        errors,
    ) {
        limits.write_timeout = t;
    }
    limits
}

fn timeout(text: Option<&str>, path: &str, errors: &mut Collector) -> Option<Timeout> {
    match text?.parse::<Timeout>() {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(path, e.to_string());
            None
        }
    }
}

/// A required string: reports "missing" and "empty" apart, since they call
/// for different fixes.
fn required(value: Option<String>, path: &str, errors: &mut Collector) -> String {
    match value {
        None => {
            errors.push(path, "missing");
            String::new()
        }
        Some(v) if v.trim().is_empty() => {
            errors.push(path, "must not be empty");
            v
        }
        Some(v) => v,
    }
}

fn backends(raw: Vec<RawBackend>, errors: &mut Collector) -> Vec<Backend> {
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, b)| {
            let at = format!("backends[{i}]");
            let name = required(b.name, &format!("{at}.name"), errors);
            if !name.is_empty() && !seen.insert(name.clone()) {
                errors.push(
                    format!("{at}.name"),
                    format!("duplicate backend name {name:?}"),
                );
            }
            let region = required(b.region, &format!("{at}.region"), errors);
            let dns = b
                .dns
                .as_deref()
                .and_then(|text| dns_discovery(text, b.resolve_interval.as_deref(), &at, errors));
            if b.dns.is_none() && b.resolve_interval.is_some() {
                errors.push(
                    format!("{at}.resolve_interval"),
                    "only applies with dns: endpoints listed by address are not resolved again",
                );
            }
            let endpoints = match b.endpoints {
                None if b.dns.is_some() => Vec::new(),
                Some(_) if b.dns.is_some() => {
                    errors.push(
                        format!("{at}.endpoints"),
                        "give either endpoints or dns, not both",
                    );
                    Vec::new()
                }
                None => {
                    errors.push(format!("{at}.endpoints"), "missing (or set dns)");
                    Vec::new()
                }
                Some(list) if list.is_empty() => {
                    errors.push(format!("{at}.endpoints"), "must list at least one endpoint");
                    Vec::new()
                }
                Some(list) => list
                    .into_iter()
                    .enumerate()
                    .filter_map(|(j, e)| endpoint(e, &format!("{at}.endpoints[{j}]"), errors))
                    .collect(),
            };
            Backend {
                name,
                region,
                protocol: b.protocol,
                endpoints,
                timeout: timeout(b.timeout.as_deref(), &format!("{at}.timeout"), errors)
                    .unwrap_or(DEFAULT_BACKEND_TIMEOUT),
                connect_timeout: timeout(
                    b.connect_timeout.as_deref(),
                    &format!("{at}.connect_timeout"),
                    errors,
                )
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                balancer: b.balancer,
                health_check: b
                    .health_check
                    .map(|h| health_check(h, &format!("{at}.health_check"), errors)),
                outlier: outlier(b.outlier, &format!("{at}.outlier"), errors),
                hold_down: timeout(b.hold_down.as_deref(), &format!("{at}.hold_down"), errors)
                    .unwrap_or(Timeout::from_secs_unchecked(5)),
                tls: b.tls.map(|t| upstream_tls(t, &format!("{at}.tls"), errors)),
                dns,
            }
        })
        .collect()
}

fn dns_discovery(
    text: &str,
    interval: Option<&str>,
    at: &str,
    errors: &mut Collector,
) -> Option<DnsDiscovery> {
    let field = format!("{at}.dns");
    let Some((host, port)) = text.rsplit_once(':') else {
        errors.push(field, format!("{text:?} needs a port: name:port"));
        return None;
    };
    let port = match port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            errors.push(field, format!("{port:?} is not a port"));
            return None;
        }
    };
    let is_name = !host.is_empty()
        && host.parse::<std::net::IpAddr>().is_err()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !is_name {
        errors.push(
            field,
            format!("{host:?} is not a DNS name (list addresses under endpoints instead)"),
        );
        return None;
    }
    let resolve_interval = timeout(interval, &format!("{at}.resolve_interval"), errors)
        .unwrap_or(Timeout::from_secs_unchecked(5));
    Some(DnsDiscovery {
        host: host.to_ascii_lowercase(),
        port,
        resolve_interval,
    })
}

fn upstream_tls(raw: RawUpstreamTls, at: &str, errors: &mut Collector) -> UpstreamTls {
    if raw.cert_file.is_some() != raw.key_file.is_some() {
        let missing = if raw.cert_file.is_some() {
            "key_file"
        } else {
            "cert_file"
        };
        errors.push(
            format!("{at}.{missing}"),
            "a client certificate needs both cert_file and key_file",
        );
    }
    if let Some(name) = &raw.server_name {
        if name.is_empty() || name.contains(['/', ':', ' ']) {
            errors.push(
                format!("{at}.server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
    }
    let insecure = raw.insecure_skip_verify.unwrap_or(false);
    if insecure && raw.ca_file.is_some() {
        errors.push(
            format!("{at}.insecure_skip_verify"),
            "contradicts ca_file: a CA is only of use when certificates are verified",
        );
    }
    UpstreamTls {
        ca_file: raw.ca_file,
        ca_pem: None,
        cert_file: raw.cert_file,
        cert_pem: None,
        key_file: raw.key_file,
        key_pem: None,
        server_name: raw.server_name,
        insecure_skip_verify: insecure,
    }
}

fn listener_tls(raw: RawListenerTls, errors: &mut Collector) -> ListenerTls {
    let at = "gateway.tls";
    let cert_file = required(raw.cert_file, &format!("{at}.cert_file"), errors);
    let key_file = required(raw.key_file, &format!("{at}.key_file"), errors);
    if raw.require_client_cert.is_some() && raw.client_ca_file.is_none() {
        errors.push(
            format!("{at}.require_client_cert"),
            "needs client_ca_file: the CA that client certificates chain to",
        );
    }
    ListenerTls {
        cert_file: cert_file.into(),
        key_file: key_file.into(),
        require_client_cert: raw.require_client_cert.unwrap_or(true),
        client_ca_file: raw.client_ca_file.map(Into::into),
        reload_interval: timeout(
            raw.reload_interval.as_deref(),
            &format!("{at}.reload_interval"),
            errors,
        )
        .unwrap_or(Timeout::from_secs_unchecked(1)),
    }
}

fn health_check(raw: RawHealthCheck, at: &str, errors: &mut Collector) -> HealthCheck {
    let path = raw.path.unwrap_or_else(|| "/v2/health/ready".to_owned());
    if !path.starts_with('/') {
        errors.push(
            format!("{at}.path"),
            format!("{path:?} must start with '/'"),
        );
    }
    let check = HealthCheck {
        path,
        interval: timeout(raw.interval.as_deref(), &format!("{at}.interval"), errors)
            .unwrap_or(Timeout::from_secs_unchecked(1)),
        timeout: timeout(raw.timeout.as_deref(), &format!("{at}.timeout"), errors)
            .unwrap_or(Timeout::from_millis_unchecked(500)),
        rise: count(raw.rise, 2, &format!("{at}.rise"), errors),
        fall: count(raw.fall, 2, &format!("{at}.fall"), errors),
    };
    if check.timeout > check.interval {
        errors.push(
            format!("{at}.timeout"),
            format!(
                "{} is longer than the interval {}",
                check.timeout, check.interval
            ),
        );
    }
    check
}

fn outlier(raw: RawOutlier, at: &str, errors: &mut Collector) -> OutlierDetection {
    let defaults = OutlierDetection::default();
    let detection = OutlierDetection {
        consecutive_failures: count(
            raw.consecutive_failures,
            defaults.consecutive_failures,
            &format!("{at}.consecutive_failures"),
            errors,
        ),
        base_ejection: timeout(
            raw.base_ejection.as_deref(),
            &format!("{at}.base_ejection"),
            errors,
        )
        .unwrap_or(defaults.base_ejection),
        max_ejection: timeout(
            raw.max_ejection.as_deref(),
            &format!("{at}.max_ejection"),
            errors,
        )
        .unwrap_or(defaults.max_ejection),
        max_ejected_percent: percent(
            raw.max_ejected_percent,
            defaults.max_ejected_percent,
            &format!("{at}.max_ejected_percent"),
            errors,
        ),
        failure_statuses: match raw.failure_statuses.as_deref() {
            None | Some("gateway") => crate::model::FailureStatuses::Gateway,
            Some("5xx") => crate::model::FailureStatuses::Any5xx,
            Some(other) => {
                errors.push(
                    format!("{at}.failure_statuses"),
                    format!("{other:?} is not \"gateway\" (502, 503, 504) or \"5xx\""),
                );
                defaults.failure_statuses
            }
        },
    };
    if detection.base_ejection > detection.max_ejection {
        errors.push(
            format!("{at}.max_ejection"),
            format!(
                "{} is shorter than base_ejection {}",
                detection.max_ejection, detection.base_ejection
            ),
        );
    }
    detection
}

fn retries(raw: RawRetries, at: &str, errors: &mut Collector) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let attempts = raw.attempts.unwrap_or(defaults.attempts);
    if !(1..=5).contains(&attempts) {
        errors.push(
            format!("{at}.attempts"),
            format!("{attempts} is out of range, must be 1..=5"),
        );
    }
    RetryPolicy {
        attempts,
        budget_percent: percent(
            raw.budget_percent,
            defaults.budget_percent,
            &format!("{at}.budget_percent"),
            errors,
        ),
        min_per_second: raw.min_per_second.unwrap_or(defaults.min_per_second),
    }
}

fn hedge(raw: RawHedge, at: &str, errors: &mut Collector) -> HedgePolicy {
    let percentile = raw.percentile.unwrap_or(95.0);
    if !(50.0..=99.9).contains(&percentile) {
        errors.push(
            format!("{at}.percentile"),
            format!("{percentile} is out of range, must be 50..=99.9"),
        );
    }
    let policy = HedgePolicy {
        percentile,
        floor: timeout(raw.floor.as_deref(), &format!("{at}.floor"), errors)
            .unwrap_or(Timeout::from_millis_unchecked(5)),
        cap: timeout(raw.cap.as_deref(), &format!("{at}.cap"), errors)
            .unwrap_or(Timeout::from_millis_unchecked(100)),
        budget_percent: percent(
            raw.budget_percent,
            10,
            &format!("{at}.budget_percent"),
            errors,
        ),
    };
    if policy.floor > policy.cap {
        errors.push(
            format!("{at}.cap"),
            format!("{} is shorter than the floor {}", policy.cap, policy.floor),
        );
    }
    policy
}

fn rollout(raw: RawRollout, at: &str, errors: &mut Collector) -> Rollout {
    let canary = required(raw.canary, &format!("{at}.canary"), errors);
    let steps = raw.steps.unwrap_or_else(|| vec![1, 5, 25, 50, 100]);
    if steps.is_empty()
        || steps.last() != Some(&100)
        || steps.windows(2).any(|w| w[0] >= w[1])
        || steps.contains(&0)
    {
        errors.push(
            format!("{at}.steps"),
            format!("{steps:?} must rise from above 0 and end at 100"),
        );
    }
    let ratio = |value: Option<f64>, default: f64, field: &str, errors: &mut Collector| {
        let value = value.unwrap_or(default);
        if !(value.is_finite() && value >= 1.0) {
            errors.push(
                format!("{at}.{field}"),
                format!("{value} must be at least 1.0"),
            );
        }
        value
    };
    let share = |value: Option<f64>, default: f64, field: &str, errors: &mut Collector| {
        let value = value.unwrap_or(default);
        if !(0.0..=1.0).contains(&value) {
            errors.push(
                format!("{at}.{field}"),
                format!("{value} must be within 0..=1"),
            );
        }
        value
    };
    Rollout {
        canary,
        steps,
        min_dwell: timeout(raw.min_dwell.as_deref(), &format!("{at}.min_dwell"), errors)
            .unwrap_or(Timeout::from_millis_unchecked(60_000)),
        min_requests: raw.min_requests.unwrap_or(100),
        interval: timeout(raw.interval.as_deref(), &format!("{at}.interval"), errors)
            .unwrap_or(Timeout::from_millis_unchecked(1_000)),
        max_error_rate_increase: share(
            raw.max_error_rate_increase,
            0.01,
            "max_error_rate_increase",
            errors,
        ),
        max_p95_ratio: ratio(raw.max_p95_ratio, 1.5, "max_p95_ratio", errors),
        max_p99_ratio: ratio(raw.max_p99_ratio, 2.0, "max_p99_ratio", errors),
        latency_slack: timeout(
            raw.latency_slack.as_deref(),
            &format!("{at}.latency_slack"),
            errors,
        )
        .unwrap_or(Timeout::from_millis_unchecked(5)),
        max_disagreement: share(raw.max_disagreement, 0.05, "max_disagreement", errors),
        state_file: raw.state_file,
    }
}

fn shadow(
    raw: RawShadow,
    at: &str,
    known: &HashSet<&str>,
    errors: &mut Collector,
) -> Option<Shadow> {
    let backends = raw.backends.unwrap_or_default();
    if backends.is_empty() {
        errors.push(format!("{at}.backends"), "must name at least one backend");
    }
    for (i, name) in backends.iter().enumerate() {
        if !known.contains(name.as_str()) {
            errors.push(
                format!("{at}.backends[{i}]"),
                format!("unknown backend {name:?}"),
            );
        }
    }
    let fraction = raw.fraction.unwrap_or(0.0);
    if !(fraction > 0.0 && fraction <= 1.0) {
        errors.push(
            format!("{at}.fraction"),
            format!("{fraction} must be in (0, 1]"),
        );
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(32);
    if max_in_flight == 0 {
        errors.push(format!("{at}.max_in_flight"), "must be at least 1");
    }
    let version = raw.version.unwrap_or_else(|| "shadow".to_owned());
    for (field, value) in [
        ("version", Some(&version)),
        ("upstream_model", raw.upstream_model.as_ref()),
        ("upstream_version", raw.upstream_version.as_ref()),
    ] {
        if let Some(value) = value {
            path_segment(value, &format!("{at}.{field}"), errors);
        }
    }
    let timeout = timeout(raw.timeout.as_deref(), &format!("{at}.timeout"), errors)
        .unwrap_or(Timeout::from_millis_unchecked(1000));
    Some(Shadow {
        version,
        backends,
        fraction,
        max_in_flight,
        upstream_model: raw.upstream_model,
        upstream_version: raw.upstream_version,
        timeout,
    })
}

fn tracing_settings(raw: RawTracing, errors: &mut Collector) -> TracingSettings {
    let otlp_endpoint = required(raw.otlp_endpoint, "gateway.tracing.otlp_endpoint", errors);
    let https = otlp_endpoint.starts_with("https://");
    if !(otlp_endpoint.is_empty() || https || otlp_endpoint.starts_with("http://")) {
        errors.push(
            "gateway.tracing.otlp_endpoint",
            format!("{otlp_endpoint:?} must start with http:// or https://"),
        );
    }
    if raw.tls_ca_file.is_some() && !https {
        errors.push(
            "gateway.tracing.tls_ca_file",
            "needs an https:// otlp_endpoint",
        );
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        errors.push(
            "gateway.tracing.sample_ratio",
            format!("{sample_ratio} must be between 0.0 and 1.0"),
        );
    }
    TracingSettings {
        otlp_endpoint,
        sample_ratio,
        service_name: raw.service_name.unwrap_or_else(|| "cascadia".to_owned()),
        tls_ca_file: raw.tls_ca_file,
        tls_ca_pem: None,
    }
}

fn redis(raw: RawRedis, errors: &mut Collector) -> RedisSettings {
    let cluster_nodes = raw.cluster_nodes.unwrap_or_default();
    let sentinel_nodes = raw.sentinel_nodes.unwrap_or_default();
    let modes = usize::from(raw.url.is_some())
        + usize::from(!cluster_nodes.is_empty())
        + usize::from(!sentinel_nodes.is_empty());
    let url = if modes > 1 {
        errors.push(
            "gateway.redis",
            "set one of url (one server), cluster_nodes (a Redis Cluster) and sentinel_nodes (Redis Sentinel)",
        );
        String::new()
    } else if let Some(first) = cluster_nodes.first().or(sentinel_nodes.first()) {
        // A cluster or a set of sentinels is named by its first node in logs.
        first.clone()
    } else {
        required(raw.url, "gateway.redis.url", errors)
    };
    let sentinel = match (sentinel_nodes.is_empty(), raw.sentinel_master) {
        (true, None) => None,
        (true, Some(_)) => {
            errors.push(
                "gateway.redis.sentinel_master",
                "a master name needs sentinel_nodes",
            );
            None
        }
        (false, None) => {
            errors.push(
                "gateway.redis.sentinel_master",
                "missing: the name the sentinels monitor the master under",
            );
            None
        }
        (false, Some(master)) => {
            for (i, node) in sentinel_nodes.iter().enumerate() {
                if !node.starts_with("redis://") {
                    errors.push(
                        format!("gateway.redis.sentinel_nodes[{i}]"),
                        "must start with redis://",
                    );
                }
            }
            Some(crate::model::SentinelSettings {
                nodes: sentinel_nodes,
                master,
            })
        }
    };
    for (i, node) in cluster_nodes.iter().enumerate() {
        let scheme_matches = node.starts_with("rediss://") == url.starts_with("rediss://");
        if !(node.starts_with("redis://") || node.starts_with("rediss://")) || !scheme_matches {
            errors.push(
                format!("gateway.redis.cluster_nodes[{i}]"),
                "must start with redis:// or rediss://, the same for every node",
            );
        }
    }
    let tls = url.starts_with("rediss://");
    if !(url.is_empty() || tls || url.starts_with("redis://") || url.starts_with("unix://")) {
        errors.push(
            "gateway.redis.url",
            "must start with redis://, rediss:// (TLS) or unix://",
        );
    }
    if raw.tls_ca_file.is_some() && !tls {
        errors.push(
            "gateway.redis.tls_ca_file",
            "a CA file needs a rediss:// (TLS) url",
        );
    }
    RedisSettings {
        url,
        connect_timeout: timeout(
            raw.connect_timeout.as_deref(),
            "gateway.redis.connect_timeout",
            errors,
        )
        .unwrap_or(Timeout::from_millis_unchecked(100)),
        response_timeout: timeout(
            raw.response_timeout.as_deref(),
            "gateway.redis.response_timeout",
            errors,
        )
        .unwrap_or(Timeout::from_millis_unchecked(20)),
        key_prefix: raw
            .key_prefix
            .unwrap_or_else(|| "cascadia:features:".to_owned()),
        tls_ca_file: raw.tls_ca_file,
        tls_ca_pem: None,
        cluster_nodes,
        sentinel,
    }
}

fn entity(
    raw: RawEntity,
    at: &str,
    model: Option<&cascadia_cascade::LogisticModel>,
    known: &HashSet<&str>,
    errors: &mut Collector,
) -> Option<EntityFeatures> {
    let key = match (raw.key_header, raw.key_input) {
        (Some(h), None) => header(&h, &format!("{at}.key_header"), errors).map(EntityKey::Header),
        (None, Some(input)) => Some(EntityKey::Input(input)),
        _ => {
            errors.push(at, "set exactly one of key_header and key_input");
            None
        }
    };
    let features = raw.features.unwrap_or_default();
    if features.is_empty() {
        errors.push(
            format!("{at}.features"),
            "must list at least one model feature",
        );
    }
    if let Some(model) = model {
        for (i, name) in features.iter().enumerate() {
            if !model.features.contains(name) {
                errors.push(
                    format!("{at}.features[{i}]"),
                    format!("{name:?} is not a feature of the model"),
                );
            }
        }
    }
    let store = required(raw.store, &format!("{at}.store"), errors);
    if !store.is_empty() && !known.contains(store.as_str()) {
        errors.push(format!("{at}.store"), format!("unknown backend {store:?}"));
    }
    let l1_capacity = raw.l1_capacity.unwrap_or(10_000);
    if l1_capacity == 0 {
        errors.push(format!("{at}.l1_capacity"), "must be at least 1");
    }
    Some(EntityFeatures {
        key: key?,
        features,
        store,
        ttl: timeout(raw.ttl.as_deref(), &format!("{at}.ttl"), errors)
            .unwrap_or(Timeout::from_secs_unchecked(60)),
        negative_ttl: timeout(
            raw.negative_ttl.as_deref(),
            &format!("{at}.negative_ttl"),
            errors,
        )
        .unwrap_or(Timeout::from_secs_unchecked(10)),
        l1_capacity,
        timeout: timeout(raw.timeout.as_deref(), &format!("{at}.timeout"), errors)
            .unwrap_or(Timeout::from_millis_unchecked(100)),
    })
}

fn cascade(
    raw: RawCascade,
    at: &str,
    known: &HashSet<&str>,
    has_redis: bool,
    load_model: &mut FileLoader<'_>,
    errors: &mut Collector,
) -> Option<Cascade> {
    let model_path = required(raw.model, &format!("{at}.model"), errors);
    let model = if model_path.is_empty() {
        None
    } else {
        match load_model(&model_path).and_then(|text| {
            cascadia_cascade::LogisticModel::from_json(&text).map_err(|e| e.to_string())
        }) {
            Ok(model) => Some(std::sync::Arc::new(model)),
            Err(message) => {
                errors.push(format!("{at}.model"), message);
                None
            }
        }
    };
    let calibration = match raw.calibration {
        None => None,
        Some(path) => {
            let at_cal = format!("{at}.calibration");
            match load_model(&path)
                .and_then(|text| cascadia_cascade::calibrate::Artifact::from_json(&text))
            {
                Ok(artifact) => {
                    // A band certified for another model certifies nothing.
                    if let Some(model) = &model {
                        if artifact.model.sha256 != model.sha256 {
                            errors.push(
                                &at_cal,
                                format!(
                                    "made for model {} {} (sha256 {}), but {model_path} has sha256 {}: recalibrate for this model",
                                    artifact.model.name,
                                    artifact.model.version,
                                    artifact.model.sha256,
                                    model.sha256
                                ),
                            );
                        }
                    }
                    Some(Calibration { path, artifact })
                }
                Err(message) => {
                    errors.push(&at_cal, message);
                    return None;
                }
            }
        }
    };
    let (accept_below, reject_above) = match (&calibration, raw.accept_below, raw.reject_above) {
        (Some(c), None, None) => (c.artifact.band.accept_below, c.artifact.band.reject_above),
        (Some(_), a, r) => {
            let field = if a.is_some() {
                "accept_below"
            } else {
                "reject_above"
            };
            let _ = r;
            errors.push(
                format!("{at}.{field}"),
                "give either calibration or accept_below and reject_above, not both",
            );
            return None;
        }
        (None, Some(a), Some(r)) => (a, r),
        (None, a, r) => {
            if a.is_none() {
                errors.push(
                    format!("{at}.accept_below"),
                    "missing (or name a calibration)",
                );
            }
            if r.is_none() {
                errors.push(
                    format!("{at}.reject_above"),
                    "missing (or name a calibration)",
                );
            }
            return None;
        }
    };
    let thresholds = match cascadia_cascade::Thresholds::new(accept_below, reject_above) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("{at}.accept_below"), e.to_string());
            None
        }
    };
    let on_unavailable = match raw.on_unavailable.as_deref().unwrap_or("degrade") {
        "degrade" => OnUnavailable::Degrade,
        "error" => OnUnavailable::Error,
        other => {
            errors.push(
                format!("{at}.on_unavailable"),
                format!("{other:?} is not \"degrade\" or \"error\""),
            );
            OnUnavailable::Degrade
        }
    };
    let audit_fraction = raw.audit_fraction.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&audit_fraction) {
        errors.push(
            format!("{at}.audit_fraction"),
            format!("{audit_fraction} is not within 0..=1"),
        );
    }
    if raw.priority == Some(0) {
        errors.push(
            format!("{at}.priority"),
            "0 means the server's default: leave priority out instead (1 is the highest)",
        );
    }
    let max_batch = raw.max_batch.unwrap_or(1024);
    if !(1..=65_536).contains(&max_batch) {
        errors.push(
            format!("{at}.max_batch"),
            format!("{max_batch} is out of range, must be 1..=65536"),
        );
    }
    if let Some(d) = raw.missing_feature_default {
        if !d.is_finite() {
            errors.push(
                format!("{at}.missing_feature_default"),
                "must be a finite number",
            );
        }
    }
    let entity = raw
        .entity
        .and_then(|e| entity(e, &format!("{at}.entity"), model.as_deref(), known, errors));
    let output_columns = raw.output_columns.unwrap_or(1);
    if !(1..=2).contains(&output_columns) {
        errors.push(
            format!("{at}.output_columns"),
            format!("{output_columns} must be 1 or 2"),
        );
    }
    let output_datatype = match raw.output_datatype.as_deref() {
        None => cascadia_cascade::ProbabilityType::default(),
        Some(name) => cascadia_cascade::ProbabilityType::parse(name).unwrap_or_else(|| {
            errors.push(
                format!("{at}.output_datatype"),
                format!("{name:?} is not \"FP64\" or \"FP32\""),
            );
            cascadia_cascade::ProbabilityType::default()
        }),
    };
    let watch = raw.watch.and_then(|w| {
        watch(
            w,
            &format!("{at}.watch"),
            calibration.as_ref(),
            audit_fraction,
            errors,
        )
    });
    let drift = raw.drift.map(|d| {
        let at = format!("{at}.drift");
        if model.as_ref().is_some_and(|m| m.reference.is_none()) {
            errors.push(
                &at,
                format!("the model {model_path} has no training reference: export it with --reference-csv or --reference-npy"),
            );
        }
        let window_rows = d.window_rows.unwrap_or(2000);
        let slices = d.slices.unwrap_or(4);
        if !(1..=1000).contains(&slices) || window_rows < slices as u64 || window_rows > 10_000_000 {
            errors.push(
                format!("{at}.window_rows"),
                format!("{window_rows} rows in {slices} slices: slices must be 1..=1000 and rows at least slices, at most 10000000"),
            );
        }
        let threshold = d.threshold.unwrap_or(0.2);
        if !(threshold.is_finite() && threshold > 0.0) {
            errors.push(format!("{at}.threshold"), "must be a number above 0");
        }
        Drift {
            window_rows,
            slices,
            threshold,
        }
    });
    let record = raw.record.and_then(|r| {
        let at = format!("{at}.record");
        let sink = match (r.file, r.redis_stream) {
            (Some(file), None) if !file.is_empty() => Some(RecordSink::File(file.into())),
            (None, Some(key)) if !key.is_empty() => {
                if !has_redis {
                    errors.push(
                        format!("{at}.redis_stream"),
                        "needs [gateway.redis] to write to",
                    );
                }
                Some(RecordSink::RedisStream(key))
            }
            _ => {
                errors.push(
                    format!("{at}.file"),
                    "give exactly one of file and redis_stream",
                );
                None
            }
        };
        let sample = r.sample.unwrap_or(1.0);
        if !(sample > 0.0 && sample <= 1.0) {
            errors.push(
                format!("{at}.sample"),
                format!("{sample} is not within (0, 1]"),
            );
        }
        if audit_fraction <= 0.0 {
            errors.push(
                &at,
                "records the audited sample: needs an audit_fraction above 0",
            );
        }
        let max_rows = r.max_rows.unwrap_or(100_000);
        if max_rows == 0 {
            errors.push(format!("{at}.max_rows"), "must be at least 1");
        }
        sink.map(|sink| Record {
            sink,
            sample,
            max_rows,
        })
    });
    let batch = raw
        .batch
        .map(|b| batching(b, &format!("{at}.batch"), max_batch, errors));
    Some(Cascade {
        batch,
        calibration,
        watch,
        drift,
        record,
        output_columns,
        output_datatype,
        entity,
        model_path,
        model: model?,
        input: raw.input,
        thresholds: thresholds?,
        confirm_positives: raw.confirm_positives.unwrap_or(false),
        output: raw.output.unwrap_or_else(|| "probability".to_owned()),
        on_unavailable,
        audit_fraction,
        priority: raw.priority,
        max_batch,
        missing_feature_default: raw.missing_feature_default,
    })
}

/// `[routes.cascade.batch]`.
fn batching(raw: RawBatch, at: &str, max_batch: usize, errors: &mut Collector) -> Batching {
    let max_rows = raw.max_rows.unwrap_or(64);
    if !(2..=max_batch.max(2)).contains(&max_rows) {
        errors.push(
            format!("{at}.max_rows"),
            format!(
                "{max_rows} must be 2..={} (the route's max_batch)",
                max_batch.max(2)
            ),
        );
    }
    let max_wait = timeout(raw.max_wait.as_deref(), &format!("{at}.max_wait"), errors)
        .unwrap_or(Timeout::from_millis_unchecked(2));
    if max_wait.get() > std::time::Duration::from_secs(1) {
        errors.push(
            format!("{at}.max_wait"),
            "at most 1s: every escalation waits for it",
        );
    }
    let deadline_share = raw.deadline_share.unwrap_or(0.1);
    if !(deadline_share > 0.0 && deadline_share <= 0.5) {
        errors.push(
            format!("{at}.deadline_share"),
            format!("{deadline_share} is not within (0, 0.5]"),
        );
    }
    Batching {
        max_rows,
        max_wait,
        deadline_share,
    }
}

/// `[routes.cascade.watch]`: the target defaults to the calibration's.
fn watch(
    raw: RawWatch,
    at: &str,
    calibration: Option<&Calibration>,
    audit_fraction: f64,
    errors: &mut Collector,
) -> Option<Watch> {
    let target = calibration.map(|c| &c.artifact.target);
    let alpha = raw.max_recall_drop.or(target.map(|t| t.max_recall_drop));
    let confidence = raw
        .confidence
        .or(target.map(|t| t.confidence))
        .unwrap_or(0.95);
    let Some(alpha) = alpha else {
        errors.push(
            format!("{at}.max_recall_drop"),
            "missing (or name a calibration, whose target is the default)",
        );
        return None;
    };
    if !(alpha > 0.0 && alpha < 1.0) {
        errors.push(
            format!("{at}.max_recall_drop"),
            format!("{alpha} is not within (0, 1)"),
        );
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        errors.push(
            format!("{at}.confidence"),
            format!("{confidence} is not within (0, 1)"),
        );
    }
    if audit_fraction <= 0.0 {
        errors.push(at, "learns from audits: needs an audit_fraction above 0");
    }
    let window_positives = raw.window_positives.unwrap_or(100);
    let windows = raw.windows.unwrap_or(10);
    if !(1..=1_000_000).contains(&window_positives) {
        errors.push(format!("{at}.window_positives"), "must be 1..=1000000");
    }
    if !(1..=1000).contains(&windows) {
        errors.push(format!("{at}.windows"), "must be 1..=1000");
    }
    let policy = match raw.policy.as_deref().unwrap_or("alert") {
        "alert" => WatchPolicy::Alert,
        "escalate_all" => WatchPolicy::EscalateAll,
        "tighten" => {
            let factor = raw.tighten_factor.unwrap_or(0.5);
            let floor = raw.min_accept_below.unwrap_or(0.0);
            if !(factor > 0.0 && factor < 1.0) {
                errors.push(
                    format!("{at}.tighten_factor"),
                    format!("{factor} is not within (0, 1)"),
                );
            }
            if !(0.0..=1.0).contains(&floor) {
                errors.push(
                    format!("{at}.min_accept_below"),
                    format!("{floor} is not within 0..=1"),
                );
            }
            WatchPolicy::Tighten { factor, floor }
        }
        other => {
            errors.push(
                format!("{at}.policy"),
                format!("{other:?} is not \"alert\", \"tighten\" or \"escalate_all\""),
            );
            WatchPolicy::Alert
        }
    };
    if !matches!(policy, WatchPolicy::Tighten { .. })
        && (raw.tighten_factor.is_some() || raw.min_accept_below.is_some())
    {
        errors.push(
            format!("{at}.tighten_factor"),
            "only applies with policy = \"tighten\"",
        );
    }
    Some(Watch {
        settings: cascadia_cascade::watch::WatchSettings {
            alpha,
            delta: 1.0 - confidence,
            window_positives,
            windows,
        },
        policy,
    })
}

/// A count that must be at least 1.
fn count(value: Option<u32>, default: u32, path: &str, errors: &mut Collector) -> u32 {
    let value = value.unwrap_or(default);
    if value == 0 {
        errors.push(path, "must be at least 1");
    }
    value
}

/// A percentage, 0..=100.
fn percent(value: Option<u32>, default: u32, path: &str, errors: &mut Collector) -> u32 {
    let value = value.unwrap_or(default);
    if value > 100 {
        errors.push(path, format!("{value} is over 100"));
    }
    value
}

fn endpoint(raw: RawEndpoint, at: &str, errors: &mut Collector) -> Option<Endpoint> {
    let (address, weight, address_path) = match raw {
        RawEndpoint::Address(a) => (a, 1, at.to_owned()),
        RawEndpoint::Table(t) => (t.address, t.weight.unwrap_or(1), format!("{at}.address")),
    };
    let mut ok = true;
    if !(1..=MAX_ENDPOINT_WEIGHT).contains(&weight) {
        errors.push(
            format!("{at}.weight"),
            format!("{weight} is out of range, must be 1..={MAX_ENDPOINT_WEIGHT}"),
        );
        ok = false;
    }
    let authority = match authority(&address) {
        Ok(a) => Some(a),
        Err(message) => {
            errors.push(address_path, message);
            None
        }
    };
    Some(Endpoint {
        authority: authority.filter(|_| ok)?,
        weight,
    })
}

fn authority(text: &str) -> Result<Authority, String> {
    // Credentials in config would end up in logs and the summary.
    if text.contains('@') {
        return Err(format!("{text:?} must not contain userinfo ('@')"));
    }
    let authority = Authority::from_str(text)
        .map_err(|e| format!("invalid address {text:?}: {e} (expected \"host:port\")"))?;
    if authority.host().is_empty() {
        return Err(format!("address {text:?} has no host"));
    }
    // No scheme is configured, so there is no default port to fall back on.
    if authority.port_u16().is_none() {
        return Err(format!("address {text:?} needs an explicit port"));
    }
    Ok(authority)
}

fn routes(
    raw: Vec<RawRoute>,
    known: &HashSet<&str>,
    has_redis: bool,
    load_model: &mut FileLoader<'_>,
    errors: &mut Collector,
) -> Vec<Route> {
    let mut names = HashSet::new();
    // Which route already claimed a model or prefix, to name it in the error.
    let mut claimed: HashMap<RouteMatch, String> = HashMap::new();
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, mut r)| {
            let at = format!("routes[{i}]");
            let name = required(r.name.clone(), &format!("{at}.name"), errors);
            if !name.is_empty() && !names.insert(name.clone()) {
                errors.push(
                    format!("{at}.name"),
                    format!("duplicate route name {name:?}"),
                );
            }
            let matcher = route_match(r.matcher.as_ref(), &format!("{at}.match"), errors);
            if let Some(m) = &matcher {
                if let Some(other) = claimed.get(m) {
                    let what = match m {
                        RouteMatch::Model(v) => format!("model {v:?}"),
                        RouteMatch::PathPrefix(v) => format!("path_prefix {v:?}"),
                    };
                    errors.push(
                        format!("{at}.match"),
                        format!("{what} is already matched by route {other:?}"),
                    );
                } else {
                    claimed.insert(m.clone(), name.clone());
                }
            }
            let key_header = r
                .key_header
                .as_deref()
                .and_then(|h| header(h, &format!("{at}.key_header"), errors));
            let force_header = header(
                r.force_header.as_deref().unwrap_or(DEFAULT_FORCE_HEADER),
                &format!("{at}.force_header"),
                errors,
            );
            let timeout = timeout(r.timeout.as_deref(), &format!("{at}.timeout"), errors);
            let rate_limit = r.rate_limit.take().and_then(|limit| {
                let at = format!("{at}.rate_limit");
                let per_second = limit.per_second.unwrap_or(0);
                if per_second == 0 {
                    errors.push(format!("{at}.per_second"), "must be at least 1");
                }
                let burst = limit.burst.unwrap_or(per_second);
                if burst == 0 {
                    errors.push(format!("{at}.burst"), "must be at least 1");
                }
                let key_header = match &limit.key_header {
                    Some(h) => Some(header(h, &format!("{at}.key_header"), errors)?),
                    None => None,
                };
                let shared = limit.shared.unwrap_or(false);
                if shared && !has_redis {
                    errors.push(
                        format!("{at}.shared"),
                        "a shared limit needs gateway.redis to share it through",
                    );
                }
                Some(RateLimit {
                    per_second,
                    burst,
                    key_header,
                    shared,
                })
            });
            let max_concurrency = r.max_concurrency;
            if max_concurrency == Some(0) {
                errors.push(format!("{at}.max_concurrency"), "must be at least 1");
            }
            let idempotent = r
                .idempotent
                .unwrap_or(matches!(matcher, Some(RouteMatch::Model(_))));
            let retries = retries(
                std::mem::take(&mut r.retries),
                &format!("{at}.retries"),
                errors,
            );
            let hedge = r
                .hedge
                .take()
                .map(|h| hedge(h, &format!("{at}.hedge"), errors));
            let cascade = r.cascade.take().and_then(|c| {
                if !matches!(matcher, Some(RouteMatch::Model(_))) {
                    errors.push(
                        format!("{at}.cascade"),
                        "a cascade needs a model route (match = { model = ... })",
                    );
                }
                cascade(
                    c,
                    &format!("{at}.cascade"),
                    known,
                    has_redis,
                    load_model,
                    errors,
                )
            });
            let latency_slo = self::timeout(
                r.latency_slo.as_deref(),
                &format!("{at}.latency_slo"),
                errors,
            );
            let shadow = r.shadow.take().and_then(|s| {
                if !matches!(matcher, Some(RouteMatch::Model(_))) {
                    errors.push(
                        format!("{at}.shadow"),
                        "shadow traffic needs a model route (match = { model = ... })",
                    );
                }
                shadow(s, &format!("{at}.shadow"), known, errors)
            });
            let rollout = r
                .rollout
                .take()
                .map(|raw| rollout(raw, &format!("{at}.rollout"), errors));
            let split = split(r, &at, known, errors);
            if let (Some(plan), Some(split)) = (&rollout, &split) {
                let versions: Vec<&str> =
                    split.targets().iter().map(|t| t.version.as_str()).collect();
                if versions.len() != 2 || !versions.contains(&plan.canary.as_str()) {
                    errors.push(
                        format!("{at}.rollout.canary"),
                        format!(
                            "{:?} must be one of a two-version split (versions: {versions:?})",
                            plan.canary
                        ),
                    );
                }
            }
            Some(Route {
                name,
                matcher: matcher?,
                key_header,
                force_header: force_header?,
                timeout,
                split: split?,
                idempotent,
                max_concurrency,
                rate_limit,
                retries,
                hedge,
                latency_slo,
                cascade,
                shadow,
                rollout,
            })
        })
        .collect()
}

fn route_match(raw: Option<&RawMatch>, at: &str, errors: &mut Collector) -> Option<RouteMatch> {
    let Some(raw) = raw else {
        errors.push(
            at,
            "missing (expected { model = \"...\" } or { path_prefix = \"/...\" })",
        );
        return None;
    };
    match (&raw.model, &raw.path_prefix) {
        (Some(model), None) => {
            let path = format!("{at}.model");
            path_segment(model, &path, errors).then(|| RouteMatch::Model(model.clone()))
        }
        (None, Some(prefix)) => {
            if prefix.starts_with('/') {
                Some(RouteMatch::PathPrefix(prefix.clone()))
            } else {
                errors.push(
                    format!("{at}.path_prefix"),
                    format!("{prefix:?} must start with '/'"),
                );
                None
            }
        }
        (Some(_), Some(_)) => {
            errors.push(at, "set exactly one of `model` and `path_prefix`, not both");
            None
        }
        (None, None) => {
            errors.push(at, "set exactly one of `model` and `path_prefix`");
            None
        }
    }
}

/// Model names and versions are spliced into OIP paths
/// (`/v2/models/{model}/versions/{version}`), so they must be one clean
/// path segment: anything else could route a request somewhere unintended.
fn path_segment(value: &str, path: &str, errors: &mut Collector) -> bool {
    let problem = if value.is_empty() {
        Some("must not be empty".to_owned())
    } else if value == "." || value == ".." {
        Some(format!("{value:?} is not a valid name"))
    } else if value
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#') || c.is_whitespace())
    {
        Some(format!(
            "{value:?} must not contain '/', '?', '#' or whitespace"
        ))
    } else {
        None
    };
    match problem {
        Some(message) => {
            errors.push(path, message);
            false
        }
        None => true,
    }
}

fn header(text: &str, path: &str, errors: &mut Collector) -> Option<HeaderName> {
    match HeaderName::from_bytes(text.to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errors.push(path, format!("{text:?} is not a valid HTTP header name"));
            None
        }
    }
}

/// A route gives its versions either as `[[routes.split]]` entries or, for
/// the common single-version case, as route-level `backends` (plus optional
/// `upstream_model`/`upstream_version`), which means one version "default"
/// taking all the traffic.
fn split(r: RawRoute, at: &str, known: &HashSet<&str>, errors: &mut Collector) -> Option<Split> {
    match (r.split, r.backends) {
        (Some(_), Some(_)) => {
            errors.push(at, "set either `split` or `backends`, not both");
            None
        }
        (None, None) => {
            errors.push(at, "missing `split` (or the `backends` shorthand)");
            None
        }
        (None, Some(backends)) => {
            let target = RawSplitTarget {
                version: Some(SHORTHAND_VERSION.to_owned()),
                weight: Some(Weight::MAX),
                backends: Some(backends),
                upstream_model: r.upstream_model,
                upstream_version: r.upstream_version,
            };
            // Paths point at the route-level fields the operator wrote.
            let target = split_target(target, at, known, errors)?;
            Some(Split::new(vec![target]))
        }
        (Some(targets), None) => {
            for (field, value) in [
                ("upstream_model", &r.upstream_model),
                ("upstream_version", &r.upstream_version),
            ] {
                if value.is_some() {
                    errors.push(
                        format!("{at}.{field}"),
                        "only allowed with the route-level `backends` shorthand; \
                         set it on each split entry instead",
                    );
                }
            }
            let split_at = format!("{at}.split");
            if targets.is_empty() {
                errors.push(&split_at, "must list at least one version");
                return None;
            }
            let mut versions = HashSet::new();
            let mut sum: u64 = 0;
            let mut weights_ok = true;
            let mut all_ok = true;
            let mut out = Vec::with_capacity(targets.len());
            for (j, t) in targets.into_iter().enumerate() {
                let t_at = format!("{split_at}[{j}]");
                if let Some(v) = &t.version {
                    if !v.is_empty() && !versions.insert(v.clone()) {
                        errors.push(
                            format!("{t_at}.version"),
                            format!("duplicate version {v:?}"),
                        );
                    }
                }
                match t.weight {
                    Some(w) if w <= Weight::MAX => sum += u64::from(w),
                    _ => weights_ok = false,
                }
                match split_target(t, &t_at, known, errors) {
                    Some(t) => out.push(t),
                    None => all_ok = false,
                }
            }
            // A sum over weights that were themselves rejected would only
            // repeat that error.
            if weights_ok && sum != u64::from(Weight::MAX) {
                errors.push(
                    &split_at,
                    format!("weights sum to {sum}, must sum to {}", Weight::MAX),
                );
                all_ok = false;
            }
            all_ok.then(|| Split::new(out))
        }
    }
}

fn split_target(
    raw: RawSplitTarget,
    at: &str,
    known: &HashSet<&str>,
    errors: &mut Collector,
) -> Option<SplitTarget> {
    let mut ok = true;
    let version = match raw.version {
        None => {
            errors.push(format!("{at}.version"), "missing");
            ok = false;
            String::new()
        }
        Some(v) => {
            // The version is what the force header carries, so it obeys the
            // same rules as a model name.
            ok &= path_segment(&v, &format!("{at}.version"), errors);
            v
        }
    };
    let weight = match raw.weight.map(Weight::try_from) {
        None => {
            errors.push(format!("{at}.weight"), "missing");
            None
        }
        Some(Err(e)) => {
            errors.push(format!("{at}.weight"), e.to_string());
            None
        }
        Some(Ok(w)) => Some(w),
    };
    let backends = match raw.backends {
        None => {
            errors.push(format!("{at}.backends"), "missing");
            ok = false;
            Vec::new()
        }
        Some(list) if list.is_empty() => {
            errors.push(format!("{at}.backends"), "must list at least one backend");
            ok = false;
            list
        }
        Some(list) => {
            let mut seen = HashSet::new();
            for (k, name) in list.iter().enumerate() {
                if !known.contains(name.as_str()) {
                    errors.push(
                        format!("{at}.backends[{k}]"),
                        format!("unknown backend {name:?}"),
                    );
                    ok = false;
                } else if !seen.insert(name.as_str()) {
                    errors.push(
                        format!("{at}.backends[{k}]"),
                        format!("backend {name:?} is listed twice"),
                    );
                    ok = false;
                }
            }
            list
        }
    };
    for (field, value) in [
        ("upstream_model", &raw.upstream_model),
        ("upstream_version", &raw.upstream_version),
    ] {
        if let Some(v) = value {
            ok &= path_segment(v, &format!("{at}.{field}"), errors);
        }
    }
    ok.then_some(())?;
    Some(SplitTarget {
        version,
        weight: weight?,
        backends,
        upstream_model: raw.upstream_model,
        upstream_version: raw.upstream_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UpstreamProtocol;
    use std::time::Duration;

    const DEMO: &str = include_str!("../examples/demo.toml");

    const BACKENDS: &str = r#"
[[backends]]
name = "a"
region = "us-east"
endpoints = ["127.0.0.1:1"]

[[backends]]
name = "b"
region = "eu-west"
endpoints = ["127.0.0.1:2"]
"#;

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("config should be rejected")
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn with_backends(routes: &str) -> String {
        format!("{BACKENDS}\n{routes}")
    }

    #[test]
    fn demo_parses() {
        // The demo's cascade route loads its model from beside the file.
        let mut load = |path: &str| {
            assert_eq!(path, "phishing-lr.json");
            Ok(include_str!("../examples/phishing-lr.json").to_owned())
        };
        let config = parse_with_models(DEMO, &mut load).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.routes[1].cascade.is_some());
        assert_eq!(config.gateway.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            config.gateway.admin_listen,
            "127.0.0.1:9901".parse().unwrap()
        );
        assert_eq!(config.gateway.limits.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(config.backends.len(), 4);
        let b = config.backend("fraud-v1-us-east").unwrap();
        assert_eq!(b.protocol, UpstreamProtocol::Http1);
        assert_eq!(b.timeout.get(), Duration::from_secs(2));
        assert_eq!(b.connect_timeout.get(), Duration::from_secs(1));
        assert_eq!(b.endpoints[0].authority.as_str(), "127.0.0.1:18101");
        assert_eq!(b.endpoints[0].weight, 1);
        assert!(config.backend("nope").is_none());

        let route = &config.routes[0];
        assert_eq!(route.matcher, RouteMatch::Model("fraud".into()));
        assert_eq!(route.key_header.as_ref().unwrap(), "x-user-id");
        assert_eq!(route.force_header, "x-cascadia-version");
        assert_eq!(route.split.total_weight(), 100);
        let canary = route.split.target("canary").unwrap();
        assert_eq!(canary.weight.get(), 10);
        assert_eq!(canary.backends, ["fraud-v2-us-east", "fraud-v2-eu-west"]);
        assert_eq!(canary.upstream_version.as_deref(), Some("2"));
        assert_eq!(canary.upstream_model, None);
        assert_eq!(route.split.targets()[0].version, "stable");

        let summary = config.summary();
        for needle in [
            "127.0.0.1:8080",
            "fraud-v2-eu-west",
            "canary",
            "x-user-id",
            "90%",
        ] {
            assert!(
                summary.contains(needle),
                "{needle:?} missing from\n{summary}"
            );
        }
    }

    #[test]
    fn an_empty_or_routeless_file_is_refused_unless_meant() {
        for text in [
            "",
            "[gateway]\nlisten = \"127.0.0.1:0\"\n",
            "[[backends]]\nname = \"a\"\nregion = \"r\"\nendpoints = [\"127.0.0.1:1\"]\n",
        ] {
            let errors = parse(text).unwrap_err();
            assert!(
                errors.0.iter().any(|e| e.path == "routes"),
                "{text:?}: {errors}"
            );
        }
    }

    #[test]
    fn everything_optional_defaults() {
        let config = parse("[gateway]\nallow_no_routes = true\n").unwrap();
        assert_eq!(config.gateway.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            config.gateway.admin_listen,
            "127.0.0.1:9901".parse().unwrap()
        );
        let l = &config.gateway.limits;
        assert_eq!(l.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(l.max_header_bytes, 16384);
        assert_eq!(l.max_headers, 100);
        assert_eq!(l.header_read_timeout.get(), Duration::from_secs(10));
        assert!(config.backends.is_empty() && config.routes.is_empty());
    }

    #[test]
    fn a_cascade_without_a_loader_names_the_model_field() {
        let errors = parse(DEMO).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path, "routes[1].cascade.model");
    }

    #[test]
    fn weights_must_sum_to_100() {
        let text = with_backends(
            r#"
[[routes]]
name = "ok"
match = { model = "one" }
backends = ["a"]

[[routes]]
name = "short"
match = { model = "two" }
[[routes.split]]
version = "v1"
weight = 80
backends = ["a"]
[[routes.split]]
version = "v2"
weight = 10
backends = ["b"]
"#,
        );
        assert_eq!(
            errors(&text),
            ["routes[1].split: weights sum to 90, must sum to 100"]
        );
    }

    #[test]
    fn unknown_backend_is_named_by_path() {
        let text = with_backends(
            r#"
[[routes]]
name = "r"
match = { path_prefix = "/echo" }
[[routes.split]]
version = "v1"
weight = 50
backends = ["a"]
[[routes.split]]
version = "v2"
weight = 50
backends = ["nope", "b"]
"#,
        );
        assert_eq!(
            errors(&text),
            [r#"routes[0].split[1].backends[0]: unknown backend "nope""#]
        );
    }

    #[test]
    fn unknown_field_is_named_by_path() {
        let text = with_backends(
            r#"
[[routes]]
name = "r"
match = { model = "m" }
[[routes.split]]
version = "v1"
weight = 100
backends = ["a"]
wieght = 3
"#,
        );
        let errs = parse(&text).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "routes[0].split[0].wieght");
        assert!(
            errs[0].message.starts_with("unknown field `wieght`"),
            "{}",
            errs[0].message
        );
        assert!(errs[0].message.contains("line "), "{}", errs[0].message);
    }

    #[test]
    fn type_error_is_named_by_path() {
        let errs = parse("[gateway.limits]\nmax_headers = \"lots\"\n")
            .unwrap_err()
            .0;
        assert_eq!(errs[0].path, "gateway.limits.max_headers");
        assert!(errs[0].message.contains("line 2"), "{}", errs[0].message);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errs = parse("[gateway]\nlisten = \n").unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "");
        assert!(
            errs[0].message.contains("(line 2, column"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn every_error_is_reported_together() {
        let text = r#"
[gateway]
listen = "localhost"

[gateway.limits]
max_header_bytes = 10
max_headers = 0

[[backends]]
name = "a"
region = ""
endpoints = ["127.0.0.1", "user@h:1", { address = "h:2", weight = 0 }]
timeout = "0s"

[[backends]]
name = "a"
region = "r"
endpoints = []

[[routes]]
name = "r"
match = { model = "a/b" }
key_header = "bad header"
backends = ["a"]

[[routes]]
name = "r"
match = { path_prefix = "no-slash" }
[[routes.split]]
version = "v"
weight = 101
backends = []
[[routes.split]]
version = "v"
weight = 0
backends = ["ghost"]
"#;
        let got = errors(text);
        let want = [
            r#"gateway.listen: invalid socket address "localhost" (expected e.g. "0.0.0.0:8080")"#,
            "gateway.limits.max_header_bytes: 10 is under the minimum of 1024",
            "gateway.limits.max_headers: 0 is out of range, must be 1..=1000",
            "backends[0].region: must not be empty",
            r#"backends[0].endpoints[0]: address "127.0.0.1" needs an explicit port"#,
            r#"backends[0].endpoints[1]: "user@h:1" must not contain userinfo ('@')"#,
            "backends[0].endpoints[2].weight: 0 is out of range, must be 1..=10000",
            r#"backends[0].timeout: duration "0s" must be greater than zero"#,
            r#"backends[1].name: duplicate backend name "a""#,
            "backends[1].endpoints: must list at least one endpoint",
            r#"routes[0].match.model: "a/b" must not contain '/', '?', '#' or whitespace"#,
            r#"routes[0].key_header: "bad header" is not a valid HTTP header name"#,
            r#"routes[1].name: duplicate route name "r""#,
            r#"routes[1].match.path_prefix: "no-slash" must start with '/'"#,
            "routes[1].split[0].weight: 101 is over 100",
            "routes[1].split[0].backends: must list at least one backend",
            r#"routes[1].split[1].version: duplicate version "v""#,
            r#"routes[1].split[1].backends[0]: unknown backend "ghost""#,
        ];
        assert_eq!(got, want, "got:\n{}", got.join("\n"));
    }

    #[test]
    fn shorthand_backends_is_one_default_version() {
        let text = with_backends(
            r#"
[[routes]]
name = "echo"
match = { path_prefix = "/echo" }
backends = ["b", "a"]
upstream_model = "echo-v3"
timeout = "500ms"
force_header = "X-Pick"
"#,
        );
        let config = parse(&text).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.force_header, "x-pick");
        assert_eq!(route.key_header, None);
        assert_eq!(route.timeout.unwrap().get(), Duration::from_millis(500));
        let targets = route.split.targets();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].version, "default");
        assert_eq!(targets[0].weight.get(), 100);
        assert_eq!(targets[0].backends, ["b", "a"]);
        assert_eq!(targets[0].upstream_model.as_deref(), Some("echo-v3"));
    }

    #[test]
    fn shorthand_errors_point_at_route_fields() {
        let text = with_backends(
            r#"
[[routes]]
name = "echo"
match = { path_prefix = "/echo" }
backends = ["zzz"]
"#,
        );
        assert_eq!(
            errors(&text),
            [r#"routes[0].backends[0]: unknown backend "zzz""#]
        );
    }

    #[test]
    fn split_and_backends_are_exclusive() {
        let text = with_backends(
            r#"
[[routes]]
name = "both"
match = { model = "x" }
backends = ["a"]
[[routes.split]]
version = "v"
weight = 100
backends = ["a"]

[[routes]]
name = "neither"
match = { model = "y" }
"#,
        );
        assert_eq!(
            errors(&text),
            [
                "routes[0]: set either `split` or `backends`, not both",
                "routes[1]: missing `split` (or the `backends` shorthand)",
            ]
        );
    }

    #[test]
    fn matches_must_be_unique_and_single() {
        let text = with_backends(
            r#"
[[routes]]
name = "one"
match = { model = "m" }
backends = ["a"]

[[routes]]
name = "two"
match = { model = "m" }
backends = ["a"]

[[routes]]
name = "three"
match = { model = "n", path_prefix = "/n" }
backends = ["a"]

[[routes]]
name = "four"
match = { model = ".." }
backends = ["a"]
"#,
        );
        assert_eq!(
            errors(&text),
            [
                r#"routes[1].match: model "m" is already matched by route "one""#,
                "routes[2].match: set exactly one of `model` and `path_prefix`, not both",
                r#"routes[3].match.model: ".." is not a valid name"#,
            ]
        );
    }

    #[test]
    fn endpoint_tables_and_h2c() {
        let text = r#"
[gateway]
allow_no_routes = true

[[backends]]
name = "grpc"
region = "r"
protocol = "h2c"
endpoints = ["10.0.0.1:9000", { address = "10.0.0.2:9000", weight = 3 }]
connect_timeout = "250ms"
"#;
        let config = parse(text).unwrap();
        let b = &config.backends[0];
        assert_eq!(b.protocol, UpstreamProtocol::H2c);
        assert_eq!(b.endpoints[1].authority.as_str(), "10.0.0.2:9000");
        assert_eq!(b.endpoints[1].weight, 3);
        assert_eq!(b.connect_timeout.get(), Duration::from_millis(250));
    }

    #[test]
    fn typo_inside_an_endpoint_table_is_named() {
        let errs = parse(
            "[[backends]]\nname = \"a\"\nregion = \"r\"\nendpoints = [{ adress = \"h:1\" }]\n",
        )
        .unwrap_err()
        .0;
        assert_eq!(errs[0].path, "backends[0].endpoints[0].adress");
        assert!(
            errs[0].message.starts_with("unknown field `adress`"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn display_is_one_error_per_line() {
        let errs =
            parse("[gateway]\nallow_no_routes = true\nlisten = \"x\"\nadmin_listen = \"y\"\n")
                .unwrap_err();
        assert_eq!(
            errs.to_string(),
            "gateway.listen: invalid socket address \"x\" (expected e.g. \"0.0.0.0:8080\")\n\
             gateway.admin_listen: invalid socket address \"y\" (expected e.g. \"0.0.0.0:8080\")"
        );
    }

    #[test]
    fn listen_addresses_must_differ() {
        assert_eq!(
            errors("[gateway]\nallow_no_routes = true\nlisten = \"0.0.0.0:80\"\nadmin_listen = \"0.0.0.0:80\"\n[gateway.admin]\ninsecure = true\n"),
            ["gateway.admin_listen: must differ from gateway.listen (0.0.0.0:80)"]
        );
        assert!(
            parse("[gateway]\nallow_no_routes = true\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n").is_ok()
        );
    }

    #[test]
    fn a_backend_takes_endpoints_or_a_dns_name_with_a_port() {
        let backend = |lines: &str| {
            format!(
                "[[backends]]\nname = \"a\"\nregion = \"r\"\n{lines}\n[[routes]]\nname = \"r\"\nmatch = {{ model = \"m\" }}\nbackends = [\"a\"]\n"
            )
        };
        let config = parse(&backend(
            "dns = \"Fraud.models.svc.cluster.local:8080\"\nresolve_interval = \"2s\"",
        ))
        .unwrap();
        let dns = config.backends[0].dns.clone().unwrap();
        assert_eq!(dns.host, "fraud.models.svc.cluster.local");
        assert_eq!(dns.port, 8080);
        assert_eq!(
            dns.resolve_interval.get(),
            std::time::Duration::from_secs(2)
        );
        assert!(config.backends[0].endpoints.is_empty());
        assert_eq!(
            errors(&backend("dns = \"svc:8080\"\nendpoints = [\"10.0.0.1:1\"]")),
            ["backends[0].endpoints: give either endpoints or dns, not both"]
        );
        assert_eq!(
            errors(&backend("dns = \"svc\"")),
            [r#"backends[0].dns: "svc" needs a port: name:port"#]
        );
        assert_eq!(
            errors(&backend("dns = \"10.0.0.1:80\"")),
            [
                r#"backends[0].dns: "10.0.0.1" is not a DNS name (list addresses under endpoints instead)"#
            ]
        );
        assert_eq!(
            errors(&backend("endpoints = [\"10.0.0.1:1\"]\nresolve_interval = \"1s\"")),
            ["backends[0].resolve_interval: only applies with dns: endpoints listed by address are not resolved again"]
        );
    }

    #[test]
    fn tracing_is_off_by_default_and_checked_when_set() {
        assert!(parse("[gateway]\nallow_no_routes = true\n")
            .unwrap()
            .gateway
            .tracing
            .is_none());
        let config =
            parse("[gateway]\nallow_no_routes = true\n[gateway.tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\n").unwrap();
        let tracing = config.gateway.tracing.unwrap();
        assert_eq!(tracing.sample_ratio, 1.0);
        assert_eq!(tracing.service_name, "cascadia");

        assert!(parse("[gateway]\nallow_no_routes = true\n[gateway.tracing]\notlp_endpoint = \"https://collector:4317\"\n").is_ok());
        let errs = errors("[gateway]\nallow_no_routes = true\n[gateway.tracing]\notlp_endpoint = \"http://collector:4317\"\ntls_ca_file = \"ca.pem\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("gateway.tracing.tls_ca_file"), "{errs:?}");
        let errs =
            errors("[gateway]\nallow_no_routes = true\n[gateway.tracing]\notlp_endpoint = \"collector:4317\"\nsample_ratio = 1.5\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("gateway.tracing.otlp_endpoint"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("gateway.tracing.sample_ratio"),
            "{errs:?}"
        );
    }

    #[test]
    fn the_buffer_budget_must_hold_at_least_one_body() {
        let config = format!(
            "[gateway.limits]\nmax_body_bytes = 1000\nmax_buffered_bytes = 999\n{}",
            with_backends(ROUTE_M)
        );
        let errs = errors(&config);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("gateway.limits.max_buffered_bytes"),
            "{errs:?}"
        );
        let config = config.replace("999", "1000");
        let config = parse(&config).unwrap();
        assert_eq!(config.gateway.limits.max_buffered_bytes, 1000);
    }

    const ROUTE_M: &str = r#"
[[routes]]
name = "r"
match = { model = "m" }
backends = ["a"]
"#;

    #[test]
    fn redis_speaks_tls_with_rediss_and_a_bad_url_is_refused_without_its_password() {
        let redis = |extra: &str| format!("[gateway.redis]\n{extra}\n{}", with_backends(ROUTE_M));
        let config = parse(&redis(
            "url = \"rediss://:secret@redis:6380\"\ntls_ca_file = \"ca.pem\"",
        ))
        .unwrap();
        let settings = config.gateway.redis.unwrap();
        assert_eq!(settings.tls_ca_file.as_deref(), Some("ca.pem"));

        let errs = errors(&redis("url = \"redis://r:6379\"\ntls_ca_file = \"ca.pem\""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("gateway.redis.tls_ca_file"), "{errs:?}");

        let errs = errors(&redis("url = \"http://:hunter2@r:6379\""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("gateway.redis.url"), "{errs:?}");
        assert!(
            !errs[0].contains("hunter2"),
            "the error leaks the password: {errs:?}"
        );
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_seed_nodes_alone() {
        let redis = |table: &str| format!("[gateway.redis]\n{table}\n{}", with_backends(ROUTE_M));
        let config = parse(&redis(
            "cluster_nodes = [\"redis://a:7000\", \"redis://b:7001\"]",
        ))
        .unwrap();
        let settings = config.gateway.redis.unwrap();
        assert_eq!(settings.cluster_nodes.len(), 2);
        assert_eq!(settings.url, "redis://a:7000");

        let errs = errors(&redis(
            "url = \"redis://a:6379\"\ncluster_nodes = [\"redis://a:7000\"]",
        ));
        assert!(
            errs.iter().any(|e| e.starts_with("gateway.redis:")),
            "{errs:?}"
        );
        let errs = errors(&redis(
            "cluster_nodes = [\"redis://a:7000\", \"rediss://b:7001\"]",
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("gateway.redis.cluster_nodes[1]"),
            "{errs:?}"
        );
    }

    #[test]
    fn sentinel_needs_its_nodes_and_the_master_name_together() {
        let redis = |table: &str| format!("[gateway.redis]\n{table}\n{}", with_backends(ROUTE_M));
        let config = parse(&redis(
            "sentinel_nodes = [\"redis://s1:26379\", \"redis://s2:26379\"]\nsentinel_master = \"mymaster\"",
        ))
        .unwrap();
        let sentinel = config.gateway.redis.unwrap().sentinel.unwrap();
        assert_eq!(sentinel.master, "mymaster");
        assert_eq!(sentinel.nodes.len(), 2);

        let errs = errors(&redis("sentinel_nodes = [\"redis://s1:26379\"]"));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("gateway.redis.sentinel_master")),
            "{errs:?}"
        );
        let errs = errors(&redis(
            "url = \"redis://r:6379\"\nsentinel_nodes = [\"redis://s1:26379\"]\nsentinel_master = \"m\"",
        ));
        assert!(
            errs.iter().any(|e| e.starts_with("gateway.redis:")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_shared_rate_limit_needs_redis() {
        let route = r#"
[[routes]]
name = "r"
match = { model = "m" }
backends = ["a"]
rate_limit = { per_second = 10, shared = true }
"#;
        let errs = errors(&with_backends(route));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("routes[0].rate_limit.shared"),
            "{errs:?}"
        );

        let with_redis = format!(
            "[gateway.redis]\nurl = \"redis://127.0.0.1:6379\"\n{}",
            with_backends(route)
        );
        let config = parse(&with_redis).unwrap();
        assert!(config.routes[0].rate_limit.as_ref().unwrap().shared);
    }

    #[test]
    fn a_shadow_names_its_problems_by_path() {
        let text = with_backends(
            r#"
[[routes]]
name = "r"
match = { model = "m" }
backends = ["a"]
shadow = { backends = ["ghost"], fraction = 0.0 }

[[routes]]
name = "p"
match = { path_prefix = "/p" }
backends = ["a"]
shadow = { backends = ["b"], fraction = 0.1 }
"#,
        );
        assert_eq!(
            errors(&text),
            [
                r#"routes[0].shadow.backends[0]: unknown backend "ghost""#,
                "routes[0].shadow.fraction: 0 must be in (0, 1]",
                "routes[1].shadow: shadow traffic needs a model route (match = { model = ... })",
            ]
        );
    }
}
