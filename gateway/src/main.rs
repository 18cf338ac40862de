//! The `cascadia` binary: parses the command line, sets up logging and the
//! runtime, and hands over to [`cascadia::cli`].

use std::process::ExitCode;

use cascadia::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    cascadia::telemetry::init(cli.log_format, &filter);

    // One worker means one thread doing everything: the current-thread
    // scheduler does that without the cross-thread wake-ups (an eventfd
    // write per request) that a one-worker multi-thread runtime pays.
    let mut runtime = match cli.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cascadia::cli::run(cli))
}
