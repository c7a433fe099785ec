//! The receive path: a batch from a peer is opened, checked, run through the rules pipeline
//! ([`rules`]) and committed with the rules' labels, and only then acked.
//!
//! Policy for senders that are not contacts: their envelopes are refused with
//! [`RejectReason::NotAContact`], nothing of them is stored, and the refusal is logged with the
//! peer id only. The sender keeps the messages queued and retries with backoff, so they arrive once
//! the recipient adds the sender as a contact; until then nothing from strangers reaches the inbox.

pub mod query;
pub mod rules;
pub mod search;
pub mod watch;

use libp2p::PeerId;

use crate::attachments::Limits;
use crate::envelope::{self, Envelope, MessageId, OpenError, Payload};
use crate::keys::{EncPublic, EncSecret, Keys};
use crate::metrics::METRICS;
use crate::net::protocol::{Batch, BatchResponse, Outcome, RejectReason};
use crate::plugins::{Budget, Plugins, RuleMessage};
use crate::store::{Contact, ReceiveOutcome, Received, Store, now_ms};
use rules::{Action, Pipeline, RuleInput};
use std::collections::{HashMap, HashSet};
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
    /// A message whose attachments pass these is refused as too large.
    pub limits: crate::attachments::Limits,
    /// Messages being received now (see [`InProgress`]).
    pub in_progress: InProgress,
}

/// The ids of the messages whose batch is being handled. A sender that gave up waiting (its
/// request timed out while the rules ran) sends the batch again; its messages that are still in
/// progress are answered `unavailable` (it retries, and by then they are stored: `duplicate`),
/// so the rules run once per message and no message is stored twice.
#[derive(Clone, Default)]
pub struct InProgress(Arc<std::sync::Mutex<HashSet<MessageId>>>);

impl InProgress {
    /// Claims the ids not claimed yet; returns which were claimed, in order.
    fn claim(&self, ids: &[MessageId]) -> Vec<bool> {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.iter().map(|id| held.insert(*id)).collect()
    }

    fn release(&self, ids: &[MessageId]) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in ids {
            held.remove(id);
        }
    }
}

/// Releases claimed ids when the batch is done, however it ends (a cancelled task included).
struct Claimed<'a> {
    in_progress: &'a InProgress,
    ids: Vec<MessageId>,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.in_progress.release(&self.ids);
    }
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
    let n = batch.envelopes.len();
    let reject_all = |reason| BatchResponse {
        outcomes: vec![Outcome::Rejected(reason); n],
    };
    let (sender, opened) = match open(receiver, peer, batch).await {
        Ok(opened) => opened,
        Err(reason) => return reject_all(reason),
    };
    let mut admitted = admit(peer, opened, receiver.limits, sender.attachment_bytes);
    let _claimed = claim(&receiver.in_progress, &mut admitted);
    let fresh = skip_known(receiver, &admitted.ids).await;
    run_rules(receiver, &sender, &mut admitted, &fresh, arrived).await;
    // Ack only after the durable commit: when it fails, the whole batch is refused as unavailable
    // (transient), so the sender keeps it queued and sends it again.
    let stored = match commit(&receiver.store, peer, admitted.to_store).await {
        Ok(stored) => stored,
        Err(reason) => return reject_all(reason),
    };
    answer(peer, admitted.outcomes, stored, admitted.ids)
}

/// A batch's sender, with what the rules need: its contact entry, and the built-in rules as they
/// stood when it was looked up.
struct Sender {
    contact: Contact,
    pipeline: Pipeline,
    /// Bytes of the sender's attachments the node holds or fetches.
    attachment_bytes: u64,
}

/// Each envelope of a batch opened (with, for a forward-secret one, its one-time key and the
/// envelope's hash, to spend with the commit), or why it did not open.
type Opened = Vec<Result<(Payload, Option<OneTimeUse>), OpenError>>;

/// A forward-secret envelope's one-time key id and the blake2b of the envelope.
type OneTimeUse = ([u8; 16], [u8; 32]);

/// What this node holds of one one-time key named by a batch: its secret while unused, the hash
/// of the envelope that used it once used.
struct KeyState {
    secret: Option<EncSecret>,
    used_by: Option<Vec<u8>>,
}

