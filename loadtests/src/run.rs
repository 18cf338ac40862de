//! One load run: connect, pace the schedule across the connections, tally the measured window.
//!
//! # How it works
//! 1. Resolve the URL and open `connections` connections (HTTP/1.1 or h2c prior knowledge,
//!    `TCP_NODELAY` on, keep-alive on; over TLS for `https://`, ALPN `http/1.1` or `h2`). A
//!    failure here aborts the run: it is a setup error, not a result.
//! 2. A pacer thread (tokio's blocking pool) walks the [`Schedule`] and sends request `i` to
//!    connection `i % connections` through its unbounded channel, at its due time.
//! 3. Each connection task sends its queue in order. Over HTTP/1.1 that is one request at a
//!    time, so a busy connection delays the next request, and that delay counts. Over h2
//!    requests are multiplexed. A broken connection is reopened for the next request. With
//!    `connection_per_request` (HTTP/1.1 only) every request says `connection: close` and the
//!    next one opens a new connection (a full TLS handshake over `https://`: the client
//!    keeps no sessions), so the connect and handshake are part of each request.
//! 4. At the end of warm-up, and at the start of every later step, we sample `/proc` for each
//!    `--pid` and for ourselves; once every measured request has finished we sample again.
//! 5. Alongside: the scenario's events fire at their times ([`crate::scenario`]), and a
//!    progress line is printed once a second ([`crate::progress`]).
//!
//! Each connection tallies the measured requests per step (by due time) and into its own
//! [`Timeline`]; they are merged at the end, so nothing is shared on the request path except
//! the progress counters, and only when progress is on.
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
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cpu;
use crate::grpc;
use crate::payload::Zipf;
use crate::progress::{format_line, Live, Printer};
use crate::rate::{wait_until, Schedule, Step};
use crate::report::{
    new_histogram, record_us, Errors, Lag, Latency, ProcessUsage, Report, StepInfo, Tally,
};
use crate::scenario::{self, EventRecord, Scenario};
use crate::timeline::{Timeline, TimelineReport};

type Body = Full<Bytes>;
/// Any error, boxed, as hyper and tonic return them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Where to send requests: a parsed `http://` or `https://` URL.
#[derive(Clone, Debug)]
pub struct Target {
    url: String,
    /// `https://`: connections are TLS, verified against `Config::tls`.
    tls: bool,
    /// The name the server's certificate must carry (and the SNI, for a DNS name): the
    /// URL's host, without brackets.
    server_name: String,
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
    #[error("URL {0:?} must start with http:// or https://")]
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
        let tls = match uri.scheme() {
            Some(s) if *s == http::uri::Scheme::HTTP => false,
            Some(s) if *s == http::uri::Scheme::HTTPS => true,
            _ => return Err(TargetError::Scheme(url.to_owned())),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| TargetError::NoHost(url.to_owned()))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
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
            .scheme(if tls { "https" } else { "http" })
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
            tls,
            server_name: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            connect_to,
            host: HeaderValue::from_str(authority.as_str())
                .expect("a parsed authority is a valid header value"),
            origin_form,
            absolute,
        })
    }

    /// The URL with its path replaced, e.g. by the gRPC method path.
    pub fn with_path(&self, path: &str) -> Uri {
        let mut parts = self.absolute.clone().into_parts();
        parts.path_and_query = Some(path.parse().expect("a method path is a valid path"));
        Uri::from_parts(parts).expect("replacing the path keeps the URI valid")
    }

    /// The URL's path, without the query.
    pub fn path(&self) -> &str {
        self.absolute.path()
    }

    /// Whether the URL is `https://`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// A validated run configuration; `main.rs` builds it from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    /// Sent but not measured, at the first step's rate. Default 10 s.
    pub warmup: Duration,
    /// The measured window: one step (`--rate`, `--duration`) or several (`--rate-steps`),
    /// run in turn without a gap. Never empty.
    pub steps: Vec<Step>,
    /// Connections, at least 1. Default 4.
    pub connections: usize,
    /// h2c with prior knowledge instead of HTTP/1.1 (h2 over ALPN for `https://`).
    pub http2: bool,
    /// The client TLS config for an `https://` target (its ALPN must offer `h2` when
    /// `http2` is set, and it should keep no sessions, so every connection is a full
    /// handshake); `None` for `http://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTP/1.1 only: every request carries `connection: close` and goes on a new
    /// connection, so each pays a connect (and a TLS handshake).
    pub connection_per_request: bool,
    /// OIP gRPC `ModelInfer`: `body` is a framed message, it goes to the method path over
    /// h2c, and success is `grpc-status: 0`. Implies `http2`.
    pub grpc: bool,
    pub method: Method,
    /// Sent with every request, after `content-type`/`host` defaults, so they can override.
    pub headers: HeaderMap,
    /// Request bodies, encoded before the run: request `i` (warm-up included) sends
    /// `bodies[i % len]`, so sending costs a reference-count increment, never an encoding.
    /// Never empty; one body for the same body every time, which may be empty.
    pub bodies: Arc<[Bytes]>,
    /// Set when `bodies` are batches of `--rows`, for the report.
    pub rows: Option<RowsSource>,
    /// Zipf-distributed key per request, if set, in `key_header`.
    pub user_ids: Option<Zipf>,
    /// The header carrying the Zipf key: `x-user-id` for sticky canaries,
    /// or a cascade's entity header. Default `x-user-id`.
    pub key_header: HeaderName,
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
    /// Width of the timeline's buckets. Default 1 s.
    pub bucket: Duration,
    /// Timed actions from the start of the measured window; may be empty.
    pub scenario: Scenario,
    /// Where to print the progress line once a second, if anywhere.
    pub progress: Option<Printer>,
}

