//! The node's home directory: where it is, what lives in it, and its permissions.
//!
//! Everything a node stores lives under one directory (0700): the keystore, the database, the
//! configuration and the control socket, each 0600. A node holds an exclusive lock on `node.lock`
//! while it runs, so that two processes never own the same database.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::exit::ErrorKind;

/// Errors about the home directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// No `--home`, no `PIGEON_HOME` and no platform data directory.
    #[error("cannot tell where the pigeon home is: pass --home DIR or set PIGEON_HOME")]
    NoDefault,
    /// `init` on a home that already holds a keystore.
    #[error("{0} is already a pigeon home; nothing was changed")]
    AlreadyInitialised(PathBuf),
    /// A command that needs a home found none.
    #[error("{0} is not a pigeon home: run `pigeon init` first (or pass --home)")]
    NotInitialised(PathBuf),
    /// Another process holds the home.
    #[error("a pigeon node is already running for {0}")]
    Busy(PathBuf),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HomeError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            HomeError::AlreadyInitialised(_) => ErrorKind::Conflict,
            HomeError::NotInitialised(_) => ErrorKind::NotFound,
            HomeError::NoDefault => ErrorKind::Usage,
            HomeError::Busy(_) | HomeError::Io { .. } => ErrorKind::Other,
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        HomeError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// A pigeon home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home at `explicit`, or the platform default (`$XDG_DATA_HOME/pigeon` on Linux).
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home, HomeError> {
        let root = match explicit {
            Some(p) => p,
            None => dirs::data_dir().ok_or(HomeError::NoDefault)?.join("pigeon"),
        };
        Ok(Home { root })
    }

    /// The home's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The sealed keystore.
    pub fn keystore(&self) -> PathBuf {
        self.root.join("keystore")
    }
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("pigeon.db")
    }
    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// Compiled plugins (0700), authenticated under the owner's keys.
    pub fn plugin_cache(&self) -> PathBuf {
        self.root.join("plugin-cache")
    }
    /// The control socket of a running node.
    pub fn socket(&self) -> PathBuf {
        self.root.join("pigeon.sock")
    }
    /// The lock file held by whoever owns the database.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("node.lock")
    }

    /// Whether the home has been initialised.
    pub fn exists(&self) -> bool {
        self.keystore().exists()
    }

    /// Fails unless `init` has run here.
    pub fn require(&self) -> Result<(), HomeError> {
        if self.exists() {
            Ok(())
        } else {
            Err(HomeError::NotInitialised(self.root.clone()))
        }
    }

    /// Creates the directory (0700) for a new home; fails if a keystore is already there.
    pub fn create_dir(&self) -> Result<(), HomeError> {
        if self.exists() {
            return Err(HomeError::AlreadyInitialised(self.root.clone()));
        }
        fs::create_dir_all(&self.root).map_err(|e| HomeError::io("creating", &self.root, e))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(|e| HomeError::io("setting permissions of", &self.root, e))
    }

    /// Takes the home's exclusive lock without waiting; `Busy` if a node holds it.
    pub fn try_lock(&self) -> Result<HomeLock, HomeError> {
        let path = self.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HomeError::io("opening", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(HomeLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(HomeError::Busy(self.root.clone())),
            Err(fs::TryLockError::Error(e)) => Err(HomeError::io("locking", &path, e)),
        }
    }
}

/// Proof that this process owns the home; released on drop.
#[derive(Debug)]
pub struct HomeLock {
    _file: File,
}

/// Makes every file this process creates private to its owner (0600 files, 0700 directories),
/// including the ones SQLite and the socket layer create on their own.
pub fn restrict_umask() {
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename, fsync
/// of the directory. A crash leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| HomeError::io("creating", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| HomeError::io("writing", &tmp, e))?;
    file.sync_all()
        .map_err(|e| HomeError::io("syncing", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| HomeError::io("renaming into", path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| HomeError::io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
        let lock = home.try_lock().expect("first lock");
        assert!(matches!(home.try_lock(), Err(HomeError::Busy(_))));
        drop(lock);
        home.try_lock().expect("lock after release");
    }

    #[test]
    fn atomic_write_replaces_whole_file_with_private_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        write_atomic(&path, b"first").expect("write");
        write_atomic(&path, b"second").expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }
}
