//! Header rules for proxying: hop-by-hop removal (RFC 9110 §7.6.1), the
//! `forwarded` / `x-forwarded-*` chain, request ids, and the head limits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Carries the request id upstream and back to the client.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Names the split version that served a response.
pub const X_CASCADIA_VERSION: HeaderName = HeaderName::from_static("x-cascadia-version");
/// Names the backend (from config, never an address) that served a response.
pub const X_CASCADIA_BACKEND: HeaderName = HeaderName::from_static("x-cascadia-backend");
/// How many attempts a response took, when more than one.
pub const X_CASCADIA_ATTEMPTS: HeaderName = HeaderName::from_static("x-cascadia-attempts");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest client-supplied request id we pass on; longer ones are replaced
/// so a client cannot make us log or forward arbitrary blobs.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Returns the client's request id when it is short printable ASCII,
/// otherwise a fresh one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(X_REQUEST_ID) {
        let bytes = value.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return value.clone();
        }
    }
    generate_request_id()
}

/// A process-unique id: a random per-process prefix and a counter, so ids
/// are unique without a syscall or a lock per request.
fn generate_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u32(..));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix:08x}-{n:012x}`, written by hand: the formatting machinery
    // cost more than the rest of the request's header work.
    let mut id = [b'-'; 21];
    write_hex(&mut id[..8], u64::from(prefix));
    write_hex(&mut id[9..], n);
    HeaderValue::from_bytes(&id).expect("hex digits and a dash are a valid header value")
}

/// Writes the low `out.len()` hex digits of `value`, zero-padded.
fn write_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// True for gRPC requests (any `application/grpc*` content type).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Counts header fields and their total size (names plus values), the way
/// the configured limits define them.
pub fn head_size(headers: &HeaderMap) -> (usize, usize) {
    let count = headers.len();
    let size = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (count, size)
}

/// The fixed hop-by-hop headers of RFC 9110 §7.6.1 (and the legacy ones).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` is in [`HOP_BY_HOP`]. A `match` on the name compiles to a
/// switch on its length and one comparison, where comparing it with each
/// of the nine would take nine.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "proxy-authorization" => Some(4),
        "te" => Some(5),
        "trailer" => Some(6),
        "transfer-encoding" => Some(7),
        "upgrade" => Some(8),
        _ => None,
    }
}

/// Where `connection` and `te` are in [`HOP_BY_HOP`].
const CONNECTION_AT: usize = 0;
const TE_AT: usize = 5;

/// Removes hop-by-hop headers: the fixed list from RFC 9110 and every
/// header the `connection` header names. `te: trailers` is kept on
/// requests because gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // One pass over the names finds which of the nine are here; only those
    // are removed (each removal hashes). Most heads carry `connection` at
    // most.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[CONNECTION_AT] {
        // Names listed in `connection` are hop-by-hop too. The common
        // tokens (`keep-alive`, `close`) name no other header, so nothing
        // is allocated for them.
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                let fixed = HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(token));
                if token.is_empty() || fixed || token.eq_ignore_ascii_case("close") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    let te_trailers = keep_te_trailers
        && present[TE_AT]
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends `ip`; an IPv6 one `"[…]"`-quoted when `quoted_v6` (RFC 7239).
fn push_ip(out: &mut String, ip: std::net::IpAddr, quoted_v6: bool) {
    use std::fmt::Write as _;
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) if quoted_v6 => {
            let _ = write!(out, "\"[{v6}]\"");
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The client behind `peer`: `peer` itself unless it is in `trusted`, else
/// the rightmost `x-forwarded-for` address that is not a trusted proxy
/// (the left part of the list is the client's to forge).
pub fn client_address(
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    trusted: &[cascadia_config::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    hops.iter()
        .rev()
        .map(|hop| hop.trim().parse::<std::net::IpAddr>())
        .take_while(Result::is_ok)
        .flatten()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// `x-forwarded-for` and `forwarded` for a chain that starts at `ip`,
/// remembered per thread for the last address seen: cloning a
/// `HeaderValue` shares its bytes.
fn peer_values(ip: std::net::IpAddr) -> (HeaderValue, HeaderValue) {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, xff, forwarded)) = last.as_ref() {
            if *seen == ip {
                return (xff.clone(), forwarded.clone());
            }
        }
        let (xff, forwarded) = chain_values(ip, None, None);
        *last = Some((ip, xff.clone(), forwarded.clone()));
        (xff, forwarded)
    })
}

/// `x-forwarded-for` and `forwarded` with `ip` appended to the chains the
/// request carried. Written by hand, not with `format!`: this runs on every
/// request, and the formatting machinery cost more than the rest of the
/// function.
fn chain_values(
    ip: std::net::IpAddr,
    previous_xff: Option<&str>,
    previous_forwarded: Option<&str>,
) -> (HeaderValue, HeaderValue) {
    let mut xff = String::with_capacity(48);
    if let Some(previous) = previous_xff {
        xff.push_str(previous);
        xff.push_str(", ");
    }
    push_ip(&mut xff, ip, false);
    let mut forwarded = String::with_capacity(64);
    if let Some(previous) = previous_forwarded {
        forwarded.push_str(previous);
        forwarded.push_str(", ");
    }
    forwarded.push_str("for=");
    // RFC 7239: IPv6 addresses are quoted and bracketed.
    push_ip(&mut forwarded, ip, true);
    forwarded.push_str(";proto=http");
    // The parts were valid header values and an address adds only
    // visible ASCII, so neither can fail.
    let value = |text: String| {
        HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    };
    (value(xff), value(forwarded))
}