/// Where `--rows` bodies came from.
#[derive(Clone, Debug)]
pub struct RowsSource {
    /// The file, as given.
    pub file: String,
    /// Rows per request.
    pub batch: usize,
}

/// Everything one run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// One report per step; a plain run has exactly one. Each carries its part of the
    /// timeline and the events that fell in it.
    pub reports: Vec<Report>,
    /// The whole timeline, for plotting.
    pub timeline: TimelineReport,
    /// Every scenario event, in time order.
    pub events: Vec<EventRecord>,
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
    #[error("{0}")]
    Tls(String),
}

/// How to open one connection: TCP, then TLS for an `https://` target.
#[derive(Clone)]
struct Dialer {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Over TLS, insist that ALPN picked `h2`.
    http2: bool,
}

/// Fixed per-run request data shared by the connection tasks.
struct Shared {
    dialer: Dialer,
    http2: bool,
    connection_per_request: bool,
    grpc: bool,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bodies: Arc<[Bytes]>,
    key_header: HeaderName,
    timeout: Duration,
    /// `end of window + timeout`: requests not done by then are unfinished.
    hard_deadline: Instant,
    /// Start of the measured window: timeline bucket 0.
    measure_start: Instant,
    bucket: Duration,
    steps: usize,
    live: Option<Arc<Live>>,
}

impl Shared {
    /// Reads the response to the end; `Ok(true)` for success (2xx, or `grpc-status: 0`).
    async fn read_response(&self, response: Response<Incoming>) -> Result<bool, BoxError> {
        if self.grpc {
            return grpc::read_response(response).await;
        }
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status.is_success())
    }

    fn request(&self, job: &Job) -> Request<Body> {
        let body = &self.bodies[(job.index % self.bodies.len() as u64) as usize];
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if self.http2 {
            *req.version_mut() = Version::HTTP_2;
        }
        if self.connection_per_request {
            req.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(id) = job.user_id {
            req.headers_mut()
                .insert(self.key_header.clone(), HeaderValue::from(id));
        }
        req
    }
}

/// One scheduled request, as handed from the pacer to a connection.
#[derive(Debug)]
struct Job {
    /// The request's place in the schedule, warm-up included: picks its body.
    index: u64,
    /// Latency is measured from here.
    due: Instant,
    /// The step that measures it; `None` during warm-up.
    step: Option<usize>,
    user_id: Option<u32>,
}

/// How one request ended.
enum Outcome {
    /// A response of any status; `ok` for 2xx (or `grpc-status: 0`).
    Response {
        ok: bool,
    },
    Transport(BoxError),
    Timeout,
}

/// `/proc` readings for every `--pid` and the generator, at one moment.
struct Sample {
    at: Instant,
    /// CPU ticks, or why they could not be read.
    ticks: Vec<Result<u64, String>>,
    rss_kib: Vec<Option<u64>>,
}

