//! The access log: one structured line per request, target
//! `cascadia::access`, written when the response head is ready.
//!
//! Fields: `method`, `path` (never the query, which may carry secrets),
//! `route`, `version`, `backend`, `region`, `stage` (`local`, `remote` or
//! `-` for a cascade route's provenance), `status`, `grpc_status` (for gRPC, when the answer carries it in its
//! head), `duration_ms` (to the
//! response head), `bytes_in` and `bytes_out` (the declared or known lengths;
//! `-` when a body streams without one), `request_id`, `peer` (the TCP
//! peer) and `protocol`. Every 4xx and 5xx is logged; successful requests
//! are sampled at `gateway.access_log.sample`.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, Method, Version};

use crate::snapshot::Snapshot;

/// What the access line says about one request.
pub(crate) struct AccessRecord<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub version: Version,
    pub route: Option<&'a str>,
    pub status: u16,
    pub elapsed: Duration,
    pub request_headers_length: Option<u64>,
    pub response_headers: Option<&'a HeaderMap>,
    /// The response body's exact size when known (a body the gateway made).
    pub response_body_length: Option<u64>,
    pub request_id: &'a str,
    pub peer: SocketAddr,
}

/// Writes the line, if the config and the sample say so.
pub(crate) fn log(snapshot: &Snapshot, record: AccessRecord<'_>) {
    let settings = snapshot.config.gateway.access_log;
    // Off in the config, or filtered out by `--log`: nothing below runs
    // (the filter check is a cached callsite lookup).
    if !settings.enabled || !tracing::enabled!(target: "cascadia::access", tracing::Level::INFO) {
        return;
    }
    if record.status < 400 && settings.sample < 1.0 && fastrand::f64() >= settings.sample {
        return;
    }
    let header = |name: &str| {
        record
            .response_headers
            .and_then(|h| h.get(name))
            .and_then(|v| v.to_str().ok())
    };
    let backend = header("x-cascadia-backend");
    let region = backend
        .and_then(|b| snapshot.pools.get(b))
        .map(|pool| pool.region());
    let bytes_out = header(http::header::CONTENT_LENGTH.as_str())
        .and_then(|n| n.parse().ok())
        .or(record.response_body_length);
    let bytes_in = record.request_headers_length;
    tracing::info!(
        target: "cascadia::access",
        method = %record.method,
        path = record.path,
        route = record.route.unwrap_or("-"),
        version = header("x-cascadia-version").unwrap_or("-"),
        backend = backend.unwrap_or("-"),
        region = region.unwrap_or("-"),
        stage = header("x-cascadia-stage").unwrap_or("-"),
        status = record.status,
        grpc_status = header("grpc-status").unwrap_or("-"),
        duration_ms = (record.elapsed.as_secs_f64() * 1e6).round() / 1e3,
        bytes_in = %bytes_in.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        bytes_out = %bytes_out.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        request_id = record.request_id,
        peer = %record.peer,
        protocol = ?record.version,
        "request"
    );
}
