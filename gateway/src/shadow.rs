//! Shadow traffic: a share of a route's inference calls is copied to a
//! candidate version, and the candidate's answers are compared online with
//! what the client got. The client never waits for, nor sees, the mirror.
//!
//! # When a mirror is sent
//! After the primary's response head is in (so it never delays the
//! client), for a `fraction` of requests, while fewer than `max_in_flight`
//! mirrors run and the route is under half its `max_concurrency`. Mirrors
//! are the first thing dropped under load, and every drop is counted.
//!
//! # What is compared, per (primary version, candidate) pair
//! The first output tensor of both OIP answers (a gRPC answer is decoded
//! to the same form first), row by row: whether the
//! predicted class agrees (argmax of a `[N, k]` output, or `p >= 0.5` of a
//! `[N]` / `[N, 1]` one), a histogram of the score difference, and the
//! time to the response head on each side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::core::stats::{bucket_quantile_ms, latency_bucket, BUCKETS};
use crate::routing::stages::{PairStats, Shadow, ShadowStats, DIFF_BUCKETS};

/// Largest answer body compared; a longer one is counted uncomparable.
pub const COMPARE_LIMIT: usize = 256 * 1024;
/// Marks a mirrored request, so a model server can tell it apart.
pub const X_CASCADIA_SHADOW: http::HeaderName = http::HeaderName::from_static("x-cascadia-shadow");

