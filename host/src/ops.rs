//! `pigeon ops check`: the one command to run when something is wrong. Each check looks at one
//! part of a home (config, keys, permissions, database, attachments, plugins, node) without
//! changing anything, and says ok, warning or problem, with what to do about anything not ok.
//!
//! It never prompts: the checks that need the keys (unlocking, and with `deep` every sealed row
//! and chunk) run only when a passphrase is given, and say what they skipped otherwise.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::control::api::Request;
use crate::control::client;
use crate::home::Home;
use crate::keys::keystore::{self, KdfParams};
use crate::store::Peek;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Not run (what it needs is not at hand); the detail says why.
    Skipped,
    /// Works, but worth a look.
    Warning,
    /// Broken, or about to be.
    Problem,
}

impl Status {
    /// The word `ops check` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Warning => "warning",
            Status::Problem => "problem",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`config`, `keys.kdf`, `permissions`, ...).
    pub name: String,
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (for anything not ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &str, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
        Check {
            name: name.to_owned(),
            status,
            detail: detail.into(),
            fix: fix.map(str::to_owned),
        }
    }
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail, None)
    }
}

/// What `ops check` is asked to do.
pub struct Options<'a> {
    /// Authenticate every sealed row and chunk file, and compare the search index with the inbox.
    pub deep: bool,
    /// The passphrase, when one was given (never prompted for).
    pub passphrase: Option<&'a str>,
}

/// The WAL grows past this only when checkpoints cannot run: worth a look.
const WAL_WARN_BYTES: u64 = 256 << 20;

/// Runs every check on `home`, in a fixed order.
pub async fn check(home: &Home, options: &Options<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let node = node_running(home).await;
    out.push(match node {
        Some(true) => Check::ok(
            "node",
            "a node runs for this home and answers on its socket",
        ),
        Some(false) => Check::new(
            "node",
            Status::Warning,
            "the home is locked by a node, but its control socket does not answer",
            Some("look at the node's log; stop it (SIGTERM) and start it again"),
        ),
        None => Check::ok(
            "node",
            "no node runs (the checks below read the home directly)",
        ),
    });
    out.push(clock());
    let config = match Config::load(&home.config()) {
        Ok(config) => {
            out.push(Check::ok(
                "config",
                "config.toml parses and every value is in range",
            ));
            Some(config)
        }
        Err(e) => {
            out.push(Check::new(
                "config",
                Status::Problem,
                e.to_string(),
                Some(
                    "fix the key it names with `pigeon config set KEY VALUE`, or edit config.toml",
                ),
            ));
            None
        }
    };
    if let Some(config) = &config {
        out.extend(ports(config, node == Some(true)));
    }
    out.extend(keys(home, options));
    out.push(permissions(home));
    out.extend(database(home, options));
    out.extend(attachment_files(home));
    if let Some(config) = &config {
        out.push(plugins(config, home));
    }
    if options.deep {
        out.push(search_index(home, node == Some(true)).await);
    }
    out
}

/// The search index against the inbox, as the running node sees them (the index is sealed and
/// opening it repairs it, which a check must not do: without a node it is left to the next start).
async fn search_index(home: &Home, node_runs: bool) -> Check {
    if !node_runs {
        return Check::new(
            "search.index",
            Status::Skipped,
            "no node runs: the index is checked against the inbox, and repaired, when one starts",
            Some("start the node, or rebuild by hand: pigeon inbox reindex"),
        );
    }
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client::try_node(home, &Request::IndexStatus),
    )
    .await;
    match answer {
        Ok(Ok(Some(Ok(crate::control::api::Response::Index(s))))) if s.rebuilding => Check::ok(
            "search.index",
            format!("being rebuilt: {} of {} messages", s.indexed, s.total),
        ),
        Ok(Ok(Some(Ok(crate::control::api::Response::Index(s))))) if s.indexed == s.total => {
            Check::ok("search.index", format!("holds all {} messages", s.total))
        }
        Ok(Ok(Some(Ok(crate::control::api::Response::Index(s))))) => Check::new(
            "search.index",
            Status::Warning,
            format!("holds {} of the inbox's {} messages", s.indexed, s.total),
            Some("pigeon inbox reindex"),
        ),
        _ => Check::new(
            "search.index",
            Status::Warning,
            "the node did not say how its index stands",
            Some("look at the node's log"),
        ),
    }
}