/// The state of every one-time key the batch's forward-secret envelopes name.
async fn one_time_keys(
    store: &Store,
    peer: PeerId,
    envelopes: &[Envelope],
) -> Result<HashMap<[u8; 16], KeyState>, RejectReason> {
    let ids: Vec<[u8; 16]> = envelopes
        .iter()
        .filter_map(|e| envelope::one_time_key(e).ok().flatten())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    store
        .call(move |db| {
            ids.into_iter()
                .map(|id| {
                    Ok((
                        id,
                        KeyState {
                            secret: db.one_time_secret(&id, &peer)?,
                            used_by: db.one_time_key_used(&id)?,
                        },
                    ))
                })
                .collect()
        })
        .await
        .map_err(|e| {
            tracing::error!(%peer, error = %e, "cannot look up one-time keys");
            RejectReason::Unavailable
        })
}

/// Looks up the sender (it must be a contact) and opens each envelope with its key. An `Err` is
/// the answer for every envelope of the batch.
async fn open(
    receiver: &Receiver,
    peer: PeerId,
    batch: Batch,
) -> Result<(Sender, Opened), RejectReason> {
    let sender = look_up_sender(&receiver.store, peer, batch.envelopes.len()).await?;
    let sender_key = sender.contact.address.enc_public().clone();
    let one_time = Arc::new(one_time_keys(&receiver.store, peer, &batch.envelopes).await?);
    let opened = open_all(&receiver.keys, peer, &sender_key, batch.envelopes, one_time).await?;
    Ok((sender, opened))
}

/// Opens one envelope: with the long-term key, or with the one-time key it names.
fn open_one(
    keys: &Keys,
    peer: &PeerId,
    sender_key: &EncPublic,
    env: &Envelope,
    one_time: &HashMap<[u8; 16], KeyState>,
) -> Result<(Payload, Option<OneTimeUse>), OpenError> {
    let Some(id) = envelope::one_time_key(env)? else {
        return envelope::open(keys, peer, sender_key, env).map(|p| (p, None));
    };
    let hash = envelope::envelope_hash(env);
    match one_time.get(&id) {
        Some(KeyState {
            secret: Some(secret),
            ..
        }) => envelope::open_forward_secret(secret, &keys.peer_id(), peer, sender_key, env)
            .map(|p| (p, Some((id, hash)))),
        Some(KeyState {
            used_by: Some(used),
            ..
        }) if used.as_slice() == hash.as_slice() => Err(OpenError::AlreadyStored),
        _ => Err(OpenError::OneTimeKeyGone),
    }
}

/// Envelopes opened by one task at the least: below this a batch is not worth splitting.
const OPEN_CHUNK: usize = 8;

/// Opens `envelopes` across the cores, in order. Opening is CPU work (two X25519 operations
/// each), kept off the async workers: the batch is cut into one run per core on the blocking
/// pool, and the results joined in the batch's order (the commit and the acks follow it).
async fn open_all(
    keys: &Arc<Keys>,
    peer: PeerId,
    sender_key: &EncPublic,
    mut envelopes: Vec<Envelope>,
    one_time: Arc<HashMap<[u8; 16], KeyState>>,
) -> Result<Opened, RejectReason> {
    let n = envelopes.len();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let per_task = n.div_ceil(cores).max(OPEN_CHUNK);
    let mut tasks = Vec::with_capacity(cores);
    while !envelopes.is_empty() {
        let rest = envelopes.split_off(per_task.min(envelopes.len()));
        let run = std::mem::replace(&mut envelopes, rest);
        let (keys, sender_key, one_time) = (keys.clone(), sender_key.clone(), one_time.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let cpu = crate::clock::thread_cpu();
            let opened = run
                .iter()
                .map(|env| open_one(&keys, &peer, &sender_key, env, &one_time))
                .collect::<Vec<_>>();
            let spent = crate::clock::thread_cpu().saturating_sub(cpu);
            METRICS.open_cpu_micros.inc_by(spent.as_micros() as u64);
            opened
        }));
    }
    let mut opened = Vec::with_capacity(n);
    for task in tasks {
        opened.extend(task.await.map_err(|_| RejectReason::Unavailable)?);
    }
    Ok(opened)
}

