//! The library's top-level error, and the kind (so the exit code, see [`crate::exit`]) of each.
//!
//! Each room has its own typed error; this enum gathers them so that the CLI can print one line and
//! pick an exit code, and so that an error that crossed the control socket keeps its kind. What the
//! operations and handlers refuse themselves is a [`UsageError`] (exit 2); what goes wrong around
//! them (I/O outside the rooms, a blocking task, encoding output) keeps its source and exits 1.

mod usage;

pub use usage::UsageError;

use crate::config::ConfigError;
use crate::control::ControlError;
use crate::exit::ErrorKind;
use crate::home::HomeError;
use crate::keys::KeysError;
use crate::keys::address::AddressError;
use crate::net::NetError;
use crate::passphrase::PassphraseError;
use crate::store::StoreError;

/// Any error a pigeon operation can end with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The home directory is missing, already initialised or has the wrong permissions.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The configuration file could not be read, parsed or validated.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No passphrase could be obtained.
    #[error(transparent)]
    Passphrase(#[from] PassphraseError),
    /// The keystore could not be opened or written.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// A contact address did not parse.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The database failed or refused an operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network layer failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The control socket failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// An attachment could not be staged, fetched or saved.
    #[error(transparent)]
    Attachment(#[from] crate::attachments::AttachmentError),
    /// A search failed, or its query does not parse.
    #[error(transparent)]
    Search(#[from] crate::inbox::search::SearchError),
    /// A plugin file could not be read, checked or loaded, or its configuration is refused.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    /// `pigeon plugins new` could not make the plugin crate.
    #[error(transparent)]
    Scaffold(#[from] crate::plugins::scaffold::ScaffoldError),
    /// A backup could not be made, verified or restored.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// A value, argument or request the user gave was refused.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Reading or writing a file or stream that no room owns failed: a body file or stdin, the
    /// demo's and benchmarks' temporary files and sockets, their report.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written, as the message's start ("cannot read body.txt").
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file the user named to read (`--body-file`) does not exist: exit code 4, as a missing
    /// `--attach` file.
    #[error("cannot read {}: no such file", .0.display())]
    NoSuchFile(std::path::PathBuf),
    /// Work handed to a blocking thread panicked or was cancelled before it answered.
    #[error("{what}: {source}")]
    Task {
        /// The work ("plugins check").
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Output could not be encoded (JSON, TOML); pigeon's own types always should be, so a bug.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A demo or benchmark ran but did not see what it exists to show.
    #[error(transparent)]
    Run(#[from] RunError),
    /// An error reported by a running node through the control socket.
    #[error("{message}")]
    Remote {
        /// What kind of error the node reported.
        kind: ErrorKind,
        /// The node's one-line message.
        message: String,
    },
}

impl Error {
    /// An [`Error::Io`] maker for `map_err`: `.map_err(Error::io("bench"))`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// An [`Error::Encode`] of `what`.
    pub(crate) fn encode(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Encode {
            what,
            source: source.into(),
        }
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Home(e) => e.kind(),
            Error::Config(e) => e.kind(),
            Error::Passphrase(_) => ErrorKind::Passphrase,
            Error::Keys(e) => e.kind(),
            Error::Address(_) | Error::Usage(_) => ErrorKind::Usage,
            Error::Store(e) => e.kind(),
            Error::Attachment(e) => e.kind(),
            Error::Plugin(e) => e.kind(),
            Error::Search(e) => e.kind(),
            Error::Scaffold(e) => e.kind(),
            Error::Backup(e) => e.kind(),
            Error::NoSuchFile(_) => ErrorKind::NotFound,
            Error::Net(_)
            | Error::Control(_)
            | Error::Io { .. }
            | Error::Task { .. }
            | Error::Encode { .. } => ErrorKind::Other,
            Error::Run(RunError::Unhealthy { problems, .. }) if *problems > 0 => {
                ErrorKind::Unhealthy
            }
            Error::Run(_) => ErrorKind::Other,
            Error::Remote { kind, .. } => *kind,
        }
    }
}

/// A demo or benchmark that ran to its end without the result it checks for (exit code 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The demo's messages did not all arrive exactly once.
    #[error("demo failed: the messages that arrived differ from those sent")]
    DemoMismatch,
    /// `bench delivery` ran out of time.
    #[error("bench: only {delivered} of {messages} delivered after {after:?}")]
    Undelivered {
        /// Messages delivered.
        delivered: u64,
        /// Messages queued.
        messages: usize,
        /// The time allowed.
        after: std::time::Duration,
    },
    /// `bench attachment` ran out of time.
    #[error("bench: the attachment did not arrive in time")]
    AttachmentLate,
    /// `bench rules`: the plugins added nothing, so what was timed was not them.
    #[error("bench: the plugins labelled nothing; they did not run")]
    PluginsIdle,
    /// A benchmark could not set itself up.
    #[error("bench: {0}")]
    Bench(String),
    /// A built-in plugin a benchmark needs is not in this build.
    #[error("bench: {0} is not built in")]
    NotBuiltIn(&'static str),
    /// `ops check` found problems (exit 7), or, with `--strict`, warnings (exit 1).
    #[error("ops check: {problems} problem(s), {warnings} warning(s)")]
    Unhealthy {
        /// Checks that found a problem.
        problems: usize,
        /// Checks that found something worth a look.
        warnings: usize,
    },
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::Response;

    fn denied() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied")
    }

    #[test]
    fn an_io_failure_is_exit_1_and_keeps_its_source() {
        let e = Error::io("bench")(denied());
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::Other);
        assert_eq!(e.kind().exit_code(), 1);
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "bench: denied");
        // A file the user named that does not exist is "not found", exit 4, as a missing
        // attachment is; any other I/O error stays 1, a missing file included.
        let missing = Error::NoSuchFile("body.txt".into());
        assert_eq!(missing.kind().exit_code(), 4);
        let temp = Error::io("bench")(std::io::ErrorKind::NotFound.into());
        assert_eq!(temp.kind().exit_code(), 1);
    }

    #[test]
    fn a_usage_refusal_is_exit_2() {
        let refusals = [
            UsageError::NoBody,
            UsageError::OwnAddress,
            UsageError::MetricsAddr("localhost".into()),
            UsageError::NeedsYes("Remove bob?".into()),
            UsageError::NotText("body.bin".into()),
        ];
        for refusal in refusals {
            let e = Error::from(refusal);
            assert!(matches!(e, Error::Usage(_)), "{e:?}");
            assert_eq!(e.kind(), ErrorKind::Usage);
            assert_eq!(e.kind().exit_code(), 2, "{e}");
        }
    }

    #[test]
    fn a_protocol_mismatch_is_exit_1() {
        let e = Error::from(Response::Done.unexpected());
        assert!(
            matches!(e, Error::Control(ControlError::UnexpectedAnswer(_))),
            "{e:?}"
        );
        assert_eq!(e.kind().exit_code(), 1);
        assert!(
            e.to_string().starts_with("unexpected answer from the node"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_task_that_did_not_finish_is_exit_1() {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let Err(source) = task.await else {
            panic!("an aborted task finished");
        };
        let e = Error::Task {
            what: "plugins check",
            source,
        };
        assert_eq!(e.kind().exit_code(), 1);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn output_that_does_not_encode_is_exit_1() {
        let map = std::collections::HashMap::from([((1u8, 2u8), 3u8)]);
        let Err(source) = serde_json::to_string(&map) else {
            panic!("a map with tuple keys encoded as JSON");
        };
        let e = Error::encode("the output as JSON", source);
        assert!(matches!(e, Error::Encode { .. }), "{e:?}");
        assert_eq!(e.kind().exit_code(), 1);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_demo_or_benchmark_that_fails_its_check_is_exit_1() {
        for failure in [RunError::DemoMismatch, RunError::PluginsIdle] {
            assert_eq!(Error::from(failure).kind().exit_code(), 1);
        }
    }

    #[test]
    fn a_node_s_error_keeps_the_kind_it_sent() {
        let e = Error::Remote {
            kind: ErrorKind::NotFound,
            message: "no contact \"carol\"".into(),
        };
        assert_eq!(e.kind().exit_code(), 4);
    }
}
