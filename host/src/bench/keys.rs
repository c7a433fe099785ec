//! `pigeon bench keys`: how fast a rekey moves what is at rest, and how fast a backup is written
//! and verified.
//!
//! A temporary home is filled with N generated messages (as `bench search` does) and its index
//! built. Then, in this process, as `keys passwd` does without a node: the keystore is re-wrapped
//! with a fresh data key and the rekey timed from its start to the old key's destruction (rows,
//! index files, the keystore written again, the checkpoint). Then `backup create` to an age
//! recipient and `backup verify` of that file are timed.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::backup::{self, Opener, Seal};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inbox::search::{LazySearch, Search};
use crate::keys::keystore::{self, KdfParams, Wrapping};
use crate::rekey::Rekey;
use crate::store::Store;

const PASSPHRASE: &str = "bench keys passphrase";

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct KeysRun {
    /// Messages in the inbox.
    pub messages: usize,
    /// Items the rekey moved (rows and index files).
    pub rekey_items: u64,
    /// Sealed bytes in the database, all opened and sealed again.
    pub rekey_bytes: u64,
    /// Seconds from the rekey's start to the old key's destruction.
    pub rekey_seconds: f64,
    /// Items per second.
    pub rekey_items_per_second: f64,
    /// Megabytes (10^6) of sealed rows per second.
    pub rekey_mb_per_second: f64,
    /// The backup file's size.
    pub backup_bytes: u64,
    /// Seconds to write it.
    pub backup_seconds: f64,
    /// Megabytes per second written.
    pub backup_mb_per_second: f64,
    /// Seconds to verify it.
    pub verify_seconds: f64,
    /// Megabytes per second verified.
    pub verify_mb_per_second: f64,
}

/// Fills a temporary home with `messages` messages, then times a rekey, a backup and its verify.
pub async fn keys(messages: usize) -> Result<KeysRun> {
    let dir = tempfile::tempdir().map_err(Error::io("a temporary directory"))?;
    let home = Home::resolve(Some(dir.path().join("home")))?;
    crate::init::create_home(&home, PASSPHRASE).await?;
    let keys = Arc::new(keystore::unlock(&home.keystore(), PASSPHRASE)?);
    let store = Store::open(&home.database(), keys.clone()).await?;
    super::search::fill_inbox(&store, messages).await?;
    let search = Search::open(&home.search_index(), keys.clone(), store.clone()).await?;
    search.sync().await?;
    search.close().await;

    // As `keys passwd`: the keystore re-wrapped with a fresh data key, then the rekey.
    let lazy = LazySearch::new(&home.search_index(), keys.clone(), store.clone());
    lazy.get().await?;
    let rekey = Rekey::new(
        keys.clone(),
        store.clone(),
        lazy.clone(),
        home.keystore(),
        home.search_index(),
    );
    let wrapping = Wrapping::new(PASSPHRASE, KdfParams::default())
        .map_err(|reason| Error::Run(crate::error::RunError::Bench(reason)))?;
    let dek = keystore::rewrap(&home.keystore(), &keys, &wrapping)?;
    keys.at_rest().install(dek);
    keys.set_wrapping(wrapping);
    let rekey_bytes = store.call(|db| db.sealed_bytes()).await?;
    let started = Instant::now();
    let rekey_items = rekey.run().await?;
    let rekey_seconds = started.elapsed().as_secs_f64();
    lazy.close().await;
    store.close().await;

    let identity = age::x25519::Identity::generate();
    let file = dir.path().join("bench.age");
    let started = Instant::now();
    let created = backup::create(
        &home,
        &file,
        Seal::Recipients(vec![identity.to_public()]),
        false,
        &mut |_, _| {},
    )?;
    let backup_seconds = started.elapsed().as_secs_f64();
    let opener = Opener {
        passphrase: zeroize::Zeroizing::new(PASSPHRASE.to_owned()),
        identities: vec![identity],
    };
    let started = Instant::now();
    backup::verify(&file, &opener)?;
    let verify_seconds = started.elapsed().as_secs_f64();
    let mb = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs.max(1e-9);
    Ok(KeysRun {
        messages,
        rekey_items,
        rekey_bytes,
        rekey_seconds,
        rekey_items_per_second: rekey_items as f64 / rekey_seconds.max(1e-9),
        rekey_mb_per_second: mb(rekey_bytes, rekey_seconds),
        backup_bytes: created.bytes,
        backup_seconds,
        backup_mb_per_second: mb(created.bytes, backup_seconds),
        verify_seconds,
        verify_mb_per_second: mb(created.bytes, verify_seconds),
    })
}