/// `Some(true)`: a node answers; `Some(false)`: one holds the home but does not answer; `None`: none.
async fn node_running(home: &Home) -> Option<bool> {
    match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client::try_node(home, &Request::Status),
    )
    .await
    {
        Ok(Ok(Some(Ok(_)))) => Some(true),
        Ok(Ok(None)) => match home.try_lock(crate::home::Role::Command("ops_check")) {
            Ok(_lock) => None,
            Err(crate::home::HomeError::Busy {
                holder: crate::home::Holder::Node { .. },
                ..
            }) => Some(false),
            Err(_) => None,
        },
        _ => Some(false),
    }
}

/// The clock: message times and key lifetimes depend on it.
fn clock() -> Check {
    // 2026-01-01: no clock that reads earlier than this pigeon's release is right.
    const RELEASED_MS: u64 = 1_767_225_600_000;
    let now = crate::store::now_ms();
    if now < RELEASED_MS {
        return Check::new(
            "clock",
            Status::Problem,
            format!("the system clock reads {}", crate::store::format_time(now)),
            Some("set the clock (timedatectl set-ntp true)"),
        );
    }
    Check::ok(
        "clock",
        format!("the system clock reads {}", crate::store::format_time(now)),
    )
}

/// Whether the listen and metrics ports can be had (or are this home's node's).
fn ports(config: &Config, node_runs: bool) -> Vec<Check> {
    let mut taken = Vec::new();
    for addr in &config.node.listen {
        if let Some(socket) = tcp_socket(addr)
            && socket.port() != 0
            && std::net::TcpListener::bind(socket).is_err()
        {
            taken.push(format!("node.listen {addr}"));
        }
    }
    if let Ok(socket) = config.metrics.listen.parse::<std::net::SocketAddr>()
        && socket.port() != 0
        && std::net::TcpListener::bind(socket).is_err()
    {
        taken.push(format!("metrics.listen {}", config.metrics.listen));
    }
    let check = match (taken.is_empty(), node_runs) {
        (true, _) => Check::ok("config.ports", "the listen and metrics ports are free"),
        (false, true) => Check::ok(
            "config.ports",
            format!("in use, by this home's node: {}", taken.join(", ")),
        ),
        (false, false) => Check::new(
            "config.ports",
            Status::Problem,
            format!("in use by another process: {}", taken.join(", ")),
            Some("stop what holds the port (ss -ltnp), or change it with `pigeon config set`"),
        ),
    };
    vec![check]
}

/// The TCP socket address of a `/ip4|ip6/A/tcp/P` multiaddr.
fn tcp_socket(addr: &str) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let addr: libp2p::Multiaddr = addr.parse().ok()?;
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(port) => return Some(std::net::SocketAddr::new(ip?, port)),
            _ => {}
        }
    }
    None
}

fn keys(home: &Home, options: &Options<'_>) -> Vec<Check> {
    let path = home.keystore();
    let mut out = Vec::new();
    match keystore::describe(&path).and_then(|d| keystore::read_public(&path).map(|_| d)) {
        Ok((version, kdf)) => {
            out.push(Check::ok(
                "keys.keystore",
                format!("format {version}, checksum and public header sound"),
            ));
            let default = KdfParams::default();
            out.push(if kdf.m_kib < default.m_kib || kdf.t < default.t {
                Check::new(
                    "keys.kdf",
                    Status::Warning,
                    format!(
                        "argon2id {} MiB, {} passes: below today's default of {} MiB, {} passes",
                        kdf.m_kib / 1024,
                        kdf.t,
                        default.m_kib / 1024,
                        default.t
                    ),
                    Some("raise it: pigeon keys passwd --kdf-memory 64 --kdf-passes 3"),
                )
            } else {
                Check::ok(
                    "keys.kdf",
                    format!("argon2id {} MiB, {} passes", kdf.m_kib / 1024, kdf.t),
                )
            });
        }
        Err(e) => out.push(Check::new(
            "keys.keystore",
            Status::Problem,
            e.to_string(),
            Some("restore the home from a backup (pigeon restore)"),
        )),
    }
    if keystore::pending_path(&path).exists() {
        out.push(Check::new(
            "keys.passwd",
            Status::Warning,
            "a `keys passwd` stopped before its new passphrase took effect (the old one still opens the home)",
            Some("run `pigeon keys passwd` again"),
        ));
    }
    out.push(match options.passphrase {
        None => Check::new(
            "keys.unlock",
            Status::Skipped,
            "no passphrase given: the keystore was not unlocked (nor, with --deep, the sealed data read)",
            Some("give one with --passphrase-file or PIGEON_PASSPHRASE"),
        ),
        Some(pass) => match keystore::unlock(&path, pass) {
            Ok(keys) if keys.at_rest().ids().len() > 1 => Check::new(
                "keys.unlock",
                Status::Warning,
                "unlocks; a rekey after a passphrase change is unfinished",
                Some("run `pigeon keys rekey --resume` (a node finishes it when it starts)"),
            ),
            Ok(_) => Check::ok("keys.unlock", "the passphrase unlocks the keystore"),
            Err(e) => Check::new(
                "keys.unlock",
                Status::Problem,
                e.to_string(),
                Some("check the passphrase given; a damaged keystore comes back from a backup"),
            ),
        },
    });
    out
}

