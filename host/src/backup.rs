//! Backups: one file in the age format around a plain tar of the home, and its verify and restore.
//!
//! `backup create` takes a consistent snapshot of the database with SQLite's online backup (a
//! running node keeps receiving meanwhile), and adds the keystore, the configuration, every
//! attachment file (complete and partial) and the other files of the home, each hashed with
//! blake2b into a manifest written last. The tar goes through age: encrypted to age X25519
//! recipients (an unattended backup needs no passphrase on the machine) or, with none, under the
//! node's passphrase with age's scrypt, so `age -d` and `tar` open it with the standard tools.
//! The search index and the plugin cache are not in it: both are rebuilt from what is (the
//! inbox, the plugin files) when the restored node first unlocks.
//!
//! `backup verify` reads the whole file and writes nothing: age authenticates every byte, the
//! manifest must list exactly the parts read with their sums, the keystore inside must open with
//! the node passphrase, and every sealed row and attachment chunk must open under its keys.
//! `restore` does the same while it writes the parts into a new directory beside the target, and
//! renames that directory into place only once everything checked out.
//!
//! age cannot tell a wrong identity from a damaged stanza for the right one: both fail to unwrap
//! the file key. So that `verify` can say "damaged" rather than "wrong identity" in that case, a
//! backup to recipients also carries, per recipient, a stanza of its own (`pigeon-hint`: a tiny
//! age file to that recipient alone) that every age implementation ignores.

mod create;
mod read;
mod restore;

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use age::x25519;
use age_core::format::{FileKey, Stanza};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use create::{Counts, Created, create};
pub use read::{Contents, verify};
pub use restore::{Restored, restore};

use crate::exit::ErrorKind;

/// The directory every entry of the tar sits in.
pub const ROOT: &str = "pigeon-backup";
/// The manifest's name in the tar, its last entry.
pub const MANIFEST: &str = "MANIFEST.json";
/// The manifest format this pigeon writes and reads.
pub const FORMAT: u32 = 1;
/// The largest scrypt work factor (log2 N) a passphrase backup may ask for: age's own bound is
/// relative to this machine's speed, and a backup made on a fast machine must open on a slow one.
const MAX_SCRYPT_LOG_N: u8 = 22;
/// The scrypt work factor (log2 N) of a passphrase backup: about a second on a laptop, 256 MiB.
const SCRYPT_LOG_N: u8 = 18;
/// Names at the top of a home that are never parts of a backup, besides the keystore and the
/// database taken first: rebuilt (the index, the plugin cache), of the running node (the lock,
/// the socket), or SQLite's own files that would change the database a restore opens.
const NOT_PARTS: [&str; 10] = [
    "keystore",
    "keystore.new",
    "pigeon.db",
    "pigeon.db-wal",
    "pigeon.db-shm",
    "pigeon.db-journal",
    "node.lock",
    "pigeon.sock",
    "search",
    "plugin-cache",
];
/// The tag of the hint stanza.
const HINT_TAG: &str = "pigeon-hint";

/// Errors making, verifying or restoring a backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backup is damaged or is not a pigeon backup.
    #[error("the backup is damaged: {part}: {reason}")]
    Damaged {
        /// The part of the file that did not check out.
        part: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The passphrase or identity does not open the backup or the keystore in it.
    #[error("{0}")]
    WrongKey(String),
    /// What the user asked for cannot be done as asked (a recipient or identity that does not
    /// parse, a target inside the home).
    #[error("{0}")]
    Usage(String),
    /// The backup file exists.
    #[error("{0} exists; pass --yes to replace it")]
    Exists(PathBuf),
    /// `restore` into a home that has something in it.
    #[error(
        "{0} exists and is not empty; restore only into a new or empty directory (it never merges)"
    )]
    NotEmpty(PathBuf),
    /// The home is in a state a backup cannot be taken of.
    #[error("{0}")]
    NotNow(String),
    /// The home is missing or cannot be read.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// The keystore, read outside a backup, failed.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeysError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl BackupError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            BackupError::Io { .. } | BackupError::NotNow(_) => ErrorKind::Other,
            BackupError::Damaged { .. } => ErrorKind::Corrupt,
            BackupError::WrongKey(_) => ErrorKind::Passphrase,
            BackupError::Usage(_) => ErrorKind::Usage,
            BackupError::Exists(_) => ErrorKind::Conflict,
            BackupError::NotEmpty(_) => ErrorKind::Conflict,
            BackupError::Keys(e) => e.kind(),
            BackupError::Home(e) => e.kind(),
            BackupError::Store(e) => e.kind(),
        }
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.to_owned();
        move |source| BackupError::Io {
            action,
            path,
            source,
        }
    }

    fn damaged(part: impl Into<String>, reason: impl Into<String>) -> BackupError {
        BackupError::Damaged {
            part: part.into(),
            reason: reason.into(),
        }
    }
}

