//! The validated config: what the gateway reads on every request.
//!
//! Every value here has already been checked by `validate`, so readers never
//! re-check: a route's backends exist, a split's weights sum to 100, every
//! endpoint has a port.

use std::fmt::Write as _;
use std::net::SocketAddr;

use http::uri::Authority;
use http::HeaderName;

use crate::value::{Timeout, Weight};

/// One complete, valid config. The gateway swaps whole snapshots of this, so
/// a reload is never seen half-applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewaySettings,
    /// In file order; names are unique.
    pub backends: Vec<Backend>,
    /// In file order; names, models and path prefixes are unique.
    pub routes: Vec<Route>,
}

impl Config {
    /// The backend called `name`, if there is one.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// A one-screen, human-readable description of what is configured, so
    /// an operator can confirm what a file means without reading code.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let g = &self.gateway;
        let l = &g.limits;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "listen {}  admin {}", g.listen, g.admin_listen);
        if let Some(tls) = &g.tls {
            let clients = match (&tls.client_ca_file, tls.require_client_cert) {
                (None, _) => "no client certificates".to_owned(),
                (Some(ca), true) => format!("client certificates required ({})", ca.display()),
                (Some(ca), false) => {
                    format!("client certificates verified if sent ({})", ca.display())
                }
            };
            let _ = writeln!(
                out,
                "tls: {} / {}, reloaded on change every {}; {clients}",
                tls.cert_file.display(),
                tls.key_file.display(),
                tls.reload_interval
            );
        }
        let _ = writeln!(
            out,
            "limits: body {} B (buffered at most {} B in all), headers {} B / {} max; timeouts: header read {}, body read {}, body total {}, idle {}, write {}",
            l.max_body_bytes,
            l.max_buffered_bytes,
            l.max_header_bytes,
            l.max_headers,
            l.header_read_timeout,
            l.body_read_timeout,
            l.body_total_timeout,
            l.idle_timeout,
            l.write_timeout
        );
        let token = match &g.admin_token {
            Some(TokenSource::File(f)) => format!("token from file {f}"),
            Some(TokenSource::Env(v)) => format!("token from ${v}"),
            None if g.admin_insecure => "no token (insecure = true)".to_owned(),
            None => "no token (loopback only)".to_owned(),
        };
        let hosts = if g.admin_allowed_hosts.is_empty() {
            String::new()
        } else {
            format!("; also answers to {}", g.admin_allowed_hosts.join(", "))
        };
        let _ = writeln!(out, "admin: {token}{hosts}");
        let _ = writeln!(
            out,
            "shutdown: drain delay {:?}, drain timeout {}; access log {}",
            g.drain_delay,
            g.drain_timeout,
            if !g.access_log.enabled {
                "off".to_owned()
            } else if g.access_log.sample < 1.0 {
                format!(
                    "on, {:.0}% of successes sampled (every 4xx/5xx)",
                    100.0 * g.access_log.sample
                )
            } else {
                "on".to_owned()
            }
        );
        if !g.trusted_proxies.is_empty() {
            let _ = writeln!(
                out,
                "trusted proxies: {} network(s)",
                g.trusted_proxies.len()
            );
        }
        if let Some(redis) = &g.redis {
            let target = if !redis.cluster_nodes.is_empty() {
                format!("cluster of {} seed node(s)", redis.cluster_nodes.len())
            } else if let Some(sentinel) = &redis.sentinel {
                format!(
                    "master {:?} from {} sentinel(s)",
                    sentinel.master,
                    sentinel.nodes.len()
                )
            } else {
                redis.redacted_url()
            };
            let _ = writeln!(
                out,
                "redis: {target}, connect {} / response {}, keys {:?}{}; shared ejections {}",
                redis.connect_timeout,
                redis.response_timeout,
                redis.key_prefix,
                if redis.tls_ca_file.is_some() {
                    ", private CA"
                } else {
                    ""
                },
                if g.shared_ejections { "on" } else { "off" }
            );
        }
        if let Some(tracing) = &g.tracing {
            let _ = writeln!(
                out,
                "tracing: OTLP to {}, {:.0}% sampled, service {:?}",
                tracing.otlp_endpoint,
                100.0 * tracing.sample_ratio,
                tracing.service_name
            );
        }
        let _ = writeln!(out, "backends ({}):", self.backends.len());
        for b in &self.backends {
            let mut endpoints: Vec<String> = b
                .endpoints
                .iter()
                .map(|e| {
                    if e.weight == 1 {
                        e.authority.to_string()
                    } else {
                        format!("{} (w{})", e.authority, e.weight)
                    }
                })
                .collect();
            if let Some(dns) = &b.dns {
                endpoints.push(format!(
                    "every address of {}:{} (resolved every {})",
                    dns.host, dns.port, dns.resolve_interval
                ));
            }
            let _ = writeln!(
                out,
                "  {} [{}, {}] timeout {} connect {}: {}",
                b.name,
                b.region,
                b.protocol,
                b.timeout,
                b.connect_timeout,
                endpoints.join(", ")
            );
            let o = &b.outlier;
            let _ = writeln!(
                out,
                "    {}; outlier: eject after {} failures for {}..{}, at most {}%; hold-down {}",
                b.balancer,
                o.consecutive_failures,
                o.base_ejection,
                o.max_ejection,
                o.max_ejected_percent,
                b.hold_down
            );
            if let Some(h) = &b.health_check {
                let _ = writeln!(
                    out,
                    "    health check: {} every {}, timeout {}, rise {} / fall {}",
                    h.path, h.interval, h.timeout, h.rise, h.fall
                );
            }
            if let Some(tls) = &b.tls {
                let verify = if tls.insecure_skip_verify {
                    "certificates NOT verified".to_owned()
                } else {
                    format!("CA {}", tls.ca_file.as_deref().unwrap_or("of the system"))
                };
                let identity = tls
                    .cert_file
                    .as_deref()
                    .map_or("no client certificate".to_owned(), |c| {
                        format!("client certificate {c}")
                    });
                let name = tls
                    .server_name
                    .as_deref()
                    .map_or("each endpoint's host".to_owned(), |n| format!("{n:?}"));
                let _ = writeln!(out, "    tls: {verify}; {identity}; server name {name}");
            }
        }
        let _ = writeln!(out, "routes ({}):", self.routes.len());
        for r in &self.routes {
            let matcher = match &r.matcher {
                RouteMatch::Model(m) => format!("model {m:?}"),
                RouteMatch::PathPrefix(p) => format!("path prefix {p:?}"),
            };
            let key = match &r.key_header {
                Some(h) => format!("key {h}"),
                None => "key none (random split)".to_owned(),
            };
            let timeout = match r.timeout {
                Some(t) => format!(", timeout {t}"),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}: {matcher}, {key}, force {}{timeout}",
                r.name, r.force_header
            );
            let mut guards = vec![format!(
                "retries {} (budget {}% + {}/s)",
                r.retries.attempts, r.retries.budget_percent, r.retries.min_per_second
            )];
            if let Some(limit) = &r.rate_limit {
                guards.push(format!(
                    "rate limit {}/s burst {}{}{}",
                    limit.per_second,
                    limit.burst,
                    limit
                        .key_header
                        .as_ref()
                        .map_or(String::new(), |h| format!(" per {h}")),
                    if limit.shared { ", shared" } else { "" }
                ));
            }
            if let Some(n) = r.max_concurrency {
                guards.push(format!("max {n} in flight"));
            }
            if let Some(h) = &r.hedge {
                guards.push(format!(
                    "hedge at p{} ({}..{}, budget {}%)",
                    h.percentile, h.floor, h.cap, h.budget_percent
                ));
            }
            if let Some(slo) = r.latency_slo {
                guards.push(format!("latency SLO {slo}"));
            }
            let _ = writeln!(out, "    {}", guards.join("; "));
            if let Some(c) = &r.cascade {
                let _ = writeln!(
                    out,
                    "    cascade: {} ({} {}), input {}, local below {} and above {}{}, output {:?}, stage 2 down: {}, audit {:.1}%",
                    c.model_path,
                    c.model.name,
                    c.model.version,
                    c.input.as_deref().unwrap_or("the first"),
                    c.thresholds.accept_below(),
                    c.thresholds.reject_above(),
                    if c.confirm_positives { " (positives confirmed by stage 2)" } else { "" },
                    c.output,
                    match c.on_unavailable {
                        OnUnavailable::Degrade => "answer from stage 1, marked",
                        OnUnavailable::Error => "503",
                    },
                    100.0 * c.audit_fraction
                );
                if let Some(cal) = &c.calibration {
                    let a = &cal.artifact;
                    let _ = writeln!(
                        out,
                        "    calibration: {} (recall drop ≤ {} at confidence {}, bound {:.4}, local share {:.3}, {} rows, {})",
                        cal.path,
                        a.target.max_recall_drop,
                        a.target.confidence,
                        a.result.recall_drop_bound,
                        a.result.local_share,
                        a.data.rows,
                        a.created
                    );
                }
                if let Some(w) = &c.watch {
                    let _ = writeln!(
                        out,
                        "    watch: recall drop ≤ {} at confidence {}, windows of {} positives × {}, on breach: {}",
                        w.settings.alpha,
                        1.0 - w.settings.delta,
                        w.settings.window_positives,
                        w.settings.windows,
                        w.policy.label()
                    );
                }
                if let Some(d) = &c.drift {
                    let _ = writeln!(
                        out,
                        "    drift: PSI over {} rows (in {} slices), drifted above {}",
                        d.window_rows, d.slices, d.threshold
                    );
                }
                if let Some(b) = &c.batch {
                    let _ = writeln!(
                        out,
                        "    batch: escalations combined up to {} rows, waiting at most {} or {:.0}% of the remaining deadline",
                        b.max_rows,
                        b.max_wait,
                        100.0 * b.deadline_share
                    );
                }
                if let Some(r) = &c.record {
                    let _ = writeln!(
                        out,
                        "    record: {:.1}% of sampled rows to {} (at most {})",
                        100.0 * r.sample,
                        r.sink,
                        r.max_rows
                    );
                }
                if let Some(e) = &c.entity {
                    let key = match &e.key {
                        EntityKey::Header(h) => format!("header {h}"),
                        EntityKey::Input(i) => format!("input {i:?}"),
                    };
                    let _ = writeln!(
                        out,
                        "    features: {} from {} by {key}, ttl {} (misses {}), timeout {}",
                        e.features.join(", "),
                        e.store,
                        e.ttl,
                        e.negative_ttl,
                        e.timeout
                    );
                }
            }
            if let Some(sh) = &r.shadow {
                let _ = writeln!(
                    out,
                    "    shadow: {:.1}% to {} ({}), at most {} in flight, timeout {}",
                    100.0 * sh.fraction,
                    sh.version,
                    sh.backends.join(" > "),
                    sh.max_in_flight,
                    sh.timeout
                );
            }
            if let Some(ro) = &r.rollout {
                let _ = writeln!(
                    out,
                    "    rollout: {} through {:?}%, each step {} and {} answers; p95 {}x, p99 {}x + {}, errors +{:.1}%",
                    ro.canary,
                    ro.steps,
                    ro.min_dwell,
                    ro.min_requests,
                    ro.max_p95_ratio,
                    ro.max_p99_ratio,
                    ro.latency_slack,
                    100.0 * ro.max_error_rate_increase
                );
            }
            for t in r.split.targets() {
                let mut upstream = String::new();
                if let Some(m) = &t.upstream_model {
                    let _ = write!(upstream, " as model {m:?}");
                }
                if let Some(v) = &t.upstream_version {
                    let _ = write!(upstream, " version {v:?}");
                }
                let _ = writeln!(
                    out,
                    "    {:>4} {} -> {}{upstream}",
                    t.weight.to_string(),
                    t.version,
                    t.backends.join(" > ")
                );
            }
        }
        out
    }
}

