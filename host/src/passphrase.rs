//! Where the passphrase comes from: `--passphrase-file`, then `PIGEON_PASSPHRASE`, then a prompt on a
//! terminal. Without any of them the command fails with an error that names all three.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The environment variable that may hold the passphrase.
pub const ENV: &str = "PIGEON_PASSPHRASE";

/// Errors obtaining a passphrase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// Nothing to read it from.
    #[error(
        "a passphrase is needed: set PIGEON_PASSPHRASE, pass --passphrase-file FILE, or run on a terminal"
    )]
    Unavailable,
    /// Nothing to read the new passphrase from (`keys passwd`).
    #[error(
        "a new passphrase is needed: set PIGEON_NEW_PASSPHRASE, pass --new-passphrase-file FILE, or run on a terminal"
    )]
    NewUnavailable,
    /// The passphrase file could not be read.
    #[error("cannot read passphrase file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An empty passphrase.
    #[error("the passphrase is empty")]
    Empty,
    /// The two prompts disagreed.
    #[error("the two passphrases differ; nothing was written")]
    Mismatch,
    /// The terminal prompt failed.
    #[error("cannot read the passphrase from the terminal: {0}")]
    Prompt(#[source] std::io::Error),
}

/// Whether to ask twice when prompting (for a new passphrase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// Ask once.
    Once,
    /// Ask twice and compare.
    Twice,
}

/// The environment variable that may hold the new passphrase of `keys passwd`.
pub const NEW_ENV: &str = "PIGEON_NEW_PASSPHRASE";

/// Where one passphrase may come from.
struct Sources<'a> {
    file: Option<&'a Path>,
    env: &'a str,
    prompt: &'a str,
    repeat: &'a str,
    unavailable: fn() -> PassphraseError,
}

/// Obtains the passphrase from the first source available.
pub fn obtain(file: Option<&Path>, confirm: Confirm) -> Result<Zeroizing<String>, PassphraseError> {
    obtain_from(
        &Sources {
            file,
            env: ENV,
            prompt: "pigeon passphrase: ",
            repeat: "repeat passphrase: ",
            unavailable: || PassphraseError::Unavailable,
        },
        confirm,
    )
}

/// Obtains the new passphrase of `keys passwd`: `--new-passphrase-file`, then
/// `PIGEON_NEW_PASSPHRASE`, then a prompt (twice).
pub fn obtain_new(file: Option<&Path>) -> Result<Zeroizing<String>, PassphraseError> {
    obtain_from(
        &Sources {
            file,
            env: NEW_ENV,
            prompt: "new passphrase: ",
            repeat: "repeat new passphrase: ",
            unavailable: || PassphraseError::NewUnavailable,
        },
        Confirm::Twice,
    )
}

fn obtain_from(from: &Sources<'_>, confirm: Confirm) -> Result<Zeroizing<String>, PassphraseError> {
    let pass = if let Some(path) = from.file {
        let text = std::fs::read_to_string(path).map_err(|source| PassphraseError::File {
            path: path.to_owned(),
            source,
        })?;
        let text = Zeroizing::new(text);
        Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())
    } else if let Ok(value) = std::env::var(from.env) {
        Zeroizing::new(value)
    } else if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(
            rpassword::prompt_password(from.prompt).map_err(PassphraseError::Prompt)?,
        );
        if confirm == Confirm::Twice {
            let second = Zeroizing::new(
                rpassword::prompt_password(from.repeat).map_err(PassphraseError::Prompt)?,
            );
            if *first != *second {
                return Err(PassphraseError::Mismatch);
            }
        }
        first
    } else {
        return Err((from.unavailable)());
    };
    if pass.is_empty() {
        return Err(PassphraseError::Empty);
    }
    Ok(pass)
}
