//! The `cascadia-sim` binary: parse flags, bind, print the address, serve until a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use cascadia_sim::{LatencyModel, SimConfig};
use clap::Parser;

/// A simulated OIP model server (REST + gRPC on one port).
#[derive(Debug, Parser)]
#[command(
    name = "cascadia-sim",
    version,
    after_help = "Endpoints:
  /v2/...                    Open Inference Protocol REST (health, metadata, infer); gRPC on the same port
  GET  /features/{key}       a feature store: ?features=a,b answers stable values per key; keys starting
                             with `unknown` are 404 (for negative caching)
  GET  /sim/stats            requests seen and the current settings
  POST /sim/control          change latency, error rate and more while running (JSON)"
)]
struct Args {
    /// Address to bind; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The model name to serve.
    #[arg(long)]
    model: String,
    /// The model version to report (`--version` prints the program's).
    #[arg(long, default_value = "1")]
    model_version: String,
    /// Region label returned in `x-sim-region`.
    #[arg(long, default_value = "local")]
    region: String,
    /// Label returned in `x-sim-name` [default: the bound address].
    #[arg(long)]
    name: Option<String>,
    /// Fixed latency per data-plane request, in milliseconds.
    #[arg(long, conflicts_with_all = ["p50_ms", "p99_ms"])]
    latency_ms: Option<f64>,
    /// Lognormal latency median, in milliseconds (needs --p99-ms).
    #[arg(long, requires = "p99_ms")]
    p50_ms: Option<f64>,
    /// Lognormal latency 99th percentile, in milliseconds (needs --p50-ms).
    #[arg(long, requires = "p50_ms")]
    p99_ms: Option<f64>,
    /// Probability in [0, 1] of an injected failure per data-plane request.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
}

fn ms(flag: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v / 1e3).map_err(|_| format!("--{flag} must be a number >= 0"))
}

fn latency(args: &Args) -> Result<LatencyModel, String> {
    Ok(match (args.latency_ms, args.p50_ms, args.p99_ms) {
        (Some(v), _, _) => LatencyModel::Fixed(ms("latency-ms", v)?),
        (None, Some(p50), Some(p99)) => {
            let (p50, p99) = (ms("p50-ms", p50)?, ms("p99-ms", p99)?);
            if p99 < p50 {
                return Err("--p99-ms must be >= --p50-ms".to_owned());
            }
            LatencyModel::LogNormal { p50, p99 }
        }
        _ => LatencyModel::None,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let latency = latency(&args)?;
    if !(0.0..=1.0).contains(&args.error_rate) {
        return Err("--error-rate must be within [0, 1]".into());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.workers))
        .enable_all()
        .build()?
        .block_on(run(args, latency))
}

async fn run(args: Args, latency: LatencyModel) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let config = SimConfig {
        name: args.name.unwrap_or_else(|| addr.to_string()),
        model: args.model,
        version: args.model_version,
        region: args.region,
        latency,
        error_rate: args.error_rate,
    };
    let handle = cascadia_sim::spawn(listener, config).await?;
    {
        // Scripts read the port from this exact line, so flush it now.
        let mut out = std::io::stdout().lock();
        writeln!(out, "cascadia-sim listening on http://{}", handle.addr)?;
        out.flush()?;
    }
    shutdown_signal().await?;
    handle.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
