//! Request deadlines: read from the client (`grpc-timeout` or
//! `x-request-timeout-ms`), capped by the route, and passed upstream as the
//! budget that remains for each attempt.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// A REST client's deadline in milliseconds; also sent upstream.
pub const X_REQUEST_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-request-timeout-ms");
/// gRPC's deadline header.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The client's own deadline, if it sent one (the shorter of the two
/// headers). Malformed values are ignored rather than refused: a deadline
/// is advice, and the route's default still applies.
pub fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let rest = headers
        .get(X_REQUEST_TIMEOUT_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let grpc = headers
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    match (rest, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses `grpc-timeout`: up to 8 digits and a unit (H M S m u n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Writes the remaining budget into the upstream request's headers, in the
/// form the upstream protocol reads.
pub fn propagate(headers: &mut HeaderMap, remaining: Duration, grpc: bool) {
    // Round up so a backend never sees a zero budget while some is left.
    let millis = remaining.as_micros().div_ceil(1000).min(99_999_999) as u64;
    headers.insert(X_REQUEST_TIMEOUT_MS, HeaderValue::from(millis));
    if grpc {
        if let Ok(value) = HeaderValue::try_from(format!("{millis}m")) {
            headers.insert(GRPC_TIMEOUT, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_either_header_and_takes_the_shorter() {
        let mut headers = HeaderMap::new();
        assert_eq!(client_timeout(&headers), None);
        headers.insert(X_REQUEST_TIMEOUT_MS, HeaderValue::from_static("250"));
        assert_eq!(client_timeout(&headers), Some(Duration::from_millis(250)));
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("100m"));
        assert_eq!(client_timeout(&headers), Some(Duration::from_millis(100)));
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
        assert_eq!(client_timeout(&headers), Some(Duration::from_millis(250)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "m", "123456789m", "10x", "-5m", "5"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
    }

    #[test]
    fn propagation_rounds_up_and_sets_grpc_timeout_for_grpc() {
        let mut headers = HeaderMap::new();
        propagate(&mut headers, Duration::from_micros(1500), true);
        assert_eq!(headers.get(X_REQUEST_TIMEOUT_MS).unwrap(), "2");
        assert_eq!(headers.get(GRPC_TIMEOUT).unwrap(), "2m");
    }
}
