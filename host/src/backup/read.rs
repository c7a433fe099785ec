//! Reading a backup through: the age layer, the tar, every part against the manifest, the keystore
//! inside, every sealed row and every attachment chunk. `verify` keeps nothing; `restore` gives a
//! directory that each part is written into as it passes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use rusqlite::{Connection, MAIN_DB, OpenFlags};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    BackupError, FORMAT, MANIFEST, MAX_SCRYPT_LOG_N, Manifest, Noticing, Opener, Part, entry_path,
};
use crate::attachments;
use crate::keys::{Keys, KeysError, keystore};
use crate::store::{Audit, AuditedAttachment};

/// What a sound backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contents {
    /// The backup file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// What it is encrypted to.
    pub sealed_with: super::SealedWith,
    /// The node's PeerId.
    pub peer_id: String,
    /// The pigeon version that wrote it.
    pub pigeon_version: String,
    /// When the snapshot was taken.
    pub created_at: String,
    /// Contacts.
    pub contacts: u64,
    /// Inbox messages (redacted ones included).
    pub messages: u64,
    /// Of those, redacted.
    pub redacted: u64,
    /// Outbox messages still queued.
    pub queued: u64,
    /// Messages in the sent history.
    #[serde(default)]
    pub sent: u64,
    /// Sealed database values that opened.
    pub sealed_values: u64,
    /// Attachment files, and the chunks in them that were authenticated.
    pub attachment_files: u64,
    /// Chunks authenticated.
    pub chunks: u64,
    /// Every part, as the manifest lists it.
    pub parts: Vec<Part>,
    /// Parts read but not kept: attachment files no message names.
    pub skipped: Vec<String>,
    /// What the backup says was left out when it was made.
    pub left_out: Vec<String>,
}

/// Reads the whole backup and checks everything in it; writes nothing.
pub fn verify(file: &Path, opener: &Opener) -> Result<Contents, BackupError> {
    read(file, opener, None)
}

/// Where the next entry starts, for errors that the age or tar layer raises between parts.
fn after(part: Option<&str>) -> String {
    match part {
        Some(p) => format!("the entry after {p}"),
        None => "the start of the archive".to_owned(),
    }
}

/// Reads the backup at `file`; with `into`, writes each part kept under that directory.
pub(super) fn read(
    file: &Path,
    opener: &Opener,
    into: Option<&Path>,
) -> Result<Contents, BackupError> {
    let input = File::open(file).map_err(BackupError::io("opening", file))?;
    let bytes = input
        .metadata()
        .map_err(BackupError::io("reading", file))?
        .len();
    let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(1 << 20, input))
        .map_err(|e| header_error(file, e, Key::Passphrase))?;
    let scrypt = decryptor.is_scrypt();
    let stream = if scrypt {
        let mut identity = age::scrypt::Identity::new(age::secrecy::SecretString::from(
            opener.passphrase.to_string(),
        ));
        identity.set_max_work_factor(MAX_SCRYPT_LOG_N);
        decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| header_error(file, e, Key::Passphrase))?
    } else {
        if opener.identities.is_empty() {
            return Err(BackupError::Usage(
                "this backup is encrypted to age recipients: pass --identity KEYFILE".into(),
            ));
        }
        let hinted = std::cell::Cell::new(false);
        let noticing: Vec<Noticing<'_>> = opener
            .identities
            .iter()
            .map(|inner| Noticing {
                inner,
                hinted: &hinted,
            })
            .collect();
        decryptor
            .decrypt(noticing.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| {
                header_error(
                    file,
                    e,
                    Key::Identities {
                        hinted: hinted.get(),
                    },
                )
            })?
    };

    let mut archive = tar::Archive::new(stream);
    let mut state = State::default();
    let mut manifest: Option<Manifest> = None;
    let mut last: Option<String> = None;
    let entries = archive
        .entries()
        .map_err(|e| BackupError::damaged(after(None), e.to_string()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| BackupError::damaged(after(last.as_deref()), e.to_string()))?;
        let rel = entry_path(
            &entry
                .path()
                .map_err(|e| BackupError::damaged("an entry's name", e.to_string()))?,
        )?;
        if manifest.is_some() {
            return Err(BackupError::damaged(
                rel,
                format!("comes after {MANIFEST}, which ends a backup"),
            ));
        }
        if !matches!(entry.header().entry_type(), tar::EntryType::Regular) {
            return Err(BackupError::damaged(rel, "not a regular file"));
        }
        let size = entry.size();
        let damaged = |e: std::io::Error| BackupError::damaged(rel.clone(), e.to_string());
        if rel == MANIFEST {
            if size > 16 << 20 {
                return Err(BackupError::damaged(rel, "too large for a manifest"));
            }
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(damaged)?;
            let m: Manifest = serde_json::from_slice(&text)
                .map_err(|e| BackupError::damaged(MANIFEST, format!("does not parse: {e}")))?;
            manifest = Some(m);
        } else {
            state.admit(&rel)?;
            let out = match into {
                Some(dir) if state.keeps(&rel) => Some((create_in(dir, &rel)?, dir.join(&rel))),
                _ => None,
            };
            let mut part = PartReader::new(&mut entry, out);
            state
                .part(&rel, size, &mut part, opener)
                .map_err(|e| part.blame(e))?;
            part.drain(&rel)?;
            let hash = part.finish()?;
            state.parts.push(Part {
                path: rel.clone(),
                size,
                blake2b: hash,
            });
        }
        last = Some(rel);
    }
    // The rest of the stream (the tar's end blocks, age's last chunk) must authenticate too: a
    // file cut short fails here if not before.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| BackupError::damaged(after(last.as_deref()), e.to_string()))?;
    let Some(manifest) = manifest else {
        return Err(BackupError::damaged(
            "the end of the file",
            format!("no {MANIFEST}: the file is cut short"),
        ));
    };
    state.finish(file, bytes, scrypt, manifest)
}