/// Appends the client to `x-forwarded-for` and `forwarded`, sets
/// `x-forwarded-proto`, and records the original host. A chain the client
/// sent is kept only from a `trusted` peer (a configured proxy): from
/// anyone else it is a forgery, dropped so the chain starts at the peer.
pub fn append_forwarded(
    headers: &mut HeaderMap,
    client: SocketAddr,
    host: Option<HeaderValue>,
    trusted: bool,
) {
    const FORWARDING: [HeaderName; 4] = [
        X_FORWARDED_FOR,
        header::FORWARDED,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
    ];
    if !trusted && headers.keys().any(|name| FORWARDING.contains(name)) {
        for name in FORWARDING {
            headers.remove(name);
        }
    }
    let ip = client.ip();
    let previous_xff = headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
    let previous_forwarded = headers.get(header::FORWARDED).and_then(|v| v.to_str().ok());
    let (xff, forwarded) = if previous_xff.is_none() && previous_forwarded.is_none() {
        // The usual case: the chain starts here, and its values depend on
        // the address alone. Requests from one address (a connection, or
        // a load balancer's) share one copy.
        peer_values(ip)
    } else {
        chain_values(ip, previous_xff, previous_forwarded)
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(header::FORWARDED, forwarded);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_values_follow_each_peer_whatever_was_remembered() {
        let forwarded = |peer: &str, chain: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(chain) = chain {
                headers.insert(X_FORWARDED_FOR, HeaderValue::from_str(chain).unwrap());
            }
            append_forwarded(&mut headers, peer.parse().unwrap(), None, true);
            (
                headers[X_FORWARDED_FOR].to_str().unwrap().to_owned(),
                headers[header::FORWARDED].to_str().unwrap().to_owned(),
            )
        };
        for _ in 0..2 {
            assert_eq!(
                forwarded("10.0.0.1:1", None),
                ("10.0.0.1".into(), "for=10.0.0.1;proto=http".into())
            );
            assert_eq!(
                forwarded("[::1]:2", None),
                ("::1".into(), "for=\"[::1]\";proto=http".into())
            );
            assert_eq!(
                forwarded("10.0.0.1:1", Some("1.2.3.4")).0,
                "1.2.3.4, 10.0.0.1"
            );
        }
    }

    #[test]
    fn the_hop_by_hop_positions_name_connection_and_te() {
        assert_eq!(HOP_BY_HOP[CONNECTION_AT], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TE_AT], header::TE);
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::CONTENT_TYPE), None);
    }

    #[test]
    fn generated_request_ids_are_the_prefix_and_counter_in_hex() {
        let a = generate_request_id();
        let b = generate_request_id();
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a.len(), 21);
        assert_eq!(&a[8..9], "-");
        assert_eq!(a[..8], b[..8], "one prefix per process");
        assert!(a.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
        let counter = |id: &str| u64::from_str_radix(&id[9..], 16).unwrap();
        assert!(counter(b) > counter(a));
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "fd00::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut plain = String::new();
            push_ip(&mut plain, ip, false);
            assert_eq!(plain, ip.to_string());
            let mut quoted = String::new();
            push_ip(&mut quoted, ip, true);
            let expected = match ip {
                std::net::IpAddr::V4(_) => ip.to_string(),
                std::net::IpAddr::V6(_) => format!("\"[{ip}]\""),
            };
            assert_eq!(quoted, expected);
        }
    }

    #[test]
    fn the_client_address_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted = [cascadia_config::IpNet::parse("10.0.0.0/8").unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("198.51.100.7, 203.0.113.5, 10.1.1.1"),
        );
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // An untrusted peer's list is ignored.
        assert_eq!(
            client_address(&headers, ip("192.0.2.1"), &trusted),
            ip("192.0.2.1")
        );
        // Behind trusted proxies: the nearest untrusted hop, not the
        // leftmost one the client wrote.
        assert_eq!(
            client_address(&headers, ip("10.0.0.2"), &trusted),
            ip("203.0.113.5")
        );
        // A hop that is not an address stops the walk at the peer.
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("junk"));
        assert_eq!(
            client_address(&headers, ip("10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn strips_fixed_and_connection_listed_headers_but_keeps_te_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, true);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get(KEEP_ALIVE).is_none());
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(headers.get(header::TE).unwrap(), "trailers");
        assert_eq!(headers.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn te_other_than_trailers_is_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers, true);
        assert!(headers.get(header::TE).is_none());
    }

    #[test]
    fn forwarded_headers_append_to_a_trusted_chain_and_replace_a_forged_one() {
        let chain = || {
            let mut headers = HeaderMap::new();
            headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
            headers.insert(header::FORWARDED, HeaderValue::from_static("for=10.0.0.1"));
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
            headers
        };
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut trusted = chain();
        append_forwarded(&mut trusted, client, None, true);
        assert_eq!(trusted.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1, 192.0.2.7");
        assert_eq!(
            trusted.get(header::FORWARDED).unwrap(),
            "for=10.0.0.1, for=192.0.2.7;proto=http"
        );
        assert_eq!(trusted.get(X_FORWARDED_PROTO).unwrap(), "https");
        let mut forged = chain();
        append_forwarded(&mut forged, client, None, false);
        assert_eq!(forged.get(X_FORWARDED_FOR).unwrap(), "192.0.2.7");
        assert_eq!(
            forged.get(header::FORWARDED).unwrap(),
            "for=192.0.2.7;proto=http"
        );
        assert_eq!(forged.get(X_FORWARDED_PROTO).unwrap(), "http");
    }

    #[test]
    fn request_ids_are_reused_when_sane_and_generated_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
    }
}
