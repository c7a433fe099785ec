//! `backup create`: the snapshot, the tar, the age layer, the temp name and the rename.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use rusqlite::{Connection, OpenFlags, backup::StepResult};
use serde::{Deserialize, Serialize};

use super::{BackupError, FORMAT, Hint, MANIFEST, Manifest, Part, ROOT, Seal, SealedWith};
use crate::home::Home;
use crate::keys::keystore;

/// What a backup holds, from the database's clear columns (written into the manifest).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Contacts.
    pub contacts: u64,
    /// Inbox messages.
    pub messages: u64,
    /// Outbox messages still queued.
    pub queued: u64,
    /// Attachments (either direction).
    pub attachments: u64,
}

/// What `backup create` wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    /// The backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Entries in its tar, the manifest included.
    pub parts: usize,
    /// What it holds.
    pub counts: Counts,
    /// What it is encrypted to.
    pub sealed_with: SealedWith,
    /// What was left out, and why.
    pub left_out: Vec<String>,
}

/// The tar record size GNU tar pads archives to.
const RECORD: u64 = 10240;

/// A writer that counts what passes.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Tries at a snapshot whose keystore did not change while it was taken.
const TRIES: usize = 3;

/// Writes a backup of `home` to `out` (through a temp file beside it, renamed once complete).
/// `progress` is told the bytes written and the total expected.
pub fn create(
    home: &Home,
    out: &Path,
    seal: Seal,
    overwrite: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Created, BackupError> {
    home.require()?;
    check_target(home, out, overwrite)?;
    let peer_id = keystore::read_public(&home.keystore())?
        .peer_id()
        .to_string();
    let snapshot = snapshot_path(home);
    let _cleanup = Cleanup(snapshot.clone());
    let (keystore_bytes, counts, expected) = take_snapshot(home, &snapshot)?;
    if let Seal::Passphrase(pass) = &seal {
        // The backup opens with the node's passphrase: it must open the keystore it holds.
        keystore::unlock_bytes(&home.keystore(), &keystore_bytes, pass)?;
    }
    let (files, mut left_out) = other_files(home, out)?;
    left_out.extend(plugins_outside(home));

    let temp = temp_path(out);
    super::sweep(&super::parent_of(out), &temp_prefix(out), false);
    let _cleanup_temp = Cleanup(temp.clone());
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(BackupError::io("creating", &temp))?;
    let encryptor = match &seal {
        Seal::Passphrase(pass) => {
            let mut scrypt =
                age::scrypt::Recipient::new(age::secrecy::SecretString::from(pass.to_string()));
            // A fixed cost rather than one tuned to this machine: the backup must open on a
            // slower one too (verify accepts up to MAX_SCRYPT_LOG_N).
            scrypt.set_work_factor(super::SCRYPT_LOG_N);
            age::Encryptor::with_recipients(std::iter::once(&scrypt as &dyn age::Recipient))
                .map_err(|e| {
                    BackupError::Usage(format!("cannot encrypt under the passphrase: {e}"))
                })?
        }
        Seal::Recipients(list) => {
            let hints = list.iter().map(Hint::to).collect::<Result<Vec<_>, _>>()?;
            let all = list
                .iter()
                .map(|r| r as &dyn age::Recipient)
                .chain(hints.iter().map(|h| h as &dyn age::Recipient));
            age::Encryptor::with_recipients(all).map_err(|e| {
                BackupError::Usage(format!("cannot encrypt to those recipients: {e}"))
            })?
        }
    };
    let sink = encryptor
        .wrap_output(BufWriter::with_capacity(1 << 20, &file))
        .map_err(BackupError::io("writing", &temp))?;
    let mut tar = tar::Builder::new(Counting {
        inner: sink,
        written: 0,
    });

    let snapshot_len = std::fs::metadata(&snapshot)
        .map_err(BackupError::io("reading", &snapshot))?
        .len();
    let total = keystore_bytes.len() as u64 + snapshot_len + files.iter().map(|f| f.1).sum::<u64>();
    let mut writer = PartWriter {
        parts: Vec::new(),
        done: 0,
        total,
        progress,
        temp: &temp,
    };
    writer.add(
        &mut tar,
        "keystore",
        keystore_bytes.len() as u64,
        &mut keystore_bytes.as_slice(),
    )?;
    let mut db = File::open(&snapshot).map_err(BackupError::io("reading", &snapshot))?;
    writer.add(&mut tar, "pigeon.db", snapshot_len, &mut db)?;
    for (rel, _) in &files {
        let path = home.root().join(rel);
        // A file removed since it was listed (an attachment released or redacted meanwhile) is
        // left out; the database snapshot is older and may still name it.
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                left_out.push(format!("{rel}: removed while the backup ran"));
                continue;
            }
            Err(e) => return Err(BackupError::io("reading", &path)(e)),
        };
        // What the file holds now: a partial attachment may grow while it is read; the bytes
        // past this length are chunks the snapshot does not record yet.
        let len = f
            .metadata()
            .map_err(BackupError::io("reading", &path))?
            .len();
        writer.add(&mut tar, rel, len, &mut (&mut f).take(len))?;
    }
    // An attachment file the snapshot says is held, gone before it was listed or read (released
    // or redacted meanwhile): said so, so that verify does not take it for damage.
    for id in &expected {
        let rel = format!("attachments/{id}.sealed");
        if !writer.parts.iter().any(|p| p.path == rel)
            && !left_out.iter().any(|l| l.starts_with(&rel))
        {
            left_out.push(format!("{rel}: removed while the backup ran"));
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        pigeon_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: crate::store::format_time(crate::store::now_ms()),
        peer_id,
        counts: counts.clone(),
        parts: writer.parts.clone(),
        left_out: left_out.clone(),
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Usage(e.to_string()))?;
    append(&mut tar, MANIFEST, json.len() as u64, json.as_slice())
        .map_err(BackupError::io("writing", &temp))?;
    let parts = writer.parts.len() + 1;
    let mut sink = tar
        .into_inner()
        .map_err(BackupError::io("writing", &temp))?;
    // Padded to whole 10240-byte records, as GNU tar writes them, so that its appending and
    // deleting work on the archive too.
    let pad = (RECORD - sink.written % RECORD) % RECORD;
    sink.write_all(&vec![0u8; pad as usize])
        .map_err(BackupError::io("writing", &temp))?;
    let mut buffered = sink
        .inner
        .finish()
        .map_err(BackupError::io("writing", &temp))?;
    buffered
        .flush()
        .map_err(BackupError::io("writing", &temp))?;
    drop(buffered);
    file.sync_all().map_err(BackupError::io("syncing", &temp))?;
    let bytes = file
        .metadata()
        .map_err(BackupError::io("reading", &temp))?
        .len();
    std::fs::rename(&temp, out).map_err(BackupError::io("renaming the backup to", out))?;
    crate::home::sync_dir(&super::parent_of(out))
        .map_err(|e| BackupError::NotNow(e.to_string()))?;
    Ok(Created {
        path: out.to_owned(),
        bytes,
        parts,
        counts,
        sealed_with: match seal {
            Seal::Passphrase(_) => SealedWith::Passphrase,
            Seal::Recipients(_) => SealedWith::Recipients,
        },
        left_out,
    })
}