/// What opened (or failed to open) the age layer.
#[derive(Clone, Copy)]
enum Key {
    /// The node passphrase (scrypt).
    Passphrase,
    /// Identities; `hinted` when a hint stanza opened with one of them.
    Identities { hinted: bool },
}

/// What age's header errors mean: a wrong key (exit 3) or a damaged header (exit 6). With
/// identities, a hint that opens with one of them says the key was right and its stanza is
/// damaged.
fn header_error(file: &Path, e: age::DecryptError, key: Key) -> BackupError {
    use age::DecryptError as D;
    let part = "the age header";
    match (e, key) {
        (D::NoMatchingKeys | D::DecryptionFailed | D::KeyDecryptionFailed, Key::Passphrase) => {
            BackupError::WrongKey(format!(
                "the passphrase does not open {} (a backup without recipients opens with the \
                 node passphrase it was made under)",
                file.display()
            ))
        }
        (
            D::NoMatchingKeys | D::DecryptionFailed | D::KeyDecryptionFailed,
            Key::Identities { hinted: true },
        ) => BackupError::damaged(part, "the stanza for your identity does not open"),
        (
            D::NoMatchingKeys | D::DecryptionFailed | D::KeyDecryptionFailed,
            Key::Identities { hinted: false },
        ) => BackupError::WrongKey(format!(
            "none of the identities given opens {}",
            file.display()
        )),
        (D::InvalidMac, _) => BackupError::damaged(part, "its MAC does not match"),
        (D::ExcessiveWork { required, .. }, _) => BackupError::damaged(
            part,
            format!(
                "it asks for scrypt work 2^{required}, beyond the 2^{MAX_SCRYPT_LOG_N} a pigeon backup uses"
            ),
        ),
        (D::UnknownFormat, _) => {
            BackupError::damaged(part, "not an age file, or one from a newer age")
        }
        (other, _) => BackupError::damaged(part, other.to_string()),
    }
}

/// Creates `rel` under `dir` (parents 0700, the file 0600, never an existing one).
fn create_in(dir: &Path, rel: &str) -> Result<File, BackupError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(BackupError::io("creating", parent))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(BackupError::io("creating", &path))
}

/// What has been read so far.
#[derive(Default)]
struct State {
    keys: Option<Keys>,
    audit: Option<Audit>,
    parts: Vec<Part>,
    attachment_files: u64,
    chunks: u64,
    skipped: Vec<String>,
    seen: BTreeMap<String, ()>,
}

