//! `cascadia-load`: open-loop HTTP load at a constant arrival rate, corrected for coordinated
//! omission. Parses the command line, reads the scenario file, runs
//! [`cascadia_loadtests::run::run`], prints the report(s) and writes the plot.
//!
//! Bodies: none (GET), `--body-bytes`, the synthetic `--oip-rows`, or the user's own feature
//! rows with `--rows FILE` (CSV or `.npy`), `--batch` rows a request, as the OIP input
//! `--input` of `--datatype`, with `--output` names; each over REST or `--grpc`.
//!
//! Exit status: 0 when the run completed (even if requests or scenario actions failed: they
//! are in the report), 1 when it could not run (unresolvable host, refused connection,
//! unreadable `--pid`) or the plot could not be written, 2 on bad arguments.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};

use cascadia_loadtests::duration::parse_duration;
use cascadia_loadtests::grpc::{model_infer_body, model_infer_rows_body};
use cascadia_loadtests::payload::{oip_infer_body, raw_body, rows_infer_body, Zipf};
use cascadia_loadtests::plot::{self, Mark, MarkKind};
use cascadia_loadtests::progress::Printer;
use cascadia_loadtests::rate::{Rate, Step};
use cascadia_loadtests::rows::{Bodies, Datatype, Rows};
use cascadia_loadtests::run::{run, Config, RowsSource, RunOutput, Target};
use cascadia_loadtests::scenario::{expand_vars, Scenario};

/// Open-loop HTTP load generator, corrected for coordinated omission.
///
/// Request i is due at start + i/rate. Requests go to the connections round-robin; a request
/// whose connection is busy waits, and latency is measured from its due time, so the wait
/// counts. Latencies are for 2xx responses, in µs, from due time to the end of the body.
#[derive(Debug, Parser)]
#[command(name = "cascadia-load", version)]
struct Args {
    /// Target URL, http:// or https:// (e.g. http://127.0.0.1:8080/v2/models/fraud/infer);
    /// https:// needs --tls-ca.
    #[arg(long)]
    url: String,

    /// PEM file of the CA certificate(s) to trust for an https:// URL (the system's CAs are
    /// not used). ALPN offers http/1.1, or h2 with --http2/--grpc; TLS 1.3 or 1.2 (rustls,
    /// ring). The client keeps no TLS sessions: every new connection is a full handshake.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// Open a new connection for every request (HTTP/1.1 only), sending `connection: close`,
    /// so each request pays a TCP connect and, over https://, a full TLS handshake.
    /// --connections is then how many requests are in flight at most.
    #[arg(long, conflicts_with_all = ["http2", "grpc"])]
    connection_per_request: bool,

