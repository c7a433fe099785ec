//! The receiver's side of attachments: pulls the chunks it misses from the sender, a window at a
//! time, and hands them to a [`Group`] that checks them against the manifest, writes them at their
//! offsets, syncs and only then records them. After a crash it resumes from what is recorded; a
//! chunk that fails its hash is refused and fetched again, and a peer that keeps sending bad data
//! is reported and the attachment given up on.
//!
//! The window is shared fairly between senders ([`pick`]): no sender holds more than its share
//! while others wait, so one that takes requests and never answers cannot stall the rest. An
//! attachment whose chunks cannot be fetched is retried with a growing delay (which a wake-up for
//! new work does not cut short; its sender connecting does), and given up on once it has failed
//! for `attachments.give_up_after` with no chunk since; `pigeon inbox fetch` resumes it by hand.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::group::{self, Chunk, Fetched, Group, Landed};
use super::{AttachmentRef, file_path, sealed_len};
use crate::metrics::METRICS;
use crate::net::Net;
use crate::net::protocol::{ChunkRequest, ChunkResponse};
use crate::store::{Download, Store, now_ms};

/// The first delay before an attachment whose chunks could not be fetched is tried again; it
/// doubles with each failure, up to [`MAX_RETRY`].
const RETRY: Duration = Duration::from_secs(2);
/// The longest delay between tries of an attachment that keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Wakes the fetcher: there may be new work (a message with attachments arrived), a sender
/// connected (its attachments are tried again at once), or the user resumed attachments by hand.
#[derive(Clone, Default)]
pub struct FetchWaker {
    notify: Arc<Notify>,
    retry: Arc<Mutex<Retry>>,
}

/// The delays a wake-up cuts short.
#[derive(Default)]
struct Retry {
    all: bool,
    peers: HashSet<PeerId>,
}

impl FetchWaker {
    /// Look for chunks to fetch now (attachments waiting out a retry delay keep waiting).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// `peer` connected: its attachments are tried again now, whatever their delay.
    pub fn peer_connected(&self, peer: PeerId) {
        self.lock().peers.insert(peer);
        self.notify.notify_one();
    }

