//! How every Swell binary logs: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`), as text for people or as one JSON object a line for log
//! collectors (`--log-format json`). JSON lines carry the fields of every
//! span they were written in, so a line inside an RPC names its volume.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the enclosing spans' fields.
    Json,
}

/// The logging flag every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "SWELL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the process's logger; call once, first thing in `main`.
    pub fn init(&self) {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Colours only for a person at a terminal: a container's log
        // (kubectl logs, a log shipper) would hold the escape codes.
        let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
        match self.log_format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs.json().with_current_span(false).with_span_list(true).flatten_event(true).init(),
        }
    }
}
