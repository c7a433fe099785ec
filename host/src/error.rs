//! The library's top-level error, and the kind (so the exit code, see [`crate::exit`]) of each.
//!
//! Each room has its own typed error; this enum gathers them so that the CLI can print one line and
//! pick an exit code, and so that an error that crossed the control socket keeps its kind.

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
    /// A user-supplied value was not acceptable.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    #[error(transparent)]
    Scaffold(#[from] crate::plugins::scaffold::ScaffoldError),
    #[error("{0}")]
    Invalid(String),
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
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Home(e) => e.kind(),
            Error::Config(_) => ErrorKind::Usage,
            Error::Passphrase(_) => ErrorKind::Passphrase,
            Error::Keys(e) => e.kind(),
            Error::Address(_) | Error::Invalid(_) => ErrorKind::Usage,
            Error::Store(e) => e.kind(),
            Error::Net(_) | Error::Control(_) => ErrorKind::Other,
            Error::Attachment(e) => e.kind(),
            Error::Plugin(e) => e.kind(),
            Error::Scaffold(e) => match e {
                crate::plugins::scaffold::ScaffoldError::BadName(_) => ErrorKind::Usage,
                crate::plugins::scaffold::ScaffoldError::Exists(_) => ErrorKind::Conflict,
                _ => ErrorKind::Other,
            },
            Error::Remote { kind, .. } => *kind,
        }
    }
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
