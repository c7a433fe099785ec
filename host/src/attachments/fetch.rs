//! The receiver's side of attachments: pulls the chunks it misses from the sender, a window at a
//! time, checks each against the manifest, writes it to the attachment file at its offset (synced)
//! and only then records it. After a crash it resumes from what is recorded; a chunk that fails its
//! hash is refused and fetched again, and a peer that keeps sending bad data is reported and the
//! attachment given up on.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{AttachmentRef, chunk_offset, file_path, hash, sealed_len};
use crate::metrics::METRICS;
use crate::net::Net;
use crate::net::protocol::{ChunkRequest, ChunkResponse};
use crate::store::{Store, now_ms};

/// How long an attachment whose sender does not answer waits before the next try.
const RETRY: Duration = Duration::from_secs(2);

/// Wakes the fetcher (a message with attachments arrived, a peer connected).
#[derive(Clone, Default)]
pub struct FetchWaker(Arc<Notify>);

impl FetchWaker {
    /// Look for chunks to fetch now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

enum Outcome {
    Stored,
    Bad(String),
    Unavailable(String),
}

struct Done {
    id: String,
    index: u32,
    peer: PeerId,
    size: u64,
    bytes: u64,
    outcome: Outcome,
}

/// Starts the fetcher with at most `window` chunks in flight.
pub fn spawn(
    home_root: PathBuf,
    store: Store,
    net: Net,
    window: usize,
    cancel: CancellationToken,
) -> (FetchWaker, JoinHandle<()>) {
    let waker = FetchWaker::default();
    let task = tokio::spawn(run(home_root, store, net, window, waker.clone(), cancel));
    (waker, task)
}

async fn run(
    home_root: PathBuf,
    store: Store,
    net: Net,
    window: usize,
    waker: FetchWaker,
    cancel: CancellationToken,
) {
    let mut in_flight: HashSet<(String, u32)> = HashSet::new();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut wait_until: HashMap<String, Instant> = HashMap::new();
    let mut started: HashMap<String, Instant> = HashMap::new();
    loop {
        if tasks.len() < window {
            match store.call(|db| db.downloads()).await {
                Ok(downloads) => {
                    for d in downloads {
                        let id = d.attachment.id_hex();
                        if wait_until.get(&id).is_some_and(|t| *t > Instant::now()) {
                            continue;
                        }
                        let peer = d.peer;
                        let addrs = store
                            .call(move |db| db.dial_addrs(&peer, now_ms()))
                            .await
                            .unwrap_or_default();
                        let attachment = Arc::new(d.attachment);
                        let path = file_path(&home_root, &id);
                        for index in d.missing {
                            if tasks.len() >= window {
                                break;
                            }
                            if in_flight.insert((id.clone(), index)) {
                                started.entry(id.clone()).or_insert_with(Instant::now);
                                let job = fetch_one(
                                    net.clone(),
                                    peer,
                                    addrs.clone(),
                                    attachment.clone(),
                                    index,
                                    path.clone(),
                                );
                                tasks.spawn(job);
                            }
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read pending attachments"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = waker.0.notified() => wait_until.clear(),
            Some(Ok(done)) = tasks.join_next(), if !tasks.is_empty() => {
                in_flight.remove(&(done.id.clone(), done.index));
                record(&store, done, &mut wait_until, &mut started).await;
            }
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
    tasks.shutdown().await;
}

async fn record(
    store: &Store,
    done: Done,
    wait_until: &mut HashMap<String, Instant>,
    started: &mut HashMap<String, Instant>,
) {
    let Done {
        id,
        index,
        peer,
        size,
        bytes,
        outcome,
    } = done;
    match outcome {
        Outcome::Stored => {
            METRICS.attachment_chunks.inc();
            METRICS.attachment_bytes.inc_by(bytes);
            let key = id.clone();
            match store.call(move |db| db.record_chunk(&key, index)).await {
                Ok(true) => {
                    let seconds = started
                        .remove(&id)
                        .map_or(0.0, |t| t.elapsed().as_secs_f64());
                    if seconds > 0.0 {
                        METRICS.attachment_throughput.observe(size as f64 / seconds);
                    }
                    tracing::info!(%peer, attachment = %id, bytes = size, "attachment complete");
                }
                Ok(false) => {}
                Err(e) => tracing::error!(attachment = %id, error = %e, "cannot record a chunk"),
            }
        }
        Outcome::Bad(reason) => {
            METRICS.attachment_chunk_failures.inc();
            tracing::warn!(%peer, attachment = %id, chunk = index, reason, "refused a bad chunk");
            let why = format!("peer {peer} keeps sending bad data ({reason})");
            let key = id.clone();
            if let Ok(true) = store.call(move |db| db.record_bad_chunk(&key, &why)).await {
                tracing::error!(%peer, attachment = %id, "peer keeps sending bad data: attachment given up");
            }
        }
        Outcome::Unavailable(reason) => {
            tracing::debug!(%peer, attachment = %id, chunk = index, reason, "chunk not available now");
            wait_until.insert(id, Instant::now() + RETRY);
        }
    }
}

async fn fetch_one(
    net: Net,
    peer: PeerId,
    addrs: Vec<libp2p::Multiaddr>,
    attachment: Arc<AttachmentRef>,
    index: u32,
    path: PathBuf,
) -> Done {
    let id = attachment.id_hex();
    let done = |outcome, bytes| Done {
        id: id.clone(),
        index,
        peer,
        size: attachment.size,
        bytes,
        outcome,
    };
    let response = net
        .fetch_chunk(
            peer,
            addrs,
            ChunkRequest {
                attachment: attachment.id,
                index,
            },
        )
        .await;
    let data = match response {
        Ok(ChunkResponse::Data(data)) => data,
        Ok(ChunkResponse::NotFound) => {
            return done(
                Outcome::Unavailable("the sender does not have it".into()),
                0,
            );
        }
        Ok(ChunkResponse::Refused) => {
            return done(Outcome::Unavailable("the sender refused".into()), 0);
        }
        Err(e) => return done(Outcome::Unavailable(e.0), 0),
    };
    let expected_len = sealed_len(index, attachment.size, attachment.chunk_size);
    if data.len() as u64 != expected_len || attachment.chunk_hash(index) != Some(&hash(&data)[..]) {
        return done(
            Outcome::Bad(format!("chunk {index} does not match the manifest")),
            0,
        );
    }
    let offset = chunk_offset(index, attachment.chunk_size);
    let bytes = data.len() as u64;
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.write_all_at(&data, offset)?;
        file.sync_data()
    })
    .await;
    match written {
        Ok(Ok(())) => done(Outcome::Stored, bytes),
        Ok(Err(e)) => done(Outcome::Unavailable(format!("cannot write: {e}")), 0),
        Err(e) => done(Outcome::Unavailable(e.to_string()), 0),
    }
}