fn sample(pids: &[u32]) -> Sample {
    Sample {
        at: Instant::now(),
        ticks: pids
            .iter()
            .map(|&pid| cpu::cpu_ticks(pid).map_err(|e| e.to_string()))
            .collect(),
        rss_kib: pids.iter().map(|&pid| cpu::rss_kib(pid).ok()).collect(),
    }
}

/// Runs the load described by `config`. Must be called inside a multi-threaded tokio runtime
/// (the pacer runs on the blocking pool).
pub async fn run(mut config: Config) -> Result<RunOutput, RunError> {
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
    let http2 = config.http2 || config.grpc;
    let tls = match (config.target.tls, &config.tls) {
        (false, _) => None,
        (true, None) => {
            return Err(RunError::Tls(format!(
                "{}: an https:// URL needs a TLS client config (--tls-ca)",
                config.target.url
            )))
        }
        (true, Some(client)) => {
            let name = ServerName::try_from(config.target.server_name.clone()).map_err(|e| {
                RunError::Tls(format!(
                    "{:?} is not a TLS server name: {e}",
                    config.target.server_name
                ))
            })?;
            Some((tokio_rustls::TlsConnector::from(Arc::clone(client)), name))
        }
    };
    let dialer = Dialer { addr, tls, http2 };

    let mut headers = if config.grpc {
        grpc::default_headers()
    } else {
        HeaderMap::new()
    };
    if !http2 {
        headers.insert(HOST, config.target.host.clone());
    }
    for (name, value) in &config.headers {
        headers.insert(name, value.clone());
    }

    // Connect first, so connection set-up is not part of any request's latency.
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let conn = tokio::time::timeout(config.timeout, connect(&dialer))
            .await
            .unwrap_or_else(|_| Err("connect timed out".into()))
            .map_err(|e| RunError::Connect {
                addr,
                message: error_chain(&*e),
            })?;
        conns.push(conn);
    }

    let start = Instant::now() + Duration::from_millis(10);
    let schedule = Schedule::stepped(start, config.warmup, &config.steps);
    let steps = schedule.steps();
    let live = config.progress.is_some().then(|| Arc::new(Live::default()));
    let shared = Arc::new(Shared {
        dialer,
        http2,
        connection_per_request: config.connection_per_request && !http2,
        grpc: config.grpc,
        method: if config.grpc {
            Method::POST
        } else {
            config.method.clone()
        },
        uri: if config.grpc {
            config.target.with_path(grpc::path())
        } else if http2 {
            config.target.absolute.clone()
        } else {
            config.target.origin_form.clone()
        },
        key_header: config.key_header.clone(),
        headers,
        bodies: config.bodies.clone(),
        timeout: config.timeout,
        hard_deadline: schedule.measure_end() + config.timeout,
        measure_start: schedule.measure_start(),
        bucket: config.bucket,
        steps,
        live: live.clone(),
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
        let live = live.clone();
        tokio::task::spawn_blocking(move || {
            pace(
                &schedule,
                &senders,
                user_ids.as_ref(),
                seed,
                spin,
                live.as_deref(),
            )
        })
    };

    let scenario = {
        let events = std::mem::take(&mut config.scenario.events);
        let origin = tokio::time::Instant::from(schedule.measure_start());
        tokio::spawn(scenario::run_events(origin, events, scenario::execute))
    };

    let (stop_progress, stopped) = tokio::sync::oneshot::channel();
    let progress = match (config.progress.take(), live) {
        (Some(printer), Some(live)) => Some(tokio::spawn(show_progress(
            printer,
            live,
            schedule.clone(),
            stopped,
        ))),
        _ => None,
    };

    // One `/proc` sample at the start of every step, and one when everything is done.
    let me = std::process::id();
    let pids: Vec<u32> = config.pids.iter().copied().chain([me]).collect();
    let mut samples = Vec::with_capacity(steps + 1);
    for k in 0..steps {
        tokio::time::sleep_until(schedule.step_start(k).into()).await;
        samples.push(sample(&pids));
    }

    let lags = pacer.await.expect("pacer thread panicked");
    let mut stats = Stats::new(&shared);
    for task in tasks {
        stats.merge(task.await.expect("connection task panicked"));
    }
    samples.push(sample(&pids));
    let events = scenario.await.expect("scenario task panicked");
    if let Some(progress) = progress {
        let _ = stop_progress.send(());
        let _ = progress.await;
    }

    let total_s = schedule
        .measure_end()
        .duration_since(schedule.measure_start())
        .as_secs_f64();
    let timeline = TimelineReport {
        bucket_s: config.bucket.as_secs_f64(),
        buckets: stats
            .timeline
            .finish(schedule.measure_end() - schedule.measure_start()),
    };

    // The mean over the distinct bodies, which the requests send equally often (up to one
    // partial cycle).
    let body_bytes = config.bodies.iter().map(Bytes::len).sum::<usize>() / config.bodies.len();
    let mut reports = Vec::with_capacity(steps);
    for (k, (mut tally, lag)) in stats.steps.into_iter().zip(lags).enumerate() {
        let step_start = schedule.step_start(k);
        let step_end = schedule.step_end(k);
        let last = k + 1 == steps;
        let window_end = tally.last_done.map_or(step_end, |t| t.max(step_end));
        let window = window_end.duration_since(step_start).as_secs_f64();
        let completed = tally.completed;
        let (before, after) = (&samples[k], &samples[k + 1]);
        let sampled = after.at.duration_since(before.at).as_secs_f64();
        let mut usage: Vec<ProcessUsage> = pids
            .iter()
            .enumerate()
            .map(|(p, &pid)| {
                process_usage(pid, before, after, p, completed, sampled, ticks_per_second)
            })
            .collect();
        let generator = usage.pop().expect("own pid is always sampled");
        let from_s = step_start
            .duration_since(schedule.measure_start())
            .as_secs_f64();
        let to_s = if last {
            f64::INFINITY
        } else {
            step_end
                .duration_since(schedule.measure_start())
                .as_secs_f64()
        };
        let step_events: Vec<EventRecord> = events
            .iter()
            .filter(|e| e.at_s >= from_s && (e.at_s < to_s || (last && e.at_s <= total_s)))
            .cloned()
            .collect();
        reports.push(Report {
            label: config.label.clone(),
            url: config.target.url.clone(),
            method: shared.method.to_string(),
            http2,
            grpc: config.grpc,
            connections: config.connections,
            body_bytes,
            rows: config.rows.as_ref().map(|r| r.file.clone()),
            batch: config.rows.as_ref().map(|r| r.batch),
            target_rps: schedule.step_rate(k).per_second(),
            warmup_s: config.warmup.as_secs_f64(),
            duration_s: schedule.step_duration(k).as_secs_f64(),
            step: (steps > 1).then_some(StepInfo {
                index: k + 1,
                count: steps,
                start_s: from_s,
            }),
            achieved_rps: completed as f64 / window,
            sent: schedule.step_requests(k),
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
            timeline: timeline.slice(from_s, to_s),
            events: step_events,
        });
    }

    Ok(RunOutput {
        reports,
        timeline,
        events,
    })
}