/// Where the gateway listens, and what it accepts from clients.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Client traffic. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Health, metrics and reload. Default `127.0.0.1:9901`; loopback by
    /// default because it can change what the gateway serves.
    pub admin_listen: SocketAddr,
    pub limits: Limits,
    /// The shared feature cache's second tier; `None` runs on the
    /// in-process tier alone.
    pub redis: Option<RedisSettings>,
    /// Where the admin API's bearer token comes from; `None` leaves admin
    /// mutations open (the admin listener is loopback by default).
    pub admin_token: Option<TokenSource>,
    /// OpenTelemetry trace export; `None` (the default) turns tracing off.
    pub tracing: Option<TracingSettings>,
    /// Serve the admin API on a non-loopback `admin_listen` without a
    /// token. Default false: such a config is refused.
    pub admin_insecure: bool,
    /// Host names (besides IP literals and `localhost`) the admin API
    /// answers to; any other `Host` is refused, against DNS rebinding.
    /// Lowercase. Default none.
    pub admin_allowed_hosts: Vec<String>,
    /// Peers whose `X-Forwarded-For`, `Forwarded` and `X-Forwarded-*`
    /// are passed on (with the peer appended). From anyone else those
    /// headers are dropped, since any client can forge them. Default none.
    pub trusted_proxies: Vec<IpNet>,
    /// Accept a config with no routes. Default false: an empty or cut-short
    /// file (an in-place write, a failed template render, `> file`) is
    /// rejected instead of turning every request into a 404.
    pub allow_no_routes: bool,
    /// With `[gateway.redis]`: an endpoint one replica ejects is avoided by
    /// every replica until that ejection ends. Default false (each replica
    /// judges endpoints by its own attempts).
    pub shared_ejections: bool,
    /// After SIGTERM: how long the gateway goes on serving, with readiness
    /// already failing, so the load balancer stops sending before the
    /// listener closes. Default 5s; `"0s"` stops at once.
    pub drain_delay: std::time::Duration,
    /// Then: how long in-flight requests may take to finish. Default 30s.
    pub drain_timeout: Timeout,
    /// TLS on `listen`; `None` serves plaintext (h2 by prior knowledge).
    pub tls: Option<ListenerTls>,
    /// One line per request, target `cascadia::access`.
    pub access_log: AccessLog,
}

