//! The Redis tier: one `MGET` per lookup and background `SET EX` writes,
//! every call bounded by the response timeout, behind a circuit breaker.
//! The same connection carries the shared rate limits' GCRA script.
//!
//! Redis never fails a request. A call that errors or times out counts
//! against the breaker and the lookup carries on to the feature store; after
//! [`TRIP_AFTER`] failures in a row the breaker opens and Redis is left
//! alone for [`OPEN_FOR`], then one probe decides whether it closes again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascadia_config::RedisSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::Entry;

/// Failures in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker keeps Redis out of the request path.
pub const OPEN_FOR: Duration = Duration::from_secs(1);

/// The connection to one Redis server or to a Redis Cluster. Both are
/// cheap to clone (one multiplexed connection per server underneath), and
/// every command the tier sends works on both: the scripts take one key,
/// and the cluster client splits an `MGET` by slot.
#[derive(Clone)]
enum Connection {
    Server(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelLink>),
}

/// The master that Redis Sentinel names, connected on first use and found
/// again (the sentinels asked anew) after a call fails on it: a failover
/// moves the master, and the old one refuses writes (`READONLY`) or is
/// gone.
struct SentinelLink {
    sentinel: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    master: std::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// A master that hangs (cut off, not dead) is given up on past this.
    timeout: Duration,
}