/// The manifest: what the backup holds, written as its last entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The pigeon version that wrote it.
    pub pigeon_version: String,
    /// When the snapshot was taken (RFC 3339).
    pub created_at: String,
    /// The node's PeerId.
    pub peer_id: String,
    /// What it holds, from the database's clear columns.
    pub counts: Counts,
    /// Every other entry, in the order written, with its size and blake2b-256.
    pub parts: Vec<Part>,
    /// What was left out, and why (a plugin file outside the home, an attachment file removed
    /// while the backup ran).
    pub left_out: Vec<String>,
}

/// One entry of the tar.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    /// Its path under [`ROOT`].
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// blake2b-256 of its bytes, in hex.
    pub blake2b: String,
}

/// What a backup is encrypted to, as reports say it (`"passphrase"` or `"recipients"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealedWith {
    /// The node passphrase (age's scrypt).
    Passphrase,
    /// age X25519 recipients.
    Recipients,
}

impl SealedWith {
    /// For people: what opens it.
    pub fn describe(self) -> &'static str {
        match self {
            SealedWith::Passphrase => "the node passphrase",
            SealedWith::Recipients => "age recipients",
        }
    }
}

/// How a backup is sealed: to age recipients, or under the node's passphrase.
pub enum Seal {
    /// age X25519 recipients (`age1...`).
    Recipients(Vec<x25519::Recipient>),
    /// The node's passphrase, with age's scrypt.
    Passphrase(Zeroizing<String>),
}

/// What opens a backup: the node's passphrase always (the keystore inside needs it), and the age
/// identities when the backup was made to recipients.
pub struct Opener {
    /// The node passphrase.
    pub passphrase: Zeroizing<String>,
    /// The identities of `--identity`; empty for a passphrase backup.
    pub identities: Vec<x25519::Identity>,
}

/// Reads `age1...` recipients from the command line and from a recipients file (one per line,
/// `#` comments and blank lines allowed, as age's `-R`).
pub fn recipients(
    given: &[String],
    file: Option<&Path>,
) -> Result<Vec<x25519::Recipient>, BackupError> {
    let mut out = Vec::new();
    for r in given {
        out.push(
            parse_recipient(r.trim())
                .map_err(|e| BackupError::Usage(format!("--recipient {r:?}: {e}")))?,
        );
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(BackupError::io("reading", path))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(parse_recipient(line).map_err(|e| {
                BackupError::Usage(format!("{} line {}: {e}", path.display(), n + 1))
            })?);
        }
    }
    Ok(out)
}

fn parse_recipient(text: &str) -> Result<x25519::Recipient, String> {
    text.parse::<x25519::Recipient>()
        .map_err(|_| "not an age X25519 recipient (age1..., as `age-keygen -y` prints)".to_owned())
}

/// Reads the age X25519 identities of an identity file (`age-keygen` output: `AGE-SECRET-KEY-1...`
/// lines, `#` comments).
pub fn identities(path: &Path) -> Result<Vec<x25519::Identity>, BackupError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(BackupError::io("reading", path))?);
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.parse::<x25519::Identity>().map_err(|_| {
            BackupError::Usage(format!(
                "{} line {}: not an age X25519 identity (AGE-SECRET-KEY-1..., as `age-keygen` writes)",
                path.display(),
                n + 1
            ))
        })?);
    }
    if out.is_empty() {
        return Err(BackupError::Usage(format!(
            "{} holds no age identity",
            path.display()
        )));
    }
    Ok(out)
}

/// What a hint holds, encrypted.
const HINT_TEXT: &[u8] = b"pigeon backup hint 1";

/// The hint stanza for one recipient: a small age file of its own, encrypted to that recipient
/// alone, as an age [`age::Recipient`] that wraps no file key. Being age's own construction, it
/// names no recipient to anyone without the matching identity.
struct Hint(Vec<u8>);

impl Hint {
    fn to(recipient: &x25519::Recipient) -> Result<Hint, BackupError> {
        age::encrypt(recipient, HINT_TEXT)
            .map(Hint)
            .map_err(|e| BackupError::Usage(format!("cannot encrypt to {recipient}: {e}")))
    }
}

impl age::Recipient for Hint {
    fn wrap_file_key(
        &self,
        _: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        Ok((
            vec![Stanza {
                tag: HINT_TAG.to_owned(),
                args: Vec::new(),
                body: self.0.clone(),
            }],
            HashSet::new(),
        ))
    }
}