/// The access log: one structured line per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLog {
    /// Default true.
    pub enabled: bool,
    /// Share of successful (below 400) requests logged, 0..=1; every
    /// 4xx and 5xx is logged. Default 1.0.
    pub sample: f64,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            sample: 1.0,
        }
    }
}

/// TLS on the client listener. The certificate and key are the gateway's
/// to watch: read at start-up and again whenever they change, without a
/// config reload (cert-manager and Kubernetes secrets rotate them in place).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first. Relative paths are relative to
    /// the config file once loaded from one.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key_file: std::path::PathBuf,
    /// PEM CA certificates client certificates must chain to; `None`
    /// asks no client for one.
    pub client_ca_file: Option<std::path::PathBuf>,
    /// With `client_ca_file`: refuse a client without a certificate.
    /// Default true; false verifies a certificate only when one is sent.
    pub require_client_cert: bool,
    /// How often the files are looked at for a change. Default 1s.
    pub reload_interval: Timeout,
}

/// TLS to a backend's endpoints. The files are read with the config, so a
/// renewed client certificate applies at the next reload.
#[derive(Clone, PartialEq)]
pub struct UpstreamTls {
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate (PEM chain) and key for mTLS; both or neither.
    pub cert_file: Option<String>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_file: Option<String>,
    pub key_pem: Option<Secret>,
    /// The name sent as SNI and checked against the certificate; default
    /// the endpoint's host.
    pub server_name: Option<String>,
    /// Accept any certificate. Default false; true is logged as a warning
    /// at start-up and whenever the backend's TLS settings change, since it
    /// gives up what TLS is for.
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("server_name", &self.server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish_non_exhaustive()
    }
}