impl SentinelLink {
    async fn get(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another call may have found it while this one waited.
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let client = sentinel.async_get_client().await?;
        let connection = client.get_multiplexed_async_connection().await?;
        *self.master.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the master did not answer in time",
            ))),
        }
    }

    fn current(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed call: ask the sentinels again next time, unless the
    /// error was about the command itself (a script's, say).
    fn settle<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(error) = &result {
            let moved = error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_timeout()
                || error.code() == Some("READONLY");
            if moved {
                *self.master.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        result
    }
}

/// A cluster connection made on first use, and made again after a failed
/// attempt, so a cluster that is down at start-up only means misses.
struct LazyCluster {
    client: redis::cluster::ClusterClient,
    connection: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
        self.connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Server(connection) => connection.req_packed_command(cmd),
            Self::Cluster(lazy) => Box::pin(async move {
                let mut connection = lazy.get().await?;
                connection.req_packed_command(cmd).await
            }),
            Self::Sentinel(link) => Box::pin(async move {
                let mut connection = link.get().await?;
                let call = connection.req_packed_command(cmd);
                link.settle(link.bounded(call).await)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(lazy) => Box::pin(async move {
                let mut connection = lazy.get().await?;
                connection
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
            Self::Sentinel(link) => Box::pin(async move {
                let mut connection = link.get().await?;
                let call = connection.req_packed_commands(pipeline, offset, count);
                link.settle(link.bounded(call).await)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(connection) => connection.get_db(),
            Self::Cluster(_) | Self::Sentinel(_) => 0,
        }
    }
}

/// The shared Redis tier.
pub struct RedisTier {
    connection: Connection,
    settings: RedisSettings,
    breaker: Breaker,
    /// Set by a "Redis unavailable" drill: every call is skipped, as if
    /// the breaker were open.
    drill_down: AtomicBool,
    pub stats: RedisStats,
}

/// Redis outcomes, for the admin API and tests.
#[derive(Debug, Default, serde::Serialize)]
pub struct RedisStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub skipped_open: AtomicU64,
    /// Calls skipped because a drill has taken Redis out.
    pub skipped_drill: AtomicU64,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("url", &self.settings.redacted_url())
            .finish_non_exhaustive()
    }
}

impl RedisTier {
    /// Connects lazily: a Redis that is down at start-up only means
    /// misses until it comes up.
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let tls = settings.url.starts_with("rediss://");
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            // `None`: the system's roots.
            root_cert: settings.tls_ca_pem.clone(),
        };
        if tls {
            // rustls needs one crypto provider for the process; a second
            // install (another tier, a test) is a harmless no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let connection = if let Some(sentinel) = &settings.sentinel {
            let client = redis::sentinel::SentinelClient::build(
                sentinel.nodes.iter().map(String::as_str).collect(),
                sentinel.master.as_str(),
                None,
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(|e| e.to_string())?;
            Connection::Sentinel(Arc::new(SentinelLink {
                sentinel: tokio::sync::Mutex::new(client),
                master: std::sync::Mutex::new(None),
                // The request path's own bound: past it the caller has
                // given up anyway, and the next call asks the sentinels.
                timeout: settings.response_timeout.get(),
            }))
        } else if settings.cluster_nodes.is_empty() {
            let client = if tls {
                redis::Client::build_with_tls(settings.url.as_str(), certificates())
            } else {
                redis::Client::open(settings.url.as_str())
            }
            .map_err(|e| e.to_string())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout.get()))
                .set_response_timeout(Some(settings.response_timeout.get()))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            Connection::Server(
                ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            let mut builder = redis::cluster::ClusterClient::builder(
                settings.cluster_nodes.iter().map(String::as_str),
            )
            .connection_timeout(settings.connect_timeout.get())
            .response_timeout(settings.response_timeout.get())
            .retries(1);
            if tls {
                builder = builder.certs(certificates());
            }
            Connection::Cluster(Arc::new(LazyCluster {
                client: builder.build().map_err(|e| e.to_string())?,
                connection: tokio::sync::OnceCell::new(),
            }))
        };
        Ok(Self {
            connection,
            settings,
            breaker: Breaker::default(),
            drill_down: AtomicBool::new(false),
            stats: RedisStats::default(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.settings.key_prefix)
    }

    /// Looks up `keys`; `None` when Redis could not answer in time (the
    /// caller goes to the store). Each value is `Some(entry)` on a hit.
    pub async fn mget(&self, keys: &[String], width: usize) -> Option<Vec<Option<Entry>>> {
        if !self.may_call() {
            return None;
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("MGET");
        command.arg(&full);
        let call = command.query_async::<Vec<Option<Vec<u8>>>>(&mut connection);
        match tokio::time::timeout(self.settings.response_timeout.get(), call).await {
            Ok(Ok(values)) if values.len() == keys.len() => {
                self.breaker.success();
                Some(
                    values
                        .into_iter()
                        .map(|v| v.and_then(|bytes| decode(&bytes, width)))
                        .collect(),
                )
            }
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                self.failed();
                None
            }
        }
    }

    /// Writes an entry with a ±10% jittered TTL (so keys cached together do
    /// not expire together), without delaying anyone. A failed write (Redis
    /// down or out of memory) is a future miss, not an error.
    pub fn set_in_background(self: &Arc<Self>, key: &str, entry: &Entry, ttl: Duration) {
        if self.is_drill_down() || !self.breaker.allow_write() {
            return;
        }
        let tier = Arc::clone(self);
        let key = self.key(key);
        let value = encode(entry);
        let seconds = ttl.mul_f64(0.9 + fastrand::f64() * 0.2).as_secs().max(1);
        tokio::spawn(async move {
            let mut connection = tier.connection.clone();
            let mut command = redis::cmd("SET");
            command.arg(&key).arg(value).arg("EX").arg(seconds);
            let call = command.query_async::<()>(&mut connection);
            match tokio::time::timeout(tier.settings.response_timeout.get(), call).await {
                Ok(Ok(())) => tier.breaker.success(),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "feature cache write failed");
                    tier.failed();
                }
                Err(_) => tier.failed(),
            }
        });
    }

    /// Runs the shared rate limit's GCRA step for `key` (one round trip):
    /// `Some(Ok(()))` to proceed, `Some(Err(wait))` when limited, `None`
    /// when Redis could not answer in time (the caller limits locally).
    pub async fn rate_limit(
        &self,
        key: &str,
        per_second: u32,
        burst: u32,
    ) -> Option<Result<(), Duration>> {
        if !self.may_call() {
            return None;
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let interval_us = 1_000_000 / u64::from(per_second.max(1));
        let mut connection = self.connection.clone();
        let mut invocation = GCRA.key(key);
        invocation.arg(interval_us.max(1)).arg(burst.max(1));
        let call = invocation.invoke_async::<u64>(&mut connection);
        match tokio::time::timeout(self.settings.response_timeout.get(), call).await {
            Ok(Ok(wait_us)) => {
                self.breaker.success();
                Some(if wait_us == 0 {
                    Ok(())
                } else {
                    Err(Duration::from_micros(wait_us))
                })
            }
            Ok(Err(_)) | Err(_) => {
                self.failed();
                None
            }
        }
    }

    /// Sends `command` off the request path (rollout and fleet state),
    /// bounded by ten response timeouts: its reply, or `None` when Redis
    /// could not answer (counted by the breaker).
    async fn off_path<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Option<T> {
        if !self.may_call() {
            return None;
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut connection = self.connection.clone();
        self.bounded(command.query_async::<T>(&mut connection))
            .await
    }

    /// Waits up to ten response timeouts for an off-path call.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.settings.response_timeout.get() * 10, call).await {
            Ok(Ok(value)) => {
                self.breaker.success();
                Some(value)
            }
            _ => {
                self.failed();
                None
            }
        }
    }

    /// `GET key`: `Some(None)` when absent, `None` when Redis could not
    /// answer. Off the request path (rollout state).
    pub async fn get_raw(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.off_path(redis::cmd("GET").arg(key)).await
    }

    /// Runs a script off the request path (fleet state): its reply, or
    /// `None` when Redis could not answer.
    async fn run_script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[&[u8]],
    ) -> Option<T> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        if !self.may_call() {
            return None;
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut connection = self.connection.clone();
        self.bounded(invocation.invoke_async::<T>(&mut connection))
            .await
    }

    /// Stores `value` at `key` only if its `generation` is above the one
    /// stored there (a JSON field; absent counts as 0): a stale writer
    /// cannot overwrite a newer decision. `Some(stored?)`, or `None` when
    /// Redis could not answer.
    pub async fn set_if_newer(&self, key: &str, generation: u64, value: &[u8]) -> Option<bool> {
        let generation = generation.to_string();
        let stored: Option<i64> = self
            .run_script(&SET_IF_NEWER, key, &[generation.as_bytes(), value])
            .await;
        stored.map(|n| n == 1)
    }

    /// Takes or renews the lease at `key` for `holder`, for `ttl`: whether
    /// `holder` holds it now. `None` when Redis could not answer (nobody
    /// can be sure to hold it then).
    pub async fn hold_lease(&self, key: &str, holder: &str, ttl: Duration) -> Option<bool> {
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let held: Option<i64> = self
            .run_script(&HOLD_LEASE, key, &[holder.as_bytes(), ttl_ms.as_bytes()])
            .await;
        held.map(|n| n == 1)
    }

    /// Gives up the lease at `key` if `holder` has it.
    pub async fn release_lease(&self, key: &str, holder: &str) {
        let _: Option<i64> = self
            .run_script(&RELEASE_LEASE, key, &[holder.as_bytes()])
            .await;
    }

    /// `HSET key field value`, and the hash expires after `ttl` unless
    /// written again (a fleet that stops writing leaves nothing behind).
    pub async fn put_field(&self, key: &str, field: &str, value: &[u8], ttl: Duration) -> bool {
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let done: Option<i64> = self
            .run_script(
                &PUT_FIELD,
                key,
                &[field.as_bytes(), value, ttl_ms.as_bytes()],
            )
            .await;
        done.is_some()
    }

    /// `XADD key MAXLEN ~ max_len * row payload`: appends one recorded
    /// row to a stream Redis keeps near `max_len` entries. Off the request
    /// path; false when Redis could not take it.
    pub async fn append_stream(&self, key: &str, max_len: u64, payload: &[u8]) -> bool {
        let mut command = redis::cmd("XADD");
        command
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("row")
            .arg(payload);
        self.off_path::<String>(&command).await.is_some()
    }

    /// `HGETALL key`; `None` when Redis could not answer.
    pub async fn all_fields(&self, key: &str) -> Option<Vec<(String, Vec<u8>)>> {
        self.off_path(redis::cmd("HGETALL").arg(key)).await
    }

    /// Takes Redis out of (or back into) every request path, for a drill.
    pub fn set_drill_down(&self, down: bool) {
        self.drill_down.store(down, Ordering::Relaxed);
    }

    /// Whether a drill has taken Redis out.
    pub fn is_drill_down(&self) -> bool {
        self.drill_down.load(Ordering::Relaxed)
    }

    fn may_call(&self) -> bool {
        if self.drill_down.load(Ordering::Relaxed) {
            self.stats.skipped_drill.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.breaker.allow() {
            self.stats.skipped_open.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn failed(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if self.breaker.failure() {
            tracing::warn!(url = %self.settings.redacted_url(), "Redis failing: feature cache and shared rate limits bypass it for {OPEN_FOR:?}");
        }
    }
}

/// GCRA, one step, atomically in Redis. KEYS[1] holds the theoretical
/// arrival time (µs, Redis's clock, so replicas need not agree on time);
/// ARGV is the emission interval in µs and the burst. Returns 0 when the
/// request may go, else the µs until it could. The key expires once idle.
/// `SET` only over a lower `generation` (fencing for fleet decisions).
static SET_IF_NEWER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, decoded = pcall(cjson.decode, stored)
  local current = (ok and type(decoded) == 'table' and tonumber(decoded['generation'])) or 0
  if current >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
",
    )
});