/// Refuses a target inside the home (the backup would hold itself) or one that exists, unless
/// overwriting was asked for.
fn check_target(home: &Home, out: &Path, overwrite: bool) -> Result<(), BackupError> {
    let parent = super::parent_of(out);
    let parent = parent
        .canonicalize()
        .map_err(BackupError::io("opening the directory", &parent))?;
    if let Ok(root) = home.root().canonicalize()
        && parent.starts_with(&root)
    {
        return Err(BackupError::Usage(format!(
            "{} is inside the home {}: write the backup somewhere else",
            out.display(),
            home.root().display()
        )));
    }
    if out.is_dir() {
        return Err(BackupError::Usage(format!(
            "{} is a directory; name a file",
            out.display()
        )));
    }
    if out.exists() && !overwrite {
        return Err(BackupError::Exists(out.to_owned()));
    }
    Ok(())
}

/// The temp name a backup is written under: hidden, beside the target, unique to this process.
fn temp_path(out: &Path) -> PathBuf {
    out.with_file_name(format!("{}{}", temp_prefix(out), std::process::id()))
}

/// The temp names' start, before the process id.
fn temp_prefix(out: &Path) -> String {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    format!(".{name}.partial-")
}

/// Removes a temporary file when dropped (after a rename, there is nothing left to remove).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("db-journal"));
    }
}

/// Where the database snapshot is written: in the home (private, 0700), removed afterwards.
/// Snapshots left by a backup that was killed are removed first.
fn snapshot_path(home: &Home) -> PathBuf {
    super::sweep(home.root(), ".backup-", false);
    home.root()
        .join(format!(".backup-{}.db", std::process::id()))
}

/// The keystore, the counts, and the attachment files the snapshot says are held.
type Snapshot = (Vec<u8>, Counts, Vec<String>);

/// Copies the database into `snapshot` with SQLite's online backup, between two reads of the
/// keystore that must agree (else a passphrase change or the end of a rekey happened meanwhile,
/// and the keystore would not match the rows: take it again).
fn take_snapshot(home: &Home, snapshot: &Path) -> Result<Snapshot, BackupError> {
    let keystore = home.keystore();
    for _ in 0..TRIES {
        let before = std::fs::read(&keystore).map_err(BackupError::io("reading", &keystore))?;
        let (counts, expected) = copy_database(&home.database(), snapshot)?;
        let after = std::fs::read(&keystore).map_err(BackupError::io("reading", &keystore))?;
        if before == after {
            return Ok((before, counts, expected));
        }
        let _ = std::fs::remove_file(snapshot);
    }
    Err(BackupError::NotNow(
        "the keystore kept changing while the backup ran (a passphrase change or a rekey); \
         try again once `pigeon keys status` shows none under way"
            .into(),
    ))
}