/// The contact entry of `peer`, who sent `n` messages, and the built-in rules; a peer that is not
/// a contact is refused.
async fn look_up_sender(store: &Store, peer: PeerId, n: usize) -> Result<Sender, RejectReason> {
    let found = store
        .call(move |db| {
            let contact = db.contact_by_peer(&peer)?;
            Ok((
                contact,
                db.pipeline()?,
                db.incoming_attachment_bytes(&peer)?,
            ))
        })
        .await;
    match found {
        Ok((Some(contact), pipeline, attachment_bytes)) => Ok(Sender {
            contact,
            pipeline,
            attachment_bytes,
        }),
        Ok((None, _, _)) => {
            tracing::warn!(%peer, messages = n, "refused messages from a peer that is not a contact");
            Err(RejectReason::NotAContact)
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot look up sender");
            Err(RejectReason::Unavailable)
        }
    }
}

/// The messages of a batch that may be stored, and the answers already known for the others.
struct Admitted {
    /// One per envelope, in order: its refusal, or `None` for the next message of `to_store`.
    outcomes: Vec<Option<Outcome>>,
    /// The messages to store.
    to_store: Vec<Received>,
    /// Their ids, as text.
    ids: Vec<String>,
}

/// Refuses the envelopes that did not open and the messages whose attachments are malformed or
/// pass `limits` (the sender's attachments already take `peer_bytes`); the rest are to be stored.
fn admit(peer: PeerId, opened: Opened, limits: Limits, mut peer_bytes: u64) -> Admitted {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(opened.len());
    let mut to_store = Vec::new();
    for result in opened {
        match result {
            Ok((p, _)) if !limits.admit(&p.attachments, peer_bytes) => {
                tracing::warn!(%peer, message_id = %p.id, "refused a message: attachments malformed or past the limits");
                outcomes.push(Some(Outcome::Rejected(RejectReason::TooLarge)));
            }
            Ok((p, one_time_key)) => {
                peer_bytes = p
                    .attachments
                    .iter()
                    .fold(peer_bytes, |t, a| t.saturating_add(a.size));
                outcomes.push(None);
                to_store.push(Received {
                    id: p.id,
                    sender: peer,
                    sent_at_ms: crate::store::clamp_time(p.sent_at_ms),
                    subject: p.subject,
                    body: p.body,
                    attachments: p.attachments,
                    actions: Vec::new(),
                    one_time_key,
                });
            }
            Err(OpenError::AlreadyStored) => outcomes.push(Some(Outcome::Duplicate)),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "refused an envelope");
                outcomes.push(Some(Outcome::Rejected(reject_reason(e))));
            }
        }
    }
    let ids = to_store.iter().map(|r| r.id.to_string()).collect();
    Admitted {
        outcomes,
        to_store,
        ids,
    }
}

/// Claims the admitted messages for this batch; one that another batch is receiving now (the
/// same batch, sent again) is answered `unavailable` instead.
fn claim<'a>(in_progress: &'a InProgress, admitted: &mut Admitted) -> Claimed<'a> {
    let ids: Vec<MessageId> = admitted.to_store.iter().map(|r| r.id).collect();
    let claimed = in_progress.claim(&ids);
    // The `n`th `None` outcome is the `n`th message to store (see `answer`).
    let pending = admitted.outcomes.iter_mut().filter(|o| o.is_none());
    for (outcome, _) in pending.zip(&claimed).filter(|(_, ok)| !**ok) {
        *outcome = Some(Outcome::Rejected(RejectReason::Unavailable));
    }
    let mut flags = claimed.iter();
    admitted
        .to_store
        .retain(|_| *flags.next().unwrap_or(&false));
    let mut flags = claimed.iter();
    admitted.ids.retain(|_| *flags.next().unwrap_or(&false));
    let mut flags = claimed.iter();
    let ids = ids
        .into_iter()
        .filter(|_| *flags.next().unwrap_or(&false))
        .collect();
    Claimed { in_progress, ids }
}

/// The indices of the messages in `ids` that the inbox does not hold yet.
///
/// A batch sent again (its ack was lost) holds messages the inbox has: they are acked as
/// duplicates without running the rules again, so a resend costs no plugin time. Without rule
/// plugins there is no plugin time to save, so nothing is looked up; a failed look-up only means
/// that every message runs the rules.
async fn skip_known(receiver: &Receiver, ids: &[String]) -> Vec<usize> {
    let known = if receiver.plugins.has_rules() {
        let ids = ids.to_vec();
        receiver
            .store
            .call(move |db| db.known_received(&ids))
            .await
            .unwrap_or_default()
    } else {
        HashSet::new()
    };
    (0..ids.len())
        .filter(|&i| !known.contains(&ids[i]))
        .collect()
}

