//! The send loop: takes due messages from the outbox, sends them to their peers in batches, and
//! records acks and retries.
//!
//! One batch per peer is in flight at a time; a peer's messages go oldest first. An acked message
//! (stored or duplicate) is marked delivered and its envelope dropped; a refused one is retried with
//! backoff if the refusal may pass (the recipient has not added us yet) or marked failed if not; a
//! batch that got no answer is retried with backoff. The loop wakes when a message is queued, when a
//! peer connects, when an attempt ends, and when the earliest retry is due.

pub mod backoff;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::DeliveryConfig;
use crate::envelope::MessageId;
use crate::net::Net;
use crate::net::protocol::{Batch, Outcome};
use crate::store::{DueBatch, Store};
use backoff::Backoff;

/// Longest the loop sleeps without looking at the outbox again.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// A handle that wakes the send loop.
#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Makes the loop look at the outbox now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

struct Sender {
    store: Store,
    net: Net,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
}

/// Starts the send loop.
pub fn spawn(
    store: Store,
    net: Net,
    config: &DeliveryConfig,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) -> (Waker, JoinHandle<()>) {
    let waker = Waker::default();
    let sender = Arc::new(Sender {
        store,
        net,
        clock,
        backoff: Backoff::from_config(config),
    });
    let task = tokio::spawn(run(
        sender,
        config.batch_max_messages,
        waker.clone(),
        cancel,
    ));
    (waker, task)
}

async fn run(sender: Arc<Sender>, batch_max: usize, waker: Waker, cancel: CancellationToken) {
    let mut busy: HashSet<PeerId> = HashSet::new();
    let mut attempts: JoinSet<PeerId> = JoinSet::new();
    loop {
        let now = sender.clock.now_ms();
        let skip = busy.clone();
        let due = sender
            .store
            .call(move |db| db.due(now, batch_max, &skip))
            .await;
        match due {
            Ok(batches) => {
                for batch in batches {
                    busy.insert(batch.peer);
                    attempts.spawn(sender.clone().attempt(batch));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
        let skip = busy.clone();
        let next = sender
            .store
            .call(move |db| db.next_due(&skip))
            .await
            .ok()
            .flatten();
        let sleep = next.map_or(IDLE_RECHECK, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(IDLE_RECHECK)
        });
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = waker.0.notified() => {}
            Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                if let Ok(peer) = done {
                    busy.remove(&peer);
                }
            }
            _ = tokio::time::sleep(sleep) => {}
        }
        // Collect every other attempt that has finished meanwhile.
        while let Some(Ok(peer)) = attempts.try_join_next() {
            busy.remove(&peer);
        }
    }
    attempts.shutdown().await;
}

impl Sender {
    async fn attempt(self: Arc<Self>, batch: DueBatch) -> PeerId {
        let peer = batch.peer;
        let ids: Vec<MessageId> = batch.messages.iter().map(|m| m.id).collect();
        let failures: Vec<u32> = batch.messages.iter().map(|m| m.attempts + 1).collect();
        let request = Batch {
            envelopes: batch.messages.into_iter().map(|m| m.envelope).collect(),
        };
        tracing::debug!(%peer, messages = ids.len(), "sending batch");
        let result = self.net.send_batch(peer, batch.addrs, request).await;
        let now = self.clock.now_ms();
        let outcome = match result {
            Ok(response) if response.outcomes.len() == ids.len() => {
                self.record(peer, &ids, &failures, &response.outcomes, now)
                    .await
            }
            Ok(response) => {
                let error = format!(
                    "recipient answered {} outcomes for {} messages",
                    response.outcomes.len(),
                    ids.len()
                );
                self.retry_all(&ids, &failures, &error, now).await
            }
            Err(e) => self.retry_all(&ids, &failures, &e.0, now).await,
        };
        if let Err(e) = outcome {
            tracing::error!(%peer, error = %e, "cannot record delivery results");
        }
        peer
    }

    async fn record(
        &self,
        peer: PeerId,
        ids: &[MessageId],
        failures: &[u32],
        outcomes: &[Outcome],
        now: u64,
    ) -> Result<(), crate::store::StoreError> {
        let mut delivered = Vec::new();
        let mut retries: Vec<(String, Vec<(MessageId, u64)>)> = Vec::new();
        let mut failed = Vec::new();
        let mut rng = rand::rngs::OsRng;
        for ((id, outcome), failures) in ids.iter().zip(outcomes).zip(failures) {
            match outcome {
                Outcome::Stored | Outcome::Duplicate => delivered.push(*id),
                Outcome::Rejected(reason) if reason.is_transient() => {
                    let at = now + self.backoff.delay_ms(*failures, &mut rng);
                    let text = reason.describe().to_owned();
                    match retries.iter_mut().find(|(t, _)| *t == text) {
                        Some((_, list)) => list.push((*id, at)),
                        None => retries.push((text, vec![(*id, at)])),
                    }
                }
                Outcome::Rejected(reason) => failed.push((*id, reason.describe())),
            }
        }
        for id in &delivered {
            tracing::debug!(%peer, message_id = %id, "delivered");
        }
        for (id, reason) in &failed {
            tracing::warn!(%peer, message_id = %id, reason, "message refused for good");
        }
        self.store
            .call(move |db| {
                db.mark_delivered(&delivered, now)?;
                for (error, list) in &retries {
                    db.mark_retry(list, error)?;
                }
                for (id, reason) in &failed {
                    db.mark_failed(id, reason)?;
                }
                Ok(())
            })
            .await
    }

    async fn retry_all(
        &self,
        ids: &[MessageId],
        failures: &[u32],
        error: &str,
        now: u64,
    ) -> Result<(), crate::store::StoreError> {
        let mut rng = rand::rngs::OsRng;
        let retries: Vec<(MessageId, u64)> = ids
            .iter()
            .zip(failures)
            .map(|(id, f)| (*id, now + self.backoff.delay_ms(*f, &mut rng)))
            .collect();
        tracing::debug!(messages = ids.len(), error, "batch will be retried");
        let error = error.to_owned();
        self.store
            .call(move |db| db.mark_retry(&retries, &error))
            .await
    }
}