/// Home 0700; every file 0600 and directory 0700 below it; the socket 0600; all the user's.
fn permissions(home: &Home) -> Check {
    let uid = unsafe_free_euid();
    let mut wrong = Vec::new();
    let mut walk = vec![home.root().to_path_buf()];
    let mut seen = 0u64;
    while let Some(path) = walk.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        seen += 1;
        let mode = meta.permissions().mode() & 0o777;
        let kind = meta.file_type();
        let want = if kind.is_dir() { 0o700 } else { 0o600 };
        if meta.uid() != uid {
            wrong.push(format!("{} is owned by uid {}", path.display(), meta.uid()));
        } else if mode & !want != 0 {
            wrong.push(format!(
                "{} is {mode:04o} (want {want:04o})",
                path.display()
            ));
        }
        if kind.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            walk.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    if wrong.is_empty() {
        return Check::ok(
            "permissions",
            format!("{seen} entries, all the user's, none readable by others"),
        );
    }
    let shown: Vec<&str> = wrong.iter().take(5).map(String::as_str).collect();
    let more = wrong.len().saturating_sub(shown.len());
    Check::new(
        "permissions",
        Status::Problem,
        format!(
            "{}{}",
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
        Some(&format!(
            "chmod -R go-rwx {} (and chown any file that is not yours)",
            home.root().display()
        )),
    )
}

/// The effective user id.
fn unsafe_free_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn database(home: &Home, options: &Options<'_>) -> Vec<Check> {
    let path = home.database();
    let peek = match Peek::open(&path) {
        Ok(peek) => peek,
        Err(e) => {
            return vec![Check::new(
                "database",
                Status::Problem,
                format!("{}: {e}", path.display()),
                Some("restore the home from a backup (pigeon restore)"),
            )];
        }
    };
    let mut out = Vec::new();
    out.push(match peek.integrity() {
        Ok(problems) if problems.is_empty() => {
            Check::ok("database.integrity", "SQLite finds every page sound")
        }
        Ok(problems) => Check::new(
            "database.integrity",
            Status::Problem,
            problems.join("; "),
            Some("restore the home from a backup (pigeon restore); copy the home aside first"),
        ),
        Err(e) => Check::new(
            "database.integrity",
            Status::Problem,
            e.to_string(),
            Some("restore the home from a backup (pigeon restore)"),
        ),
    });
    out.push(match peek.schema_version() {
        Ok((v, true)) => Check::ok("database.schema", format!("schema version {v}")),
        Ok((v, false)) => Check::new(
            "database.schema",
            Status::Problem,
            format!("schema version {v} is newer than this pigeon knows"),
            Some("use the pigeon that wrote it (a newer release)"),
        ),
        Err(e) => Check::new("database.schema", Status::Problem, e.to_string(), None),
    });
    let wal = std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    out.push(if wal > WAL_WARN_BYTES {
        Check::new(
            "database.wal",
            Status::Warning,
            format!("the write-ahead log holds {} MiB", wal >> 20),
            Some("a long-running reader keeps it from being checkpointed: restart the node"),
        )
    } else {
        Check::ok(
            "database.wal",
            format!("the write-ahead log holds {} KiB", wal >> 10),
        )
    });
    match peek.stranded_transfers() {
        Ok(ids) if ids.is_empty() => out.push(Check::ok(
            "attachments.transfers",
            "every attachment belongs to a message",
        )),
        Ok(ids) => out.push(Check::new(
            "attachments.transfers",
            Status::Warning,
            format!(
                "{} attachment(s) whose message is gone: {}",
                ids.len(),
                ids.join(", ")
            ),
            Some("harmless; they go with the next `inbox rm` of their message, or stay unused"),
        )),
        Err(e) => out.push(Check::new(
            "attachments.transfers",
            Status::Problem,
            e.to_string(),
            None,
        )),
    }
    if options.deep {
        out.push(deep(home, &path, options));
    }
    out
}

/// Every sealed value and held chunk opened under the keys.
fn deep(home: &Home, path: &Path, options: &Options<'_>) -> Check {
    let Some(pass) = options.passphrase else {
        return Check::new(
            "database.sealed",
            Status::Skipped,
            "--deep needs the passphrase to open the sealed rows and chunks",
            Some("give one with --passphrase-file or PIGEON_PASSPHRASE"),
        );
    };
    let Ok(keys) = keystore::unlock(&home.keystore(), pass) else {
        return Check::new(
            "database.sealed",
            Status::Skipped,
            "the keystore did not unlock (see keys.unlock)",
            None,
        );
    };
    let restore = Some("restore the home from a backup (pigeon restore)");
    let audit = match Peek::open(path).and_then(|p| p.audit(keys.at_rest())) {
        Ok(Ok(audit)) => audit,
        Ok(Err((table, row))) => {
            return Check::new(
                "database.sealed",
                Status::Problem,
                format!(
                    "a sealed value in {table} (row {row}) does not open: damaged or tampered with"
                ),
                restore,
            );
        }
        Err(e) => return Check::new("database.sealed", Status::Problem, e.to_string(), restore),
    };
    let mut chunks = 0u64;
    for (id, a) in &audit.attachments {
        let file = crate::attachments::file_path(home.root(), id);
        let r = &a.reference;
        for &index in &a.held {
            let opened = crate::attachments::read_chunk(&file, r, index)
                .ok()
                .and_then(|sealed| crate::attachments::open_chunk(&r.key, &r.id, index, &sealed));
            if opened.is_none() {
                return Check::new(
                    "database.sealed",
                    Status::Problem,
                    format!(
                        "chunk {index} of {} does not open: damaged or tampered with",
                        file.display()
                    ),
                    restore,
                );
            }
            chunks += 1;
        }
    }
    Check::ok(
        "database.sealed",
        format!(
            "{} sealed values and {chunks} attachment chunks open under the keys",
            audit.sealed
        ),
    )
}

/// Files in `attachments/` that no attachment owns, and temporary files a crash left.
fn attachment_files(home: &Home) -> Vec<Check> {
    let known: BTreeSet<String> = Peek::open(&home.database())
        .and_then(|p| p.attachment_ids())
        .map(|ids| ids.into_iter().collect())
        .unwrap_or_default();
    let mut orphans = Vec::new();
    let dir = home.root().join("attachments");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owned = name
                .strip_suffix(".sealed")
                .is_some_and(|id| known.contains(id));
            if !owned {
                orphans.push(entry.path());
            }
        }
    }
    let mut leftovers: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(home.root()) {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".backup-") || name.contains(".partial-") {
                leftovers.push(entry.path());
            }
        }
    }
    orphans.extend(leftovers);
    if orphans.is_empty() {
        return vec![Check::ok(
            "attachments.files",
            "every file in attachments/ belongs to an attachment",
        )];
    }
    let shown: Vec<String> = orphans
        .iter()
        .take(5)
        .map(|p| p.display().to_string())
        .collect();
    vec![Check::new(
        "attachments.files",
        Status::Warning,
        format!(
            "{} file(s) nothing refers to (left by a crash): {}{}",
            orphans.len(),
            shown.join(", "),
            if orphans.len() > 5 { ", ..." } else { "" }
        ),
        Some(
            "a node removes the sealed ones a day old or more when it starts; or, with no node running, remove them (rm)",
        ),
    )]
}

fn plugins(config: &Config, home: &Home) -> Check {
    let statuses = crate::plugins::describe_offline(config, home.root());
    let broken: Vec<String> = statuses
        .iter()
        .filter(|s| s.enabled)
        .filter_map(|s| Some(format!("{}: {}", s.name, s.error.as_deref()?)))
        .collect();
    let enabled = statuses.iter().filter(|s| s.enabled).count();
    if broken.is_empty() {
        Check::ok("plugins", format!("{enabled} enabled, each loads"))
    } else {
        Check::new(
            "plugins",
            Status::Problem,
            broken.join("; "),
            Some(
                "fix plugins.NAME.path, rebuild the plugin, or `pigeon config set plugins.NAME.enabled false`",
            ),
        )
    }
}
