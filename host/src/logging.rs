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
        LogFormat::Text => builder.fmt_fields(visible_fields()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Text-log fields with every control and format character shown as an escape: a log line may
/// quote a peer or a plugin (`%` fields print as they are otherwise), and must not drive the
/// terminal it is read on.
fn visible_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = crate::terminal::one_line(&format!("{value:?}"));
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A writer that keeps what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_quoting_a_peer_or_a_plugin_carry_no_escape_sequence() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(super::visible_fields())
            .with_writer(move || writer.clone())
            .finish();
        let hostile = "name\u{1b}]52;c;cGF5bG9hZA==\u{7}\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(plugin = %hostile, label = ?hostile, "a plugin said {hostile}");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(text.contains("name"), "{text}");
        assert!(
            !text.chars().any(|c| c == '\u{1b}' || c == '\u{7}'),
            "a raw escape reached the log: {text:?}"
        );
    }
}