/// Takes a free lease or renews one's own.
static HOLD_LEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// Deletes a lease only if one still holds it.
static RELEASE_LEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// One field of a hash, and the hash's expiry moved on.
static PUT_FIELD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

static GCRA: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if now < tat - tolerance then
  return tat - tolerance - now
end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.floor((tat - now) / 1000) + 1)
return 0
",
    )
});

/// Entries are stored as JSON: an array of numbers, or `null` for an
/// unknown entity.
fn encode(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(&entry.as_deref()).unwrap_or_else(|_| b"null".to_vec())
}

fn decode(bytes: &[u8], width: usize) -> Option<Entry> {
    let values: Option<Vec<f64>> = serde_json::from_slice(bytes).ok()?;
    match values {
        Some(v) if v.len() == width => Some(Some(Arc::from(v))),
        Some(_) => None, // written for another feature set: a miss
        None => Some(None),
    }
}

/// A consecutive-failure circuit breaker with a single half-open probe.
#[derive(Debug)]
struct Breaker {
    failures: AtomicU32,
    /// Open until this time (ns since `epoch`); 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    /// When the current probe started (ns since `epoch`): a probe whose
    /// request was cancelled never reports back, so after [`OPEN_FOR`] a
    /// new probe may go.
    probe_started: AtomicU64,
    epoch: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probe_started: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Breaker {
    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// Whether a read may go to Redis: closed, or the one probe after the
    /// open period.
    fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now();
        if now < until {
            return false;
        }
        // Half-open: exactly one caller probes at a time.
        if !self.probing.swap(true, Ordering::AcqRel) {
            self.probe_started.store(now, Ordering::Relaxed);
            return true;
        }
        let started = self.probe_started.load(Ordering::Relaxed);
        if now.saturating_sub(started) > OPEN_FOR.as_nanos() as u64 {
            // The last probe never reported (its request went away).
            self.probe_started.store(now, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Writes only while closed: no point queueing writes to a dead Redis.
    fn allow_write(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) == 0
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until.store(0, Ordering::Relaxed);
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure; true when this one opened the breaker.
    fn failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probing = self.probing.swap(false, Ordering::AcqRel);
        if failures >= TRIP_AFTER || probing {
            let was_closed = self
                .open_until
                .swap(self.now() + OPEN_FOR.as_nanos() as u64, Ordering::Relaxed)
                == 0;
            return was_closed;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_failures_and_probes_once_to_close() {
        let breaker = Breaker::default();
        assert!(breaker.allow());
        assert!(!breaker.failure());
        assert!(!breaker.failure());
        assert!(breaker.failure(), "third failure opens");
        assert!(!breaker.allow());
        assert!(!breaker.allow_write());
        tokio::time::advance(OPEN_FOR + Duration::from_millis(1)).await;
        assert!(breaker.allow(), "one probe after the open period");
        assert!(!breaker.allow(), "only one");
        // The probe fails: open again for another period.
        breaker.failure();
        assert!(!breaker.allow());
        tokio::time::advance(OPEN_FOR + Duration::from_millis(1)).await;
        assert!(breaker.allow());
        breaker.success();
        assert!(breaker.allow() && breaker.allow(), "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_does_not_keep_the_breaker_open() {
        let breaker = Breaker::default();
        for _ in 0..TRIP_AFTER {
            breaker.failure();
        }
        tokio::time::advance(OPEN_FOR + Duration::from_millis(1)).await;
        assert!(breaker.allow(), "probe");
        // The probing request is cancelled: neither success nor failure.
        assert!(!breaker.allow());
        tokio::time::advance(OPEN_FOR + Duration::from_millis(1)).await;
        assert!(breaker.allow(), "a new probe after the stale one");
    }

    #[test]
    fn entries_round_trip_and_width_mismatches_are_misses() {
        let entry: Entry = Some(Arc::from(vec![1.5, 2.0]));
        assert_eq!(decode(&encode(&entry), 2), Some(entry.clone()));
        assert_eq!(decode(&encode(&None), 2), Some(None));
        assert_eq!(decode(&encode(&entry), 3), None);
        assert_eq!(decode(b"garbage", 2), None);
    }
}