/// An identity that, when none of a header's stanzas opens with it, notes whether a hint does:
/// then the identity is the right one and its stanza is damaged.
struct Noticing<'a> {
    inner: &'a x25519::Identity,
    hinted: &'a std::cell::Cell<bool>,
}

impl age::Identity for Noticing<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        self.inner.unwrap_stanza(stanza)
    }

    fn unwrap_stanzas(&self, stanzas: &[Stanza]) -> Option<Result<FileKey, age::DecryptError>> {
        let found = stanzas.iter().find_map(|s| self.inner.unwrap_stanza(s));
        if found.is_none()
            && stanzas.iter().any(|s| {
                s.tag == HINT_TAG && age::decrypt(self.inner, &s.body).is_ok_and(|t| t == HINT_TEXT)
            })
        {
            self.hinted.set(true);
        }
        found
    }
}

/// Removes what a killed backup or restore left in `dir`: entries named `<prefix><pid>...` whose
/// process is gone (directories too when `dirs`).
fn sweep(dir: &Path, prefix: &str, dirs: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(prefix)
            .and_then(|n| n.split('.').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(crate::home::process_alive) {
            continue;
        }
        let path = entry.path();
        if dirs && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The directory `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Checks a path from a tar entry: relative, plain components only, no control characters.
/// Returns it as a string with `/` separators.
fn entry_path(path: &Path) -> Result<String, BackupError> {
    let bad = |why: &str| {
        BackupError::damaged(
            format!(
                "entry {}",
                crate::terminal::one_line(&path.display().to_string())
            ),
            why,
        )
    };
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => {
                let p = p.to_str().ok_or_else(|| bad("the name is not UTF-8"))?;
                if p.chars().any(char::is_control) || p.len() > 255 {
                    return Err(bad("the name has control characters or is too long"));
                }
                parts.push(p);
            }
            _ => return Err(bad("not a plain relative path")),
        }
    }
    if parts.first() != Some(&ROOT) || parts.len() < 2 || parts.len() > 8 {
        return Err(bad(&format!("not under {ROOT}/")));
    }
    Ok(parts[1..].join("/"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::{Opener, Seal, entry_path};
    use crate::home::Home;
    use crate::keys::{Keys, keystore, one_time};
    use crate::store::Db;

    /// A restored node never holds a contact's one-time key from the backup: it may have been
    /// used since, and must seal one message only.
    #[tokio::test]
    async fn a_restore_forgets_the_contacts_one_time_keys_and_keeps_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::resolve(Some(dir.path().join("home"))).expect("home");
        crate::init::create_home(&home, "pass").await.expect("init");
        let keys = Arc::new(keystore::unlock(&home.keystore(), "pass").expect("unlock"));
        let contact = Keys::generate();
        {
            let mut db = Db::open(&home.database(), keys.clone()).expect("db");
            let theirs: Vec<_> = (0..5)
                .map(|_| one_time::make(&contact, &keys.peer_id(), u64::MAX).1)
                .collect();
            db.add_pool_keys(&contact.peer_id(), &theirs, 1)
                .expect("pool");
            let (ours, _): (Vec<_>, Vec<_>) = (0..3)
                .map(|_| one_time::make(&keys, &contact.peer_id(), u64::MAX))
                .unzip();
            db.store_one_time_secrets(&contact.peer_id(), &ours, 1)
                .expect("secrets");
        }
        let identity = age::x25519::Identity::generate();
        let file = dir.path().join("b.age");
        super::create(
            &home,
            &file,
            Seal::Recipients(vec![identity.to_public()]),
            false,
            &mut |_, _| {},
        )
        .expect("backup");
        let opener = Opener {
            passphrase: zeroize::Zeroizing::new("pass".to_owned()),
            identities: vec![identity],
        };
        let target = dir.path().join("restored");
        super::restore(&file, &target, &opener, false).expect("restore");
        let restored = Db::open(&target.join("pigeon.db"), keys.clone()).expect("db");
        assert_eq!(restored.pool_keys(&contact.peer_id(), 1).expect("pool"), 0);
        assert_eq!(
            restored
                .one_time_secrets_out(&contact.peer_id(), 1)
                .expect("out"),
            3
        );
    }

    #[test]
    fn entry_paths_stay_under_the_backup_root() {
        assert_eq!(
            entry_path(Path::new("pigeon-backup/attachments/ab.sealed")).ok(),
            Some("attachments/ab.sealed".to_owned())
        );
        for bad in [
            "pigeon-backup/../escape",
            "/pigeon-backup/keystore",
            "other/keystore",
            "pigeon-backup",
            "pigeon-backup/a\u{1b}[2J",
            "pigeon-backup/a/b/c/d/e/f/g/h/i",
        ] {
            assert!(entry_path(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
