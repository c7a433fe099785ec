//! The receive path: a batch from a peer is opened, checked, run through the rules pipeline
//! ([`rules`]) and committed with the rules' labels, and only then acked.
//!
//! Policy for senders that are not contacts: their envelopes are refused with
//! [`RejectReason::NotAContact`], nothing of them is stored, and the refusal is logged with the
//! peer id only. The sender keeps the messages queued and retries with backoff, so they arrive once
//! the recipient adds the sender as a contact; until then nothing from strangers reaches the inbox.

pub mod rules;

use libp2p::PeerId;

use crate::envelope::{self, OpenError};
use crate::keys::Keys;
use crate::metrics::METRICS;
use crate::net::protocol::{Batch, BatchResponse, Outcome, RejectReason};
use crate::plugins::{Budget, Plugins, RuleMessage};
use crate::store::{ReceiveOutcome, Received, Store, now_ms};
use rules::{Action, Pipeline, RuleInput};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long rule plugins may take over one inbound batch, counted from its arrival (time queued
/// behind other batches included; see [`Budget`]). No plugin call starts after it, and a call
/// under way ends by its deadline (50 ms by default), so the batch is answered well inside the
/// sender's 30 s request timeout: a slow plugin cannot make a sender time out and send the batch
/// again and again. Messages that miss plugins are stored without their actions (`pigeon inbox
/// rules apply` catches up).
pub const PLUGIN_BUDGET: Duration = Duration::from_secs(10);

/// What the receive path needs of the node.
#[derive(Clone)]
pub struct Receiver {
    /// The node's keys.
    pub keys: Arc<Keys>,
    /// The store.
    pub store: Store,
    /// The rule plugins.
    pub plugins: Plugins,
    /// Attachments larger than this many bytes make their message refused as too large.
    pub max_attachment: u64,
}

/// Opens, stores and answers one inbound batch from the authenticated `peer`.
pub async fn receive_batch(receiver: &Receiver, peer: PeerId, batch: Batch) -> BatchResponse {
    let response = receive(receiver, peer, batch).await;
    let rejected = response
        .outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Rejected(_)))
        .count();
    METRICS.rejected.inc_by(rejected as u64);
    response
}

