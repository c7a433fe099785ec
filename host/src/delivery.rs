//! The send loop: the delivery engine that moves the outbox to its recipients.
//!
//! Due messages are coalesced per peer into batches (up to `batch_max_messages` or
//! `batch_max_bytes`), and up to `batches_in_flight` batches go to one peer at once, each on its
//! own stream of the same connection. A message handed to the network is in flight until its answer
//! comes back: the loop keeps those ids in memory and `due` leaves them out, so it is never sent
//! twice at once (and nothing is written for it: a restart has nothing in flight). Each answer is
//! recorded:
//! acked messages are delivered, a refusal that may pass and a batch without an answer are retried
//! on the peer's adaptive schedule ([`backoff`]), a refusal for good marks the message failed.
//! A peer that connects gets its due messages at once, whatever its backoff says. Messages older
//! than `message_ttl` become failed.
//!
//! The loop is the only owner of this state; it wakes on new messages, connecting peers, finished
//! attempts and the earliest due time.

pub mod backoff;
pub mod batch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::DeliveryConfig;
use crate::envelope::MessageId;
use crate::metrics::METRICS;
use crate::net::Net;
use crate::net::protocol::{Batch, Outcome, RejectReason};
use crate::store::{DueMessage, Store, StoreError};
use backoff::{Backoff, Schedule};

/// Longest the loop sleeps without looking at the outbox again.
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// How often the TTL is enforced and the outbox gauges refreshed.
const HOUSEKEEPING_MS: u64 = 1_000;

enum Wake {
    Queued,
    PeerConnected(PeerId),
}

/// A handle that wakes the send loop.
#[derive(Clone)]
pub struct Waker(mpsc::UnboundedSender<Wake>);

impl Waker {
    /// A message was queued: look at the outbox now.
    pub fn wake(&self) {
        let _ = self.0.send(Wake::Queued);
    }
    /// `peer` connected: its queued messages are due now.
    pub fn peer_connected(&self, peer: PeerId) {
        let _ = self.0.send(Wake::PeerConnected(peer));
    }
}

/// Starts the send loop.
pub fn spawn(
    store: Store,
    net: Net,
    config: &DeliveryConfig,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) -> (Waker, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sender = Sender {
        store,
        net,
        clock,
        schedule: Schedule::new(Backoff::from_config(config)),
        limits: Limits::from(config),
        in_flight: HashMap::new(),
        waived: HashSet::new(),
        attempts: JoinSet::new(),
        next_housekeeping: 0,
    };
    (Waker(tx), tokio::spawn(sender.run(rx, cancel)))
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    batch_messages: usize,
    batch_bytes: usize,
    window: usize,
    linger: Duration,
    ttl_ms: u64,
}

impl From<&DeliveryConfig> for Limits {
    fn from(c: &DeliveryConfig) -> Self {
        Limits {
            batch_messages: c.batch_max_messages,
            batch_bytes: c.batch_max_bytes,
            window: c.batches_in_flight,
            linger: Duration::from_millis(c.linger_ms),
            ttl_ms: c.message_ttl_ms(),
        }
    }
}

/// Batches in flight to one peer.
#[derive(Default)]
struct InFlight {
    batches: usize,
    ids: HashSet<MessageId>,
}

/// What an attempt brings back to the loop.
struct Attempt {
    peer: PeerId,
    messages: Vec<(MessageId, u64, u32)>,
    result: Result<Vec<Outcome>, String>,
}

struct Sender {
    store: Store,
    net: Net,
    clock: Arc<dyn Clock>,
    schedule: Schedule,
    limits: Limits,
    in_flight: HashMap<PeerId, InFlight>,
    /// Peers whose queued messages are all due, whatever their schedule says: each peer with a
    /// queued message when the loop starts, and each peer that connects. A peer leaves the set at
    /// its next failed attempt. Kept here instead of rewriting every queued row's next attempt (a
    /// backlog of days would be rewritten whole on each reconnect).
    waived: HashSet<PeerId>,
    attempts: JoinSet<Attempt>,
    next_housekeeping: u64,
}