fn copy_database(source: &Path, snapshot: &Path) -> Result<(Counts, Vec<String>), BackupError> {
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| BackupError::Store(e.into()))?;
    src.busy_timeout(Duration::from_secs(10))
        .map_err(|e| BackupError::Store(e.into()))?;
    let _ = std::fs::remove_file(snapshot);
    let mut dst = Connection::open(snapshot).map_err(|e| BackupError::Store(e.into()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .map_err(|e| BackupError::Store(e.into()))?;
        // All pages in one step, under one read transaction: a consistent copy that a writer
        // (the node, in WAL mode) never blocks nor restarts.
        let mut waits = 0;
        loop {
            match backup.step(-1).map_err(|e| BackupError::Store(e.into()))? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if waits < 200 => {
                    waits += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(BackupError::NotNow(
                        "the database stayed locked for 10 s; try again".into(),
                    ));
                }
            }
        }
    }
    // A plain rollback-journal file: one file, that SQLite can also open from memory.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| BackupError::Store(e.into()))?;
    let count = |sql: &str| -> Result<u64, BackupError> {
        dst.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| BackupError::Store(e.into()))
    };
    let counts = Counts {
        contacts: count("SELECT COUNT(*) FROM contacts")?,
        messages: count("SELECT COUNT(*) FROM inbox")?,
        queued: count("SELECT COUNT(*) FROM outbox WHERE state = 'queued'")?,
        attachments: count("SELECT COUNT(*) FROM attachments")?,
    };
    let expected = dst
        .prepare(
            "SELECT id FROM attachments
             WHERE (direction = 'out' AND released = 0)
                OR (direction = 'in' AND id IN (SELECT attachment_id FROM attachment_chunks))",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| BackupError::Store(e.into()))?;
    Ok((counts, expected))
}

/// A file to put in the backup: its path under the home and its size when listed.
type Listed = (String, u64);

/// Files of the home that are not rebuilt, not the database (taken by snapshot) and not the
/// keystore (taken first): relative path and size, sorted. Symbolic links are not followed.
fn other_files(home: &Home, out: &Path) -> Result<(Vec<Listed>, Vec<String>), BackupError> {
    let mut files = Vec::new();
    let mut left_out = Vec::new();
    let mut dirs = vec![(home.root().to_owned(), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(BackupError::io("reading", &dir))?;
        for entry in entries {
            let entry = entry.map_err(BackupError::io("reading", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty()
                && (super::NOT_PARTS.contains(&name.as_str()) || name.starts_with(".backup-"))
            {
                continue;
            }
            let path = entry.path();
            if path == out {
                continue;
            }
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry
                .file_type()
                .map_err(BackupError::io("reading", &path))?;
            if meta.is_dir() {
                dirs.push((path, child));
            } else if meta.is_file() && super::entry_path(&Path::new(ROOT).join(&child)).is_err() {
                left_out.push(format!("{child}: a name or depth a backup cannot hold"));
            } else if meta.is_file() {
                let len = entry
                    .metadata()
                    .map_err(BackupError::io("reading", &path))?
                    .len();
                files.push((child, len));
            } else {
                left_out.push(format!("{child}: not a regular file"));
            }
        }
    }
    files.sort();
    Ok((files, left_out))
}

/// Plugin files the configuration names outside the home: not in the backup.
fn plugins_outside(home: &Home) -> Vec<String> {
    let Ok(config) = crate::config::Config::load(&home.config()) else {
        return Vec::new();
    };
    let root = home.root();
    config
        .plugins
        .iter()
        .filter_map(|(name, pc)| {
            let path = pc.path.as_ref()?;
            let full = root.join(path);
            (!full.starts_with(root)
                || path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir))
            .then(|| {
                format!(
                    "plugins.{name}: its file {} is outside the home; copy it yourself",
                    full.display()
                )
            })
        })
        .collect()
}

/// Writes parts into the tar, hashing each and telling the progress.
struct PartWriter<'a> {
    parts: Vec<Part>,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
    temp: &'a Path,
}

impl PartWriter<'_> {
    fn add<W: Write>(
        &mut self,
        tar: &mut tar::Builder<W>,
        rel: &str,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<(), BackupError> {
        let mut hashing = Hashing {
            inner: data,
            hash: Blake2b::<U32>::new(),
            read: 0,
            done: &mut self.done,
            total: self.total,
            progress: &mut *self.progress,
        };
        append(tar, rel, len, &mut hashing).map_err(BackupError::io("writing", self.temp))?;
        if hashing.read != len {
            return Err(BackupError::NotNow(format!(
                "{rel} changed size while the backup read it; try again"
            )));
        }
        let hash = hex::encode(hashing.hash.finalize());
        self.parts.push(Part {
            path: rel.to_owned(),
            size: len,
            blake2b: hash,
        });
        Ok(())
    }
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    rel: &str,
    len: u64,
    data: impl Read,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(crate::store::now_ms() / 1000);
    tar.append_data(&mut header, format!("{ROOT}/{rel}"), data)
}

/// A reader that hashes what passes and reports progress.
struct Hashing<'a> {
    inner: &'a mut dyn Read,
    hash: Blake2b<U32>,
    read: u64,
    done: &'a mut u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        *self.done += n as u64;
        (self.progress)(*self.done, self.total);
        Ok(n)
    }
}