async fn receive(receiver: &Receiver, peer: PeerId, batch: Batch) -> BatchResponse {
    let arrived = Instant::now();
    let (store, max_attachment) = (&receiver.store, receiver.max_attachment);
    let n = batch.envelopes.len();
    let reject_all = |reason| BatchResponse {
        outcomes: vec![Outcome::Rejected(reason); n],
    };
    let found = store
        .call(move |db| Ok((db.contact_by_peer(&peer)?, db.pipeline()?)))
        .await;
    let (contact, pipeline) = match found {
        Ok((Some(contact), pipeline)) => (contact, pipeline),
        Ok((None, _)) => {
            tracing::warn!(%peer, messages = n, "refused messages from a peer that is not a contact");
            return reject_all(RejectReason::NotAContact);
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot look up sender");
            return reject_all(RejectReason::Unavailable);
        }
    };
    // Opening is CPU work (two X25519 operations each): keep it off the async workers.
    let keys = receiver.keys.clone();
    let sender_key = contact.address.enc_public().clone();
    let opened = tokio::task::spawn_blocking(move || {
        batch
            .envelopes
            .iter()
            .map(|env| envelope::open(&keys, &peer, &sender_key, env))
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(opened) = opened else {
        return reject_all(RejectReason::Unavailable);
    };
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(n);
    let mut to_store = Vec::new();
    for result in opened {
        match result {
            Ok(p)
                if p.attachments
                    .iter()
                    .any(|a| !a.is_well_formed() || a.size > max_attachment) =>
            {
                tracing::warn!(%peer, message_id = %p.id, "refused a message: attachment too large or malformed");
                outcomes.push(Some(Outcome::Rejected(RejectReason::TooLarge)));
            }
            Ok(p) => {
                outcomes.push(None);
                to_store.push(Received {
                    id: p.id,
                    sender: peer,
                    sent_at_ms: p.sent_at_ms,
                    subject: p.subject,
                    body: p.body,
                    attachments: p.attachments,
                    actions: Vec::new(),
                });
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "refused an envelope");
                outcomes.push(Some(Outcome::Rejected(reject_reason(e))));
            }
        }
    }
    let ids: Vec<String> = to_store.iter().map(|r| r.id.to_string()).collect();
    // A batch sent again (its ack was lost) holds messages the inbox has: they are acked as
    // duplicates without running the rules again, so a resend costs no plugin time.
    let known = if receiver.plugins.has_rules() {
        let ids = ids.clone();
        store
            .call(move |db| db.known_received(&ids))
            .await
            .unwrap_or_default()
    } else {
        HashSet::new()
    };
    let fresh: Vec<usize> = (0..to_store.len())
        .filter(|&i| !known.contains(&ids[i]))
        .collect();
    let messages = fresh
        .iter()
        .map(|&i| {
            let r = &to_store[i];
            RuleMessage {
                id: ids[i].clone(),
                sender: r.sender.to_string(),
                contact: Some(contact.name.clone()),
                subject: r.subject.clone().unwrap_or_default(),
                body: r.body.clone(),
                sent_at_ms: r.sent_at_ms,
                attachments: r.attachments.iter().map(|a| a.name.clone()).collect(),
                labels: Vec::new(),
            }
        })
        .collect();
    let budget = Budget {
        arrived,
        time: PLUGIN_BUDGET,
    };
    let actions = run_pipeline(&pipeline, &receiver.plugins, messages, Some(budget)).await;
    for (&i, actions) in fresh.iter().zip(actions) {
        to_store[i].actions = actions;
    }
    let stored = store
        .call(move |db| db.store_received(&to_store, now_ms()))
        .await;
    let stored = match stored {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot store received messages; not acking");
            return reject_all(RejectReason::Unavailable);
        }
    };
    let mut stored = stored.into_iter().zip(ids);
    let outcomes = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| match stored.next() {
                Some((ReceiveOutcome::Stored, id)) => {
                    METRICS.received.inc();
                    tracing::debug!(%peer, message_id = %id, "received");
                    Outcome::Stored
                }
                Some((ReceiveOutcome::Duplicate, id)) => {
                    METRICS.duplicates.inc();
                    tracing::debug!(%peer, message_id = %id, "duplicate, acked again");
                    Outcome::Duplicate
                }
                Some((ReceiveOutcome::IdConflict, _)) => {
                    Outcome::Rejected(RejectReason::IdConflict)
                }
                None => Outcome::Rejected(RejectReason::Unavailable),
            })
        })
        .collect();
    BatchResponse { outcomes }
}

/// Runs the whole rules pipeline over `messages`: the built-in rules, then the rule plugins in
/// config order, which see the labels the built-in rules left. Returns each message's actions.
/// The receive path, `rules apply` and `bench rules` all go through here.
///
/// No rule plugin call starts once `budget` is spent.
pub async fn run_pipeline(
    pipeline: &Pipeline,
    plugins: &Plugins,
    mut messages: Vec<RuleMessage>,
    budget: Option<Budget>,
) -> Vec<Vec<Action>> {
    let mut actions = Vec::with_capacity(messages.len());
    for m in &mut messages {
        let builtin = pipeline.run(&RuleInput {
            sender: &m.sender,
            contact: m.contact.as_deref(),
            labels: &m.labels,
        });
        m.labels = rules::labels_after(&m.labels, &builtin);
        actions.push(builtin);
    }
    if plugins.has_rules() && !messages.is_empty() {
        for (a, more) in actions
            .iter_mut()
            .zip(plugins.run_rules(messages, budget).await)
        {
            a.extend(more);
        }
    }
    actions
}

fn reject_reason(e: OpenError) -> RejectReason {
    match e {
        OpenError::WrongSender => RejectReason::WrongSender,
        OpenError::Decrypt => RejectReason::Undecryptable,
        _ => RejectReason::Malformed,
    }
}