/// OpenTelemetry traces, exported over OTLP/gRPC (`http://`, or `https://`
/// with rustls). Read at start-up: a
/// change needs a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// Share of new traces recorded, 0.0 to 1.0. A request that arrives
    /// with a sampled `traceparent` is always recorded. Default 1.0.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans. Default `cascadia`.
    pub service_name: String,
    /// With an `https://` endpoint: a PEM file of the CAs to trust instead
    /// of the system's, relative to the config file.
    pub tls_ca_file: Option<String>,
    /// That file's bytes, read with the config.
    pub tls_ca_pem: Option<Vec<u8>>,
}

/// An IP network, `addr/prefix` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse().ok()?, Some(prefix.parse::<u8>().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 peer counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(V6(v6), V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (V4(net), V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (V6(net), V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod ipnet_tests {
    use super::IpNet;

    #[test]
    fn networks_contain_what_their_prefix_says() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "mapped v4"
        );
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(IpNet::parse(bad).is_none(), "{bad}");
        }
    }
}

/// Bounds on what one client request may cost the gateway before routing.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; beyond it the client gets 413. Default 4 MiB.
    pub max_body_bytes: u64,
    /// Most request bytes the gateway holds in memory at once, over every
    /// request (bodies read whole, decompressed or converted); a request
    /// that would pass it gets 503 with `Retry-After`. Default 256 MiB, at
    /// least `max_body_bytes`.
    pub max_buffered_bytes: u64,
    /// Largest sum of header name and value bytes; beyond it 431. Default
    /// 16384, at least 1024.
    pub max_header_bytes: usize,
    /// Most headers in one request; beyond it 431. Default 100, `1..=1000`.
    pub max_headers: usize,
    /// How long a client may take to send its headers; then 408 and the
    /// connection closes, so slow clients cannot hold connections. Default 10s.
    pub header_read_timeout: Timeout,
    /// Longest wait for the next piece of a request body; then 408 (slow
    /// bodies). Default 30s.
    pub body_read_timeout: Timeout,
    /// Longest time for a whole request body, however steadily it comes;
    /// then 408. Default 60s.
    pub body_total_timeout: Timeout,
    /// How long a client connection (HTTP/1.1 keep-alive or h2) may sit with
    /// no request in flight before the gateway closes it (h2 with GOAWAY).
    /// Default 60s.
    pub idle_timeout: Timeout,
    /// How long a write to an HTTP/1.1 client may stay blocked (the client
    /// stopped reading) before the connection is closed and the response,
    /// with its route slot, dropped. Default 30s.
    pub write_timeout: Timeout,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Timeout::from_secs_unchecked(10),
            body_read_timeout: Timeout::from_secs_unchecked(30),
            body_total_timeout: Timeout::from_secs_unchecked(60),
            idle_timeout: Timeout::from_secs_unchecked(60),
            write_timeout: Timeout::from_secs_unchecked(30),
        }
    }
}

/// How the gateway speaks to a backend's endpoints.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1. The default, since every model server speaks it.
    #[default]
    Http1,
    /// HTTP/2 without TLS (prior knowledge), needed for gRPC upstreams.
    H2c,
}

impl std::fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        })
    }
}

