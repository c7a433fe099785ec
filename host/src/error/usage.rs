//! Refusals of what the user gave: a value, an argument or a request that pigeon will not take.
//!
//! Every one is exit code 2 ("bad usage") and says what to give instead. Refusals that belong to a
//! room with its own error (a bad address in `keys::address`, a bad key in `config`, a plugin file
//! in `plugins`) stay there; these are the ones the control operations and the CLI handlers make
//! themselves.

use std::path::PathBuf;

use libp2p::multiaddr;

/// A value the user gave was refused (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A contact whose address is this node's own.
    #[error("that is this node's own address")]
    OwnAddress,
    /// A contact name with characters or a length that is not allowed.
    #[error("contact name {0:?} is not allowed: use 1-64 letters, digits, '-', '_', '.' or '@'")]
    ContactName(String),
    /// A label that is not allowed; the text (from `inbox::rules::validate_label`) says why.
    #[error("{0}")]
    Label(String),
    /// A message body over the most a message takes.
    #[error("the body is {len} bytes; the most a message takes is {max}")]
    BodyTooLarge {
        /// The body's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A subject over its limit.
    #[error("the subject is longer than {max} bytes")]
    SubjectTooLong {
        /// The limit.
        max: usize,
    },
    /// A `send` request whose staged attachment manifest does not hold together (the CLI stages
    /// them itself, so only a hand-written control request gets this).
    #[error("an attachment's manifest is inconsistent")]
    BadManifest,
    /// A contact's address that is not a multiaddr.
    #[error(
        "{text:?} is not a multiaddr ({source}); write it like /ip4/198.51.100.7/tcp/7717 or /ip4/198.51.100.7/udp/7717/quic-v1 (the `listening on` line of the contact's node)"
    )]
    NotAMultiaddr {
        /// What was given.
        text: String,
        /// Why it does not parse.
        source: multiaddr::Error,
    },
    /// A contact's multiaddr that ends in another peer's `/p2p/<id>`.
    #[error("{text} belongs to peer {peer}, not to this contact ({contact})")]
    OtherPeer {
        /// What was given.
        text: String,
        /// The PeerId it names.
        peer: String,
        /// The contact's own PeerId.
        contact: String,
    },
    /// A contact's multiaddr that cannot be dialed (empty, or `/p2p/` in the middle).
    #[error("{0} is not a dialable address")]
    NotDialable(String),
    /// A `--listen` value that is not a multiaddr.
    #[error("--listen {text:?}: {source}")]
    ListenAddr {
        /// What was given.
        text: String,
        /// Why it does not parse.
        source: multiaddr::Error,
    },
    /// `[metrics] listen` in config.toml is not HOST:PORT.
    #[error("metrics address {0:?} is not HOST:PORT")]
    MetricsAddr(String),
    /// `--metrics-addr` is not HOST:PORT.
    #[error("--metrics-addr {0:?} is not HOST:PORT like 127.0.0.1:9717")]
    MetricsFlag(String),
    /// `inbox save` of a message that has no attachments.
    #[error("message {0} has no attachments")]
    NoAttachments(String),
    /// A directory to save into that does not exist.
    #[error("{} does not exist (create it first, e.g. `mkdir -p`)", .0.display())]
    NoSuchDir(PathBuf),
    /// A directory to save into that is a file.
    #[error("{} is not a directory", .0.display())]
    NotADir(PathBuf),
    /// `send` with neither the text nor `--body-file`.
    #[error("give the text, or --body-file PATH")]
    NoBody,
    /// A body file that is not UTF-8.
    #[error("{} is not UTF-8 text; a message body must be text", .0.display())]
    NotText(PathBuf),
    /// A numeric option outside its range; the text names the option(s) and the range.
    #[error("{0}")]
    OutOfRange(String),
    /// A full-screen command run off a terminal.
    #[error(
        "`pigeon {0}` needs a terminal (stdin and stdout); from a script, use `pigeon send` and `pigeon inbox watch`"
    )]
    NotATerminal(&'static str),
    /// A destructive action asked off a terminal, without `--yes`.
    #[error("{0} Not on a terminal: pass --yes to confirm.")]
    NeedsYes(String),
    /// A `plugins.NAME.path` value that cannot be a path (an empty one).
    #[error("{key}: {text}: {source}")]
    PluginPath {
        /// The dotted key.
        key: String,
        /// The value given.
        text: String,
        /// Why it cannot be made absolute.
        source: std::io::Error,
    },
}