/// Runs the rules pipeline over the `fresh` messages of `admitted` and gives each its actions,
/// which the commit applies. Rule plugins get [`PLUGIN_BUDGET`], counted from the batch's
/// arrival (`arrived`).
async fn run_rules(
    receiver: &Receiver,
    sender: &Sender,
    admitted: &mut Admitted,
    fresh: &[usize],
    arrived: Instant,
) {
    let messages = fresh
        .iter()
        .map(|&i| rule_message(&admitted.to_store[i], &admitted.ids[i], &sender.contact))
        .collect();
    let budget = Budget {
        arrived,
        time: PLUGIN_BUDGET,
    };
    let actions = run_pipeline(&sender.pipeline, &receiver.plugins, messages, Some(budget)).await;
    for (&i, actions) in fresh.iter().zip(actions) {
        admitted.to_store[i].actions = actions;
    }
}

/// A received message as the rules see it, before any rule has labelled it.
fn rule_message(r: &Received, id: &str, contact: &Contact) -> RuleMessage {
    RuleMessage {
        id: id.to_owned(),
        sender: r.sender.to_string(),
        contact: Some(contact.name.clone()),
        subject: r.subject.clone().unwrap_or_default(),
        body: r.body.clone(),
        sent_at_ms: r.sent_at_ms,
        attachments: r.attachments.iter().map(|a| a.name.clone()).collect(),
        labels: Vec::new(),
    }
}

/// Stores the messages with their actions in one durable transaction: one outcome each, in order.
async fn commit(
    store: &Store,
    peer: PeerId,
    to_store: Vec<Received>,
) -> Result<Vec<ReceiveOutcome>, RejectReason> {
    let stored = store
        .call(move |db| db.store_received(&to_store, now_ms()))
        .await;
    stored.map_err(|e| {
        tracing::error!(%peer, error = %e, "cannot store received messages; not acking");
        RejectReason::Unavailable
    })
}

/// The answer to the batch: each refusal where `admit` refused, and what the commit did for the
/// others (the `n`th `None` of `outcomes` is the `n`th of `stored` and `ids`).
fn answer(
    peer: PeerId,
    outcomes: Vec<Option<Outcome>>,
    stored: Vec<ReceiveOutcome>,
    ids: Vec<String>,
) -> BatchResponse {
    let mut stored = stored.into_iter().zip(ids);
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| stored_outcome(peer, stored.next())))
        .collect();
    BatchResponse { outcomes }
}