/// One endpoint pool, in one region, serving one model version.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Unique; what routes refer to.
    pub name: String,
    /// Free-form (e.g. `us-east`); used for locality and in metrics labels.
    pub region: String,
    pub protocol: UpstreamProtocol,
    /// Never empty unless `dns` is set; then empty (the addresses the name
    /// resolves to are the endpoints).
    pub endpoints: Vec<Endpoint>,
    /// A DNS name whose addresses are the endpoints (a headless Service),
    /// re-resolved every `resolve_interval`.
    pub dns: Option<DnsDiscovery>,
    /// Deadline for the upstream response; then 504. Default 2s.
    pub timeout: Timeout,
    /// Deadline for opening a connection. Default 1s.
    pub connect_timeout: Timeout,
    /// How an endpoint is picked within the pool. Default `p2c-ewma`.
    pub balancer: Balancer,
    /// Active health checks; `None` relies on passive outlier detection only.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection (always on).
    pub outlier: OutlierDetection,
    /// How long a recovered endpoint must stay healthy before failover
    /// sends traffic back to it. Default 5s.
    pub hold_down: Timeout,
    /// TLS to the endpoints (`https`, or h2 over TLS with `h2c`'s framing);
    /// `None` is plaintext.
    pub tls: Option<UpstreamTls>,
}

/// Endpoints from DNS: every address `host` resolves to, at `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    pub host: String,
    pub port: u16,
    /// How often the name is resolved again. Default 5s.
    pub resolve_interval: Timeout,
}

impl DnsDiscovery {
    /// `host:port`, as the config gives it.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// How an endpoint is picked within a pool.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Balancer {
    /// Power of two choices over peak-EWMA latency × (in-flight + 1).
    #[default]
    P2cEwma,
    /// Weighted round-robin.
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
}

impl std::fmt::Display for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balancer::P2cEwma => "p2c-ewma",
            Balancer::RoundRobin => "round-robin",
            Balancer::LeastRequest => "least-request",
        })
    }
}

/// Active health checking of each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path probed with `GET`. Default `/v2/health/ready` (OIP readiness).
    pub path: String,
    /// Time between probes. Default 1s.
    pub interval: Timeout,
    /// Deadline for one probe. Default 500ms.
    pub timeout: Timeout,
    /// Consecutive passes that mark an unhealthy endpoint healthy. Default 2.
    pub rise: u32,
    /// Consecutive failures that mark a healthy endpoint unhealthy. Default 2.
    pub fall: u32,
}

/// Passive outlier detection: endpoints that fail requests are ejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive failed attempts that eject an endpoint. Default 3.
    pub consecutive_failures: u32,
    /// First ejection's length; doubles with each repeat ejection. Default 1s.
    pub base_ejection: Timeout,
    /// Longest ejection. Default 30s.
    pub max_ejection: Timeout,
    /// At most this share of a pool is ejected at once. Default 100: a
    /// region whose endpoints all fail must be able to fail over. Lower it
    /// for single-region pools where partial capacity beats none.
    pub max_ejected_percent: u32,
    /// Which answers count as the endpoint's failures. Default
    /// [`FailureStatuses::Gateway`].
    pub failure_statuses: FailureStatuses,
}

/// Which HTTP answers of an endpoint count toward its ejection (besides
/// connect errors, resets and timeouts, which always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureStatuses {
    /// 502, 503 and 504: the server or what is behind it is unwell. A 500
    /// is often the request's own fault (a model server's "query of
    /// death": MLServer answers a malformed tensor with 500), and one
    /// client repeating it must not eject healthy endpoints. Envoy keeps
    /// `consecutive_gateway_failure` apart for the same reason.
    #[default]
    Gateway,
    /// Every 5xx, 500 included.
    Any5xx,
}

impl FailureStatuses {
    /// Whether an answer with `status` counts against the endpoint.
    pub fn counts(self, status: http::StatusCode) -> bool {
        match self {
            Self::Gateway => matches!(status.as_u16(), 502..=504),
            Self::Any5xx => status.is_server_error(),
        }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection: Timeout::from_secs_unchecked(1),
            max_ejection: Timeout::from_secs_unchecked(30),
            max_ejected_percent: 100,
            failure_statuses: FailureStatuses::Gateway,
        }
    }
}

/// Hedging: a second attempt when the first is slow; the first answer wins.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgePolicy {
    /// Hedge once the first attempt is slower than this percentile of its
    /// endpoint's recent responses (50..=99.9). Default 95.
    pub percentile: f64,
    /// Never hedge sooner than this. Default 5ms.
    pub floor: Timeout,
    /// Always hedge by this, and before enough latency samples exist.
    /// Default 100ms.
    pub cap: Timeout,
    /// Hedges may add at most this share of the route's requests. Default 10.
    pub budget_percent: u32,
}

