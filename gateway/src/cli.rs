//! The command line: `cascadia demo`, `run`, `check`, `drill`, `rollout`
//! and `calibrate`.
//! This is the binary's I/O edge: it reads files and flags, and hands typed
//! config to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::server::{announce, wait_for_shutdown_signal, Gateway, GatewayOptions};
use crate::telemetry::LogFormat;

/// Cascadia: a latency-aware API gateway for ML model routing.
#[derive(Debug, Parser)]
#[command(name = "cascadia", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CASCADIA_COMMIT"), ")"), about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, `RUST_LOG` syntax (the `RUST_LOG` variable is used when unset).
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long, global = true)]
    pub workers: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with simulated model backends in two regions, all in
    /// this process. Needs nothing else installed.
    Demo {
        /// Data-plane address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Sample requests sent at start to show the split (0 to skip).
        #[arg(long, default_value_t = 1000)]
        sample_requests: u32,
    },
    /// Run the gateway on a config file, reloading it when it changes.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `gateway.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides `gateway.admin_listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Do not watch the file (SIGHUP and the admin API still reload).
        #[arg(long)]
        no_watch: bool,
    },
    /// Run a failover drill through a running gateway's admin API: inject a
    /// fault on the way to a region, watch, revert, and print the report.
    Drill {
        /// The admin API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// The region to drill (not needed for `--fault redis`).
        #[arg(long)]
        region: Option<String>,
        /// The fault to inject.
        #[arg(long, value_enum, default_value_t = DrillFault::Blackhole)]
        fault: DrillFault,
        /// Added latency for `--fault latency`.
        #[arg(long)]
        latency_ms: Option<u64>,
        /// Share of failing attempts for `--fault errors` (0..=1).
        #[arg(long)]
        error_rate: Option<f64>,
        /// How long the fault lasts, e.g. 30s.
        #[arg(long = "for", default_value = "30s")]
        duration: cascadia_config::Timeout,
        /// End the drill early when more than this share of requests fail.
        #[arg(long)]
        abort_error_rate: Option<f64>,
        /// End the drill early when its p99 passes this many milliseconds.
        #[arg(long)]
        abort_p99_ms: Option<f64>,
        /// File holding the admin token, when the gateway requires one.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Show or steer canary rollouts through a running gateway's admin API:
    /// `status`, or `pause`, `resume`, `promote`, `abort` with `--route`.
    Rollout {
        /// What to do.
        #[arg(value_enum)]
        action: RolloutAction,
        /// The route whose rollout to steer (every route for `status`).
        #[arg(long)]
        route: Option<String>,
        /// The admin API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// File holding the admin token, when the gateway requires one.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Choose a cascade route's band with a guarantee: the widest band whose
    /// recall drop is at most `--max-recall-drop` with probability
    /// `--confidence`, certified on a calibration set (CSV, JSON Lines as
    /// the gateway records, or .npy). Writes the calibration artifact a
    /// route's `calibration` names, prints the trade-off, and exits 1 when
    /// no band can be certified.
    Calibrate(crate::calibrate::Args),
    /// Validate a config file: print every problem with its field path and
    /// exit 1, or print a summary and exit 0. `--schema` prints the config's
    /// JSON Schema instead (for editors and CI linters).
    Check {
        /// The config file (TOML).
        #[arg(long, short, required_unless_present = "schema")]
        config: Option<PathBuf>,
        /// Print the config file's JSON Schema and exit.
        #[arg(long, conflicts_with = "config")]
        schema: bool,
    },
}

/// The faults `cascadia drill` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrillFault {
    /// Attempts to the region time out.
    Blackhole,
    /// Attempts to the region are delayed by `--latency-ms`.
    Latency,
    /// A share (`--error-rate`) of attempts to the region fail.
    Errors,
    /// Redis is unavailable to the gateway.
    Redis,
}

impl DrillFault {
    fn as_str(self) -> &'static str {
        match self {
            DrillFault::Blackhole => "blackhole",
            DrillFault::Latency => "latency",
            DrillFault::Errors => "errors",
            DrillFault::Redis => "redis",
        }
    }
}

/// What `cascadia rollout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RolloutAction {
    /// Show every rollout, or `--route`'s.
    Status,
    /// Hold the canary at its step.
    Pause,
    /// Go on from a pause.
    Resume,
    /// Send all traffic to the canary now.
    Promote,
    /// Roll back to stable now.
    Abort,
}