impl State {
    /// Whether restore keeps `rel`: every part but an attachment file no message names.
    fn keeps(&self, rel: &str) -> bool {
        match attachment_id(rel) {
            Some(id) => self
                .audit
                .as_ref()
                .is_some_and(|a| a.attachments.contains_key(id)),
            None => true,
        }
    }

    /// Refuses a part before anything of it is read or written: one seen already, or one a
    /// backup never holds (after the keystore and the database, which come first).
    fn admit(&mut self, rel: &str) -> Result<(), BackupError> {
        if self.seen.insert(rel.to_owned(), ()).is_some() {
            return Err(BackupError::damaged(rel, "appears twice"));
        }
        let top = rel.split('/').next().unwrap_or(rel);
        if self.parts.len() >= 2 && (super::NOT_PARTS.contains(&top) || top.starts_with(".backup-"))
        {
            return Err(BackupError::damaged(rel, "not a part a backup holds"));
        }
        Ok(())
    }

    fn part(
        &mut self,
        rel: &str,
        size: u64,
        part: &mut PartReader<'_>,
        opener: &Opener,
    ) -> Result<(), BackupError> {
        match (rel, self.parts.len()) {
            ("keystore", 0) => {
                if size > 64 * 1024 {
                    return Err(BackupError::damaged(rel, "too large for a keystore"));
                }
                let mut bytes = Zeroizing::new(Vec::new());
                part.read_to_end(&mut bytes)
                    .map_err(|e| BackupError::damaged(rel, e.to_string()))?;
                let keys = keystore::unlock_bytes(
                    Path::new("the keystore in the backup"),
                    &bytes,
                    &opener.passphrase,
                )
                .map_err(|e| match e {
                    KeysError::WrongPassphrase(_) => BackupError::WrongKey(
                        "the passphrase does not open the keystore in the backup (it opens with \
                             the passphrase the node had when the backup was made)"
                            .into(),
                    ),
                    other => BackupError::damaged(rel, other.to_string()),
                })?;
                self.keys = Some(keys);
                Ok(())
            }
            ("pigeon.db", 1) => {
                let keys = self
                    .keys
                    .as_ref()
                    .ok_or_else(|| BackupError::damaged(rel, "comes before the keystore"))?;
                let audit = audit_database(rel, size, part, keys)?;
                self.audit = Some(audit);
                Ok(())
            }
            (_, 0) => Err(BackupError::damaged(
                rel,
                "the backup must start with the keystore",
            )),
            (_, 1) => Err(BackupError::damaged(
                rel,
                "the database must follow the keystore",
            )),
            _ => match attachment_id(rel) {
                Some(id) => self.attachment(rel, id, size, part),
                None => Ok(()),
            },
        }
    }

    fn attachment(
        &mut self,
        rel: &str,
        id: &str,
        size: u64,
        part: &mut PartReader<'_>,
    ) -> Result<(), BackupError> {
        let Some(audit) = self.audit.as_ref() else {
            return Err(BackupError::damaged(rel, "comes before the database"));
        };
        let Some(a) = audit.attachments.get(id) else {
            self.skipped.push(format!("{rel}: no message names it"));
            return Ok(());
        };
        self.chunks += check_chunks(rel, size, a, part)?;
        self.attachment_files += 1;
        Ok(())
    }

