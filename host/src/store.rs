//! The store: one SQLite database (WAL, versioned migrations) owned by one thread.
//!
//! Async code never calls rusqlite directly: it sends a closure to the store thread through
//! [`Store::call`] and awaits the reply, so the connection has exactly one owner and writes are
//! serialised without locks. Bodies, subjects and queued envelopes are sealed at rest with the DEK
//! (see [`crate::keys::at_rest`]); ids, peers, times, sizes and labels stay in clear so they can be
//! queried. Every commit is durable (`synchronous=FULL`), because the receiver acks right after it
//! and the sender reports a message as queued right after it.

mod attachments;
mod audit;
mod contacts;
mod feeds;
mod health;
mod inbox;
mod migrations;
mod one_time;
mod outbox;
mod peek;
mod rekey;
mod rules;
mod search;
mod sent;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

pub use attachments::{AttachmentView, Download, MAX_BAD_CHUNKS, SaveInfo};
pub use audit::{Audit, AuditedAttachment, Unopened, audit, schema_version};
pub use contacts::Contact;
pub use feeds::Said;
pub use health::{AddrHealth, PeerHealth};
pub use inbox::{Archived, InboxItem, InboxQuery, MessageView, ReceiveOutcome, Received, opening};
pub use one_time::{HeldKeys, MAX_PER_CONTACT as ONE_TIME_KEYS_PER_CONTACT};
pub use outbox::{DueBatch, DueMessage, OutboxCounts, OutboxEntry, OutboxState, Sealing};
pub use peek::{Glimpse, Peek};
pub use rekey::RekeyCursor;
pub use rules::{RuleChange, RuleView, RulesApplied};
pub use search::{FeedDoc, HitRow, Listed, SearchLink};
pub use sent::{SentFile, SentItem, SentQuery, SentView};

use crate::exit::ErrorKind;
use crate::keys::Keys;
use crate::keys::at_rest::AtRestError;
use crate::metrics::METRICS;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A sealed value did not open.
    #[error(transparent)]
    Sealed(#[from] AtRestError),
    /// The named thing does not exist.
    #[error("no {what} {name:?}")]
    NotFound {
        /// What was looked for ("contact", "message").
        what: &'static str,
        /// The name or id given.
        name: String,
    },
    /// The thing to create exists already.
    #[error("{0}")]
    Conflict(String),
    /// An id prefix matches several messages.
    #[error("id prefix {0:?} matches more than one message; give more characters")]
    Ambiguous(String),
    /// Not something a message id starts with.
    #[error(
        "{0:?} is not a message id: give the id, or at least its first 4 characters (0-9, a-f), as `inbox list` or `outbox list` shows it"
    )]
    BadId(String),
    /// A stored value does not decode.
    #[error("stored {0} is damaged")]
    Corrupt(&'static str),
    /// The store thread has stopped.
    #[error("the store is closed")]
    Closed,
    /// The job panicked (a bug; the log has the panic). It failed alone: its transaction rolled
    /// back as it unwound, and the store goes on with the next job.
    #[error("a store operation failed unexpectedly (the log says where); nothing of it was kept")]
    Failed,
}

impl StoreError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::Ambiguous(_) | StoreError::BadId(_) => ErrorKind::Usage,
            StoreError::Sealed(_) | StoreError::Corrupt(_) => ErrorKind::Corrupt,
            _ => ErrorKind::Other,
        }
    }
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// Jobs that may wait for the store thread at once. When the queue is full, [`Store::call`] waits
/// for room (the caller is slowed down, nothing is dropped): a burst of incoming batches then
/// holds its acks back instead of growing the queue without bound.
const QUEUE: usize = 1024;

enum Msg {
    Job(Job),
    /// Finish the jobs queued before this one, then stop.
    Close,
}

/// A cloneable handle to the store thread.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Msg>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Counts the jobs that changed the inbox, the outbox or the sent history ([`Store::changes`]).
    changes: watch::Receiver<u64>,
}

/// The tables whose changes [`Store::changes`] reports.
const WATCHED: [&str; 3] = ["inbox", "outbox", "sent"];

/// The connection and the keys that seal rows; only the store thread holds it.
pub struct Db {
    conn: Connection,
    keys: Arc<Keys>,
    /// The search index following the inbox, if one is open.
    search: Option<SearchLink>,
    /// A checkpoint is owed ([`Db::checkpoint_soon`]).
    checkpoint_owed: bool,
    /// When the WAL was last checkpointed.
    last_checkpoint: std::time::Instant,
}

/// A checkpoint owed for spent one-time secrets waits at most this long while the store is busy
/// (one per batch of forward-secret messages would double the drain's writes); an idle store
/// pays it at once.
const CHECKPOINT_GAP: std::time::Duration = std::time::Duration::from_millis(200);

