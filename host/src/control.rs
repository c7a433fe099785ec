//! The control API: what the CLI asks of a node, and the local socket it travels over.
//!
//! While a node runs, it holds the unlocked keys and the database, and CLI commands reach it through
//! `<home>/pigeon.sock` (0600, in a 0700 home), one JSON request and one JSON response per
//! connection. With no node running, the CLI runs the very same [`api::Ops`] in-process against the
//! store. Either way the caller gets the same answers and the same errors.

pub mod api;
pub mod client;
pub mod server;

/// Errors of the control socket itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket could not be bound.
    #[error("cannot open the control socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The node did not answer properly.
    #[error("the running node did not answer properly: {0}")]
    Protocol(String),
    /// The node answered with a response of another type than the request asks for: the CLI and
    /// the node are different versions (or one of them has a bug).
    #[error("unexpected answer from the node: {0}")]
    UnexpectedAnswer(String),
    /// A node holds the home but its socket does not answer.
    #[error("a node holds {0} but does not answer on its control socket; is it still starting?")]
    Unresponsive(std::path::PathBuf),
    /// The request is served only by a running node, and none runs.
    #[error("no node runs for {0}; start one with `pigeon node run` (this follows a running node)")]
    NoNode(std::path::PathBuf),
    /// The node took the request and gave no answer in time.
    #[error(
        "the node did not answer within {0} s; it may be stuck (see its log) or stopped (kill -CONT)"
    )]
    NoAnswer(u64),
}
