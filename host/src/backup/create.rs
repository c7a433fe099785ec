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

use super::{BackupError, FORMAT, Hint, MANIFEST, Manifest, Part, ROOT, Seal, hint};
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
    /// `"passphrase"` or `"recipients"`.
    pub sealed_with: String,
    /// What was left out, and why.
    pub left_out: Vec<String>,
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
    home.require()
        .map_err(|e| BackupError::NotNow(e.to_string()))?;
    check_target(home, out, overwrite)?;
    if let Seal::Passphrase(pass) = &seal {
        // The backup opens with the node's passphrase: make sure it is the one.
        keystore::unlock(&home.keystore(), pass)?;
    }
    let peer_id = keystore::read_public(&home.keystore())?
        .peer_id()
        .to_string();
    let snapshot = snapshot_path(home);
    let _cleanup = Cleanup(snapshot.clone());
    let (keystore_bytes, counts) = take_snapshot(home, &snapshot)?;
    let (files, mut left_out) = other_files(home, out)?;
    left_out.extend(plugins_outside(home));

    let temp = temp_path(out);
    let _cleanup_temp = Cleanup(temp.clone());
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(BackupError::io("creating", &temp))?;
    let encryptor = match &seal {
        Seal::Passphrase(pass) => {
            age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(pass.to_string()))
        }
        Seal::Recipients(list) => {
            let hints: Vec<Hint> = list.iter().map(|r| Hint(hint(r))).collect();
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
    let mut tar = tar::Builder::new(sink);

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
    let sink = tar
        .into_inner()
        .map_err(BackupError::io("writing", &temp))?;
    let mut buffered = sink.finish().map_err(BackupError::io("writing", &temp))?;
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
            Seal::Passphrase(_) => "passphrase".into(),
            Seal::Recipients(_) => "recipients".into(),
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
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
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
    if let Ok(entries) = std::fs::read_dir(home.root()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(".backup-")
                .and_then(|n| n.split('.').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !crate::home::process_alive(pid)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    home.root()
        .join(format!(".backup-{}.db", std::process::id()))
}

/// Copies the database into `snapshot` with SQLite's online backup, between two reads of the
/// keystore that must agree (else a passphrase change or the end of a rekey happened meanwhile,
/// and the keystore would not match the rows: take it again).
fn take_snapshot(home: &Home, snapshot: &Path) -> Result<(Vec<u8>, Counts), BackupError> {
    let keystore = home.keystore();
    for _ in 0..TRIES {
        let before = std::fs::read(&keystore).map_err(BackupError::io("reading", &keystore))?;
        let counts = copy_database(&home.database(), snapshot)?;
        let after = std::fs::read(&keystore).map_err(BackupError::io("reading", &keystore))?;
        if before == after {
            return Ok((before, counts));
        }
        let _ = std::fs::remove_file(snapshot);
    }
    Err(BackupError::NotNow(
        "the keystore kept changing while the backup ran (a passphrase change or a rekey); \
         try again once `pigeon keys status` shows none under way"
            .into(),
    ))
}

fn copy_database(source: &Path, snapshot: &Path) -> Result<Counts, BackupError> {
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
    Ok(Counts {
        contacts: count("SELECT COUNT(*) FROM contacts")?,
        messages: count("SELECT COUNT(*) FROM inbox")?,
        queued: count("SELECT COUNT(*) FROM outbox WHERE state = 'queued'")?,
        attachments: count("SELECT COUNT(*) FROM attachments")?,
    })
}

/// A file to put in the backup: its path under the home and its size when listed.
type Listed = (String, u64);

/// Files of the home that are not rebuilt, not the database (taken by snapshot) and not the
/// keystore (taken first): relative path and size, sorted. Symbolic links are not followed.
fn other_files(home: &Home, out: &Path) -> Result<(Vec<Listed>, Vec<String>), BackupError> {
    const SKIP_TOP: [&str; 10] = [
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
    let mut files = Vec::new();
    let mut left_out = Vec::new();
    let mut dirs = vec![(home.root().to_owned(), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(BackupError::io("reading", &dir))?;
        for entry in entries {
            let entry = entry.map_err(BackupError::io("reading", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && (SKIP_TOP.contains(&name.as_str()) || name.starts_with(".backup-"))
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
