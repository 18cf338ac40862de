//! The command line: `cascadia demo`, `cascadia run`, `cascadia check`.
//! This is the binary's I/O edge: it reads files and flags, and hands typed
//! config to the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::server::{Gateway, GatewayOptions};
use crate::telemetry::LogFormat;

/// Cascadia: a latency-aware API gateway for ML model routing.
#[derive(Debug, Parser)]
#[command(name = "cascadia", version, about)]
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
    /// Validate a config file: print every problem with its field path and
    /// exit 1, or print a summary and exit 0.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { config } => check(&config),
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
            };
            match Gateway::start(loaded, options).await {
                Ok(gateway) => {
                    announce(&gateway);
                    wait_for_shutdown_signal().await;
                    tracing::info!("shutting down: draining in-flight requests");
                    gateway.shutdown().await;
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
    }
}

/// `cascadia check`.
fn check(path: &std::path::Path) -> ExitCode {
    match cascadia_config::load_file(path) {
        Ok(loaded) => {
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

/// Prints the bound addresses in a fixed format that scripts and tests read.
pub fn announce(gateway: &Gateway) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "cascadia gateway listening on http://{}",
        gateway.listen_addr
    );
    let _ = writeln!(
        out,
        "cascadia admin listening on http://{}",
        gateway.admin_addr
    );
    let _ = out.flush();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