    fn finish(
        mut self,
        file: &Path,
        bytes: u64,
        scrypt: bool,
        manifest: Manifest,
    ) -> Result<Contents, BackupError> {
        if manifest.format > FORMAT {
            return Err(BackupError::damaged(
                MANIFEST,
                format!(
                    "format {} is newer than this pigeon reads ({FORMAT}); use a newer pigeon",
                    manifest.format
                ),
            ));
        }
        for (i, listed) in manifest.parts.iter().enumerate() {
            match self.parts.get(i) {
                Some(read) if read == listed => {}
                Some(read) if read.path == listed.path => {
                    return Err(BackupError::damaged(
                        read.path.clone(),
                        "its size or blake2b does not match the manifest",
                    ));
                }
                _ => {
                    return Err(BackupError::damaged(
                        listed.path.clone(),
                        "listed in the manifest but not where it says",
                    ));
                }
            }
        }
        if let Some(extra) = self.parts.get(manifest.parts.len()) {
            return Err(BackupError::damaged(
                extra.path.clone(),
                "not listed in the manifest",
            ));
        }
        let audit = self
            .audit
            .take()
            .ok_or_else(|| BackupError::damaged("pigeon.db", "missing"))?;
        // An attachment the database says a file holds must be in the backup, unless the file
        // went while the backup ran (and the manifest says so).
        for (id, a) in &audit.attachments {
            let rel = format!("attachments/{id}.sealed");
            if a.held.is_empty() || self.seen.contains_key(&rel) {
                continue;
            }
            if !manifest.left_out.iter().any(|l| l.starts_with(&rel)) {
                return Err(BackupError::damaged(
                    rel,
                    format!(
                        "missing: the database says it holds {} chunks",
                        a.held.len()
                    ),
                ));
            }
        }
        Ok(Contents {
            file: file.to_owned(),
            bytes,
            sealed_with: if scrypt {
                super::SealedWith::Passphrase
            } else {
                super::SealedWith::Recipients
            },
            peer_id: manifest.peer_id,
            pigeon_version: manifest.pigeon_version,
            created_at: manifest.created_at,
            contacts: audit.contacts,
            messages: audit.messages,
            redacted: audit.redacted,
            queued: audit.queued,
            sent: audit.sent,
            sealed_values: audit.sealed,
            attachment_files: self.attachment_files,
            chunks: self.chunks,
            parts: self.parts,
            skipped: self.skipped,
            left_out: manifest.left_out,
        })
    }
}

/// `attachments/<32 hex>.sealed` gives the id.
fn attachment_id(rel: &str) -> Option<&str> {
    let id = rel.strip_prefix("attachments/")?.strip_suffix(".sealed")?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// A database up to this size is checked in memory by `verify`; a larger one from a temporary
/// copy (SQLite's in-memory databases are limited to 2 GiB, and memory is better spared).
const IN_MEMORY_MAX: u64 = 1 << 30;

/// Reads the database part and opens every sealed value in it: from the restored file (restore),
/// in memory (verify), or from a temporary copy in a private directory, removed at once, for a
/// database too large for memory.
fn audit_database(
    rel: &str,
    size: u64,
    part: &mut PartReader<'_>,
    keys: &Keys,
) -> Result<Audit, BackupError> {
    let sql = |e: rusqlite::Error| BackupError::damaged(rel, e.to_string());
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut _spill = None;
    let conn = if let Some(path) = part.out_path() {
        part.drain(rel)?;
        Connection::open_with_flags(path, read_only).map_err(sql)?
    } else if size <= IN_MEMORY_MAX {
        let mut conn = Connection::open_in_memory().map_err(sql)?;
        conn.deserialize_read_exact(MAIN_DB, &mut *part, size as usize, true)
            .map_err(|e| part.blame_sqlite(rel, e))?;
        conn
    } else {
        let dir = tempfile::Builder::new()
            .prefix("pigeon-verify-")
            .tempdir()
            .map_err(BackupError::io("creating", &std::env::temp_dir()))?;
        let path = dir.path().join("pigeon.db");
        let mut copy = File::create(&path).map_err(BackupError::io("creating", &path))?;
        std::io::copy(&mut *part, &mut copy)
            .map_err(|e| part.blame(BackupError::damaged(rel, e.to_string())))?;
        _spill = Some(dir);
        Connection::open_with_flags(&path, read_only).map_err(sql)?
    };
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sql)?;
    if check != "ok" {
        return Err(BackupError::damaged(
            rel,
            format!("SQLite finds it damaged: {check}"),
        ));
    }
    let (version, known) = crate::store::schema_version(&conn)
        .map_err(|e| BackupError::damaged(rel, e.to_string()))?;
    if !known {
        return Err(BackupError::damaged(
            rel,
            format!("schema version {version} is from a newer pigeon; use a newer pigeon"),
        ));
    }
    match crate::store::audit(&conn, keys.at_rest()) {
        Ok(Ok(audit)) => Ok(audit),
        Ok(Err((table, row))) => Err(BackupError::damaged(
            rel,
            format!("the sealed {table} value of row {row} does not open under its key"),
        )),
        Err(e) => Err(BackupError::damaged(rel, e.to_string())),
    }
}