/// Prints the progress line every second until `stop` fires, then once more.
async fn show_progress(
    mut printer: Printer,
    live: Arc<Live>,
    schedule: Schedule,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let line = |live: &Live, phase: &str| format_line(start.elapsed(), phase, &live.snapshot());
    loop {
        tokio::select! {
            _ = tick.tick() => printer.print(&line(&live, &phase(&schedule, Instant::now()))),
            _ = &mut stop => break,
        }
    }
    printer.print(&line(&live, "done"));
    printer.finish();
}

/// Which part of the schedule `now` is in, for the progress line.
fn phase(schedule: &Schedule, now: Instant) -> String {
    if now < schedule.measure_start() {
        return "warm-up".to_owned();
    }
    if now >= schedule.measure_end() {
        return "draining".to_owned();
    }
    let steps = schedule.steps();
    let k = (0..steps)
        .find(|&k| now < schedule.step_end(k))
        .unwrap_or(steps - 1);
    let rate = schedule.step_rate(k).per_second();
    if steps == 1 {
        format!("measuring {rate} rps")
    } else {
        format!("step {}/{steps} {rate} rps", k + 1)
    }
}

fn process_usage(
    pid: u32,
    before: &Sample,
    after: &Sample,
    p: usize,
    completed: u64,
    sampled_secs: f64,
    ticks_per_second: u64,
) -> ProcessUsage {
    match (&before.ticks[p], &after.ticks[p]) {
        (Ok(b), Ok(a)) => {
            let cpu_ms = a.saturating_sub(*b) as f64 * 1000.0 / ticks_per_second as f64;
            ProcessUsage {
                pid,
                cpu_ms,
                cpu_us_per_req: (completed > 0).then(|| cpu_ms * 1000.0 / completed as f64),
                cpu_percent: cpu_ms / 10.0 / sampled_secs,
                rss_kib: after.rss_kib[p],
                error: None,
            }
        }
        (Err(e), _) | (_, Err(e)) => ProcessUsage {
            pid,
            cpu_ms: 0.0,
            cpu_us_per_req: None,
            cpu_percent: 0.0,
            rss_kib: None,
            error: Some(e.clone()),
        },
    }
}

