//! The data rekey: once a passphrase change has installed a fresh data key
//! ([`crate::keys::keystore::rewrap`]), every item sealed under an older key is sealed again under
//! it, then the keystore is written without the old keys and they are dropped from memory.
//!
//! Items: the database's sealed rows (in batches on the store thread, so a running node keeps
//! sending and receiving between them; [`crate::store::Db::rekey_batch`]), which include each
//! attachment's content key (the chunk files stay as they are, under that key), and the key of
//! each search-index file ([`crate::inbox::search::sealed_dir`]). Every item records its key id,
//! so the work needs no journal: after a crash the next start (or `keys rekey --resume`) looks for
//! items under an old id again, and the keystore still holds the old keys until none is left.
//! Caches are keyed from the current data key and rebuild themselves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::inbox::search::{LazySearch, sealed_dir};
use crate::keys::{Keys, KeysError, keystore};
use crate::store::Store;

/// Rows re-sealed per store transaction.
const BATCH: usize = 500;
/// Rounds of "move what is left, then look again" before giving up (new items are sealed under
/// the current key, so one round is the norm).
const ROUNDS: usize = 5;

/// How one data key is used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyUse {
    /// Its id.
    pub id: u32,
    /// Whether new items are sealed under it.
    pub current: bool,
    /// Database rows sealed under it.
    pub rows: u64,
    /// Search-index files whose key is sealed under it.
    pub index_files: u64,
}

/// What `keys status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysStatus {
    /// The keystore's format version.
    pub format: u32,
    /// Its argon2id parameters.
    pub kdf: keystore::KdfParams,
    /// Each data key the keystore holds.
    pub keys: Vec<KeyUse>,
    /// Whether a rekey is under way: the keystore holds more than one data key.
    pub rekey_under_way: bool,
    /// Whether this process is moving items right now.
    pub rekey_running: bool,
    /// Items moved so far by the rekey that runs (or ran last) in this process.
    pub moved: u64,
    /// Items it had to move when it started.
    pub to_move: u64,
    /// Why the last rekey here stopped, if it failed.
    pub error: Option<String>,
}

/// A rekey over one home's store, index and keystore. Cheap to clone; one runs at a time.
#[derive(Clone)]
pub struct Rekey {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Arc<Keys>,
    store: Store,
    search: LazySearch,
    keystore: PathBuf,
    index: PathBuf,
    running: AtomicBool,
    moved: AtomicU64,
    to_move: AtomicU64,
    error: Mutex<Option<String>>,
}

/// The rekey of this process, while one exists (for a command's progress bar).
static HERE: Mutex<Weak<Inner>> = Mutex::new(Weak::new());

/// `(moved, to_move)` of the rekey running in this process, if any.
pub fn progress_here() -> Option<(u64, u64)> {
    let inner = HERE.lock().ok()?.upgrade()?;
    Some((
        inner.moved.load(Ordering::Relaxed),
        inner.to_move.load(Ordering::Relaxed),
    ))
}

impl Rekey {
    /// The rekey of the home whose keystore is `keystore` and index `index`.
    pub fn new(
        keys: Arc<Keys>,
        store: Store,
        search: LazySearch,
        keystore: PathBuf,
        index: PathBuf,
    ) -> Rekey {
        let inner = Arc::new(Inner {
            keys,
            store,
            search,
            keystore,
            index,
            running: AtomicBool::new(false),
            moved: AtomicU64::new(0),
            to_move: AtomicU64::new(0),
            error: Mutex::new(None),
        });
        if let Ok(mut here) = HERE.lock() {
            *here = Arc::downgrade(&inner);
        }
        Rekey { inner }
    }

    /// The keystore file.
    pub fn keystore(&self) -> &std::path::Path {
        &self.inner.keystore
    }

    /// Whether the keystore holds keys that a rekey has yet to retire.
    pub fn under_way(&self) -> bool {
        self.inner.keys.at_rest().ids().len() > 1
    }