    /// Arrival rate, requests per second (fractions allowed).
    #[arg(
        long,
        required_unless_present = "rate_steps",
        conflicts_with = "rate_steps"
    )]
    rate: Option<f64>,

    /// Measured window (units: us, ms, s, m, h; e.g. 30s, 500ms, 1m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,

    /// Run these rates in turn, e.g. "500,1000,2000", each for --step-duration, after one
    /// warm-up at the first rate; one report per step.
    #[arg(long, value_name = "RPS,RPS,...")]
    rate_steps: Option<String>,

    /// Measured time of each step of --rate-steps [default: --duration].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    step_duration: Option<Duration>,

    /// Warm-up before the window; sent, then discarded.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warmup: Duration,

    /// Connections, each carrying one request at a time over HTTP/1.1.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Use h2c (HTTP/2 with prior knowledge); requests multiplex on each connection.
    #[arg(long)]
    http2: bool,

    /// Send OIP gRPC ModelInfer over h2c instead of REST, with the --rows batches or the
    /// --oip-rows features (default 1 row). Success is grpc-status 0. The URL's path only
    /// names the model.
    #[arg(long, conflicts_with_all = ["body_bytes", "method"])]
    grpc: bool,

    /// Model name for --grpc [default: NAME from a /v2/models/NAME/... URL].
    #[arg(long, requires = "grpc")]
    model: Option<String>,

    /// HTTP method [default: POST when a body is set, else GET].
    #[arg(long)]
    method: Option<Method>,

    /// Send an OIP V2 infer JSON body: one FP32 input "features" of shape [N, 32].
    #[arg(long, value_name = "N", conflicts_with = "body_bytes")]
    oip_rows: Option<usize>,

    /// Send a raw body of N bytes (application/octet-stream).
    #[arg(long, value_name = "N")]
    body_bytes: Option<usize>,

    /// Send your own feature rows: a CSV file (comma-separated numbers, every row the same
    /// width; a first line with no numbers is a header and skipped; blank and '#' lines are
    /// ignored) or a NumPy .npy file (2-D, C order, dtype <f8, <f4, <i8 or <i4). Each request
    /// carries one OIP input, --input, of shape [--batch, width] and type --datatype: a JSON
    /// infer body over REST, typed contents over --grpc. Bodies are encoded before the run.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["oip_rows", "body_bytes"])]
    rows: Option<PathBuf>,

    /// Rows per request, with --rows: request i carries the N rows from row (i*N) mod the
    /// file's row count, wrapping around to the first row, so a run cycles over the file.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "rows")]
    batch: usize,

    /// Name of the --rows input tensor (a cascade route's `input` setting).
    #[arg(long, value_name = "NAME", default_value = "x", requires = "rows")]
    input: String,

    /// OIP datatype of the --rows input; the file's values are converted to it, and a value
    /// that does not fit (1.5 as INT64, 2^40 as INT32) is an error.
    #[arg(
        long,
        default_value = "FP64",
        requires = "rows",
        ignore_case = true,
        value_parser = PossibleValuesParser::new(Datatype::NAMES)
            .map(|s| s.parse::<Datatype>().expect("one of the possible values")),
    )]
    datatype: Datatype,

    /// Ask for this output by name, with --rows; repeatable or comma-separated. Without it
    /// the request names no outputs, as a default client does, and gets all of them.
    #[arg(
        long = "output",
        value_name = "NAME",
        value_delimiter = ',',
        requires = "rows"
    )]
    outputs: Vec<String>,

    /// Extra request header, 'name: value'; repeatable. Overrides the defaults.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,

    /// Set a Zipf(1.0)-distributed id in 1..=N on each request, in the
    /// header named by --key-header.
    #[arg(long, value_name = "N")]
    user_ids: Option<u32>,

    /// The header that carries --user-ids: x-user-id for sticky canaries,
    /// or a cascade's entity key header (e.g. x-entity).
    #[arg(long, value_name = "NAME", default_value = "x-user-id")]
    key_header: HeaderName,

    /// Report CPU µs per request and RSS of this process over the window; repeatable.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,

    /// Tokio worker threads for the generator.
    #[arg(long, default_value_t = 1)]
    workers: usize,

    /// Free-form name copied into the output.
    #[arg(long)]
    label: Option<String>,

    /// Per-request timeout, from sending to the end of the response body.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,

    /// The pacer sleeps until this long before each due time, then yields in a loop, so that
    /// OS timer lateness (~85 µs here) is not charged to the target. 0 = sleep only.
    #[arg(long, default_value = "100us", value_parser = parse_duration)]
    timer_spin: Duration,

    /// Seed for the user-id sequence and the --oip-rows values.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Width of the latency-over-time buckets in the JSON report and the plot.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    bucket: Duration,

    /// TOML file of timed actions (kill, stop, cont, reload, drill, http, sim_latency, exec)
    /// from the start of the measured window; ${NAME} expands environment variables.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,

    /// Write an SVG plot of p50/p99 and errors over time, with the scenario's events.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// Print a progress line on stderr every second [default: when stderr is a terminal].
    #[arg(long, conflicts_with = "quiet")]
    progress: bool,

    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let workers = args.workers;
    let plot_path = args.plot.clone();
    let stderr_tty = std::io::stderr().is_terminal();
    let progress = (args.progress || (stderr_tty && !args.quiet)).then(|| Printer::new(stderr_tty));
    let scenario = match read_scenario(args.scenario.as_deref()) {
        Ok(s) => s,
        Err(message) => Args::command()
            .error(ErrorKind::ValueValidation, message)
            .exit(),
    };
    let config = match build_config(args, scenario, progress) {
        Ok(config) => config,
        Err((kind, message)) => Args::command().error(kind, message).exit(),
    };
    let title = plot_title(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let output = match runtime.block_on(run(config)) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("cascadia-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let steps = output.reports.len();
    for (k, report) in output.reports.iter().enumerate() {
        if json {
            println!(
                "{}",
                serde_json::to_string(report).expect("the report serializes")
            );
        } else {
            if k > 0 {
                println!();
            }
            print!("{report}");
        }
    }
    if let Some(path) = plot_path {
        let marks = plot_marks(&output, steps);
        let svg = plot::render(
            &title,
            &output.timeline.buckets,
            output.timeline.bucket_s,
            output.reports.iter().map(|r| r.duration_s).sum(),
            &marks,
        );
        if let Err(e) = std::fs::write(&path, svg) {
            eprintln!("cascadia-load: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Reads and validates `--scenario`, expanding `${NAME}` from the environment.
fn read_scenario(path: Option<&std::path::Path>) -> Result<Scenario, String> {
    let Some(path) = path else {
        return Ok(Scenario::default());
    };
    let fail = |e: &dyn std::fmt::Display| format!("--scenario {}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    let text = expand_vars(&text, |name| std::env::var(name).ok()).map_err(|e| fail(&e))?;
    Scenario::parse(&text).map_err(|e| fail(&e))
}

/// Step starts (for stepped runs) and every scenario event, at the time it really started.
fn plot_marks(output: &RunOutput, steps: usize) -> Vec<Mark> {
    let step_marks = output.reports.iter().filter(|_| steps > 1).map(|r| Mark {
        t_s: r.step.map_or(0.0, |s| s.start_s),
        label: format!("{} rps", r.target_rps),
        kind: MarkKind::Step,
    });
    let event_marks = output.events.iter().map(|e| Mark {
        t_s: e.started_s,
        label: format!("{:.1}s {}", e.started_s, e.label),
        kind: MarkKind::Event { ok: e.ok },
    });
    step_marks.chain(event_marks).collect()
}

fn plot_title(config: &Config) -> String {
    let rates: Vec<String> = config
        .steps
        .iter()
        .map(|s| format!("{}", s.rate.per_second()))
        .collect();
    let what = if config.grpc { "gRPC" } else { "REST" };
    let name = config.label.as_deref().unwrap_or("cascadia-load");
    format!(
        "{name}: {what} at {} rps, {} connections",
        rates.join("→"),
        config.connections
    )
}

/// Parses `--rate-steps`: comma-separated positive rates.
fn parse_rate_steps(list: &str) -> Result<Vec<Rate>, String> {
    list.split(',')
        .map(|s| {
            let s = s.trim();
            let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
            Rate::new(v).map_err(|e| e.to_string())
        })
        .collect()
}

/// Validates the arguments into a [`Config`]; errors carry clap's kind so they exit with 2.
fn build_config(
    args: Args,
    scenario: Scenario,
    progress: Option<Printer>,
) -> Result<Config, (ErrorKind, String)> {
    let invalid = |message: String| (ErrorKind::ValueValidation, message);
    let target = Target::parse(&args.url).map_err(|e| invalid(format!("--url: {e}")))?;
    let tls = match (&args.tls_ca, target.is_tls()) {
        (None, true) => return Err(invalid("--url: an https:// URL needs --tls-ca".into())),
        (Some(_), false) => return Err(invalid("--tls-ca needs an https:// --url".into())),
        (None, false) => None,
        (Some(ca), true) => Some(
            tls_client(ca, args.http2 || args.grpc)
                .map_err(|e| invalid(format!("--tls-ca {}: {e}", ca.display())))?,
        ),
    };
    if args.duration.is_zero() {
        return Err(invalid("--duration must be greater than 0".into()));
    }
    if args.step_duration.is_some() && args.rate_steps.is_none() {
        return Err(invalid("--step-duration needs --rate-steps".into()));
    }
    let steps: Vec<Step> = match (args.rate, &args.rate_steps) {
        (Some(rate), _) => vec![Step {
            rate: Rate::new(rate).map_err(|e| invalid(format!("--rate: {e}")))?,
            duration: args.duration,
        }],
        (None, Some(list)) => {
            let duration = args.step_duration.unwrap_or(args.duration);
            if duration.is_zero() {
                return Err(invalid("--step-duration must be greater than 0".into()));
            }
            parse_rate_steps(list)
                .map_err(|e| invalid(format!("--rate-steps: {e}")))?
                .into_iter()
                .map(|rate| Step { rate, duration })
                .collect()
        }
        (None, None) => return Err(invalid("give --rate or --rate-steps".into())),
    };
    let measured: Duration = steps.iter().map(|s| s.duration).sum();
    if let Some(last) = scenario.last_at().filter(|&at| at > measured) {
        return Err(invalid(format!(
            "--scenario: an event at {last:?} is after the end of the {measured:?} measured window"
        )));
    }
    if args.bucket.is_zero() {
        return Err(invalid("--bucket must be greater than 0".into()));
    }
    if args.connections == 0 {
        return Err(invalid("--connections must be at least 1".into()));
    }
    if args.workers == 0 {
        return Err(invalid("--workers must be at least 1".into()));
    }
    if args.timeout.is_zero() {
        return Err(invalid("--timeout must be greater than 0".into()));
    }

    let mut headers = HeaderMap::new();
    let model = if args.grpc {
        Some(match &args.model {
            Some(m) => m.clone(),
            None => cascadia_oip::path::parse(target.path())
                .and_then(|p| p.model)
                .ok_or_else(|| {
                    invalid("--grpc: give --model, or a URL path /v2/models/NAME/...".into())
                })?
                .to_owned(),
        })
    } else {
        None
    };
    let json = HeaderValue::from_static("application/json");
    let bodies: Option<Vec<Bytes>> = match (&args.rows, args.oip_rows, args.body_bytes) {
        (Some(path), _, _) => {
            if model.is_none() {
                headers.insert(CONTENT_TYPE, json);
            }
            Some(rows_bodies(&args, path, model.as_deref()).map_err(invalid)?)
        }
        (None, Some(0), _) => return Err(invalid("--oip-rows must be at least 1".into())),
        (None, rows, _) if model.is_some() => {
            let model = model.as_deref().expect("checked by the guard");
            Some(vec![model_infer_body(model, rows.unwrap_or(1), args.seed)])
        }
        (None, Some(rows), _) => {
            headers.insert(CONTENT_TYPE, json);
            Some(vec![oip_infer_body(rows, args.seed)])
        }
        (None, None, Some(len)) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Some(vec![raw_body(len)])
        }
        (None, None, None) => None,
    };
    for raw in &args.headers {
        let (name, value) = raw
            .split_once(':')
            .ok_or_else(|| invalid(format!("--header {raw:?}: expected 'name: value'")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| invalid(format!("--header {raw:?}: {e}")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|e| invalid(format!("--header {raw:?}: {e}")))?;
        headers.insert(name, value);
    }
    let user_ids = args
        .user_ids
        .map(Zipf::new)
        .transpose()
        .map_err(|e| invalid(format!("--user-ids: {e}")))?;

    Ok(Config {
        target,
        warmup: args.warmup,
        steps,
        connections: args.connections,
        http2: args.http2 || args.grpc,
        tls,
        connection_per_request: args.connection_per_request,
        grpc: args.grpc,
        method: args.method.unwrap_or(if bodies.is_some() {
            Method::POST
        } else {
            Method::GET
        }),
        headers,
        bodies: Arc::from(bodies.unwrap_or_else(|| vec![Bytes::new()])),
        rows: args.rows.as_ref().map(|path| RowsSource {
            file: path.display().to_string(),
            batch: args.batch,
        }),
        user_ids,
        key_header: args.key_header,
        pids: args.pids,
        timeout: args.timeout,
        timer_spin: args.timer_spin,
        seed: args.seed,
        label: args.label,
        bucket: args.bucket,
        scenario,
        progress,
    })
}

/// The client TLS config for `--tls-ca`: trusts the CAs in the PEM file, offers `h2` or
/// `http/1.1` over ALPN, and keeps no sessions (every connection a full handshake).
fn tls_client(ca: &std::path::Path, http2: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(ca).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate that is not a usable CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Reads `--rows` and encodes one body per distinct `--batch`: OIP JSON, or a framed
/// `ModelInferRequest` for `model` with `--grpc`. Errors name the file and what is wrong.
fn rows_bodies(
    args: &Args,
    path: &std::path::Path,
    model: Option<&str>,
) -> Result<Vec<Bytes>, String> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let rows = Rows::read(path, args.datatype).map_err(|e| format!("--rows {e}"))?;
    let (input, outputs) = (args.input.as_str(), args.outputs.as_slice());
    let built = Bodies::build(&rows, args.batch, |batch| match model {
        Some(model) => model_infer_rows_body(model, input, batch, outputs),
        None => rows_infer_body(input, batch, outputs),
    });
    if built.is_cut() {
        // Not an error: the run is still deterministic, it just repeats sooner.
        let covered = (built.bodies.len() * args.batch).min(rows.len());
        eprintln!(
            "cascadia-load: note: --rows {}: {} rows in batches of {} repeat only after {} \
             requests; to bound memory the run cycles over the first {} batches (rows 1 to {})",
            path.display(),
            rows.len(),
            args.batch,
            built.cycle,
            built.bodies.len(),
            covered,
        );
    }
    Ok(built.bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, (ErrorKind, String)> {
        let mut argv = vec![
            "cascadia-load",
            "--url",
            "http://127.0.0.1:1/",
            "--rate",
            "10",
        ];
        argv.extend_from_slice(extra);
        build_config(
            Args::try_parse_from(argv).expect("clap accepts"),
            Scenario::default(),
            None,
        )
    }

    fn parse_without_rate(extra: &[&str]) -> Result<Config, (ErrorKind, String)> {
        let mut argv = vec![
            "cascadia-load",
            "--url",
            "http://127.0.0.1:1/v2/models/fraud/infer",
        ];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).map_err(|e| (e.kind(), e.to_string()))?;
        build_config(args, Scenario::default(), None)
    }

    #[test]
    fn rate_steps() {
        let c = parse_without_rate(&["--rate-steps", "500, 1000,2000.5", "--step-duration", "5s"])
            .unwrap();
        let rates: Vec<f64> = c.steps.iter().map(|s| s.rate.per_second()).collect();
        assert_eq!(rates, [500.0, 1000.0, 2000.5]);
        assert!(c.steps.iter().all(|s| s.duration == Duration::from_secs(5)));
        // Without --step-duration each step lasts --duration.
        let c = parse_without_rate(&["--rate-steps", "1,2", "--duration", "7s"]).unwrap();
        assert!(c.steps.iter().all(|s| s.duration == Duration::from_secs(7)));
        for bad in [
            &["--rate-steps", "1,,2"][..],
            &["--rate-steps", "1,0"],
            &["--rate-steps", "fast"],
            &["--rate-steps", "1", "--rate", "1"],
            &["--step-duration", "1s", "--rate", "1"],
            &[],
        ] {
            assert!(parse_without_rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&[]).unwrap().steps.len(), 1);
    }

    #[test]
    fn the_zipf_key_goes_in_the_chosen_header() {
        let c = parse(&["--user-ids", "100"]).unwrap();
        assert_eq!(c.key_header, "x-user-id");
        let c = parse(&["--user-ids", "100", "--key-header", "x-entity"]).unwrap();
        assert_eq!(c.key_header, "x-entity");
        let bad = [
            "cascadia-load",
            "--url",
            "http://x/",
            "--rate",
            "1",
            "--key-header",
            "a b",
        ];
        assert!(Args::try_parse_from(bad).is_err(), "not a header name");
    }

    #[test]
    fn grpc_body_and_model() {
        use cascadia_oip::grpc::{decode_frame, ModelInferRequest};
        use prost::Message;
        let c = parse_without_rate(&["--rate", "1", "--grpc", "--oip-rows", "3"]).unwrap();
        assert!(c.grpc && c.http2);
        let (_, msg) = decode_frame(&c.bodies[0]).unwrap();
        let req = ModelInferRequest::decode(msg).unwrap();
        assert_eq!(req.model_name, "fraud");
        assert_eq!(req.inputs[0].shape, [3, 32]);
        let c = parse(&["--grpc", "--model", "other"]).unwrap();
        let req = ModelInferRequest::decode(decode_frame(&c.bodies[0]).unwrap().1).unwrap();
        assert_eq!(req.model_name, "other");
        assert_eq!(req.inputs[0].shape, [1, 32]);
        // No model in the URL and none given.
        assert!(parse(&["--grpc"]).is_err());
        assert!(parse_without_rate(&["--rate", "1", "--grpc", "--body-bytes", "3"]).is_err());
    }

    /// A file under the temp dir, unique to this process and `name`, holding `contents`.
    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("cascadia-load-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn rows_over_rest() {
        let csv = temp_file("rest.csv", b"a,b\n1,2\n3,4\n5,6\n");
        let c = parse_without_rate(&[
            "--rate",
            "1",
            "--rows",
            csv.to_str().unwrap(),
            "--batch",
            "2",
        ])
        .unwrap();
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.headers[CONTENT_TYPE], "application/json");
        let rows = c.rows.as_ref().unwrap();
        assert_eq!((rows.file.as_str(), rows.batch), (csv.to_str().unwrap(), 2));
        // 3 rows in batches of 2: starts 0, 2, 1, then 0 again.
        let data: Vec<serde_json::Value> = c
            .bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                assert_eq!(v["inputs"][0]["name"], "x");
                assert_eq!(v["inputs"][0]["datatype"], "FP64");
                assert_eq!(v["inputs"][0]["shape"], serde_json::json!([2, 2]));
                assert!(v.get("outputs").is_none());
                v["inputs"][0]["data"].clone()
            })
            .collect();
        assert_eq!(
            data,
            [
                serde_json::json!([1.0, 2.0, 3.0, 4.0]),
                serde_json::json!([5.0, 6.0, 1.0, 2.0]),
                serde_json::json!([3.0, 4.0, 5.0, 6.0]),
            ]
        );
        let c = parse(&[
            "--rows",
            csv.to_str().unwrap(),
            "--input",
            "features",
            "--datatype",
            "int32",
            "--output",
            "proba,label",
            "--output",
            "extra",
        ])
        .unwrap();
        assert_eq!(c.bodies.len(), 3, "batch 1: one body per row");
        let v: serde_json::Value = serde_json::from_slice(&c.bodies[2]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "inputs": [{"name": "features", "shape": [1, 2], "datatype": "INT32", "data": [5, 6]}],
                "outputs": [{"name": "proba"}, {"name": "label"}, {"name": "extra"}],
            })
        );
        std::fs::remove_file(csv).unwrap();
    }

    #[test]
    fn rows_over_grpc() {
        use cascadia_oip::grpc::{decode_frame, ModelInferRequest};
        use prost::Message;
        // An `.npy` of int64 [[1, 2], [3, 4]], as numpy.save writes it.
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let mut header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }".to_owned();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        npy.extend(u16::try_from(header.len()).unwrap().to_le_bytes());
        npy.extend(header.as_bytes());
        npy.extend([1i64, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()));
        let file = temp_file("grpc.npy", &npy);
        let c = parse_without_rate(&[
            "--rate",
            "1",
            "--grpc",
            "--rows",
            file.to_str().unwrap(),
            "--datatype",
            "INT64",
            "--output",
            "proba",
        ])
        .unwrap();
        assert!(c.grpc);
        assert_eq!(
            c.headers.get(CONTENT_TYPE),
            None,
            "run() sets application/grpc"
        );
        let reqs: Vec<ModelInferRequest> = c
            .bodies
            .iter()
            .map(|b| ModelInferRequest::decode(decode_frame(b).unwrap().1).unwrap())
            .collect();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].model_name, "fraud");
        assert_eq!(reqs[1].outputs[0].name, "proba");
        let input = &reqs[1].inputs[0];
        assert_eq!(
            (input.name.as_str(), input.datatype.as_str()),
            ("x", "INT64")
        );
        assert_eq!(input.shape, [1, 2]);
        assert_eq!(input.contents.as_ref().unwrap().int64_contents, [3, 4]);
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn rows_errors_name_the_file() {
        let dict = b"{'descr': '<c16', 'fortran_order': False, 'shape': (1, 1), }\n";
        let mut complex = b"\x93NUMPY\x01\x00".to_vec();
        complex.extend(u16::try_from(dict.len()).unwrap().to_le_bytes());
        complex.extend(dict);
        complex.extend([0; 16]);
        let cases = [
            (
                "ragged.csv",
                &b"1,2\n3\n"[..],
                "line 2: 1 value, but line 1 has 2",
            ),
            ("empty.csv", b"", "no rows (the file is empty)"),
            (
                "words.csv",
                b"1,2\n3,four\n",
                "line 2, column 2: \"four\" is not a number",
            ),
            (
                "complex.npy",
                &complex,
                "dtype '<c16' is not supported (use '<f8', '<f4', '<i8' or '<i4')",
            ),
        ];
        for (name, contents, want) in cases {
            let path = temp_file(name, contents);
            let file = path.to_str().unwrap();
            let (kind, message) = parse(&["--rows", file]).unwrap_err();
            assert_eq!(kind, ErrorKind::ValueValidation);
            assert!(
                message.starts_with(&format!("--rows {file}: ")),
                "{message}"
            );
            assert!(message.ends_with(want), "{message}");
            assert!(!message.contains('\n'), "one line: {message}");
            if name == "ragged.csv" {
                let (_, message) = parse(&["--rows", file, "--batch", "0"]).unwrap_err();
                assert_eq!(message, "--batch must be at least 1");
            }
            std::fs::remove_file(path).unwrap();
        }
        let (_, message) = parse(&["--rows", "/nonexistent/rows.csv"]).unwrap_err();
        assert!(
            message.starts_with("--rows /nonexistent/rows.csv: "),
            "{message}"
        );
    }

    #[test]
    fn rows_flags_need_rows_and_exclude_other_bodies() {
        let argv = |extra: &[&'static str]| {
            let mut v = vec!["cascadia-load", "--url", "http://x/", "--rate", "1"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v)
        };
        for bad in [
            &["--batch", "2"][..],
            &["--input", "x"],
            &["--datatype", "FP32"],
            &["--output", "y"],
            &["--rows", "f.csv", "--oip-rows", "1"],
            &["--rows", "f.csv", "--body-bytes", "1"],
            &["--rows", "f.csv", "--datatype", "BYTES"],
            &["--rows", "f.csv", "--batch", "1.5"],
        ] {
            assert!(argv(bad).is_err(), "{bad:?}");
        }
        let a = argv(&["--rows", "f.csv"]).unwrap();
        assert_eq!(
            (a.batch, a.input.as_str(), a.datatype),
            (1, "x", Datatype::Fp64)
        );
        assert!(a.outputs.is_empty());
    }

    #[test]
    fn scenario_must_fit_the_window() {
        let argv = [
            "cascadia-load",
            "--url",
            "http://x/",
            "--rate",
            "1",
            "--duration",
            "10s",
        ];
        let late =
            Scenario::parse("[[event]]\nat = \"11s\"\naction = \"exec\"\ncommand = \"true\"\n")
                .unwrap();
        let err = build_config(Args::try_parse_from(argv).unwrap(), late, None).unwrap_err();
        assert!(err.1.contains("after the end"), "{}", err.1);
        let on_time =
            Scenario::parse("[[event]]\nat = \"10s\"\naction = \"exec\"\ncommand = \"true\"\n")
                .unwrap();
        assert!(build_config(Args::try_parse_from(argv).unwrap(), on_time, None).is_ok());
    }

    #[test]
    fn tls_flags() {
        fn https(extra: &[&str]) -> Result<Config, (ErrorKind, String)> {
            let mut v = vec![
                "cascadia-load",
                "--url",
                "https://127.0.0.1:1/",
                "--rate",
                "1",
            ];
            v.extend_from_slice(extra);
            build_config(Args::try_parse_from(v).unwrap(), Scenario::default(), None)
        }
        let (_, message) = https(&[]).unwrap_err();
        assert!(message.contains("needs --tls-ca"), "{message}");
        let (_, message) = parse(&["--tls-ca", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(message.contains("needs an https://"), "{message}");
        let not_pem = temp_file("ca.txt", b"not a certificate\n");
        let (_, message) = https(&["--tls-ca", not_pem.to_str().unwrap()]).unwrap_err();
        assert!(message.ends_with("holds no PEM certificate"), "{message}");
        std::fs::remove_file(not_pem).unwrap();
        assert!(
            parse(&["--connection-per-request"])
                .unwrap()
                .connection_per_request
        );
        for bad in [&["--http2"][..], &["--grpc"]] {
            let mut v = vec![
                "cascadia-load",
                "--url",
                "http://x/v2/models/m/infer",
                "--rate",
                "1",
                "--connection-per-request",
            ];
            v.extend_from_slice(bad);
            assert!(Args::try_parse_from(v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn method_defaults_follow_the_body() {
        assert_eq!(parse(&[]).unwrap().method, Method::GET);
        let c = parse(&["--oip-rows", "2"]).unwrap();
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.headers[CONTENT_TYPE], "application/json");
        assert_eq!(parse(&["--body-bytes", "16"]).unwrap().bodies[0].len(), 16);
        let c = parse(&[
            "--body-bytes",
            "1",
            "--method",
            "PUT",
            "-H",
            "content-type: text/plain",
        ])
        .unwrap();
        assert_eq!(c.method, Method::PUT);
        assert_eq!(c.headers[CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            &["--connections", "0"][..],
            &["--header", "no-colon"],
            &["--header", "bad name: v"],
            &["--user-ids", "0"],
            &["--oip-rows", "0"],
            &["--duration", "0s"],
            &["--bucket", "0s"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(Args::try_parse_from([
            "cascadia-load",
            "--url",
            "http://x/",
            "--rate",
            "1",
            "--oip-rows",
            "1",
            "--body-bytes",
            "1",
        ])
        .is_err());
    }
}