/// The pacer: hands each request to its connection at its due time. Returns, per step, how
/// late each measured hand-off was, in µs.
fn pace(
    schedule: &Schedule,
    senders: &[mpsc::UnboundedSender<Job>],
    user_ids: Option<&Zipf>,
    seed: u64,
    spin: Duration,
    live: Option<&Live>,
) -> Vec<Histogram<u64>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut lags: Vec<_> = (0..schedule.steps()).map(|_| new_histogram()).collect();
    for (i, due, step) in schedule.requests() {
        let user_id = user_ids.map(|z| z.sample(&mut rng));
        wait_until(due, spin);
        if let Some(k) = step {
            record_us(
                &mut lags[k],
                micros(Instant::now().saturating_duration_since(due)),
            );
        }
        if let Some(live) = live {
            live.sent();
        }
        // A send fails only if the connection task is gone; it reports its own failure.
        let job = Job {
            index: i,
            due,
            step,
            user_id,
        };
        let _ = senders[(i % senders.len() as u64) as usize].send(job);
    }
    lags
}

/// What one connection saw: a tally per step and its part of the timeline.
struct Stats {
    steps: Vec<Tally>,
    timeline: Timeline,
    live: Option<Arc<Live>>,
}

impl Stats {
    fn new(shared: &Shared) -> Self {
        Stats {
            steps: (0..shared.steps).map(|_| Tally::default()).collect(),
            timeline: Timeline::new(shared.measure_start, shared.bucket),
            live: shared.live.clone(),
        }
    }

    fn merge(&mut self, other: Stats) {
        for (mine, theirs) in self.steps.iter_mut().zip(other.steps) {
            mine.merge(theirs);
        }
        self.timeline.merge(other.timeline);
    }

    /// A request still queued at the hard deadline.
    fn unfinished(&mut self, job: &Job) {
        if let Some(k) = job.step {
            self.steps[k].unfinished += 1;
            self.timeline.error(job.due);
        }
    }

    fn record(&mut self, job: &Job, outcome: Outcome) {
        let done = Instant::now();
        let latency = micros(done.saturating_duration_since(job.due));
        if let Some(live) = &self.live {
            match outcome {
                Outcome::Response { ok: true } => live.ok(latency),
                _ => live.error(),
            }
        }
        let Some(k) = job.step else {
            return;
        };
        let tally = &mut self.steps[k];
        tally.last_done = tally.last_done.max(Some(done));
        match outcome {
            Outcome::Response { ok } => {
                tally.completed += 1;
                if ok {
                    record_us(&mut tally.latency, latency);
                    self.timeline.ok(job.due, latency);
                } else {
                    tally.status_errors += 1;
                    self.timeline.error(job.due);
                }
            }
            Outcome::Transport(e) => {
                tally.transport_errors += 1;
                self.timeline.error(job.due);
                if tally.first_error.is_none() {
                    tally.first_error = Some(error_chain(&*e));
                }
            }
            Outcome::Timeout => {
                tally.timeouts += 1;
                self.timeline.error(job.due);
            }
        }
    }
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

async fn connect(dialer: &Dialer) -> Result<Conn, BoxError> {
    Ok(if dialer.http2 {
        Conn::H2(connect_h2(dialer).await?)
    } else {
        Conn::H1(connect_h1(dialer).await?)
    })
}

async fn connect_tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP, then the TLS handshake when the target is `https://`.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn dial(dialer: &Dialer) -> Result<Stream, BoxError> {
    let tcp = connect_tcp(dialer.addr).await?;
    let Some((connector, name)) = &dialer.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let stream = connector.connect(name.clone(), tcp).await?;
    if dialer.http2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server did not choose h2 over ALPN".into());
    }
    Ok(Stream::Tls(Box::new(stream)))
}

async fn connect_h1(dialer: &Dialer) -> Result<http1::SendRequest<Body>, BoxError> {
    match dial(dialer).await? {
        Stream::Plain(s) => h1_over(TokioIo::new(s)).await,
        Stream::Tls(s) => h1_over(TokioIo::new(s)).await,
    }
}

