//! `cascadia-load`: open-loop HTTP load at a constant arrival rate, corrected for coordinated
//! omission. Parses the command line, runs [`cascadia_loadtests::run::run`], prints the report.
//!
//! Exit status: 0 when the run completed (even if requests failed: they are in the report),
//! 1 when it could not run (unresolvable host, refused connection, unreadable `--pid`),
//! 2 on bad arguments.

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};

use cascadia_loadtests::duration::parse_duration;
use cascadia_loadtests::payload::{oip_infer_body, raw_body, Zipf};
use cascadia_loadtests::rate::Rate;
use cascadia_loadtests::run::{run, Config, Target};

/// Open-loop HTTP load generator, corrected for coordinated omission.
///
/// Request i is due at start + i/rate. Requests go to the connections round-robin; a request
/// whose connection is busy waits, and latency is measured from its due time, so the wait
/// counts. Latencies are for 2xx responses, in µs, from due time to the end of the body.
#[derive(Debug, Parser)]
#[command(name = "cascadia-load", version)]
struct Args {
    /// Target URL, http:// only (e.g. http://127.0.0.1:8080/v2/models/fraud/infer).
    #[arg(long)]
    url: String,

    /// Arrival rate, requests per second (fractions allowed).
    #[arg(long)]
    rate: f64,

    /// Measured window (units: us, ms, s, m, h; e.g. 30s, 500ms, 1m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,

    /// Warm-up before the window; sent, then discarded.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warmup: Duration,

    /// Connections, each carrying one request at a time over HTTP/1.1.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Use h2c (HTTP/2 with prior knowledge); requests multiplex on each connection.
    #[arg(long)]
    http2: bool,

    /// HTTP method [default: POST when a body is set, else GET].
    #[arg(long)]
    method: Option<Method>,

    /// Send an OIP V2 infer JSON body: one FP32 input "features" of shape [N, 32].
    #[arg(long, value_name = "N", conflicts_with = "body_bytes")]
    oip_rows: Option<usize>,

    /// Send a raw body of N bytes (application/octet-stream).
    #[arg(long, value_name = "N")]
    body_bytes: Option<usize>,

    /// Extra request header, 'name: value'; repeatable. Overrides the defaults.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,

    /// Set x-user-id to a Zipf(1.0)-distributed id in 1..=N on each request.
    #[arg(long, value_name = "N")]
    user_ids: Option<u32>,

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

    /// Seed for the user-id sequence and the OIP body values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let workers = args.workers;
    let config = match build_config(args) {
        Ok(config) => config,
        Err((kind, message)) => Args::command().error(kind, message).exit(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("the report serializes")
                );
            } else {
                print!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cascadia-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Validates the arguments into a [`Config`]; errors carry clap's kind so they exit with 2.
fn build_config(args: Args) -> Result<Config, (ErrorKind, String)> {
    let invalid = |message: String| (ErrorKind::ValueValidation, message);
    let target = Target::parse(&args.url).map_err(|e| invalid(format!("--url: {e}")))?;
    let rate = Rate::new(args.rate).map_err(|e| invalid(format!("--rate: {e}")))?;
    if args.duration.is_zero() {
        return Err(invalid("--duration must be greater than 0".into()));
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
    let body = match (args.oip_rows, args.body_bytes) {
        (Some(0), _) => return Err(invalid("--oip-rows must be at least 1".into())),
        (Some(rows), _) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Some(oip_infer_body(rows, args.seed))
        }
        (None, Some(len)) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Some(raw_body(len))
        }
        (None, None) => None,
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
        rate,
        warmup: args.warmup,
        duration: args.duration,
        connections: args.connections,
        http2: args.http2,
        method: args.method.unwrap_or(if body.is_some() {
            Method::POST
        } else {
            Method::GET
        }),
        headers,
        body: body.unwrap_or_default(),
        user_ids,
        pids: args.pids,
        timeout: args.timeout,
        timer_spin: args.timer_spin,
        seed: args.seed,
        label: args.label,
    })
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
        build_config(Args::try_parse_from(argv).expect("clap accepts"))
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
        assert_eq!(parse(&["--body-bytes", "16"]).unwrap().body.len(), 16);
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