    /// Every attachment is tried again now (after `pigeon inbox fetch`).
    pub fn retry_all(&self) {
        self.lock().all = true;
        self.notify.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Retry> {
        self.retry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_retry(&self) -> Retry {
        std::mem::take(&mut *self.lock())
    }
}

/// An attachment waiting out its retry delay.
struct Waiting {
    peer: PeerId,
    failures: u32,
    until: Instant,
}

/// Ends the retry delays a wake-up asked to cut short (all, or its peers'); a wake-up for new work
/// asks none, so a sender that keeps failing is not asked again each time a message arrives.
fn cut_short(waiting: &mut HashMap<String, Waiting>, retry: &Retry) {
    waiting.retain(|_, w| !retry.all && !retry.peers.contains(&w.peer));
}

/// The delay after the `failures`th failure in a row.
fn retry_delay(failures: u32) -> Duration {
    RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

/// What the fetcher is configured with.
#[derive(Debug, Clone, Copy)]
pub struct FetchConfig {
    /// Chunks in flight at most.
    pub window: usize,
    /// An attachment failing this long with no chunk since is given up on.
    pub give_up_after_ms: u64,
}

enum Outcome {
    /// Fetched, not yet checked.
    Fetched(Fetched),
    Bad(Chunk, String),
    Unavailable(Chunk, String),
}

/// Starts the fetcher, woken by `waker`.
pub fn spawn(
    home_root: PathBuf,
    store: Store,
    net: Net,
    config: FetchConfig,
    waker: FetchWaker,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let fetcher = Fetcher {
        home_root,
        store,
        net,
        config,
        in_flight: HashMap::new(),
        group: Group::default(),
        landing: HashSet::new(),
        waiting: HashMap::new(),
        started: HashMap::new(),
        releasing: HashMap::new(),
    };
    tokio::spawn(fetcher.run(waker, cancel))
}

struct Fetcher {
    home_root: PathBuf,
    store: Store,
    net: Net,
    config: FetchConfig,
    /// Chunks being fetched, with their sender.
    in_flight: HashMap<(String, u32), PeerId>,
    /// Chunks fetched, waiting to land.
    group: Group,
    /// Chunks fetched and not yet recorded (in `group`, or in the group landing now).
    landing: HashSet<(String, u32)>,
    /// Attachments waiting out a retry delay.
    waiting: HashMap<String, Waiting>,
    /// When each attachment's first chunk was asked for (for the throughput histogram).
    started: HashMap<String, Instant>,
    /// Attachments held whole whose sender is being told (or will be, after a delay) that it may
    /// drop its copy.
    releasing: HashMap<String, Release>,
}

/// A release owed to a sender.
struct Release {
    peer: PeerId,
    failures: u32,
    /// When to try next; `None` while a try is under way.
    next: Option<Instant>,
}

impl Fetcher {
    async fn run(mut self, waker: FetchWaker, cancel: CancellationToken) {
        let mut tasks: JoinSet<Outcome> = JoinSet::new();
        let mut releases: JoinSet<(String, bool)> = JoinSet::new();
        let mut landing: JoinSet<Landed> = JoinSet::new();
        loop {
            if landing.is_empty() && self.group.due(tasks.len()) {
                landing.spawn(group::land(self.store.clone(), self.group.take()));
            }
            // Refilled once half the window is free: each look-up reads every pending
            // manifest, so one per chunk would cost the store thread a tenth of a transfer.
            // A full group waiting for the one landing now holds further fetches back.
            let held_back = self.group.full() && !landing.is_empty();
            if tasks.len() <= self.config.window / 2 && !held_back {
                self.fill(&mut tasks).await;
            }
            self.release(&mut releases).await;
            // While a group lands, its end wakes the loop; otherwise the waiting group's age.
            let due_in = match self.group.due_in() {
                Some(d) if landing.is_empty() => d,
                _ => RETRY,
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = waker.notify.notified() => {
                    let retry = waker.take_retry();
                    cut_short(&mut self.waiting, &retry);
                    // A sender that connects (or a user's `inbox fetch`) gets its release now.
                    for r in self.releasing.values_mut() {
                        if r.next.is_some() && (retry.all || retry.peers.contains(&r.peer)) {
                            r.next = Some(Instant::now());
                        }
                    }
                }
                Some(Ok(outcome)) = tasks.join_next(), if !tasks.is_empty() => {
                    self.record(outcome).await;
                }
                Some(Ok(landed)) = landing.join_next(), if !landing.is_empty() => {
                    self.landed(landed).await;
                }
                Some(Ok((id, released))) = releases.join_next(), if !releases.is_empty() => {
                    self.released(id, released).await;
                }
                _ = tokio::time::sleep(due_in.min(RETRY)) => {}
            }
        }
        tasks.shutdown().await;
        releases.shutdown().await;
        // A group landing finishes (its chunks are recorded, or fetched again); chunks not yet
        // in one are fetched again after the restart.
        while let Some(Ok(landed)) = landing.join_next().await {
            self.landed(landed).await;
        }
    }

    /// Starts fetches for the free slots of the window, shared fairly between senders.
    async fn fill(&mut self, tasks: &mut JoinSet<Outcome>) {
        let downloads = match self.store.call(|db| db.downloads()).await {
            Ok(downloads) => downloads,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pending attachments");
                return;
            }
        };
        let now = Instant::now();
        let ready: Vec<Download> = downloads
            .into_iter()
            .filter(|d| {
                self.waiting
                    .get(&d.attachment.id_hex())
                    .is_none_or(|w| w.until <= now)
            })
            .map(|mut d| {
                // Fetched chunks on their way to disk (the store does not show them yet) are
                // not missing.
                let id = d.attachment.id_hex();
                d.missing
                    .retain(|&i| !self.landing.contains(&(id.clone(), i)));
                d
            })
            .collect();
        let free = self.config.window.saturating_sub(tasks.len());
        let busy: Vec<(PeerId, (String, u32))> = self
            .in_flight
            .iter()
            .map(|(chunk, peer)| (*peer, chunk.clone()))
            .collect();
        let mut addrs: HashMap<PeerId, Vec<libp2p::Multiaddr>> = HashMap::new();
        for (i, index) in pick(&ready, &busy, self.config.window, free) {
            let d = &ready[i];
            let peer = d.peer;
            if let std::collections::hash_map::Entry::Vacant(slot) = addrs.entry(peer) {
                let found = self
                    .store
                    .call(move |db| db.dial_addrs(&peer, now_ms()))
                    .await
                    .unwrap_or_default();
                slot.insert(found);
            }
            let id = d.attachment.id_hex();
            self.started.entry(id.clone()).or_insert(now);
            self.in_flight.insert((id.clone(), index), peer);
            tasks.spawn(fetch_one(
                self.net.clone(),
                peer,
                addrs[&peer].clone(),
                Arc::new(d.attachment.clone()),
                index,
                file_path(&self.home_root, &id),
            ));
        }
    }

    /// A group landed: its good chunks are held now (or, where it failed, fetched again).
    async fn landed(&mut self, landed: Landed) {
        let Landed {
            held,
            bad,
            failed,
            complete,
        } = landed;
        for (c, bytes) in &held {
            self.landing.remove(&(c.id.clone(), c.index));
            METRICS.attachment_chunks.inc();
            METRICS.attachment_bytes.inc_by(*bytes);
            self.waiting.remove(&c.id);
        }
        for id in complete {
            let seconds = self
                .started
                .remove(&id)
                .map_or(0.0, |t| t.elapsed().as_secs_f64());
            let Some((c, _)) = held.iter().find(|(c, _)| c.id == id) else {
                continue;
            };
            if seconds > 0.0 {
                METRICS
                    .attachment_throughput
                    .observe(c.size as f64 / seconds);
            }
            tracing::info!(peer = %c.peer, attachment = %id, bytes = c.size, "attachment complete");
        }
        for (c, why) in bad {
            self.landing.remove(&(c.id.clone(), c.index));
            self.bad_chunk(c, why).await;
        }
        for (c, why) in failed {
            self.landing.remove(&(c.id.clone(), c.index));
            tracing::error!(attachment = %c.id, chunk = c.index, error = %why, "a fetched chunk did not land; fetching it again");
        }
    }

    /// Tells the senders of attachments held whole that they may drop their copies.
    async fn release(&mut self, tasks: &mut JoinSet<(String, bool)>) {
        let due: Vec<([u8; 16], PeerId)> = match self.store.call(|db| db.unreleased()).await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "cannot read attachments to release");
                return;
            }
        };
        let now = Instant::now();
        for (raw, peer) in due {
            let id = hex::encode(raw);
            let entry = self.releasing.entry(id.clone()).or_insert(Release {
                peer,
                failures: 0,
                next: Some(now),
            });
            if entry.next.is_none_or(|next| next > now) {
                continue;
            }
            if tasks.len() >= self.config.window {
                break;
            }
            entry.next = None;
            let addrs = self
                .store
                .call(move |db| db.dial_addrs(&peer, now_ms()))
                .await
                .unwrap_or_default();
            let net = self.net.clone();
            tasks.spawn(async move {
                let request = ChunkRequest {
                    attachment: raw,
                    index: 0,
                    release: true,
                };
                let answer = net.fetch_chunk(peer, addrs, request).await;
                // `NotFound`: the sender no longer has it (redacted, or released before a lost
                // answer); nothing more is owed either way.
                let done = matches!(
                    answer,
                    Ok(ChunkResponse::Released | ChunkResponse::NotFound)
                );
                (id, done)
            });
        }
    }

    async fn released(&mut self, id: String, released: bool) {
        if released {
            self.releasing.remove(&id);
            let key = id.clone();
            if let Err(e) = self.store.call(move |db| db.mark_released(&key)).await {
                tracing::error!(attachment = %id, error = %e, "cannot record a release");
            }
            return;
        }
        if let Some(r) = self.releasing.get_mut(&id) {
            r.failures += 1;
            r.next = Some(Instant::now() + retry_delay(r.failures));
        }
    }

    /// A fetch ended: its chunk joins the group, or the failure is counted.
    async fn record(&mut self, outcome: Outcome) {
        let chunk = match &outcome {
            Outcome::Fetched(f) => &f.chunk,
            Outcome::Bad(c, _) | Outcome::Unavailable(c, _) => c,
        };
        self.in_flight.remove(&(chunk.id.clone(), chunk.index));
        match outcome {
            Outcome::Fetched(f) => {
                self.landing.insert((f.chunk.id.clone(), f.chunk.index));
                self.group.push(f);
            }
            Outcome::Bad(c, reason) => self.bad_chunk(c, reason).await,
            Outcome::Unavailable(c, reason) => self.unavailable(c, reason).await,
        }
    }

    /// A chunk that does not match the manifest: counted against its sender.
    async fn bad_chunk(&mut self, c: Chunk, reason: String) {
        let (id, peer) = (c.id, c.peer);
        METRICS.attachment_chunk_failures.inc();
        tracing::warn!(%peer, attachment = %id, chunk = c.index, reason, "refused a bad chunk");
        let why = format!("peer {peer} keeps sending bad data ({reason})");
        let key = id.clone();
        if let Ok(true) = self
            .store
            .call(move |db| db.record_bad_chunk(&key, &why))
            .await
        {
            tracing::error!(%peer, attachment = %id, "peer keeps sending bad data: attachment given up");
        }
    }

    /// A chunk the sender did not give: its attachment waits before it is tried again.
    async fn unavailable(&mut self, c: Chunk, reason: String) {
        let (id, peer) = (c.id, c.peer);
        // Chunks in flight together fail together: one failure per round of tries.
        let now = Instant::now();
        if self.waiting.get(&id).is_some_and(|w| w.until > now) {
            return;
        }
        let failures = self.waiting.get(&id).map_or(0, |w| w.failures) + 1;
        let delay = retry_delay(failures);
        tracing::debug!(%peer, attachment = %id, chunk = c.index, reason, failures, ?delay, "chunk not available now");
        self.waiting.insert(
            id.clone(),
            Waiting {
                peer,
                failures,
                until: now + delay,
            },
        );
        let give_up = self.config.give_up_after_ms;
        let key = id.clone();
        let given_up = self
            .store
            .call(move |db| db.record_fetch_failure(&key, &reason, now_ms(), give_up))
            .await;
        if let Ok(true) = given_up {
            tracing::warn!(%peer, attachment = %id, "no chunk from the sender for too long: attachment given up");
        }
    }
}