async fn h1_over<I>(io: I) -> Result<http1::SendRequest<Body>, BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io).await?;
    // The connection's own error surfaces through the next `send_request`.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connect_h2(dialer: &Dialer) -> Result<http2::SendRequest<Body>, BoxError> {
    match dial(dialer).await? {
        Stream::Plain(s) => h2_over(TokioIo::new(s)).await,
        Stream::Tls(s) => h2_over(TokioIo::new(s)).await,
    }
}

async fn h2_over<I>(io: I) -> Result<http2::SendRequest<Body>, BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
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
) -> Stats {
    let mut stats = Stats::new(&shared);
    let mut sender = Some(sender);
    while let Some(job) = rx.recv().await {
        let now = Instant::now();
        if now >= shared.hard_deadline {
            stats.unfinished(&job);
            continue;
        }
        let deadline = (now + shared.timeout).min(shared.hard_deadline);
        let exchange = exchange_h1(&shared, &mut sender, &job);
        let outcome = match tokio::time::timeout_at(deadline.into(), exchange).await {
            Ok(Ok(ok)) => Outcome::Response { ok },
            Ok(Err(e)) => Outcome::Transport(e),
            Err(_) => Outcome::Timeout,
        };
        if !matches!(outcome, Outcome::Response { .. }) {
            // The connection may be mid-response: never reuse it.
            sender = None;
        }
        stats.record(&job, outcome);
    }
    stats
}

async fn exchange_h1(
    shared: &Shared,
    sender: &mut Option<http1::SendRequest<Body>>,
    job: &Job,
) -> Result<bool, BoxError> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect_h1(&shared.dialer).await?);
    }
    let conn = sender.as_mut().expect("connected above");
    conn.ready().await?;
    let response = conn.send_request(shared.request(job)).await?;
    let ok = shared.read_response(response).await?;
    if shared.connection_per_request {
        // `connection: close`: hyper closes it; the next request dials again.
        *sender = None;
    }
    Ok(ok)
}

/// h2: requests are multiplexed, each in its own task, on one connection.
async fn drive_h2(
    shared: Arc<Shared>,
    sender: http2::SendRequest<Body>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) -> Stats {
    let mut stats = Stats::new(&shared);
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
                    stats.unfinished(&job);
                    continue;
                }
                let deadline = tokio::time::Instant::from((now + shared.timeout).min(shared.hard_deadline));
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    match tokio::time::timeout_at(deadline, connect_h2(&shared.dialer)).await {
                        Ok(Ok(s)) => sender = Some(s),
                        Ok(Err(e)) => {
                            stats.record(&job, Outcome::Transport(e));
                            continue;
                        }
                        Err(_) => {
                            stats.record(&job, Outcome::Timeout);
                            continue;
                        }
                    }
                }
                let mut s = sender.clone().expect("connected above");
                let request = shared.request(&job);
                let shared = shared.clone();
                in_flight.spawn(async move {
                    let exchange = async {
                        s.ready().await?;
                        let response = s.send_request(request).await?;
                        shared.read_response(response).await
                    };
                    let outcome = match tokio::time::timeout_at(deadline, exchange).await {
                        Ok(Ok(ok)) => Outcome::Response { ok },
                        Ok(Err(e)) => Outcome::Transport(e),
                        Err(_) => Outcome::Timeout,
                    };
                    (job, outcome)
                });
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let (job, outcome) = done.expect("request task panicked");
                stats.record(&job, outcome);
            }
            else => break,
        }
    }
    stats
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
        let t = Target::parse("https://[::1]/p").unwrap();
        assert!(t.is_tls());
        assert_eq!(t.connect_to, "[::1]:443");
        assert_eq!(t.server_name, "::1");
        assert_eq!(t.absolute, "https://[::1]/p");
        let t = Target::parse("https://localhost:8443/").unwrap();
        assert_eq!(
            (t.connect_to.as_str(), t.server_name.as_str()),
            ("localhost:8443", "localhost")
        );
        assert!(!Target::parse("http://localhost/").unwrap().is_tls());
        assert!(matches!(
            Target::parse("ftp://x/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("/just/a/path"),
            Err(TargetError::Scheme(_))
        ));
        assert!(Target::parse("http://exa mple/").is_err());
    }
}