/// Authenticates, as the file passes, every chunk the database says the file holds; returns how
/// many.
fn check_chunks(
    rel: &str,
    size: u64,
    a: &AuditedAttachment,
    part: &mut PartReader<'_>,
) -> Result<u64, BackupError> {
    let r = &a.reference;
    let mut pos = 0u64;
    let mut checked = 0;
    let mut buf = Zeroizing::new(Vec::new());
    for index in 0..r.chunk_count() {
        let offset = attachments::chunk_offset(index, r.chunk_size);
        let len = attachments::sealed_len(index, r.size, r.chunk_size);
        if offset + len > size {
            if let Some(missing) = a.held.range(index..).next() {
                return Err(BackupError::damaged(
                    rel,
                    format!("chunk {missing} is missing: the file is short"),
                ));
            }
            break;
        }
        if !a.held.contains(&index) {
            continue;
        }
        // Skip what lies before the chunk (chunks not held yet), then read it.
        std::io::copy(&mut (&mut *part).take(offset - pos), &mut std::io::sink())
            .map_err(|e| BackupError::damaged(rel, e.to_string()))?;
        buf.resize(len as usize, 0);
        part.read_exact(&mut buf)
            .map_err(|e| BackupError::damaged(rel, e.to_string()))?;
        pos = offset + len;
        let sound = r.chunk_hash(index) == Some(attachments::hash(&buf).as_slice())
            && attachments::open_chunk(&r.key, &r.id, index, &buf).is_some();
        if !sound {
            return Err(BackupError::damaged(
                rel,
                format!("chunk {index} does not open under its key"),
            ));
        }
        checked += 1;
    }
    Ok(checked)
}

/// Reads one part: hashes what passes and, for a restore, writes it to its file.
struct PartReader<'a> {
    inner: &'a mut dyn Read,
    hash: Blake2b<U32>,
    out: Option<(File, PathBuf)>,
    write_error: Option<std::io::Error>,
}

impl<'a> PartReader<'a> {
    fn new(inner: &'a mut dyn Read, out: Option<(File, PathBuf)>) -> Self {
        PartReader {
            inner,
            hash: Blake2b::<U32>::new(),
            out,
            write_error: None,
        }
    }

    /// The file the part is written to, for a restore.
    fn out_path(&self) -> Option<PathBuf> {
        self.out.as_ref().map(|(_, p)| p.clone())
    }

    /// Reads what is left of the part.
    fn drain(&mut self, rel: &str) -> Result<(), BackupError> {
        std::io::copy(self, &mut std::io::sink())
            .map(|_| ())
            .map_err(|e| self.blame(BackupError::damaged(rel, e.to_string())))
    }

    /// The part's blake2b, once its file (if any) is durable.
    fn finish(mut self) -> Result<String, BackupError> {
        if let Some(e) = self.blame_write() {
            return Err(e);
        }
        if let Some((file, path)) = &self.out {
            file.sync_all().map_err(BackupError::io("syncing", path))?;
        }
        Ok(hex::encode(self.hash.finalize()))
    }

    /// An error while reading the part: the write side's own if writing failed.
    fn blame(&mut self, e: BackupError) -> BackupError {
        self.blame_write().unwrap_or(e)
    }

    fn blame_write(&mut self) -> Option<BackupError> {
        let source = self.write_error.take()?;
        let path = self
            .out
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        Some(BackupError::Io {
            action: "writing",
            path,
            source,
        })
    }

    fn blame_sqlite(&mut self, rel: &str, e: rusqlite::Error) -> BackupError {
        let e = BackupError::damaged(rel, e.to_string());
        self.blame(e)
    }
}

impl Read for PartReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        if let Some((out, _)) = &mut self.out
            && let Err(e) = out.write_all(&buf[..n])
        {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(std::io::Error::new(
                kind,
                "writing the restored file failed",
            ));
        }
        Ok(n)
    }
}
