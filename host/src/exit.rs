//! What an error means for the process: its [`ErrorKind`] and the exit code that kind gives.
//!
//! A leaf: it imports nothing from the crate, so that every room can say which kind its own errors
//! are without depending on the top-level [`crate::error::Error`], which gathers those rooms'
//! errors (and so depends on them).

use serde::{Deserialize, Serialize};

/// The kind of an error, which decides the process exit code (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Anything not listed below: exit code 1.
    Other,
    /// Bad command-line input: exit code 2.
    Usage,
    /// No passphrase available, or a wrong one: exit code 3.
    Passphrase,
    /// The named home, contact or message does not exist: exit code 4.
    NotFound,
    /// The thing to create exists already: exit code 5.
    Conflict,
    /// A stored file is damaged or was tampered with: exit code 6.
    Corrupt,
    /// `pigeon ops check` found a problem: exit code 7.
    Unhealthy,
}

impl ErrorKind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Passphrase => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Conflict => 5,
            ErrorKind::Corrupt => 6,
            ErrorKind::Unhealthy => 7,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    /// The codes are the README's table; a script depends on them, so they never move.
    #[test]
    fn each_kind_has_its_documented_code() {
        let table = [
            (ErrorKind::Other, 1),
            (ErrorKind::Usage, 2),
            (ErrorKind::Passphrase, 3),
            (ErrorKind::NotFound, 4),
            (ErrorKind::Conflict, 5),
            (ErrorKind::Corrupt, 6),
            (ErrorKind::Unhealthy, 7),
        ];
        for (kind, code) in table {
            assert_eq!(kind.exit_code(), code, "{kind:?}");
        }
    }
}
