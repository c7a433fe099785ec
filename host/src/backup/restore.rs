//! `restore`: a backup into a new home, written beside it and renamed into place only once every
//! part checked out; it never merges into a home that holds anything.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::read::{Contents, read, verify};
use super::{BackupError, Opener, parent_of};

/// What `restore` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    /// The new home.
    pub home: PathBuf,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// The files written (or that would be), under the home.
    pub files: Vec<RestoredFile>,
    /// What the backup holds.
    pub contents: Contents,
}

/// One file of the restored home.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoredFile {
    /// Its path under the home.
    pub path: String,
    /// Its size.
    pub size: u64,
}

/// Restores the backup at `file` into `home`, which must not exist or be an empty directory.
pub fn restore(
    file: &Path,
    home: &Path,
    opener: &Opener,
    dry_run: bool,
) -> Result<Restored, BackupError> {
    check_empty(home)?;
    let contents = if dry_run {
        verify(file, opener)?
    } else {
        let staging = staging_path(home)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(BackupError::io("creating", &staging))?;
        let guard = RemoveOnDrop(Some(staging.clone()));
        let contents = read(file, opener, Some(&staging))?;
        forget_received_one_time_keys(&staging.join("pigeon.db"))?;
        sync_tree(&staging)?;
        // Checked again: something may have appeared there while the backup was read.
        check_empty(home)?;
        std::fs::rename(&staging, home)
            .map_err(BackupError::io("moving the restored home to", home))?;
        guard.defuse();
        crate::home::sync_dir(&parent_of(home)).map_err(|e| BackupError::NotNow(e.to_string()))?;
        contents
    };
    let files = contents
        .parts
        .iter()
        .filter(|p| {
            !contents
                .skipped
                .iter()
                .any(|s| s.starts_with(&format!("{}:", p.path)))
        })
        .map(|p| RestoredFile {
            path: p.path.clone(),
            size: p.size,
        })
        .collect();
    Ok(Restored {
        home: home.to_owned(),
        dry_run,
        files,
        contents,
    })
}

/// Drops the contacts' one-time keys the backup holds: some may have been used since it was made,
/// and a one-time key must never seal two messages. The restored node fetches fresh ones. (Its
/// own handed-out secrets stay: messages sealed to them may still be on their way.)
fn forget_received_one_time_keys(db: &Path) -> Result<(), BackupError> {
    let conn = rusqlite::Connection::open(db).map_err(|e| BackupError::Store(e.into()))?;
    let sql = |e: rusqlite::Error| BackupError::Store(e.into());
    // A backup from before forward secrecy has no such table (the first open migrates it).
    let has_pool: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'otk_pool')",
            [],
            |r| r.get(0),
        )
        .map_err(sql)?;
    if has_pool {
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(sql)?;
        conn.execute("DELETE FROM otk_pool", []).map_err(sql)?;
    }
    Ok(())
}

/// Refuses a home that exists and is not an empty directory.
fn check_empty(home: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(home) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(home.to_owned()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(BackupError::NotEmpty(home.to_owned()))
        }
        Err(e) => Err(BackupError::io("reading", home)(e)),
    }
}

/// A hidden directory beside `home`, on the same filesystem so that the rename is atomic.
fn staging_path(home: &Path) -> Result<PathBuf, BackupError> {
    let name = home
        .file_name()
        .ok_or_else(|| BackupError::Usage(format!("{} does not name a directory", home.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = parent_of(home);
    std::fs::create_dir_all(&parent).map_err(BackupError::io("creating", &parent))?;
    let prefix = format!(".{name}.restoring-");
    super::sweep(&parent, &prefix, true);
    Ok(parent.join(format!("{prefix}{}", std::process::id())))
}

/// Makes every directory entry under `dir` durable (the files were synced as they were written).
fn sync_tree(dir: &Path) -> Result<(), BackupError> {
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).map_err(BackupError::io("reading", &d))? {
            let entry = entry.map_err(BackupError::io("reading", &d))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
        crate::home::sync_dir(&d).map_err(|e| BackupError::NotNow(e.to_string()))?;
    }
    Ok(())
}

/// Removes a half-restored directory unless defused.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
