//! Logs go to stderr, as text for people or as one JSON object per line for machines.
//!
//! Nothing secret and no message text is ever logged: only ids, peers, counts and errors.

use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `verbose` 0 logs warnings, 1 adds pigeon's info, 2 its debug,
/// 3 and more everything. `PIGEON_LOG` (an `EnvFilter` directive such as `debug` or `pigeon=trace`)
/// overrides it.
pub fn init(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,pigeon=info",
        2 => "warn,pigeon=debug",
        _ => "info,pigeon=trace",
    };
    let filter = EnvFilter::try_from_env("PIGEON_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal; a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Prints the error a command ended with on stderr: `error: ...` as text, or one JSON object
/// (`level`, `message`, `exit_code`) with `--log-format json`, so every stderr line stays parseable.
pub fn report_error(format: LogFormat, error: &crate::Error) {
    let code = error.kind().exit_code();
    match format {
        LogFormat::Text => eprintln!("error: {error}"),
        LogFormat::Json => {
            let line = serde_json::json!({ "level": "ERROR", "message": error.to_string(), "exit_code": code });
            eprintln!("{line}");
        }
    }
}
