//! The node's home directory: where it is, what lives in it, and its permissions.
//!
//! Everything a node stores lives under one directory (0700): the keystore, the database, the
//! configuration and the control socket, each 0600. A node holds an exclusive lock on `node.lock`
//! while it runs, so that two processes never own the same database.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    #[error("{}", busy_message(home, holder))]
    Busy {
        /// The home.
        home: PathBuf,
        /// Who holds it, as far as its lock file tells.
        holder: Holder,
    },
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
            HomeError::Busy { .. } | HomeError::Io { .. } => ErrorKind::Other,
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

fn busy_message(home: &Path, holder: &Holder) -> String {
    let home = home.display();
    match holder {
        Holder::Node { pid } => format!("a pigeon node is already running for {home} (pid {pid})"),
        Holder::Command { pid, op } => format!(
            "{home} is in use by a pigeon command (pid {pid}, {op}) that did not finish in time; \
             try again once it has"
        ),
        Holder::Unknown => format!(
            "{home} is in use by another process (it holds {home}/node.lock); try again once it has finished"
        ),
    }
}

/// Who holds a home's lock, as the holder wrote it into `node.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Holder {
    /// A running node (`pigeon node run`, the demo, a bench).
    Node {
        /// Its process id.
        pid: u32,
    },
    /// A CLI command that works on the store in its own process, with no node running.
    Command {
        /// Its process id.
        pid: u32,
        /// The operation it carries out (`outbox_list`, `init`, ...).
        op: String,
    },
    /// A process that has not said yet (it took the lock a moment ago).
    Unknown,
}

/// What the process taking a home's lock is going to do with it.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// Run a node.
    Node,
    /// Carry out one operation and let go.
    Command(&'a str),
}