/// Which chunks to ask for next: `(index into ready, chunk)`, at most `free` of them. Senders
/// take turns, one chunk each, and none gets more than its share of the `window` (counting what
/// it has in flight, `busy`) while another waits, so a sender that never answers holds at most its
/// share. A sender alone with work may use the whole window.
fn pick(
    ready: &[Download],
    busy: &[(PeerId, (String, u32))],
    window: usize,
    free: usize,
) -> Vec<(usize, u32)> {
    let in_flight: HashSet<&(String, u32)> = busy.iter().map(|(_, c)| c).collect();
    let mut load: HashMap<PeerId, usize> = HashMap::new();
    for (peer, _) in busy {
        *load.entry(*peer).or_default() += 1;
    }
    // Each sender's queue of chunks to ask for, senders in order of their oldest attachment.
    let mut order: Vec<PeerId> = Vec::new();
    let mut queues: HashMap<PeerId, std::collections::VecDeque<(usize, u32)>> = HashMap::new();
    for (i, d) in ready.iter().enumerate() {
        let id = d.attachment.id_hex();
        let queue = queues.entry(d.peer).or_insert_with(|| {
            order.push(d.peer);
            std::collections::VecDeque::new()
        });
        queue.extend(
            d.missing
                .iter()
                .filter(|&&index| !in_flight.contains(&(id.clone(), index)))
                .map(|&index| (i, index)),
        );
    }
    order.retain(|p| queues.get(p).is_some_and(|q| !q.is_empty()));
    let senders = order
        .iter()
        .chain(load.keys())
        .collect::<HashSet<_>>()
        .len();
    let share = (window / senders.max(1)).max(1);
    let mut picked = Vec::new();
    while picked.len() < free {
        let mut progress = false;
        for peer in &order {
            if picked.len() >= free {
                break;
            }
            let taken = load.entry(*peer).or_default();
            if *taken >= share {
                continue;
            }
            if let Some(next) = queues.get_mut(peer).and_then(|q| q.pop_front()) {
                picked.push(next);
                *taken += 1;
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    picked
}

async fn fetch_one(
    net: Net,
    peer: PeerId,
    addrs: Vec<libp2p::Multiaddr>,
    attachment: Arc<AttachmentRef>,
    index: u32,
    path: PathBuf,
) -> Outcome {
    let chunk = Chunk {
        id: attachment.id_hex(),
        index,
        peer,
        size: attachment.size,
    };
    let response = net
        .fetch_chunk(
            peer,
            addrs,
            ChunkRequest {
                attachment: attachment.id,
                index,
                release: false,
            },
        )
        .await;
    let why = match response {
        Ok(ChunkResponse::Data(data)) => {
            if data.len() as u64 != sealed_len(index, attachment.size, attachment.chunk_size) {
                return Outcome::Bad(
                    chunk,
                    format!("chunk {index} is not the size the manifest gives"),
                );
            }
            // Its hash is checked with the rest of its group (see `group`).
            return Outcome::Fetched(Fetched {
                chunk,
                attachment,
                path,
                data,
            });
        }
        Ok(ChunkResponse::NotFound) => "the sender does not have it".to_owned(),
        // Refused only over a relayed connection.
        Ok(ChunkResponse::Refused) => {
            "the sender sends attachments over a direct connection only; waiting for one".to_owned()
        }
        Ok(ChunkResponse::Released) => "the sender has dropped it".to_owned(),
        Err(e) => e.0,
    };
    Outcome::Unavailable(chunk, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachments::CHUNK_SIZE;

    fn download(peer: PeerId, id: u8, chunks: u32) -> Download {
        Download {
            attachment: AttachmentRef {
                id: [id; 16],
                name: "f".into(),
                size: u64::from(chunks) * u64::from(CHUNK_SIZE),
                chunk_size: CHUNK_SIZE,
                key: [0; 32],
                chunk_hashes: vec![0; chunks as usize * 32],
                file_hash: [0; 32],
            },
            peer,
            missing: (0..chunks).collect(),
        }
    }

    fn per_peer(ready: &[Download], picked: &[(usize, u32)]) -> HashMap<PeerId, usize> {
        let mut out = HashMap::new();
        for (i, _) in picked {
            *out.entry(ready[*i].peer).or_default() += 1;
        }
        out
    }

    #[test]
    fn a_silent_sender_cannot_hold_the_window() {
        let (silent, good) = (PeerId::random(), PeerId::random());
        // The silent sender's big attachment comes first and would fill the window alone.
        let ready = vec![download(silent, 1, 1000), download(good, 2, 10)];
        let picked = pick(&ready, &[], 8, 8);
        assert_eq!(picked.len(), 8);
        let counts = per_peer(&ready, &picked);
        assert_eq!((counts[&silent], counts[&good]), (4, 4));
        // Its four requests hang; the good sender's finish and are refilled, for it alone.
        let busy: Vec<_> = picked
            .iter()
            .filter(|(i, _)| ready[*i].peer == silent)
            .map(|&(i, c)| (silent, (ready[i].attachment.id_hex(), c)))
            .collect();
        let refill = pick(&ready, &busy, 8, 4);
        assert_eq!(per_peer(&ready, &refill).get(&silent), None);
        assert_eq!(refill.len(), 4);
        // Chunks in flight are never asked for twice.
        assert!(refill.iter().all(|&(i, c)| {
            !busy
                .iter()
                .any(|(_, b)| *b == (ready[i].attachment.id_hex(), c))
        }));
    }

    #[test]
    fn a_sender_alone_uses_the_whole_window_and_shares_round_robin() {
        let alone = PeerId::random();
        let ready = vec![download(alone, 1, 3), download(alone, 2, 20)];
        assert_eq!(pick(&ready, &[], 8, 8).len(), 8);
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let ready: Vec<Download> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| download(*p, i as u8, 10))
            .collect();
        let picked = pick(&ready, &[], 9, 9);
        assert!(per_peer(&ready, &picked).values().all(|&n| n == 3));
        // Fewer free slots than senders: each of the first gets one.
        assert_eq!(per_peer(&ready, &pick(&ready, &[], 9, 2)).len(), 2);
    }

    #[test]
    fn only_a_connection_or_the_user_cuts_a_retry_delay_short() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let waiting = || {
            HashMap::from([
                (
                    "a".to_owned(),
                    Waiting {
                        peer: a,
                        failures: 3,
                        until: Instant::now() + MAX_RETRY,
                    },
                ),
                (
                    "b".to_owned(),
                    Waiting {
                        peer: b,
                        failures: 1,
                        until: Instant::now() + RETRY,
                    },
                ),
            ])
        };
        let waker = FetchWaker::default();
        let mut w = waiting();
        waker.wake(); // a message arrived
        cut_short(&mut w, &waker.take_retry());
        assert_eq!(w.len(), 2, "a wake-up for new work keeps every delay");
        waker.peer_connected(a);
        cut_short(&mut w, &waker.take_retry());
        assert!(
            !w.contains_key("a") && w.contains_key("b"),
            "only the connected peer's"
        );
        waker.retry_all();
        cut_short(&mut w, &waker.take_retry());
        assert!(w.is_empty(), "inbox fetch: all");
        let mut w = waiting();
        cut_short(&mut w, &waker.take_retry());
        assert_eq!(w.len(), 2, "a request is taken once");
    }

    #[test]
    fn retry_delays_grow_to_a_cap() {
        assert_eq!(retry_delay(1), RETRY);
        assert_eq!(retry_delay(2), RETRY * 2);
        assert_eq!(retry_delay(5), RETRY * 16);
        assert_eq!(retry_delay(40), MAX_RETRY);
    }
}