/// A cascade route's stage 1 and how it hands over to stage 2.
#[derive(Debug, Clone)]
pub struct Cascade {
    /// Path of the model artifact, as written in the config.
    pub model_path: String,
    /// The loaded model; reloaded with the config.
    pub model: std::sync::Arc<cascadia_cascade::LogisticModel>,
    /// Input tensor holding all features as `[rows, features]`. `None`:
    /// one input per feature, named after it.
    pub input: Option<String>,
    pub thresholds: cascadia_cascade::Thresholds,
    /// Send confident positives to stage 2 too. Default false.
    pub confirm_positives: bool,
    /// Name of the probability output, as stage 2 names it. Default
    /// `probability`.
    pub output: String,
    /// What to do when stage 2 cannot answer.
    pub on_unavailable: OnUnavailable,
    /// Share of confident requests also sent to stage 2 in the background
    /// to measure disagreement, 0..=1. Default 0.
    pub audit_fraction: f64,
    /// Sent with every escalation as the request's `priority` parameter,
    /// which Triton's scheduler reads (1 is the highest); `None` (default)
    /// sends none, and the server's default applies.
    pub priority: Option<u32>,
    /// Most rows per request. Default 1024.
    pub max_batch: usize,
    /// Value for a feature the request does not carry; `None` (default)
    /// makes a missing feature a 400.
    pub missing_feature_default: Option<f64>,
    /// Entity features looked up in the feature cache / store.
    pub entity: Option<EntityFeatures>,
    /// Columns of the probability output: 1 (the positive class) or 2
    /// (`[negative, positive]`, like scikit-learn's `predict_proba`).
    /// Default 1.
    pub output_columns: usize,
    /// Datatype of the probability output, the same whichever stage
    /// answered: `FP64` (default, what scikit-learn's `predict_proba`
    /// gives) or `FP32`.
    pub output_datatype: cascadia_cascade::ProbabilityType,
    /// The calibration the thresholds came from, when the route names one
    /// instead of hand-set thresholds.
    pub calibration: Option<Calibration>,
    /// The recall-drop guarantee checked online from audits.
    pub watch: Option<Watch>,
    /// PSI of each feature against the model's training reference.
    pub drift: Option<Drift>,
    /// A sample of rows with both stages' scores, written for `cascadia
    /// calibrate`.
    pub record: Option<Record>,
    /// Escalations of concurrent requests combined into one stage-2 call.
    pub batch: Option<Batching>,
}

/// `[routes.cascade.batch]`: escalation micro-batching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    /// Rows per combined stage-2 call at most. Default 64.
    pub max_rows: usize,
    /// How long the first request waits for others. Default 2ms.
    pub max_wait: Timeout,
    /// The wait is also at most this share of the first request's
    /// remaining deadline. Default 0.1.
    pub deadline_share: f64,
}

/// A calibration artifact a route's band comes from.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// As written in the config.
    pub path: String,
    pub artifact: cascadia_cascade::calibrate::Artifact,
}

/// What the route does when the online bound says the guarantee broke.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WatchPolicy {
    /// Metrics, the admin API and a log line; the band stays.
    Alert,
    /// Multiply `accept_below` by `factor` at each breached window (so more
    /// rows escalate), never below `floor`.
    Tighten { factor: f64, floor: f64 },
    /// Escalate every row until the config changes.
    EscalateAll,
}

impl WatchPolicy {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Tighten { .. } => "tighten",
            Self::EscalateAll => "escalate_all",
        }
    }
}

/// `[routes.cascade.watch]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watch {
    /// Default: the calibration's.
    pub settings: cascadia_cascade::watch::WatchSettings,
    pub policy: WatchPolicy,
}

/// `[routes.cascade.drift]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// Rows the PSI is computed over. Default 2000.
    pub window_rows: u64,
    /// The window moves on every `window_rows / slices` rows. Default 4.
    pub slices: usize,
    /// PSI above which a feature is reported drifted. Default 0.2.
    pub threshold: f64,
}

/// `[routes.cascade.record]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Where the rows go.
    pub sink: RecordSink,
    /// Share of sampled (audited or escalated) rows written. Default 1.
    pub sample: f64,
    /// File: rows written at most, then recording stops. Redis stream:
    /// the stream's length, trimmed (approximately) to the newest.
    /// Default 100000.
    pub max_rows: u64,
}

/// Where recorded rows go.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordSink {
    /// A JSON Lines file, relative to the config file.
    File(std::path::PathBuf),
    /// A Redis stream (`XADD key MAXLEN ~ max_rows * row <json>`) on
    /// `[gateway.redis]`: every replica's sample in one place.
    RedisStream(String),
}

impl std::fmt::Display for RecordSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::RedisStream(key) => write!(f, "Redis stream {key}"),
        }
    }
}

/// Features of an entity (a sender domain, a user), looked up by key
/// through the feature cache instead of sent by the client.
#[derive(Debug, Clone)]
pub struct EntityFeatures {
    /// Where the entity key comes from.
    pub key: EntityKey,
    /// Model features filled from the store (a subset of the model's).
    pub features: Vec<String>,
    /// The backend serving `GET /features/{key}?features=a,b`.
    pub store: String,
    /// How long a found entity is cached. Default 60s.
    pub ttl: Timeout,
    /// How long an unknown entity is cached. Default 10s.
    pub negative_ttl: Timeout,
    /// Entities kept in the in-process tier. Default 10000.
    pub l1_capacity: usize,
    /// Deadline for one feature-store fetch. Default 100ms.
    pub timeout: Timeout,
}

