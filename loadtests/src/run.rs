//! One load run: connect, pace the schedule across the connections, tally the measured window.
//!
//! # How it works
//! 1. Resolve the URL and open `connections` connections (HTTP/1.1 or h2c prior knowledge,
//!    `TCP_NODELAY` on, keep-alive on). A failure here aborts the run: it is a setup error,
//!    not a result.
//! 2. A pacer thread (tokio's blocking pool) walks the [`Schedule`] and sends request `i` to
//!    connection `i % connections` through its unbounded channel, at its due time.
//! 3. Each connection task sends its queue in order. Over HTTP/1.1 that is one request at a
//!    time, so a busy connection delays the next request, and that delay counts. Over h2
//!    requests are multiplexed. A broken connection is reopened for the next request.
//! 4. At the end of warm-up we sample `/proc` for each `--pid` and for ourselves; once every
//!    measured request has finished we sample again.
//!
//! Nothing waits forever: each request has `timeout` from the moment it is sent, and every
//! request still queued or in flight at `end of window + timeout` is counted as unfinished.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{HeaderName, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cpu;
use crate::payload::Zipf;
use crate::rate::{wait_until, Rate, Schedule};
use crate::report::{new_histogram, record_us, Errors, Lag, Latency, ProcessUsage, Report, Tally};

type Body = Full<Bytes>;
type BoxError = Box<dyn StdError + Send + Sync>;

/// The header that carries the Zipf-distributed user id.
pub const USER_ID_HEADER: HeaderName = HeaderName::from_static("x-user-id");

/// Where to send requests: a parsed `http://` URL.
#[derive(Clone, Debug)]
pub struct Target {
    url: String,
    /// `host:port` to resolve.
    connect_to: String,
    /// `Host` header for HTTP/1.1.
    host: HeaderValue,
    /// Path and query, the request target for HTTP/1.1.
    origin_form: Uri,
    /// The full URL, from which h2 takes `:scheme` and `:authority`.
    absolute: Uri,
}

/// A URL the generator cannot use.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid URL {url:?}: {source}")]
    Parse {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("URL {0:?} must start with http:// (TLS is not supported)")]
    Scheme(String),
    #[error("URL {0:?} has no host")]
    NoHost(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let uri: Uri = url.parse().map_err(|source| TargetError::Parse {
            url: url.to_owned(),
            source,
        })?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(TargetError::Scheme(url.to_owned()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| TargetError::NoHost(url.to_owned()))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let connect_to = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let path_and_query = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let absolute = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path_and_query.as_str())
            .build()
            .expect("parts of a parsed URI make a valid URI");
        let origin_form = Uri::builder()
            .path_and_query(path_and_query.as_str())
            .build()
            .expect("a parsed path and query is a valid URI");
        Ok(Target {
            url: url.to_owned(),
            connect_to,
            host: HeaderValue::from_str(authority.as_str())
                .expect("a parsed authority is a valid header value"),
            origin_form,
            absolute,
        })
    }
}

/// A validated run configuration; `main.rs` builds it from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub rate: Rate,
    /// Sent but not measured. Default 10 s.
    pub warmup: Duration,
    /// The measured window. Default 30 s.
    pub duration: Duration,
    /// Connections, at least 1. Default 4.
    pub connections: usize,
    /// h2c with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
    pub method: Method,
    /// Sent with every request, after `content-type`/`host` defaults, so they can override.
    pub headers: HeaderMap,
    /// The same body for every request; may be empty.
    pub body: Bytes,
    /// Zipf-distributed `x-user-id` per request, if set.
    pub user_ids: Option<Zipf>,
    /// Processes whose CPU time and RSS to report.
    pub pids: Vec<u32>,
    /// Per request, from sending to the end of the response body. Default 10 s.
    pub timeout: Duration,
    /// See [`wait_until`]: how long before each due time the pacer stops sleeping and starts
    /// yielding. Default 100 µs.
    pub timer_spin: Duration,
    /// Seeds the user-id sequence, so runs are repeatable.
    pub seed: u64,
    /// Copied into the report.
    pub label: Option<String>,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("cannot read /proc for pid {pid}: {source}")]
    Proc { pid: u32, source: std::io::Error },
}