    /// Runs the rekey in the background (a node), logging how it ends.
    pub fn start(&self) {
        if let Ok(mut error) = self.inner.error.lock() {
            *error = None;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this.run().await {
                Ok(moved) => tracing::info!(moved, "rekey done: the old data keys are destroyed"),
                Err(e) => {
                    tracing::error!(error = %e, "rekey stopped; it carries on at the next start")
                }
            }
        });
    }

    /// Moves every item to the current key and retires the others; returns how many items it
    /// moved. Returns at once if a rekey already runs here.
    pub async fn run(&self) -> Result<u64> {
        let inner = &self.inner;
        if inner.running.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let result = self.run_inner().await;
        if let Ok(mut error) = inner.error.lock() {
            *error = result.as_ref().err().map(|e| e.to_string());
        }
        inner.running.store(false, Ordering::Release);
        result
    }

    async fn run_inner(&self) -> Result<u64> {
        let inner = &self.inner;
        inner.moved.store(0, Ordering::Relaxed);
        let current = inner.keys.at_rest().current();
        let (rows, files) = self.counts().await?;
        let old = |m: &BTreeMap<u32, u64>| {
            m.iter()
                .filter(|(id, _)| **id != current)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        inner
            .to_move
            .store(old(&rows) + old(&files), Ordering::Relaxed);
        for _ in 0..ROUNDS {
            let mut cursor = crate::store::RekeyCursor::default();
            loop {
                let (n, next) = inner
                    .store
                    .call(move |db| {
                        let mut cursor = cursor;
                        Ok((db.rekey_batch(BATCH, &mut cursor)?, cursor))
                    })
                    .await?;
                cursor = next;
                inner.moved.fetch_add(n as u64, Ordering::Relaxed);
                if n == 0 {
                    break;
                }
            }
            let n = inner.search.get().await?.rekey_files().await?;
            inner.moved.fetch_add(n as u64, Ordering::Relaxed);
            let rows_left = inner.store.call(move |db| db.rekey_left(current)).await?;
            let files_left = self.index_counts().await?.keys().any(|id| *id != current);
            if !rows_left && !files_left {
                self.retire().await?;
                return Ok(inner.moved.load(Ordering::Relaxed));
            }
        }
        Err(KeysError::Rekey("items under an old key keep appearing".into()).into())
    }

    /// Writes the keystore with the current key only, then forgets the others, then checkpoints
    /// the database so that no page sealed under them stays in the WAL.
    async fn retire(&self) -> Result<()> {
        let inner = &self.inner;
        let wrapping = inner.keys.wrapping().ok_or_else(|| {
            KeysError::Rekey("the keys were not unlocked from the keystore".into())
        })?;
        if self.under_way() {
            let (keys, path) = (inner.keys.clone(), inner.keystore.clone());
            tokio::task::spawn_blocking(move || keystore::drop_old_keys(&path, &keys, &wrapping))
                .await
                .map_err(|_| KeysError::Rekey("writing the keystore stopped".into()))??;
            inner.keys.at_rest().retire_old();
        }
        inner.store.call(|db| db.checkpoint()).await?;
        Ok(())
    }

    /// Rows and index files per key id.
    async fn counts(&self) -> Result<(BTreeMap<u32, u64>, BTreeMap<u32, u64>)> {
        let rows = self.inner.store.call(|db| db.key_counts()).await?;
        Ok((rows, self.index_counts().await?))
    }

    /// Index files per key id.
    async fn index_counts(&self) -> Result<BTreeMap<u32, u64>> {
        let index = self.inner.index.clone();
        Ok(
            tokio::task::spawn_blocking(move || sealed_dir::key_counts(&index))
                .await
                .map_err(|_| KeysError::Rekey("the index count stopped".into()))?
                .map_err(|e| KeysError::Rekey(format!("counting the index files: {e}")))?,
        )
    }

    /// Where the keys stand.
    pub async fn status(&self) -> Result<KeysStatus> {
        let inner = &self.inner;
        let path = inner.keystore.clone();
        let (format, kdf) = tokio::task::spawn_blocking(move || keystore::describe(&path))
            .await
            .map_err(|_| KeysError::Rekey("reading the keystore stopped".into()))??;
        let (rows, files) = self.counts().await?;
        let current = inner.keys.at_rest().current();
        let keys = inner
            .keys
            .at_rest()
            .ids()
            .into_iter()
            .map(|id| KeyUse {
                id,
                current: id == current,
                rows: rows.get(&id).copied().unwrap_or(0),
                index_files: files.get(&id).copied().unwrap_or(0),
            })
            .collect();
        Ok(KeysStatus {
            format,
            kdf,
            keys,
            rekey_under_way: self.under_way(),
            rekey_running: inner.running.load(Ordering::Acquire),
            moved: inner.moved.load(Ordering::Relaxed),
            to_move: inner.to_move.load(Ordering::Relaxed),
            error: inner.error.lock().ok().and_then(|e| e.clone()),
        })
    }
}