/// Where a request carries its entity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityKey {
    /// A header, one entity for the whole request.
    Header(HeaderName),
    /// A BYTES input tensor, one entity per row.
    Input(String),
}

/// Where a secret is read from. The value itself is read by `load_file`,
/// never stored in the config model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file (relative to the config file), trimmed.
    File(String),
    /// An environment variable.
    Env(String),
}

/// A secret that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret's bytes, for comparing.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The Redis tier of the feature cache.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`, maybe with `user:password@`: never log it,
    /// log [`RedisSettings::redacted_url`].
    pub url: String,
    /// Default 100ms.
    pub connect_timeout: Timeout,
    /// Bound on every Redis call; past it the lookup falls back to the
    /// feature store. Default 20ms.
    pub response_timeout: Timeout,
    /// Prefix of every key. Default `cascadia:features:`.
    pub key_prefix: String,
    /// With `rediss://`: a PEM file of the CA certificates to trust instead
    /// of the system's, relative to the config file.
    pub tls_ca_file: Option<String>,
    /// That file's bytes, read with the config (so a changed CA is a
    /// changed config).
    pub tls_ca_pem: Option<Vec<u8>>,
    /// A Redis Cluster's seed nodes (`redis://` or `rediss://` URLs); empty
    /// for one server at `url`.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel: the sentinels' URLs and the name of the master they
    /// watch; the gateway asks them where the master is, and asks again
    /// after a failover.
    pub sentinel: Option<SentinelSettings>,
}

/// Where a Sentinel-managed master is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// `redis://host:26379` of each sentinel.
    pub nodes: Vec<String>,
    /// The master's name in the sentinels' config (`sentinel monitor NAME ...`).
    pub master: String,
}

impl RedisSettings {
    /// The URL with its password (or lone secret) replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("tls_ca_file", &self.tls_ca_file)
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>(),
            )
            .field(
                "sentinel_master",
                &self.sentinel.as_ref().map(|s| &s.master),
            )
            .finish()
    }
}

/// `scheme://user:secret@host/…` as `scheme://user:***@host/…`
/// (`scheme://secret@host` as `scheme://***@host`): what a log may show.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{}{shown}{}", &url[..scheme_end], &rest[at..])
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "redis://app:hunter2@redis:6379/0",
                "redis://app:***@redis:6379/0",
            ),
            ("rediss://:hunter2@redis:6380", "rediss://:***@redis:6380"),
            ("redis://hunter2@redis", "redis://***@redis"),
            ("redis://a:p@ss:w@rd@host/1", "redis://a:***@host/1"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
            if shown != url {
                assert!(!redact_url(url).contains("hunter2"));
            }
        }
    }
}

/// What a cascade does when stage 2 is down or out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Answer from stage 1, marked `x-cascadia-degraded`.
    Degrade,
    /// Answer 503.
    Error,
}

/// A token-bucket rate limit (GCRA, via governor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second, ≥ 1.
    pub per_second: u32,
    /// Burst size, ≥ 1. Default: `per_second`.
    pub burst: u32,
    /// Header naming the client (an API key). Client identity never comes
    /// from `x-forwarded-for`, which any client can forge.
    pub key_header: Option<HeaderName>,
    /// Share the limit between every gateway replica through Redis (GCRA
    /// in one Lua call); while Redis is unreachable each replica enforces
    /// it locally. Needs `gateway.redis`. Default false.
    pub shared: bool,
}

/// Retries of failed attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, first one included (1 = no retries). Default 2.
    pub attempts: u32,
    /// Retries may add at most this share of the route's requests. Default 20.
    pub budget_percent: u32,
    /// Retries always allowed per second regardless of the share. Default 10.
    pub min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20,
            min_per_second: 10,
        }
    }
}

/// One upstream server of a backend.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`, always with an explicit port and no userinfo.
    pub authority: Authority,
    /// Relative share of the backend's traffic. Default 1, at least 1.
    pub weight: u32,
}