/// Fixed per-run request data shared by the connection tasks.
struct Shared {
    addr: SocketAddr,
    http2: bool,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    /// `end of window + timeout`: requests not done by then are unfinished.
    hard_deadline: Instant,
}

impl Shared {
    fn request(&self, job: &Job) -> Request<Body> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if self.http2 {
            *req.version_mut() = Version::HTTP_2;
        }
        if let Some(id) = job.user_id {
            req.headers_mut()
                .insert(USER_ID_HEADER, HeaderValue::from(id));
        }
        req
    }
}

/// One scheduled request, as handed from the pacer to a connection.
#[derive(Debug)]
struct Job {
    /// Latency is measured from here.
    due: Instant,
    /// False during warm-up.
    measured: bool,
    user_id: Option<u32>,
}

/// How one request ended.
enum Outcome {
    Response(StatusCode),
    Transport(BoxError),
    Timeout,
}

/// Runs the load described by `config`. Must be called inside a multi-threaded tokio runtime
/// (the pacer runs on the blocking pool).
pub async fn run(config: Config) -> Result<Report, RunError> {
    let addr = tokio::net::lookup_host(&config.target.connect_to)
        .await
        .and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"))
        })
        .map_err(|source| RunError::Resolve {
            host: config.target.connect_to.clone(),
            source,
        })?;
    for &pid in &config.pids {
        cpu::cpu_ticks(pid).map_err(|source| RunError::Proc { pid, source })?;
    }
    let ticks_per_second = cpu::clock_ticks_per_second();

    let mut headers = HeaderMap::new();
    if !config.http2 {
        headers.insert(HOST, config.target.host.clone());
    }
    for (name, value) in &config.headers {
        headers.insert(name, value.clone());
    }

    // Connect first, so connection set-up is not part of any request's latency.
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let conn = tokio::time::timeout(config.timeout, connect(addr, config.http2))
            .await
            .unwrap_or_else(|_| Err("connect timed out".into()))
            .map_err(|e| RunError::Connect {
                addr,
                message: error_chain(&*e),
            })?;
        conns.push(conn);
    }

    let start = Instant::now() + Duration::from_millis(10);
    let schedule = Schedule::new(start, config.rate, config.warmup, config.duration);
    let shared = Arc::new(Shared {
        addr,
        http2: config.http2,
        method: config.method.clone(),
        uri: if config.http2 {
            config.target.absolute.clone()
        } else {
            config.target.origin_form.clone()
        },
        headers,
        body: config.body.clone(),
        timeout: config.timeout,
        hard_deadline: schedule.measure_end() + config.timeout,
    });

    let mut senders = Vec::with_capacity(conns.len());
    let mut tasks = Vec::with_capacity(conns.len());
    for conn in conns {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        tasks.push(match conn {
            Conn::H1(s) => tokio::spawn(drive_h1(shared.clone(), s, rx)),
            Conn::H2(s) => tokio::spawn(drive_h2(shared.clone(), s, rx)),
        });
    }

    let pacer = {
        let schedule = schedule.clone();
        let user_ids = config.user_ids.clone();
        let (seed, spin) = (config.seed, config.timer_spin);
        tokio::task::spawn_blocking(move || {
            pace(&schedule, &senders, user_ids.as_ref(), seed, spin)
        })
    };

    tokio::time::sleep_until(schedule.measure_start().into()).await;
    let me = std::process::id();
    let before_at = Instant::now();
    let before: Vec<_> = config
        .pids
        .iter()
        .chain([&me])
        .map(|&pid| cpu::cpu_ticks(pid))
        .collect();

    let lag = pacer.await.expect("pacer thread panicked");
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("connection task panicked"));
    }

    let after_at = Instant::now();
    let sampled = after_at.duration_since(before_at).as_secs_f64();
    let completed = tally.completed;
    let mut usage: Vec<ProcessUsage> = config
        .pids
        .iter()
        .chain([&me])
        .zip(before)
        .map(|(&pid, before)| process_usage(pid, before, completed, sampled, ticks_per_second))
        .collect();
    let generator = usage.pop().expect("own pid is always sampled");

    let window_end = tally
        .last_done
        .map_or(schedule.measure_end(), |t| t.max(schedule.measure_end()));
    let window = window_end
        .duration_since(schedule.measure_start())
        .as_secs_f64();

    Ok(Report {
        label: config.label,
        url: config.target.url,
        method: config.method.to_string(),
        http2: config.http2,
        connections: config.connections,
        body_bytes: config.body.len(),
        target_rps: config.rate.per_second(),
        warmup_s: config.warmup.as_secs_f64(),
        duration_s: config.duration.as_secs_f64(),
        achieved_rps: completed as f64 / window,
        sent: schedule.measured_requests(),
        completed,
        ok: tally.latency.len(),
        errors: Errors {
            status: tally.status_errors,
            transport: tally.transport_errors,
            timeout: tally.timeouts,
            unfinished: tally.unfinished,
            first_transport_error: tally.first_error.take(),
        },
        latency_us: Latency::from_histogram(&tally.latency),
        dispatch_lag_us: Lag::from_histogram(&lag),
        processes: usage,
        generator,
        clock_ticks_per_second: ticks_per_second,
    })
}