/// Holds one of the shadow's in-flight places.
struct Slot(Arc<ShadowStats>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shadow {
    /// Whether this request gets a mirror: sampled, and within budget.
    /// `route_load` is the route's (in flight, limit) when it has one.
    fn admit(&self, route_load: Option<(usize, usize)>) -> Option<Slot> {
        if fastrand::f64() >= self.settings.fraction {
            return None;
        }
        if route_load.is_some_and(|(in_flight, limit)| in_flight * 2 >= limit) {
            self.stats.dropped_load.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let previous = self.stats.in_flight.fetch_add(1, Ordering::AcqRel);
        if previous >= self.settings.max_in_flight {
            self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.stats.dropped_budget.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(Arc::clone(&self.stats)))
    }
}

/// A mirror decided on at admission, sent once the primary has answered.
pub struct Mirror {
    shadow: Arc<Shadow>,
    slot: Slot,
    headers: HeaderMap,
    body: Bytes,
    /// A gRPC call: sent over h2c, answers compared after decoding.
    grpc: bool,
}

impl Mirror {
    /// Decides whether this request is mirrored; if so, keeps what the
    /// mirror needs (the body must be in memory already).
    pub fn prepare(
        shadow: &Arc<Shadow>,
        route_load: Option<(usize, usize)>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<Self> {
        let slot = shadow.admit(route_load)?;
        let mut headers = headers.clone();
        crate::core::headers::strip_hop_by_hop(&mut headers, true);
        headers.remove(http::header::HOST);
        headers.remove(http::header::CONTENT_LENGTH);
        headers.insert(X_CASCADIA_SHADOW, HeaderValue::from_static("1"));
        Some(Self {
            shadow: Arc::clone(shadow),
            slot,
            headers,
            body: body.clone(),
            grpc: false,
        })
    }

    /// [`Mirror::prepare`] for a gRPC `ModelInfer` call; `body` is the
    /// framed message for the candidate.
    pub fn prepare_grpc(
        shadow: &Arc<Shadow>,
        route_load: Option<(usize, usize)>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<Self> {
        let mut mirror = Self::prepare(shadow, route_load, headers, body)?;
        mirror.grpc = true;
        Some(mirror)
    }

    /// Sends the mirror in the background and compares its answer with the
    /// primary's, which arrives on `primary` when the client's body ends.
    pub fn send(
        self,
        path: http::uri::PathAndQuery,
        primary_version: Arc<str>,
        primary_latency: Duration,
        primary: tokio::sync::oneshot::Receiver<Bytes>,
    ) {
        tokio::spawn(async move {
            let _slot = self.slot;
            let shadow = self.shadow;
            let pair = shadow.stats.pair(&primary_version);
            let started = Instant::now();
            let deadline = started + shadow.settings.timeout.get();
            let grpc = self.grpc;
            let answer = mirror(&shadow, path, self.headers, self.body, grpc, deadline).await;
            let Some((latency, body)) = answer else {
                bump(&pair.failed);
                return;
            };
            let primary = match tokio::time::timeout_at(deadline, primary).await {
                Ok(Ok(body)) => body,
                _ => {
                    bump(&pair.uncomparable);
                    return;
                }
            };
            let read = |body: &[u8]| {
                if grpc {
                    scores(&grpc_answer_as_json(body)?)
                } else {
                    scores(body)
                }
            };
            match (read(&primary), read(&body)) {
                (Some(a), Some(b)) if a.len() == b.len() => {
                    pair.record(&a, &b, primary_latency, latency)
                }
                _ => bump(&pair.uncomparable),
            }
        });
    }
}

/// Sends one mirror attempt; its head latency and whole body on a 2xx.
async fn mirror(
    shadow: &Shadow,
    path: http::uri::PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
    grpc: bool,
    deadline: Instant,
) -> Option<(Duration, Bytes)> {
    let now = Instant::now();
    let (index, endpoint) = crate::forward::select_one(&shadow.target, now, grpc)?;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(endpoint.authority().clone())
        .path_and_query(path)
        .build()
        .ok()?;
    let mut request = Request::new(
        http_body_util::Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    *request.version_mut() = match shadow.target.pools[index].client().protocol() {
        cascadia_config::UpstreamProtocol::Http1 => http::Version::HTTP_11,
        cascadia_config::UpstreamProtocol::H2c => http::Version::HTTP_2,
    };
    let per_try = deadline.saturating_duration_since(now);
    let attempt =
        crate::forward::send_one(&shadow.target, index, endpoint, request, per_try).await?;
    let latency = now.elapsed();
    if !attempt.status().is_success() {
        return None;
    }
    let collected = tokio::time::timeout_at(deadline, attempt.into_body().collect())
        .await
        .ok()?
        .ok()?;
    let bytes = collected.to_bytes();
    (bytes.len() <= COMPARE_LIMIT).then_some((latency, bytes))
}

/// A unary gRPC answer (one frame) as OIP JSON, so one comparison serves
/// both protocols.
fn grpc_answer_as_json(body: &[u8]) -> Option<Vec<u8>> {
    use prost::Message as _;
    let (compressed, message) = cascadia_oip::grpc::decode_frame(body).ok()?;
    if compressed {
        return None;
    }
    let answer = cascadia_oip::grpc::ModelInferResponse::decode(message).ok()?;
    let json = cascadia_cascade::grpc::to_json_response(&answer).ok()?;
    serde_json::to_vec(&json).ok()
}

/// Per row: (predicted class, score) from the first output of an OIP
/// answer.
fn scores(body: &[u8]) -> Option<Vec<(usize, f64)>> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let output = answer.get("outputs")?.get(0)?;
    let data: Vec<f64> = flatten(output.get("data")?)?;
    let shape: Vec<usize> = output
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<_>>()?;
    let rows = *shape.first()?;
    if rows == 0 || data.len() % rows != 0 {
        return None;
    }
    let columns = data.len() / rows;
    Some(
        data.chunks(columns)
            .map(|row| match row {
                [p] => (usize::from(*p >= 0.5), *p),
                // Two columns are predict_proba: the positive class's score.
                [_, p] => (usize::from(row[1] > row[0]), *p),
                _ => {
                    let (class, best) = row.iter().enumerate().fold((0, f64::MIN), |a, (i, v)| {
                        if *v > a.1 {
                            (i, *v)
                        } else {
                            a
                        }
                    });
                    (class, best)
                }
            })
            .collect(),
    )
}

fn flatten(value: &Value) -> Option<Vec<f64>> {
    let mut out = Vec::new();
    fn walk(value: &Value, out: &mut Vec<f64>) -> Option<()> {
        match value {
            Value::Array(items) => items.iter().try_for_each(|v| walk(v, out)),
            Value::Number(n) => {
                out.push(n.as_f64()?);
                Some(())
            }
            Value::Bool(b) => {
                out.push(f64::from(u8::from(*b)));
                Some(())
            }
            _ => None,
        }
    }
    walk(value, &mut out)?;
    Some(out)
}

impl ShadowStats {
    fn pair(&self, primary: &Arc<str>) -> Arc<PairStats> {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(pairs.entry(Arc::clone(primary)).or_default())
    }

    /// Mirrors running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Every pair, sorted by primary version.
    pub fn pairs(&self) -> Vec<(Arc<str>, Arc<PairStats>)> {
        let pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl PairStats {
    fn record(&self, primary: &[(usize, f64)], shadow: &[(usize, f64)], a: Duration, b: Duration) {
        bump(&self.compared);
        for ((class_a, score_a), (class_b, score_b)) in primary.iter().zip(shadow) {
            bump(&self.rows);
            if class_a == class_b {
                bump(&self.rows_agree);
            }
            let diff = (score_a - score_b).abs();
            let bucket = DIFF_BUCKETS
                .iter()
                .position(|bound| diff <= *bound)
                .unwrap_or(DIFF_BUCKETS.len() - 1);
            bump(&self.diff[bucket]);
            self.diff_sum_micros
                .fetch_add((diff * 1e6) as u64, Ordering::Relaxed);
        }
        bump(&self.primary_latency[latency_bucket(a)]);
        bump(&self.shadow_latency[latency_bucket(b)]);
        let delta = b.as_micros() as i64 - a.as_micros() as i64;
        self.latency_diff_micros.fetch_add(delta, Ordering::Relaxed);
    }

    /// Share of rows whose predicted class agreed; `None` before any.
    pub fn agreement(&self) -> Option<f64> {
        let rows = self.rows.load(Ordering::Relaxed);
        (rows > 0).then(|| self.rows_agree.load(Ordering::Relaxed) as f64 / rows as f64)
    }

    /// The |score difference| histogram: (upper bound, count) pairs.
    pub fn diff_histogram(&self) -> Vec<(f64, u64)> {
        DIFF_BUCKETS
            .iter()
            .zip(&self.diff)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// The JSON the admin API shows.
    pub fn report(&self) -> Value {
        let compared = self.compared.load(Ordering::Relaxed);
        let rows = self.rows.load(Ordering::Relaxed);
        json!({
            "compared": compared,
            "failed": self.failed.load(Ordering::Relaxed),
            "uncomparable": self.uncomparable.load(Ordering::Relaxed),
            "rows": rows,
            "class_agreement": self.agreement(),
            "mean_abs_score_diff": (rows > 0).then(|| self.diff_sum_micros.load(Ordering::Relaxed) as f64 / 1e6 / rows as f64),
            "score_diff_histogram": self.diff_histogram().iter().map(|(le, n)| json!({"le": le, "count": n})).collect::<Vec<_>>(),
            "primary_p50_ms": percentile(&self.primary_latency, 0.5),
            "primary_p95_ms": percentile(&self.primary_latency, 0.95),
            "shadow_p50_ms": percentile(&self.shadow_latency, 0.5),
            "shadow_p95_ms": percentile(&self.shadow_latency, 0.95),
            "mean_latency_diff_ms": (compared > 0).then(|| self.latency_diff_micros.load(Ordering::Relaxed) as f64 / 1e3 / compared as f64),
        })
    }
}

/// Upper bound (ms) of the bucket holding the percentile.
fn percentile(buckets: &[AtomicU64; BUCKETS.len()], q: f64) -> Option<f64> {
    let counts: Vec<u64> = buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    bucket_quantile_ms(&counts, q)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Target;

    #[test]
    fn scores_read_every_common_output_layout() {
        let single =
            br#"{"outputs":[{"name":"p","shape":[2],"datatype":"FP64","data":[0.2,0.9]}]}"#;
        assert_eq!(scores(single).unwrap(), vec![(0, 0.2), (1, 0.9)]);
        let proba = br#"{"outputs":[{"name":"p","shape":[2,2],"datatype":"FP64","data":[[0.7,0.3],[0.1,0.9]]}]}"#;
        assert_eq!(scores(proba).unwrap(), vec![(0, 0.3), (1, 0.9)]);
        let three =
            br#"{"outputs":[{"name":"p","shape":[1,3],"datatype":"FP32","data":[0.1,0.6,0.3]}]}"#;
        assert_eq!(scores(three).unwrap(), vec![(1, 0.6)]);
        assert!(scores(b"not json").is_none());
        assert!(scores(br#"{"outputs":[{"shape":[3],"data":[0.1,0.2]}]}"#).is_none());
    }

    #[test]
    fn a_pair_counts_agreement_score_difference_and_latency() {
        let pair = PairStats::default();
        pair.record(
            &[(1, 0.9), (0, 0.1)],
            &[(1, 0.88), (1, 0.55)],
            Duration::from_millis(2),
            Duration::from_millis(5),
        );
        assert_eq!(pair.rows.load(Ordering::Relaxed), 2);
        assert_eq!(pair.agreement(), Some(0.5));
        let histogram = pair.diff_histogram();
        // 0.02 falls in the 0.05 bucket, 0.45 in the 0.5 bucket.
        assert_eq!(histogram[2], (0.05, 1));
        assert_eq!(histogram[5], (0.5, 1));
        let report = pair.report();
        assert_eq!(report["mean_latency_diff_ms"], 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn mirrors_are_dropped_past_the_budget_or_under_route_load() {
        let shadow = Shadow {
            settings: cascadia_config::Shadow {
                version: "v3".to_owned(),
                backends: vec![],
                fraction: 1.0,
                max_in_flight: 1,
                upstream_model: None,
                upstream_version: None,
                timeout: cascadia_config::Timeout::new(Duration::from_millis(100)).unwrap(),
            },
            target: Target::new("v3", 0, vec![], None, None),
            stats: Arc::default(),
        };
        let first = shadow.admit(None).expect("within budget");
        assert!(shadow.admit(None).is_none(), "budget of one in flight");
        assert_eq!(shadow.stats.dropped_budget.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(shadow.admit(Some((5, 10))).is_none(), "route half full");
        assert_eq!(shadow.stats.dropped_load.load(Ordering::Relaxed), 1);
        assert!(shadow.admit(Some((4, 10))).is_some());
    }
}