impl Store {
    /// Starts the store thread, which opens (creating if needed) the database at `path` and
    /// migrates it; returns once it has, with the error if it could not.
    pub async fn open(path: &Path, keys: Arc<Keys>) -> Result<Store, StoreError> {
        let (jobs, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let (opened_tx, opened) = oneshot::channel();
        let (changed, changes) = watch::channel(0u64);
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("pigeon-store".into())
            .spawn(move || {
                let mut db = match Db::open(&path, keys) {
                    Ok(db) => {
                        let _ = opened_tx.send(Ok(()));
                        db
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let dirty = Arc::new(AtomicBool::new(false));
                let mark = dirty.clone();
                db.conn.update_hook(Some(
                    move |_: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
                        if WATCHED.contains(&table) {
                            mark.store(true, Ordering::Relaxed);
                        }
                    },
                ));
                while let Some(Msg::Job(job)) = rx.blocking_recv() {
                    let cpu = crate::clock::thread_cpu();
                    job(&mut db);
                    // After the job, so that whoever looks (through a later job) sees its commit.
                    if dirty.swap(false, Ordering::Relaxed) {
                        changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    db.pay_checkpoint(rx.is_empty());
                    let spent = crate::clock::thread_cpu().saturating_sub(cpu);
                    METRICS.store_cpu_micros.inc_by(spent.as_micros() as u64);
                }
                db.pay_checkpoint(true);
                // Dropping `db` here closes the connection on this thread, before `close` returns.
            })
            .map_err(|_| StoreError::Closed)?;
        let store = Store {
            jobs,
            thread: Arc::new(Mutex::new(Some(thread))),
            changes,
        };
        match opened.await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => {
                store.close().await;
                Err(e)
            }
            Err(_) => {
                store.close().await;
                Err(StoreError::Closed)
            }
        }
    }

    /// A receiver that sees a new value after each job that changed the inbox, the outbox or the
    /// sent history (never blocking the store: a slow watcher sees the latest value only, and
    /// reads what changed from the store). A job run after the change is seen sees the change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        let mut rx = self.changes.clone();
        rx.mark_unchanged();
        rx
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (job, rx) = job(f);
        self.jobs
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::call`], from a thread outside the async runtime (the search follower): waits
    /// by blocking. Never call it from async code.
    pub fn call_blocking<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (job, rx) = job(f);
        self.jobs
            .blocking_send(Msg::Job(job))
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Lets the jobs already queued finish, closes the database and waits for the store thread to
    /// end. Later calls, from any handle, fail with [`StoreError::Closed`]. Whoever holds the home
    /// lock calls this before releasing it, so that no write outlives the lock.
    pub async fn close(&self) {
        // A send fails only when the thread is gone already; joining it is all that is left.
        let _ = self.jobs.send(Msg::Close).await;
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the store thread ended abnormally");
            }
        }
    }
}

/// `f` as a job for the store thread, and where its result comes back. A job that panics fails
/// alone: its transaction rolls back as it unwinds, and the store goes on.
fn job<R, F>(f: F) -> (Job, oneshot::Receiver<Result<R, StoreError>>)
where
    F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |db| {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(db)));
        let failed = result.is_err();
        let _ = tx.send(result.unwrap_or(Err(StoreError::Failed)));
        if failed {
            tracing::error!("a store job panicked; it failed, the store goes on");
        }
    });
    (job, rx)
}

impl Db {
    /// Opens the database directly on this thread (the store thread, tests and tools).
    pub fn open(path: &Path, keys: Arc<Keys>) -> Result<Db, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let before: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        migrations::MIGRATIONS.to_latest(&mut conn)?;
        let mut db = Db {
            conn,
            keys,
            search: None,
            checkpoint_owed: false,
            last_checkpoint: std::time::Instant::now(),
        };
        if before > 0 && before < migrations::SEALED_ROWS {
            // Rows from before they were sealed: this open is the one that migrated them, so
            // they are sealed now, once. Later, a row without a seal is damage.
            db.seal_old_rows()?;
        }
        Ok(db)
    }

    /// Seals the contact and inbox rows stored before [`migrations::SEALED_ROWS`].
    fn seal_old_rows(&mut self) -> Result<(), StoreError> {
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        contacts::seal_unsealed(&tx, keys.at_rest())?;
        inbox::seal_unsealed_senders(&tx, keys.at_rest())?;
        tx.commit()?;
        Ok(())
    }

    /// Copies the WAL into the database and truncates it, so that no older copy of a page (one
    /// that held a row now deleted) stays in the WAL file; `secure_delete` zeroes the freed pages.
    pub(crate) fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.checkpoint_owed = false;
        self.last_checkpoint = std::time::Instant::now();
        Ok(())
    }

    /// [`Db::checkpoint`] now if the last one is [`CHECKPOINT_GAP`] old, else once the store is
    /// idle or the gap has passed ([`Db::pay_checkpoint`], after each job of the store thread).
    pub(crate) fn checkpoint_soon(&mut self) -> Result<(), StoreError> {
        self.checkpoint_owed = true;
        self.pay_checkpoint_or_fail(false)
    }

    /// Pays an owed checkpoint if the store is `idle` or the gap has passed.
    pub fn pay_checkpoint(&mut self, idle: bool) {
        if let Err(e) = self.pay_checkpoint_or_fail(idle) {
            // Owed still: the next job tries again.
            tracing::warn!(error = %e, "cannot checkpoint the database");
        }
    }

    fn pay_checkpoint_or_fail(&mut self, idle: bool) -> Result<(), StoreError> {
        if self.checkpoint_owed && (idle || self.last_checkpoint.elapsed() >= CHECKPOINT_GAP) {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn seal(&self, table: &str, row: &str, plaintext: &[u8]) -> (u32, Vec<u8>) {
        self.keys.at_rest().seal(table, row, plaintext)
    }

    fn open_sealed(
        &self,
        table: &str,
        row: &str,
        key_id: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        Ok(self.keys.at_rest().open(table, row, key_id, blob)?)
    }
}

/// Checks a message id or id prefix typed by a user: 4 to 32 hex digits, lowercased.
fn check_id_prefix(prefix: &str) -> Result<String, StoreError> {
    let given = prefix.trim();
    let prefix = given.to_ascii_lowercase();
    if prefix.len() < 4 || prefix.len() > 32 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::BadId(given.to_owned()));
    }
    Ok(prefix)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A millisecond timestamp as RFC 3339 (UTC), for people and scripts.
///
/// Saturates at [`MAX_TIME_MS`] (the end of year 9999, the last RFC 3339 can write), so a time
/// from anywhere, a peer's clock included, formats.
pub fn format_time(ms: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.min(MAX_TIME_MS));
    humantime::format_rfc3339_millis(t).to_string()
}

/// 9999-12-31T23:59:59.999Z in milliseconds since the Unix epoch: the latest time pigeon stores
/// or shows. Times a peer stamps are clamped to it on receipt (see [`clamp_time`]).
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// A time from outside (a peer's `sent_at`) brought into the range pigeon stores: SQLite keeps
/// it as a signed integer and RFC 3339 stops at year 9999.
pub fn clamp_time(ms: u64) -> u64 {
    ms.min(MAX_TIME_MS)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A database in a temporary directory with fresh keys.
    pub(crate) fn temp_db() -> (tempfile::TempDir, Db, Arc<Keys>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Arc::new(Keys::generate());
        let db = Db::open(&dir.path().join("pigeon.db"), keys.clone()).expect("open db");
        (dir, db, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_panics_fails_alone_and_the_store_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("pigeon.db"), Arc::new(Keys::generate()))
            .await
            .expect("open");
        let panicked = store
            .call(|db| -> Result<(), StoreError> {
                let tx = db.conn.transaction()?;
                tx.execute("CREATE TABLE half_done (x INTEGER)", [])?;
                panic!("a bug in one job");
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Failed)), "{panicked:?}");
        // The next job runs, on the same connection, and the panicked job's transaction is gone.
        let tables: i64 = store
            .call(|db| {
                Ok(db.conn.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'half_done'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .expect("the store still answers");
        assert_eq!(tables, 0);
        store.close().await;
    }

    #[test]
    fn any_time_formats_and_peer_times_are_clamped() {
        assert_eq!(format_time(MAX_TIME_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(clamp_time(u64::MAX), MAX_TIME_MS);
        assert!(i64::try_from(clamp_time(u64::MAX)).is_ok());
        assert_eq!(clamp_time(1_700_000_000_000), 1_700_000_000_000);
    }

    #[test]
    fn rows_that_decide_where_messages_go_or_who_sent_them_are_checked() {
        use crate::envelope::MessageId;
        use crate::store::Received;
        let (_dir, mut db, _keys) = test_support::temp_db();
        let (bob, mallory) = (Keys::generate().address(), Keys::generate().address());
        db.add_contact("bob", &bob, &[]).expect("add");
        let id = MessageId::random();
        let received = Received {
            id,
            sender: bob.peer_id(),
            sent_at_ms: 1,
            subject: None,
            body: "from bob".into(),
            attachments: vec![],
            actions: vec![],
            one_time_key: None,
        };
        db.store_received(&[received], 2).expect("store");
        assert_eq!(db.message(&id.to_string()).expect("read").from, "bob");
        let damaged = |e: StoreError| e.kind() == ErrorKind::Corrupt;

        // Someone with write access points bob's entry at their own key: refused, never followed.
        let sql = |db: &Db, q: &str, p: &[&dyn rusqlite::ToSql]| {
            db.conn.execute(q, p).expect("tamper");
        };
        let original = bob.to_string();
        for (q, value) in [
            ("UPDATE contacts SET address = ?1", mallory.to_string()),
            ("UPDATE contacts SET name = ?1", "mom".to_owned()),
            (
                "UPDATE contacts SET peer_id = ?1",
                mallory.peer_id().to_string(),
            ),
        ] {
            sql(&db, q, &[&value]);
            assert!(db.contacts().map_or_else(damaged, |_| false), "{q}");
            sql(
                &db,
                "UPDATE contacts SET name = 'bob', address = ?1, peer_id = ?2",
                &[&original, &bob.peer_id().to_string()],
            );
            assert!(db.contacts().is_ok(), "restored");
        }
        sql(&db, "UPDATE contacts SET seal = NULL", &[]);
        assert!(
            db.contact_by_peer(&bob.peer_id())
                .map_or_else(damaged, |_| false)
        );
        db.seal_old_rows().expect("reseal");
        assert!(db.contact_by_peer(&bob.peer_id()).is_ok());

        // The message made to look as if it came from someone else: refused as damage.
        sql(
            &db,
            "UPDATE inbox SET sender = ?1",
            &[&mallory.peer_id().to_string()],
        );
        assert!(db.message(&id.to_string()).map_or_else(damaged, |_| false));
        assert!(
            db.inbox(&InboxQuery::default())
                .map_or_else(damaged, |_| false)
        );
        assert!(db.rule_candidates(0, 10).map_or_else(damaged, |_| false));
    }

    #[test]
    fn rows_stored_before_they_were_sealed_are_sealed_once_by_the_migrating_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pigeon.db");
        let keys = Arc::new(Keys::generate());
        let bob = Keys::generate().address();
        {
            // A database as the version before sealed rows left it.
            let mut conn = Connection::open(&path).expect("open");
            migrations::MIGRATIONS
                .to_version(&mut conn, migrations::SEALED_ROWS - 1)
                .expect("old schema");
            conn.execute(
                "INSERT INTO contacts (name, peer_id, address, added_at) VALUES ('bob', ?1, ?2, 0)",
                rusqlite::params![bob.peer_id().to_string(), bob.to_string()],
            )
            .expect("old contact");
            let (key_id, body) =
                keys.at_rest()
                    .seal("inbox", "00112233445566778899aabbccddeeff", b"old");
            conn.execute(
                "INSERT INTO inbox (id, sender, sent_at, received_at, size, body, key_id)
                 VALUES ('00112233445566778899aabbccddeeff', ?1, 1, 1, 3, ?2, ?3)",
                rusqlite::params![bob.peer_id().to_string(), body, key_id],
            )
            .expect("old message");
            // A queued message, through every outbox change since (the table rebuilt by 10).
            let env = crate::envelope::Envelope {
                v: 1,
                sender: vec![1],
                enc: vec![2; 32],
                ct: vec![3; 40],
                otk: None,
            };
            let mut plain = Vec::new();
            ciborium::into_writer(&env, &mut plain).expect("cbor");
            let row = "ffeeddccbbaa99887766554433221100";
            let (key_id, sealed) = keys.at_rest().seal("outbox", row, &plain);
            conn.execute(
                "INSERT INTO outbox (id, peer_id, created_at, state, next_attempt_at, size, envelope, key_id)
                 VALUES (?1, ?2, 5, 'queued', 5, ?3, ?4, ?5)",
                rusqlite::params![row, bob.peer_id().to_string(), plain.len() as i64, sealed, key_id],
            )
            .expect("old queued message");
        }
        let db = Db::open(&path, keys.clone()).expect("migrates and seals");
        let outbox = db.outbox().expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert_eq!(
            (
                outbox[0].state,
                outbox[0].forward_secrecy,
                outbox[0].to.as_str()
            ),
            (
                OutboxState::Queued,
                crate::config::ForwardSecrecy::Off,
                "bob"
            )
        );
        let due = db
            .due(10, 64, &Default::default(), &Default::default())
            .expect("due");
        assert_eq!(due[0].messages[0].envelope.ct, vec![3; 40]);
        assert_eq!(db.contacts().expect("sealed").len(), 1);
        let m = db.message("00112233").expect("sealed");
        assert_eq!((m.from.as_str(), m.body.as_str()), ("bob", "old"));
        // Only the migrating open seals: a seal removed later is damage, not an old row.
        db.conn
            .execute("UPDATE contacts SET seal = NULL", [])
            .expect("tamper");
        drop(db);
        let db = Db::open(&path, keys).expect("open");
        assert_eq!(
            db.contacts().map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::Corrupt)
        );
    }
}
