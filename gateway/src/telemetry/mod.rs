//! Logs and traces: logging setup (the binary calls [`init`] once; library
//! code only emits `tracing` events) and OpenTelemetry export in [`trace`].

pub mod trace;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax. The
/// access log (`cascadia::access`, switched in the config) is written
/// whatever the level, unless the filter names that target itself: a
/// gateway run at `warn` still records its requests, as nginx's
/// `access_log` is apart from its `error_log` level.
pub fn init(format: LogFormat, filter: &str) {
    let directives = if filter.contains("cascadia::access") {
        filter.to_owned()
    } else {
        format!("{filter},cascadia::access=info")
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: in a file or a log
    // pipeline they are noise.
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
