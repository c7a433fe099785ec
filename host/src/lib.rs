//! pigeon: a peer-to-peer encrypted messenger for the terminal.
//!
//! The rooms, left to right along the data flow (see `docs/ARCHITECTURE.md`):
//! [`cli`] → [`control`] → [`node`] → [`delivery`] → [`net`], with [`inbox`] on the receiving side,
//! [`store`] under everything and [`keys`] sealing what it keeps.

pub mod attachments;
pub mod backup;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod demo;
pub mod envelope;
pub mod error;
pub mod exit;
pub mod forward_secrecy;
pub mod home;
pub mod inbox;
pub mod init;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node;
pub mod ops;
pub mod passphrase;
pub mod plugins;
pub mod rekey;
pub mod store;
pub mod terminal;

pub use error::{Error, Result};
pub use exit::ErrorKind;