impl Sender {
    async fn run(mut self, mut wakes: mpsc::UnboundedReceiver<Wake>, cancel: CancellationToken) {
        // After a restart nothing is in flight and every peer deserves a fresh try.
        match self.store.call(|db| db.queued_peers()).await {
            Ok(peers) => self.waived.extend(peers),
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
        loop {
            if let Err(e) = self.step().await {
                tracing::error!(error = %e, "send loop: store error");
            }
            let sleep = self.until_next_due().await;
            tokio::select! {
                _ = cancel.cancelled() => break,
                wake = wakes.recv() => match wake {
                    None => break,
                    Some(wake) => {
                        let mut linger = self.on_wake(wake);
                        while let Ok(wake) = wakes.try_recv() {
                            linger |= self.on_wake(wake);
                        }
                        if linger && !self.limits.linger.is_zero() {
                            // Let a burst of sends fill the batch before it goes.
                            tokio::time::sleep(self.limits.linger).await;
                        }
                    }
                },
                Some(done) = self.attempts.join_next(), if !self.attempts.is_empty() => {
                    if let Ok(attempt) = done {
                        self.record(attempt).await;
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
            }
            while let Some(Ok(attempt)) = self.attempts.try_join_next() {
                self.record(attempt).await;
            }
        }
        self.attempts.shutdown().await;
    }

    /// Returns whether the wake asks for lingering.
    fn on_wake(&mut self, wake: Wake) -> bool {
        match wake {
            Wake::Queued => true,
            Wake::PeerConnected(peer) => {
                tracing::debug!(%peer, "peer connected: its queued messages are due now");
                self.waived.insert(peer);
                false
            }
        }
    }

    /// Housekeeping, then hands every due batch that fits in a peer's window to the network.
    async fn step(&mut self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_MS;
            self.housekeeping(now).await?;
        }
        // Each peer gets as many messages as its free batch slots hold.
        let room: HashMap<PeerId, usize> = self
            .in_flight
            .iter()
            .map(|(p, f)| {
                (
                    *p,
                    self.limits.window.saturating_sub(f.batches) * self.limits.batch_messages,
                )
            })
            .collect();
        let busy: HashSet<MessageId> = self
            .in_flight
            .values()
            .flat_map(|f| f.ids.iter().copied())
            .collect();
        let per_peer = self.limits.batch_messages * self.limits.window;
        let waived = self.waived.clone();
        let due = self
            .store
            .call(move |db| db.due_waiving(now, per_peer, &room, &busy, &waived))
            .await?;
        let mut launches = Vec::new();
        for peer_due in due {
            let free =
                self.limits.window - self.in_flight.get(&peer_due.peer).map_or(0, |f| f.batches);
            let batches = batch::split(
                peer_due.messages,
                self.limits.batch_messages,
                self.limits.batch_bytes,
            );
            for messages in batches.into_iter().take(free) {
                launches.push((peer_due.peer, peer_due.addrs.clone(), messages));
            }
        }
        if launches.is_empty() {
            return Ok(());
        }
        for (peer, addrs, messages) in launches {
            let entry = self.in_flight.entry(peer).or_default();
            entry.batches += 1;
            entry.ids.extend(messages.iter().map(|m| m.id));
            METRICS.batch_messages.observe(messages.len() as f64);
            self.attempts
                .spawn(send(self.net.clone(), peer, addrs, messages));
        }
        Ok(())
    }

    async fn housekeeping(&mut self, now: u64) -> Result<(), StoreError> {
        let ttl = self.limits.ttl_ms;
        if ttl < now {
            let reason = format!(
                "not delivered within the message TTL ({})",
                humantime::format_duration(Duration::from_millis(ttl))
            );
            let expired = self
                .store
                .call(move |db| db.expire(now - ttl, &reason))
                .await?;
            if expired > 0 {
                tracing::warn!(messages = expired, "messages expired undelivered");
            }
        }
        let counts = self.store.call(|db| db.outbox_counts()).await?;
        METRICS.outbox_depth.set(counts.queued as i64);
        let age = counts
            .oldest_queued_at
            .map_or(0, |at| now.saturating_sub(at) / 1000);
        METRICS.outbox_oldest_age.set(age as i64);
        Ok(())
    }

    /// How long until the next queued message becomes due (or housekeeping is due). Messages due
    /// already but waiting for a full window are picked up when an attempt ends.
    async fn until_next_due(&self) -> Duration {
        let now = self.clock.now_ms();
        let next = self
            .store
            .call(move |db| db.next_due_after(now))
            .await
            .ok()
            .flatten();
        let earliest = next.unwrap_or(u64::MAX).min(self.next_housekeeping);
        Duration::from_millis(earliest.saturating_sub(now)).min(IDLE_RECHECK)
    }

    async fn record(&mut self, attempt: Attempt) {
        let Attempt {
            peer,
            messages,
            result,
        } = attempt;
        if let Some(f) = self.in_flight.get_mut(&peer) {
            f.batches = f.batches.saturating_sub(1);
            for (id, _, _) in &messages {
                f.ids.remove(id);
            }
            if f.batches == 0 {
                self.in_flight.remove(&peer);
            }
        }
        let now = self.clock.now_ms();
        let plan = self.plan(peer, &messages, result, now);
        for (id, created_at, attempts) in &plan.delivered {
            METRICS.sent.inc();
            METRICS
                .send_latency
                .observe(now.saturating_sub(*created_at) as f64 / 1000.0);
            METRICS.send_retries.observe(f64::from(*attempts + 1));
            tracing::debug!(%peer, message_id = %id, "delivered");
        }
        for (id, reason) in &plan.failed {
            tracing::warn!(%peer, message_id = %id, reason, "message refused for good");
        }
        for id in &plan.key_gone {
            tracing::warn!(%peer, message_id = %id, "the recipient no longer holds the one-time key of a message; sealing it again");
        }
        if let Some((error, at, ids)) = &plan.retry {
            tracing::debug!(%peer, messages = ids.len(), error, retry_in_ms = at.saturating_sub(now), "will retry");
        }
        let result = self
            .store
            .call(move |db| {
                let ids: Vec<MessageId> = plan.delivered.iter().map(|(id, _, _)| *id).collect();
                db.mark_delivered(&ids, now)?;
                if let Some((error, at, ids)) = &plan.retry {
                    let retries: Vec<(MessageId, u64)> = ids.iter().map(|id| (*id, *at)).collect();
                    db.mark_retry(&retries, error)?;
                }
                for (id, reason) in &plan.failed {
                    db.mark_failed(id, reason)?;
                }
                for id in &plan.key_gone {
                    db.one_time_key_gone(id, now)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::error!(%peer, error = %e, "cannot record delivery results");
        }
    }

    /// Decides what each message of a finished attempt becomes.
    fn plan(
        &mut self,
        peer: PeerId,
        messages: &[(MessageId, u64, u32)],
        result: Result<Vec<Outcome>, String>,
        now: u64,
    ) -> Plan {
        let mut plan = Plan::default();
        let outcomes = match result {
            Ok(outcomes) if outcomes.len() == messages.len() => outcomes,
            Ok(outcomes) => {
                let error = format!(
                    "recipient answered {} outcomes for {} messages",
                    outcomes.len(),
                    messages.len()
                );
                return self.retry_all(peer, messages, error, now);
            }
            Err(error) => return self.retry_all(peer, messages, error, now),
        };
        let mut retry_ids = Vec::new();
        let mut retry_reason = None;
        for (message, outcome) in messages.iter().zip(outcomes) {
            match outcome {
                Outcome::Stored | Outcome::Duplicate => plan.delivered.push(*message),
                Outcome::Rejected(reason) if reason.is_transient() => {
                    retry_ids.push(message.0);
                    retry_reason.get_or_insert(reason.describe());
                }
                Outcome::Rejected(RejectReason::OneTimeKeyGone) => plan.key_gone.push(message.0),
                Outcome::Rejected(reason) => plan.failed.push((message.0, reason.describe())),
            }
        }
        if retry_ids.is_empty() {
            self.schedule.answered(peer);
        } else {
            let at = self.failed(peer, now);
            plan.retry = Some((retry_reason.unwrap_or_default().to_owned(), at, retry_ids));
        }
        plan
    }

    /// A failed attempt to `peer`: when to try again, by its schedule, which applies again.
    fn failed(&mut self, peer: PeerId, now: u64) -> u64 {
        self.waived.remove(&peer);
        self.schedule.failed(peer, now, &mut rand::thread_rng())
    }

    fn retry_all(
        &mut self,
        peer: PeerId,
        messages: &[(MessageId, u64, u32)],
        error: String,
        now: u64,
    ) -> Plan {
        let at = self.failed(peer, now);
        Plan {
            retry: Some((error, at, messages.iter().map(|m| m.0).collect())),
            ..Plan::default()
        }
    }
}

#[derive(Default)]
struct Plan {
    delivered: Vec<(MessageId, u64, u32)>,
    failed: Vec<(MessageId, &'static str)>,
    /// Sealed to a one-time key the recipient no longer holds: sealed again (see
    /// [`crate::store::Db::one_time_key_gone`]).
    key_gone: Vec<MessageId>,
    retry: Option<(String, u64, Vec<MessageId>)>,
}

async fn send(net: Net, peer: PeerId, addrs: Vec<Multiaddr>, messages: Vec<DueMessage>) -> Attempt {
    let meta = messages
        .iter()
        .map(|m| (m.id, m.created_at, m.attempts))
        .collect();
    let request = Batch {
        envelopes: messages.into_iter().map(|m| m.envelope).collect(),
    };
    let result = net
        .send_batch(peer, addrs, request)
        .await
        .map(|r| r.outcomes)
        .map_err(|e| e.0);
    Attempt {
        peer,
        messages: meta,
        result,
    }
}