/// What a message's commit outcome answers; a message the commit did not report is unavailable.
fn stored_outcome(peer: PeerId, stored: Option<(ReceiveOutcome, String)>) -> Outcome {
    match stored {
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
        Some((ReceiveOutcome::IdConflict, _)) => Outcome::Rejected(RejectReason::IdConflict),
        None => Outcome::Rejected(RejectReason::Unavailable),
    }
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
        OpenError::OneTimeKeyGone => RejectReason::OneTimeKeyGone,
        _ => RejectReason::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forward-secret envelope opens with its key's secret; once the key is spent, the same
    /// envelope again is a duplicate (acked, not stored twice) and any other one is refused.
    #[test]
    fn a_spent_one_time_key_acks_its_own_envelope_and_refuses_any_other() {
        let (alice, bob) = (Keys::generate(), Keys::generate());
        let (secret, key) = crate::keys::one_time::make(&bob, &alice.peer_id(), u64::MAX);
        let public =
            crate::keys::one_time::verify(&key, &bob.address(), &alice.peer_id(), 1).expect("key");
        let payload = |body: &str| Payload {
            id: MessageId::random(),
            sent_at_ms: 1,
            subject: None,
            body: body.into(),
            attachments: Vec::new(),
        };
        let seal = |p: &Payload| {
            envelope::seal_forward_secret(&alice, &bob.peer_id(), &key.id, &public, p)
                .expect("seal")
        };
        let (first, second) = (seal(&payload("first")), seal(&payload("second")));
        let (peer, from_key) = (alice.peer_id(), alice.enc_public().clone());
        let unused = HashMap::from([(
            key.id,
            KeyState {
                secret: Some(secret.secret),
                used_by: None,
            },
        )]);
        let (opened, used) = open_one(&bob, &peer, &from_key, &first, &unused).expect("opens");
        assert_eq!(opened.body, "first");
        assert_eq!(used, Some((key.id, envelope::envelope_hash(&first))));
        let spent = HashMap::from([(
            key.id,
            KeyState {
                secret: None,
                used_by: Some(envelope::envelope_hash(&first).to_vec()),
            },
        )]);
        assert_eq!(
            open_one(&bob, &peer, &from_key, &first, &spent).map(|_| ()),
            Err(OpenError::AlreadyStored)
        );
        assert_eq!(
            open_one(&bob, &peer, &from_key, &second, &spent).map(|_| ()),
            Err(OpenError::OneTimeKeyGone)
        );
        assert_eq!(
            open_one(&bob, &peer, &from_key, &second, &HashMap::new()).map(|_| ()),
            Err(OpenError::OneTimeKeyGone),
            "a key never handed out"
        );
    }

    /// A batch opened across the cores comes back in its order, each envelope with its own
    /// result: the commit and the acks go by position.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_opened_across_the_cores_keeps_its_order() {
        let (alice, bob) = (Keys::generate(), Arc::new(Keys::generate()));
        let mut envelopes: Vec<Envelope> = (0..50)
            .map(|i| {
                let payload = Payload {
                    id: MessageId::random(),
                    sent_at_ms: 1,
                    subject: None,
                    body: format!("message {i}"),
                    attachments: Vec::new(),
                };
                envelope::seal(&alice, &bob.peer_id(), bob.enc_public(), &payload).expect("seal")
            })
            .collect();
        envelopes[17].ct[0] ^= 1;
        envelopes[49].ct[3] ^= 1;
        let opened = open_all(
            &bob,
            alice.peer_id(),
            alice.enc_public(),
            envelopes,
            Arc::default(),
        )
        .await
        .expect("opened");
        assert_eq!(opened.len(), 50);
        for (i, o) in opened.iter().enumerate() {
            match o {
                Err(OpenError::Decrypt) => assert!(i == 17 || i == 49, "{i}"),
                Ok((p, _)) => assert_eq!(p.body, format!("message {i}")),
                Err(e) => panic!("{i}: {e}"),
            }
        }
    }

    fn received(id: MessageId) -> Received {
        Received {
            id,
            sender: Keys::generate().peer_id(),
            sent_at_ms: 1,
            subject: None,
            body: String::new(),
            attachments: vec![],
            actions: vec![],
            one_time_key: None,
        }
    }

    #[test]
    fn a_batch_sent_again_while_the_first_is_handled_is_answered_unavailable_for_those() {
        let (a, b, c) = (
            MessageId::random(),
            MessageId::random(),
            MessageId::random(),
        );
        let in_progress = InProgress::default();
        let first = in_progress.claim(&[a]);
        assert_eq!(first, [true]);
        // The resend holds a (still in progress), a refused envelope, then b and c.
        let mut admitted = Admitted {
            outcomes: vec![
                None,
                Some(Outcome::Rejected(RejectReason::Malformed)),
                None,
                None,
            ],
            to_store: vec![received(a), received(b), received(c)],
            ids: vec![a.to_string(), b.to_string(), c.to_string()],
        };
        {
            let claimed = claim(&in_progress, &mut admitted);
            assert_eq!(
                admitted.outcomes,
                vec![
                    Some(Outcome::Rejected(RejectReason::Unavailable)),
                    Some(Outcome::Rejected(RejectReason::Malformed)),
                    None,
                    None
                ]
            );
            assert_eq!(admitted.ids, [b.to_string(), c.to_string()]);
            assert_eq!(admitted.to_store.len(), 2);
            assert_eq!(claimed.ids, [b, c]);
            assert_eq!(
                in_progress.claim(&[b]),
                [false],
                "held while the batch runs"
            );
        }
        assert_eq!(
            in_progress.claim(&[b, c]),
            [true, true],
            "released when it ends"
        );
    }
}