impl RolloutAction {
    fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Status => "status",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
            RolloutAction::Abort => "abort",
        }
    }
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { schema: true, .. } => {
            println!("{}", cascadia_config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Calibrate(args) => {
            let out = args.out.clone();
            match crate::calibrate::command(args).await {
                Ok(report) => {
                    // Written, not printed: `calibrate … | head` closes the
                    // pipe early, which is no reason to panic.
                    use std::io::Write;
                    let mut stdout = std::io::stdout().lock();
                    let _ = write!(stdout, "{report}");
                    let _ = writeln!(stdout, "wrote {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, .. } => match config {
            Some(config) => check(&config),
            None => ExitCode::from(2),
        },
        Command::Rollout {
            action,
            route,
            admin,
            token_file,
        } => {
            let token = match read_token(token_file) {
                Ok(token) => token,
                Err(code) => return code,
            };
            let (method, path) = match (action, &route) {
                (RolloutAction::Status, _) => (http::Method::GET, "/admin/rollouts".to_owned()),
                (_, Some(route)) => (
                    http::Method::POST,
                    format!("/admin/rollouts/{route}/{}", action.as_str()),
                ),
                (_, None) => {
                    eprintln!("error: {} needs --route", action.as_str());
                    return ExitCode::from(2);
                }
            };
            match crate::admin::call(&admin, method, path, bytes::Bytes::new(), token.as_deref())
                .await
            {
                Ok(mut answer) => {
                    if let (Some(route), Some(all)) = (&route, answer["rollouts"].as_array()) {
                        let one: Vec<_> = all
                            .iter()
                            .filter(|r| r["route"] == route.as_str())
                            .cloned()
                            .collect();
                        if one.is_empty() {
                            let known: Vec<&str> =
                                all.iter().filter_map(|r| r["route"].as_str()).collect();
                            eprintln!(
                                "error: route {route:?} has no rollout (rollouts: {})",
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            );
                            return ExitCode::FAILURE;
                        }
                        answer["rollouts"] = serde_json::json!(one);
                    }
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&answer).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            listen,
            admin_listen,
            no_watch,
        } => {
            let loaded = match cascadia_config::load_file(&config) {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("{}: {error}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            let options = GatewayOptions {
                listen,
                admin_listen,
                watch_config: !no_watch,
                resolver: None,
            };
            match Gateway::start(loaded, options).await {
                Ok(gateway) => {
                    announce(&gateway);
                    wait_for_shutdown_signal().await;
                    tracing::info!("shutting down: draining");
                    gateway.drain().await;
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            listen,
            admin_listen,
            sample_requests,
        } => crate::demo::run(listen, admin_listen, sample_requests).await,
        Command::Drill {
            admin,
            region,
            fault,
            latency_ms,
            error_rate,
            duration,
            abort_error_rate,
            abort_p99_ms,
            token_file,
        } => {
            let token = match read_token(token_file) {
                Ok(token) => token,
                Err(code) => return code,
            };
            let request = serde_json::json!({
                "region": region,
                "fault": fault.as_str(),
                "latency_ms": latency_ms,
                "error_rate": error_rate,
                "duration_s": duration.get().as_secs_f64(),
                "abort_error_rate": abort_error_rate,
                "abort_p99_ms": abort_p99_ms,
            });
            match drill(&admin, request, token.as_deref(), duration.get()).await {
                Ok(report) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    if report["state"] == "aborted" {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Starts a drill and polls its report until fail-back (or a minute past
/// the fault) is recorded.
async fn drill(
    admin: &str,
    request: serde_json::Value,
    token: Option<&str>,
    duration: std::time::Duration,
) -> Result<serde_json::Value, String> {
    use bytes::Bytes;
    let send = |method: http::Method, path: String, body: Bytes| {
        crate::admin::call(admin, method, path, body, token)
    };
    let started = send(
        http::Method::POST,
        "/admin/drills".to_owned(),
        Bytes::from(request.to_string()),
    )
    .await?;
    let id = started["id"].as_u64().ok_or("no drill id in the answer")?;
    eprintln!("drill {id} started; the fault lasts {duration:?}");
    let deadline = tokio::time::Instant::now() + duration + std::time::Duration::from_secs(60);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let report = send(
            http::Method::GET,
            format!("/admin/drills/{id}"),
            Bytes::new(),
        )
        .await?;
        if report["state"] == "completed"
            || report["state"] == "aborted"
            || tokio::time::Instant::now() > deadline
        {
            return Ok(report);
        }
    }
}

fn read_token(file: Option<PathBuf>) -> Result<Option<String>, ExitCode> {
    match file.map(std::fs::read_to_string).transpose() {
        Ok(token) => Ok(token.map(|t| t.trim().to_owned())),
        Err(error) => {
            eprintln!("error: cannot read the token file: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `cascadia check`.
fn check(path: &std::path::Path) -> ExitCode {
    match cascadia_config::load_file(path) {
        Ok(loaded) => {
            // What `run` builds from the files beyond the config's own
            // checks: an upstream's TLS client config.
            for (i, backend) in loaded.config.backends.iter().enumerate() {
                if let Some(tls) = &backend.tls {
                    if let Err(message) =
                        cascadia_backends::tls::UpstreamTlsConnector::check(tls, backend.protocol)
                    {
                        eprintln!("{}: 1 problem(s)", path.display());
                        eprintln!("  backends[{i}].tls: {message}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            println!("{}: ok (sha256 {})", path.display(), &loaded.hash[..12]);
            println!();
            print!("{}", loaded.config.summary());
            ExitCode::SUCCESS
        }
        Err(cascadia_config::LoadError::Invalid(errors)) => {
            eprintln!("{}: {} problem(s)", path.display(), errors.0.len());
            for error in &errors.0 {
                eprintln!("  {}: {}", error.path, error.message);
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