/// How long a starting node waits for a CLI command to let go of the home. A command holds the
/// lock while it unlocks the keystore (about a second) and runs one operation; a node started by a
/// service manager while a cron job sends a message must not fail for that.
pub const NODE_LOCK_WAIT: Duration = Duration::from_secs(30);

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
    /// The search index (sealed files; rebuilt from the inbox when missing or damaged).
    pub fn search_index(&self) -> PathBuf {
        self.root.join("search")
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

    /// Takes the home's exclusive lock without waiting, and records in it who holds it and why;
    /// `Busy` (saying who holds it) if another process does.
    pub fn try_lock(&self, role: Role<'_>) -> Result<HomeLock, HomeError> {
        let path = self.lock_file();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HomeError::io("opening", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(HomeError::Busy {
                    home: self.root.clone(),
                    holder: read_holder(&mut file),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(HomeError::io("locking", &path, e)),
        }
        let line = match role {
            Role::Node => format!("{} node\n", std::process::id()),
            Role::Command(op) => format!("{} command {op}\n", std::process::id()),
        };
        file.set_len(0)
            .and_then(|()| file.write_all_at(line.as_bytes(), 0))
            .map_err(|e| HomeError::io("writing", &path, e))?;
        Ok(HomeLock { _file: file })
    }

    /// Takes the lock for a node: waits up to `wait` while a CLI command (or a process that has
    /// not said what it is) holds it, and refuses at once if a node does.
    pub async fn lock_for_node(&self, wait: Duration) -> Result<HomeLock, HomeError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut told = false;
        loop {
            match self.try_lock(Role::Node) {
                Err(HomeError::Busy { holder, .. })
                    if !matches!(holder, Holder::Node { .. })
                        && tokio::time::Instant::now() < deadline =>
                {
                    if !told {
                        tracing::info!(
                            ?holder,
                            wait_s = wait.as_secs(),
                            "waiting for a pigeon command to let go of the home"
                        );
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }
}

/// Reads who holds the lock from its file: `<pid> node` or `<pid> command <op>`. A line from an
/// earlier holder (the present one has not written its own yet) names a process that is gone.
fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    if file.seek(SeekFrom::Start(0)).is_err() || file.take(256).read_to_string(&mut text).is_err() {
        return Holder::Unknown;
    }
    let mut words = text.split_whitespace();
    let Some(pid) = words.next().and_then(|p| p.parse::<u32>().ok()) else {
        return Holder::Unknown;
    };
    if !process_alive(pid) {
        return Holder::Unknown;
    }
    match (words.next(), words.next()) {
        (Some("node"), _) => Holder::Node { pid },
        (Some("command"), Some(op)) => Holder::Command {
            pid,
            op: op
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        },
        _ => Holder::Unknown,
    }
}

pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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

/// Keeps this process's memory, which holds the unlocked keys, out of core files and away from
/// other processes of the same user: no core file at all (`RLIMIT_CORE` 0, soft and hard), and not
/// dumpable (`PR_SET_DUMPABLE` 0, which also stops `ptrace` attaching without privilege and makes
/// `/proc/<pid>/mem` root's). Failing is not fatal, only logged: pigeon works without it.
pub fn forbid_core_dumps() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct it is given; prctl(PR_SET_DUMPABLE, 0) takes no pointer.
    let (limit, dumpable) = unsafe {
        (
            libc::setrlimit(libc::RLIMIT_CORE, &none),
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
        )
    };
    if limit != 0 || dumpable != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot forbid core dumps; a crash could leave key material in a core file"
        );
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename, fsync
/// of the directory. A crash leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A temporary name of its own, created exclusively (0600): two writers cannot tear each
    // other's file, and nothing planted at a predictable name is followed.
    let mut file = tempfile::Builder::new()
        .prefix(".pigeon-write-")
        .tempfile_in(dir)
        .map_err(|e| HomeError::io("creating a temporary file in", dir, e))?;
    let tmp = file.path().to_owned();
    file.write_all(bytes)
        .map_err(|e| HomeError::io("writing", &tmp, e))?;
    file.as_file()
        .sync_all()
        .map_err(|e| HomeError::io("syncing", &tmp, e))?;
    file.persist(path)
        .map_err(|e| HomeError::io("renaming into", path, e.error))?;
    sync_dir(dir)
}

/// Makes the entries of `dir` (a file created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> Result<(), HomeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| HomeError::io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_are_forbidden_for_good() {
        forbid_core_dumps();
        // SAFETY: PR_GET_DUMPABLE takes no pointer; getrlimit writes the struct it is given.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0);
        let mut limit = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) }, 0);
        assert_eq!((limit.rlim_cur, limit.rlim_max), (0, 0));
    }

    #[test]
    fn two_writers_never_tear_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let (a, b) = (vec![b'a'; 1 << 20], vec![b'b'; 1 << 20]);
        std::thread::scope(|s| {
            for bytes in [&a, &b] {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, bytes).expect("write");
                    }
                });
            }
        });
        let read = std::fs::read(&path).expect("read");
        assert!(read == a || read == b, "a torn file");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(left.len(), 1, "temporary files left behind");
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::resolve(Some(dir.path().to_owned())).expect("home");
        let lock = home
            .try_lock(Role::Command("outbox_list"))
            .expect("first lock");
        // The holder is this very process, which is alive, so the lock file names it.
        let pid = std::process::id();
        match home.try_lock(Role::Node) {
            Err(HomeError::Busy { holder, .. }) => assert_eq!(
                holder,
                Holder::Command {
                    pid,
                    op: "outbox_list".into()
                }
            ),
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(lock);
        let lock = home.try_lock(Role::Node).expect("lock after release");
        match home.try_lock(Role::Command("status")) {
            Err(e @ HomeError::Busy { .. }) => {
                assert!(
                    matches!(e, HomeError::Busy { holder: Holder::Node { pid: p }, .. } if p == pid)
                );
                assert!(e.to_string().contains("already running"), "{e}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(lock);
    }

    #[test]
    fn a_line_left_by_a_process_that_is_gone_names_nobody() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("node.lock"))
            .expect("lock file");
        // A pid beyond pid_max, which no process can have.
        file.write_all(b"4294967295 node\n").expect("write");
        assert_eq!(read_holder(&mut file), Holder::Unknown);
        file.set_len(0).expect("truncate");
        file.write_all_at(b"garbage", 0).expect("write");
        assert_eq!(read_holder(&mut file), Holder::Unknown);
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