/// Which requests a route takes, and how it splits them across versions.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique; used in logs and metrics labels.
    pub name: String,
    pub matcher: RouteMatch,
    /// Header whose value makes the split sticky (same value, same version).
    /// `None` splits each request at random.
    pub key_header: Option<HeaderName>,
    /// Header a client may set to a version name to bypass the split.
    /// Default `x-cascadia-version`.
    pub force_header: HeaderName,
    /// Overrides the backends' `timeout` for this route.
    pub timeout: Option<Timeout>,
    pub split: Split,
    /// Whether a failed request may be sent again. Default: true for model
    /// routes (inference has no side effects), false for prefix routes.
    pub idempotent: bool,
    /// Most requests of this route in flight at once; beyond it requests
    /// get a fast 503 with `Retry-After` instead of queueing. `None`: no
    /// limit.
    pub max_concurrency: Option<usize>,
    /// Requests per second allowed, per API key when `key_header` is set,
    /// else for the whole route.
    pub rate_limit: Option<RateLimit>,
    /// How failed attempts are retried.
    pub retries: RetryPolicy,
    /// Hedging of slow attempts; `None` (the default) never hedges.
    pub hedge: Option<HedgePolicy>,
    /// A region whose recent p95 is above this counts as degraded and
    /// keeps only a trickle of traffic while another region meets it.
    pub latency_slo: Option<Timeout>,
    /// Makes the route a two-stage cascade: stage 1 in the gateway, the
    /// route's split as stage 2.
    pub cascade: Option<Cascade>,
    /// Mirrors a share of the route's inference calls to a candidate and
    /// compares the answers; model routes only.
    pub shadow: Option<Shadow>,
    /// Automated canary analysis for a two-version split.
    pub rollout: Option<Rollout>,
}

/// A rollout plan: the canary's weight goes through `steps`, each held
/// for `min_dwell` and `min_requests`, judged against stable over the same
/// window; promoted when every check passes, rolled back (weight 0) when
/// one fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The canary's version name; the split's other version is stable.
    pub canary: String,
    /// Canary weights in percent, rising, ending at 100. Default
    /// `[1, 5, 25, 50, 100]`.
    pub steps: Vec<u32>,
    /// Least time on a step before it is judged. Default 60s.
    pub min_dwell: Timeout,
    /// Least canary answers on a step before it is judged. Default 100.
    pub min_requests: u64,
    /// How often the plan is evaluated. Default 1s.
    pub interval: Timeout,
    /// Canary 5xx share may exceed stable's by at most this. Default 0.01.
    pub max_error_rate_increase: f64,
    /// Canary p95 / p99 may be at most this multiple of stable's (plus
    /// `latency_slack`). Defaults 1.5 and 2.0.
    pub max_p95_ratio: f64,
    pub max_p99_ratio: f64,
    /// Absolute latency allowance on top of the ratios, so microsecond
    /// noise on a fast stable cannot fail a canary. Default 5ms.
    pub latency_slack: Timeout,
    /// Most class disagreement between canary and stable, read from the
    /// route's shadow comparison (pair primary = canary). Default 0.05;
    /// judged only when the route has a `[routes.shadow]`.
    pub max_disagreement: f64,
    /// Where the plan's state survives restarts when no Redis is
    /// configured; relative to the config file. Default
    /// `.cascadia-rollout-{route}.json` beside it.
    pub state_file: Option<String>,
}

/// Shadow traffic: a candidate version that sees a copy of some requests
/// and whose answers are compared with what the client got, never sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// The candidate's name in reports and metrics. Default `shadow`.
    pub version: String,
    /// Backend names, in preference order.
    pub backends: Vec<String>,
    /// Share of requests mirrored, in (0, 1].
    pub fraction: f64,
    /// Most mirrors in flight at once; past it, mirrors are dropped. Also,
    /// no mirror starts while the route is over half its `max_concurrency`.
    /// Default 32.
    pub max_in_flight: usize,
    pub upstream_model: Option<String>,
    pub upstream_version: Option<String>,
    /// Bound on one mirror, answer included. Default 1s.
    pub timeout: Timeout,
}

/// What a route matches on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteMatch {
    /// An OIP model name: REST `/v2/models/{model}/...` and gRPC requests
    /// whose `model_name` is this.
    Model(String),
    /// Any request whose path starts with this (always starts with `/`).
    PathPrefix(String),
}

/// A route's traffic split: versions whose weights sum to exactly 100.
///
/// The targets are private so that a `Split` can only come from validation,
/// which is what makes "sums to 100" something readers can rely on.
#[derive(Debug, Clone)]
pub struct Split {
    targets: Vec<SplitTarget>,
}

impl Split {
    pub(crate) fn new(targets: Vec<SplitTarget>) -> Self {
        Split { targets }
    }

    /// The versions, in file order.
    pub fn targets(&self) -> &[SplitTarget] {
        &self.targets
    }

    /// The target for `version`, as named by the force header.
    pub fn target(&self, version: &str) -> Option<&SplitTarget> {
        self.targets.iter().find(|t| t.version == version)
    }

    /// Sum of the weights; 100 for any validated split.
    pub fn total_weight(&self) -> u32 {
        self.targets.iter().map(|t| t.weight.get()).sum()
    }
}

/// One version in a split.
#[derive(Debug, Clone)]
pub struct SplitTarget {
    /// Unique within the split; what the force header names.
    pub version: String,
    pub weight: Weight,
    /// Names of `[[backends]]`, in preference order for failover. Never empty.
    pub backends: Vec<String>,
    /// Model name to send upstream, if it differs from the matched one.
    pub upstream_model: Option<String>,
    /// OIP model version to send upstream (`/v2/models/{m}/versions/{v}`).
    pub upstream_version: Option<String>,
}
