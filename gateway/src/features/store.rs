//! The feature store: `GET /features/{key}?features=a,b` on a configured
//! backend, answered with `{"features": {"a": 1.0, "b": 2.0}}`, or 404 for
//! an unknown entity.

use std::time::Duration;

use bytes::Bytes;
use cascadia_backends::{BackendPool, Outcome};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;

use super::Entry;

#[derive(serde::Deserialize)]
struct StoreReply {
    features: serde_json::Map<String, serde_json::Value>,
}

/// Fetches one entity: `Ok(None)` when the store does not know it, `Err`
/// when the store could not answer (down, slow, malformed).
pub async fn fetch(
    store: &BackendPool,
    key: &str,
    names: &[String],
    timeout: Duration,
) -> Result<Entry, ()> {
    let now = Instant::now();
    let endpoint = store.pick(now, &[]).ok_or(())?;
    let path = format!("/features/{}?features={}", encode(key), names.join(","));
    let uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.authority().clone())
        .path_and_query(path)
        .build()
        .map_err(|_| ())?;
    let request = Request::get(uri)
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|_| ())?;
    let _in_flight = endpoint.start_attempt();
    let sent = Instant::now();
    let response = match store.client().send(endpoint, request, timeout).await {
        Ok(response) => response,
        Err(_) => {
            store.record(endpoint, Outcome::Failure, Instant::now());
            return Err(());
        }
    };
    let status = response.status();
    let body = tokio::time::timeout(timeout, response.into_body().collect()).await;
    if status.is_server_error() {
        store.record(endpoint, Outcome::Failure, Instant::now());
        return Err(());
    }
    store.record(endpoint, Outcome::Success(sent.elapsed()), Instant::now());
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let bytes = match body {
        Ok(Ok(collected)) if status.is_success() => collected.to_bytes(),
        _ => return Err(()),
    };
    let reply: StoreReply = serde_json::from_slice(&bytes).map_err(|_| ())?;
    let values: Option<Vec<f64>> = names
        .iter()
        .map(|n| reply.features.get(n).and_then(|v| v.as_f64()))
        .collect();
    // A known entity missing one of the features is a store bug, not an
    // unknown entity: fail the fetch so nothing wrong gets cached.
    values.map(|v| Some(v.into())).ok_or(())
}

/// Percent-encodes everything but unreserved characters, so an entity key
/// cannot change the path.
fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_cannot_escape_the_path() {
        assert_eq!(super::encode("a.b-c_d"), "a.b-c_d");
        assert_eq!(super::encode("../admin?x=1"), "..%2Fadmin%3Fx%3D1");
    }
}