fn process_usage(
    pid: u32,
    before: std::io::Result<u64>,
    completed: u64,
    sampled_secs: f64,
    ticks_per_second: u64,
) -> ProcessUsage {
    let cpu_ms = before.and_then(|b| Ok(cpu::cpu_ticks(pid)?.saturating_sub(b)));
    let rss_kib = cpu::rss_kib(pid);
    match cpu_ms {
        Ok(ticks) => {
            let cpu_ms = ticks as f64 * 1000.0 / ticks_per_second as f64;
            ProcessUsage {
                pid,
                cpu_ms,
                cpu_us_per_req: (completed > 0).then(|| cpu_ms * 1000.0 / completed as f64),
                cpu_percent: cpu_ms / 10.0 / sampled_secs,
                rss_kib: rss_kib.ok(),
                error: None,
            }
        }
        Err(e) => ProcessUsage {
            pid,
            cpu_ms: 0.0,
            cpu_us_per_req: None,
            cpu_percent: 0.0,
            rss_kib: None,
            error: Some(e.to_string()),
        },
    }
}

/// The pacer: hands each request to its connection at its due time. Returns how late each
/// measured hand-off was, in µs.
fn pace(
    schedule: &Schedule,
    senders: &[mpsc::UnboundedSender<Job>],
    user_ids: Option<&Zipf>,
    seed: u64,
    spin: Duration,
) -> Histogram<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut lag = new_histogram();
    for i in 0..schedule.total_requests() {
        let due = schedule.due(i);
        let measured = schedule.is_measured(i);
        let user_id = user_ids.map(|z| z.sample(&mut rng));
        wait_until(due, spin);
        if measured {
            record_us(
                &mut lag,
                micros(Instant::now().saturating_duration_since(due)),
            );
        }
        // A send fails only if the connection task is gone; it reports its own failure.
        let _ = senders[(i % senders.len() as u64) as usize].send(Job {
            due,
            measured,
            user_id,
        });
    }
    lag
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

async fn connect(addr: SocketAddr, http2: bool) -> Result<Conn, BoxError> {
    Ok(if http2 {
        Conn::H2(connect_h2(addr).await?)
    } else {
        Conn::H1(connect_h1(addr).await?)
    })
}

async fn connect_tcp(addr: SocketAddr) -> std::io::Result<TokioIo<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(stream))
}

async fn connect_h1(addr: SocketAddr) -> Result<http1::SendRequest<Body>, BoxError> {
    let (sender, conn) = http1::handshake(connect_tcp(addr).await?).await?;
    // The connection's own error surfaces through the next `send_request`.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connect_h2(addr: SocketAddr) -> Result<http2::SendRequest<Body>, BoxError> {
    let (sender, conn) = http2::handshake(TokioExecutor::new(), connect_tcp(addr).await?).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// HTTP/1.1: one request at a time on this connection, in due-time order.
async fn drive_h1(
    shared: Arc<Shared>,
    sender: http1::SendRequest<Body>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender = Some(sender);
    while let Some(job) = rx.recv().await {
        let now = Instant::now();
        if now >= shared.hard_deadline {
            tally.unfinished += u64::from(job.measured);
            continue;
        }
        let deadline = (now + shared.timeout).min(shared.hard_deadline);
        let exchange = exchange_h1(&shared, &mut sender, &job);
        let outcome = match tokio::time::timeout_at(deadline.into(), exchange).await {
            Ok(Ok(status)) => Outcome::Response(status),
            Ok(Err(e)) => Outcome::Transport(e),
            Err(_) => Outcome::Timeout,
        };
        if !matches!(outcome, Outcome::Response(_)) {
            // The connection may be mid-response: never reuse it.
            sender = None;
        }
        record(&mut tally, &job, outcome);
    }
    tally
}

async fn exchange_h1(
    shared: &Shared,
    sender: &mut Option<http1::SendRequest<Body>>,
    job: &Job,
) -> Result<StatusCode, BoxError> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect_h1(shared.addr).await?);
    }
    let sender = sender.as_mut().expect("connected above");
    sender.ready().await?;
    let response = sender.send_request(shared.request(job)).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// h2: requests are multiplexed, each in its own task, on one connection.
async fn drive_h2(
    shared: Arc<Shared>,
    sender: http2::SendRequest<Body>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender = Some(sender);
    let mut in_flight = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            job = rx.recv(), if open => {
                let Some(job) = job else {
                    open = false;
                    continue;
                };
                let now = Instant::now();
                if now >= shared.hard_deadline {
                    tally.unfinished += u64::from(job.measured);
                    continue;
                }
                let deadline = tokio::time::Instant::from((now + shared.timeout).min(shared.hard_deadline));
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    match tokio::time::timeout_at(deadline, connect_h2(shared.addr)).await {
                        Ok(Ok(s)) => sender = Some(s),
                        Ok(Err(e)) => {
                            record(&mut tally, &job, Outcome::Transport(e));
                            continue;
                        }
                        Err(_) => {
                            record(&mut tally, &job, Outcome::Timeout);
                            continue;
                        }
                    }
                }
                let mut s = sender.clone().expect("connected above");
                let request = shared.request(&job);
                in_flight.spawn(async move {
                    let exchange = async {
                        s.ready().await?;
                        let response = s.send_request(request).await?;
                        let status = response.status();
                        response.into_body().collect().await?;
                        Ok::<_, BoxError>(status)
                    };
                    let outcome = match tokio::time::timeout_at(deadline, exchange).await {
                        Ok(Ok(status)) => Outcome::Response(status),
                        Ok(Err(e)) => Outcome::Transport(e),
                        Err(_) => Outcome::Timeout,
                    };
                    (job, outcome)
                });
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let (job, outcome) = done.expect("request task panicked");
                record(&mut tally, &job, outcome);
            }
            else => break,
        }
    }
    tally
}

fn record(tally: &mut Tally, job: &Job, outcome: Outcome) {
    if !job.measured {
        return;
    }
    let done = Instant::now();
    tally.last_done = tally.last_done.max(Some(done));
    match outcome {
        Outcome::Response(status) => {
            tally.completed += 1;
            if status.is_success() {
                record_us(
                    &mut tally.latency,
                    micros(done.saturating_duration_since(job.due)),
                );
            } else {
                tally.status_errors += 1;
            }
        }
        Outcome::Transport(e) => {
            tally.transport_errors += 1;
            if tally.first_error.is_none() {
                tally.first_error = Some(error_chain(&*e));
            }
        }
        Outcome::Timeout => tally.timeouts += 1,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `outer: cause: root cause`, since hyper's top-level messages are terse.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_forms() {
        let t = Target::parse("http://127.0.0.1:8080/v2/models/fraud/infer?x=1").unwrap();
        assert_eq!(t.connect_to, "127.0.0.1:8080");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.origin_form, "/v2/models/fraud/infer?x=1");
        assert_eq!(
            t.absolute,
            "http://127.0.0.1:8080/v2/models/fraud/infer?x=1"
        );
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(t.connect_to, "localhost:80");
        assert_eq!(t.origin_form, "/");
        let t = Target::parse("http://[::1]:9/").unwrap();
        assert_eq!(t.connect_to, "[::1]:9");
        assert!(matches!(
            Target::parse("https://x/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("/just/a/path"),
            Err(TargetError::Scheme(_))
        ));
        assert!(Target::parse("http://exa mple/").is_err());
    }
}
