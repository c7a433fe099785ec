//! The outbox: sealed envelopes waiting for their recipient's ack.
//!
//! A message is `queued` until the recipient acks it (`delivered`, and its envelope is dropped) or
//! it is refused for good (`failed`, with the reason). Each attempt records when the next one is due.
//! A message whose forward secrecy policy is `require` is `waiting` (its payload sealed at rest, no
//! envelope yet) until one of its recipient's one-time keys is at hand.

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p::{Multiaddr, PeerId};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Db, StoreError, format_time};
use crate::attachments::AttachmentRef;
use crate::config::ForwardSecrecy;
use crate::envelope::{Envelope, MessageId, Payload};

/// The delivery state of an outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting to be delivered.
    Queued,
    /// Waiting for a one-time key of the recipient (forward secrecy required) before it is
    /// sealed and queued.
    Waiting,
    /// Acked by the recipient.
    Delivered,
    /// Refused for good; see `last_error`.
    Failed,
}

impl OutboxState {
    /// The state's name, as `outbox list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Queued => "queued",
            OutboxState::Waiting => "waiting for a one-time key",
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
        }
    }
    pub(super) fn parse(s: &str) -> Result<OutboxState, StoreError> {
        match s {
            "queued" => Ok(OutboxState::Queued),
            "waiting" => Ok(OutboxState::Waiting),
            "delivered" => Ok(OutboxState::Delivered),
            "failed" => Ok(OutboxState::Failed),
            _ => Err(StoreError::Corrupt("outbox state")),
        }
    }
}

/// One row of `pigeon outbox list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Message id.
    pub id: String,
    /// The recipient: contact name, or PeerId if the contact was removed.
    pub to: String,
    /// Recipient PeerId.
    pub peer_id: String,
    /// Delivery state.
    pub state: OutboxState,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it was queued (RFC 3339, UTC).
    pub created_at: String,
    /// When the next attempt is due, while queued (RFC 3339).
    pub next_attempt: Option<String>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the ack arrived (RFC 3339).
    pub delivered_at: Option<String>,
    /// Whether it is sealed to a one-time key of the recipient (forward secret once delivered).
    #[serde(default)]
    pub forward_secret: bool,
    /// The forward secrecy policy it was sent with.
    #[serde(default)]
    pub forward_secrecy: ForwardSecrecy,
}

/// How [`Db::enqueue_with_policy`] sealed a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sealing {
    /// To one of the recipient's one-time keys: forward secret.
    OneTimeKey,
    /// To the recipient's long-term key: the policy is `off`, or `prefer` found no one-time key.
    LongTermKey,
    /// Not yet: `require` found no one-time key, so the message waits for one.
    Waiting,
}

/// Outbox totals, for `pigeon status` and the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxCounts {
    /// Waiting to be delivered.
    pub queued: u64,
    /// Acked.
    pub delivered: u64,
    /// Refused, expired or cancelled.
    pub failed: u64,
    /// Waiting for a one-time key of the recipient.
    #[serde(default)]
    pub waiting: u64,
    /// When the oldest queued message was queued (ms since the epoch).
    pub oldest_queued_at: Option<u64>,
}

/// A message ready to go.
#[derive(Debug, Clone)]
pub struct DueMessage {
    /// Its id.
    pub id: MessageId,
    /// The sealed envelope.
    pub envelope: Envelope,
    /// Attempts so far.
    pub attempts: u32,
    /// When it was queued (ms since the epoch).
    pub created_at: u64,
    /// Size of the encoded envelope, for batch limits.
    pub size: usize,
}

/// Due messages for one peer, oldest first, with the addresses to dial.
#[derive(Debug, Clone)]
pub struct DueBatch {
    /// The recipient.
    pub peer: PeerId,
    /// Its known addresses, healthiest first.
    pub addrs: Vec<Multiaddr>,
    /// The messages.
    pub messages: Vec<DueMessage>,
}

pub(super) const TABLE: &str = "outbox";
/// The at-rest seal domain of a message's payload, kept while it waits for or is sealed to a
/// one-time key (the envelope's is [`TABLE`]).
pub(super) const PAYLOAD: &str = "outbox.payload";

impl Db {
    /// Queues a sealed envelope for `peer`, with the attachments it carries, in one durable
    /// transaction.
    pub fn enqueue(
        &mut self,
        id: &MessageId,
        peer: &PeerId,
        envelope: &Envelope,
        attachments: &[AttachmentRef],
        now: u64,
    ) -> Result<(), StoreError> {
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        insert_with_attachments(
            &tx,
            keys.at_rest(),
            &Row::plain(id, peer, envelope),
            attachments,
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Queues message `payload` to `peer` as [`Db::enqueue`] does, and keeps it in the sent
    /// history (in the same transaction), under forward secrecy `policy`:
    /// unless it is `off`, sealed to one of the peer's one-time keys when this node holds one
    /// (taken from the pool in the same transaction, so it seals this message and no other).
    /// Without one, `prefer` queues `fallback` (sealed to the peer's long-term key) and `require`
    /// keeps the payload, sealed at rest, waiting for a key ([`Db::seal_waiting`]).
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue_with_policy(
        &mut self,
        id: &MessageId,
        peer: &PeerId,
        payload: &Payload,
        fallback: &Envelope,
        attachments: &[AttachmentRef],
        now: u64,
        policy: ForwardSecrecy,
    ) -> Result<Sealing, StoreError> {
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        super::sent::insert_sent(&tx, keys.at_rest(), peer, payload)?;
        if policy == ForwardSecrecy::Off {
            let row = Row::plain(id, peer, fallback);
            insert_with_attachments(&tx, keys.at_rest(), &row, attachments, now)?;
            tx.commit()?;
            // The sent history is searchable.
            self.wake_search();
            return Ok(Sealing::LongTermKey);
        }
        let sealed = seal_to_pool_key(&tx, &keys, peer, payload, now)?;
        let row = Row {
            id,
            peer,
            envelope: sealed.as_ref().or(match policy {
                ForwardSecrecy::Require => None,
                _ => Some(fallback),
            }),
            payload: Some(payload),
            policy,
        };
        let sealing = match (&sealed, row.envelope) {
            (Some(_), _) => Sealing::OneTimeKey,
            (None, Some(_)) => Sealing::LongTermKey,
            (None, None) => Sealing::Waiting,
        };
        // A message sealed to the long-term key has no use for its payload any more.
        let row = Row {
            payload: (sealing != Sealing::LongTermKey).then_some(payload),
            ..row
        };
        insert_with_attachments(&tx, keys.at_rest(), &row, attachments, now)?;
        tx.commit()?;
        self.wake_search();
        Ok(sealing)
    }

    /// Seals messages waiting for a one-time key of `peer` to the keys now at hand, oldest first,
    /// and queues them, due at `now`; returns how many.
    pub fn seal_waiting(&mut self, peer: &PeerId, now: u64) -> Result<usize, StoreError> {
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        let waiting: Vec<(String, u32, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT id, key_id, payload FROM outbox
                 WHERE state = 'waiting' AND peer_id = ?1 AND payload IS NOT NULL ORDER BY rowid",
            )?
            .query_map([peer.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut sealed = 0;
        for (id, key_id, blob) in waiting {
            let payload = open_payload(keys.at_rest(), &id, key_id, &blob)?;
            let Some(envelope) = seal_to_pool_key(&tx, &keys, peer, &payload, now)? else {
                break;
            };
            requeue(
                &tx,
                keys.at_rest(),
                &id,
                &envelope,
                Some(&payload),
                now,
                None,
            )?;
            sealed += 1;
        }
        tx.commit()?;
        Ok(sealed)
    }

    /// The recipient refused message `id` because it no longer holds the one-time key it was
    /// sealed to (it restored a backup, or the key expired on the way). Under `require` the
    /// message is sealed to another key of the pool, or waits for one; under `prefer` it is
    /// sealed to the long-term key. Either way it is queued again, not lost; only a message
    /// without its payload (or whose recipient is no longer a contact) fails. The pool's other
    /// keys for that peer are dropped too: they were most likely handed out in the same period
    /// the recipient lost, and fresh ones come at its next connection.
    pub fn one_time_key_gone(&mut self, id: &MessageId, now: u64) -> Result<(), StoreError> {
        let keys = self.keys.clone();
        let row = id.to_string();
        type Found = (String, String, Option<u32>, Option<Vec<u8>>);
        let found: Option<Found> = self
            .conn
            .query_row(
                "SELECT peer_id, fs_policy, key_id, payload FROM outbox
                 WHERE id = ?1 AND state = 'queued'",
                [&row],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((peer_text, policy, key_id, payload)) = found else {
            return Ok(());
        };
        let peer: PeerId = peer_text
            .parse()
            .map_err(|_| StoreError::Corrupt("outbox peer id"))?;
        let contact = self.contact_by_peer(&peer)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM otk_pool WHERE owner = ?1", [&peer_text])?;
        let reason = crate::net::protocol::RejectReason::OneTimeKeyGone.describe();
        let (Some(key_id), Some(blob), Some(contact)) = (key_id, payload, contact) else {
            fail(&tx, &row, reason)?;
            tx.commit()?;
            return Ok(());
        };
        let payload = open_payload(keys.at_rest(), &row, key_id, &blob)?;
        match ForwardSecrecy::parse(&policy) {
            Some(ForwardSecrecy::Require) => {
                let note = format!("{reason}; waiting for another");
                match seal_to_pool_key(&tx, &keys, &peer, &payload, now)? {
                    Some(env) => requeue(
                        &tx,
                        keys.at_rest(),
                        &row,
                        &env,
                        Some(&payload),
                        now,
                        Some(&note),
                    )?,
                    None => {
                        tx.execute(
                            "UPDATE outbox SET state = 'waiting', envelope = NULL, forward_secret = 0, otk_id = NULL,
                             attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                            params![row, note],
                        )?;
                    }
                }
            }
            _ => {
                let env =
                    crate::envelope::seal(&keys, &peer, contact.address.enc_public(), &payload)
                        .map_err(|_| StoreError::Corrupt("contact address"))?;
                let note = format!("{reason}; sent again without forward secrecy");
                requeue(&tx, keys.at_rest(), &row, &env, None, now, Some(&note))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The recipients of messages waiting for a one-time key.
    pub fn waiting_peers(&self) -> Result<Vec<PeerId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT peer_id FROM outbox WHERE state = 'waiting'")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(
                row?.parse()
                    .map_err(|_| StoreError::Corrupt("outbox peer id"))?,
            );
        }
        Ok(out)
    }

    /// Whether this node wants one-time keys from `peer`: its policy (the contact's own, else
    /// `default`) is not `off`, or a message to it waits for one.
    pub fn wants_one_time_keys(
        &self,
        peer: &PeerId,
        default: ForwardSecrecy,
    ) -> Result<bool, StoreError> {
        let Some(contact) = self.contact_by_peer(peer)? else {
            return Ok(false);
        };
        if contact.forward_secrecy.unwrap_or(default) != ForwardSecrecy::Off {
            return Ok(true);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM outbox WHERE state = 'waiting' AND peer_id = ?1 LIMIT 1",
                [peer.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Queues several envelopes (without attachments) in one durable transaction.
    pub fn enqueue_many(
        &mut self,
        items: &[(MessageId, PeerId, Envelope)],
        now: u64,
    ) -> Result<(), StoreError> {
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        for (id, peer, envelope) in items {
            insert_message(&tx, keys.at_rest(), &Row::plain(id, peer, envelope), now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Due messages (queued, next attempt at or before `now`), earliest due first: for each peer at
    /// most `room[peer]` (`per_peer` if absent; 0 skips the peer), leaving out `in_flight`.
    ///
    /// Each peer is looked up on its own (`outbox_peer_due`), so a peer with a long backlog that
    /// cannot take more (a slow or silent one) never crowds the others' due messages out.
    pub fn due(
        &self,
        now: u64,
        per_peer: usize,
        room: &HashMap<PeerId, usize>,
        in_flight: &HashSet<MessageId>,
    ) -> Result<Vec<DueBatch>, StoreError> {
        self.due_waiving(now, per_peer, room, in_flight, &HashSet::new())
    }

    /// [`Db::due`], where every queued message to a peer in `waived` is due, whatever its next
    /// attempt says (the peer has just connected, or the node has just started).
    pub fn due_waiving(
        &self,
        now: u64,
        per_peer: usize,
        room: &HashMap<PeerId, usize>,
        in_flight: &HashSet<MessageId>,
        waived: &HashSet<PeerId>,
    ) -> Result<Vec<DueBatch>, StoreError> {
        let mut batches: BTreeMap<PeerId, Vec<DueMessage>> = BTreeMap::new();
        for (peer, text) in self.queued_peers_as_stored()? {
            let limit = room.get(&peer).copied().unwrap_or(per_peer);
            if limit == 0 {
                continue;
            }
            let due_by = if waived.contains(&peer) {
                i64::MAX as u64
            } else {
                now
            };
            let messages = self.due_for(&text, due_by, limit, in_flight)?;
            if !messages.is_empty() {
                batches.insert(peer, messages);
            }
        }
        batches
            .into_iter()
            .map(|(peer, messages)| {
                Ok(DueBatch {
                    peer,
                    addrs: self.dial_addrs(&peer, now)?,
                    messages,
                })
            })
            .collect()
    }

    /// The peers with queued messages.
    pub fn queued_peers(&self) -> Result<Vec<PeerId>, StoreError> {
        Ok(self
            .queued_peers_as_stored()?
            .into_iter()
            .map(|(peer, _)| peer)
            .collect())
    }

    /// The peers with queued messages, each with its id as stored: one index probe per peer (a
    /// loose index scan of `outbox_peer_due`), however many messages each has queued.
    fn queued_peers_as_stored(&self) -> Result<Vec<(PeerId, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE peers(peer) AS (
                 SELECT MIN(peer_id) FROM outbox WHERE state = 'queued'
                 UNION ALL
                 SELECT (SELECT MIN(peer_id) FROM outbox WHERE state = 'queued' AND peer_id > peer)
                 FROM peers WHERE peer IS NOT NULL
             )
             SELECT peer FROM peers WHERE peer IS NOT NULL",
        )?;
        let peers = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .map(|text| {
                let text = text?;
                let peer = text
                    .parse()
                    .map_err(|_| StoreError::Corrupt("outbox peer id"))?;
                Ok((peer, text))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(peers)
    }

    /// Up to `limit` messages to `peer` (as stored) due by `due_by`, earliest due first, leaving
    /// out `in_flight`.
    fn due_for(
        &self,
        peer: &str,
        due_by: u64,
        limit: usize,
        in_flight: &HashSet<MessageId>,
    ) -> Result<Vec<DueMessage>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, envelope, key_id, attempts, created_at FROM outbox
             WHERE state = 'queued' AND peer_id = ?1 AND next_attempt_at <= ?2
             ORDER BY next_attempt_at, rowid LIMIT ?3",
        )?;
        // In-flight messages stay queued until acked: read past as many as there are.
        let rows_wanted = (limit + in_flight.len()) as i64;
        let mut rows = stmt.query(params![peer, due_by as i64, rows_wanted])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            if out.len() >= limit {
                break;
            }
            let row: String = r.get(0)?;
            let id = parse_id(&row)?;
            if in_flight.contains(&id) {
                continue;
            }
            let Some(blob) = r.get::<_, Option<Vec<u8>>>(1)? else {
                return Err(StoreError::Corrupt("queued message without envelope"));
            };
            let plain = self.open_sealed(TABLE, &row, r.get(2)?, &blob)?;
            let envelope: Envelope = ciborium::from_reader(plain.as_slice())
                .map_err(|_| StoreError::Corrupt("outbox envelope"))?;
            out.push(DueMessage {
                id,
                envelope,
                attempts: r.get(3)?,
                created_at: r.get::<_, i64>(4)? as u64,
                size: plain.len(),
            });
        }
        Ok(out)
    }

    /// The earliest time after `now` at which a queued message becomes due.
    pub fn next_due_after(&self, now: u64) -> Result<Option<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'queued' AND next_attempt_at > ?1",
        )?;
        Ok(stmt
            .query_row([now as i64], |r| r.get::<_, Option<i64>>(0))?
            .map(|t| t as u64))
    }

    /// Records acks: the messages are delivered and their envelopes dropped, in one transaction.
    /// An ack wins over an expiry or a cancel that raced with it: the recipient has the message.
    pub fn mark_delivered(&mut self, ids: &[MessageId], now: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?2, attempts = attempts + 1,
                 envelope = NULL, payload = NULL, key_id = NULL, last_error = NULL, otk_id = NULL
                 WHERE id = ?1 AND state != 'delivered'",
            )?;
            for id in ids {
                stmt.execute(params![id.to_string(), now as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a failed attempt; the message stays queued until `next_at`.
    pub fn mark_retry(
        &mut self,
        retries: &[(MessageId, u64)],
        error: &str,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
                 WHERE id = ?1 AND state = 'queued'",
            )?;
            for (id, next_at) in retries {
                stmt.execute(params![id.to_string(), *next_at as i64, error])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks a message as refused for good; its envelope stays, so `outbox retry` can requeue it.
    pub fn mark_failed(&mut self, id: &MessageId, error: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        fail(&tx, &id.to_string(), error)?;
        tx.commit()?;
        Ok(())
    }

    /// The whole outbox, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT o.id, COALESCE(c.name, o.peer_id), o.peer_id, o.state, o.attempts, o.created_at,
                    o.next_attempt_at, o.last_error, o.delivered_at, o.forward_secret, o.fs_policy
             FROM outbox o LEFT JOIN contacts c ON c.peer_id = o.peer_id ORDER BY o.created_at, o.rowid",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let state = OutboxState::parse(&r.get::<_, String>(3)?)?;
            let next_at: i64 = r.get(6)?;
            out.push(OutboxEntry {
                id: r.get(0)?,
                to: r.get(1)?,
                peer_id: r.get(2)?,
                state,
                attempts: r.get(4)?,
                created_at: format_time(r.get::<_, i64>(5)? as u64),
                next_attempt: (state == OutboxState::Queued).then(|| format_time(next_at as u64)),
                last_error: r.get(7)?,
                delivered_at: r.get::<_, Option<i64>>(8)?.map(|t| format_time(t as u64)),
                forward_secret: r.get(9)?,
                forward_secrecy: ForwardSecrecy::parse(&r.get::<_, String>(10)?)
                    .ok_or(StoreError::Corrupt("outbox forward secrecy policy"))?,
            });
        }
        Ok(out)
    }

    /// Marks queued messages older than `cutoff` as failed; returns how many.
    pub fn expire(&mut self, cutoff: u64, reason: &str) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE outbox SET state = 'failed', last_error = ?2
             WHERE state IN ('queued', 'waiting') AND created_at < ?1",
            params![cutoff as i64, reason],
        )?)
    }

    /// Makes a queued or failed message due now (a failed one is queued again, or waits again for
    /// a one-time key if it never got one); returns its id.
    pub fn retry_now(&mut self, prefix: &str, now: u64) -> Result<String, StoreError> {
        let (id, state) = self.resolve_outbox_id(prefix)?;
        match state {
            OutboxState::Delivered => Err(StoreError::Conflict(format!(
                "message {id} was delivered already"
            ))),
            _ => {
                let changed = self.conn.execute(
                    "UPDATE outbox SET next_attempt_at = ?2, last_error = NULL,
                            state = CASE WHEN envelope IS NULL THEN 'waiting' ELSE 'queued' END
                     WHERE id = ?1 AND (envelope IS NOT NULL OR payload IS NOT NULL)",
                    params![id, now as i64],
                )?;
                if changed == 0 {
                    return Err(StoreError::Conflict(format!(
                        "message {id} was cancelled; it cannot be sent again"
                    )));
                }
                Ok(id)
            }
        }
    }

    /// Cancels a message that is not delivered yet: it becomes failed and its envelope is dropped.
    pub fn cancel(&mut self, prefix: &str) -> Result<String, StoreError> {
        let (id, state) = self.resolve_outbox_id(prefix)?;
        if state == OutboxState::Delivered {
            return Err(StoreError::Conflict(format!(
                "message {id} was delivered already"
            )));
        }
        self.conn.execute(
            "UPDATE outbox SET state = 'failed', last_error = 'cancelled by the user', envelope = NULL,
             payload = NULL, key_id = NULL, otk_id = NULL WHERE id = ?1",
            [&id],
        )?;
        Ok(id)
    }

    /// Counts by state, and when the oldest queued message was queued.
    pub fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        outbox_counts(&self.conn)
    }

    fn resolve_outbox_id(&self, prefix: &str) -> Result<(String, OutboxState), StoreError> {
        let prefix = super::check_id_prefix(prefix)?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, state FROM outbox WHERE id LIKE ?1 || '%' LIMIT 2")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([&prefix], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        match rows.as_slice() {
            [(id, state)] => Ok((id.clone(), OutboxState::parse(state)?)),
            [] => Err(StoreError::NotFound {
                what: "message",
                name: prefix,
            }),
            _ => Err(StoreError::Ambiguous(prefix)),
        }
    }
}

/// A new outbox row.
struct Row<'a> {
    id: &'a MessageId,
    peer: &'a PeerId,
    /// The sealed envelope; `None` while the message waits for a one-time key.
    envelope: Option<&'a Envelope>,
    /// The payload, kept while the message waits for or is sealed to a one-time key.
    payload: Option<&'a Payload>,
    policy: ForwardSecrecy,
}

impl<'a> Row<'a> {
    /// A message sealed to the recipient's long-term key, sent with policy `off`.
    fn plain(id: &'a MessageId, peer: &'a PeerId, envelope: &'a Envelope) -> Row<'a> {
        Row {
            id,
            peer,
            envelope: Some(envelope),
            payload: None,
            policy: ForwardSecrecy::Off,
        }
    }
}

/// Inserts `row` in `tx`: queued if it has an envelope, else waiting.
fn insert_message(
    tx: &rusqlite::Transaction<'_>,
    at_rest: &crate::keys::at_rest::AtRest,
    row: &Row<'_>,
    now: u64,
) -> Result<(), StoreError> {
    let id = row.id.to_string();
    let envelope = row.envelope.map(cbor);
    let payload = row.payload.map(cbor);
    let size = envelope.as_ref().or(payload.as_ref()).map_or(0, Vec::len);
    let sealed = seal_pair(at_rest, &id, envelope.as_deref(), payload.as_deref())?;
    tx.prepare_cached(
        "INSERT INTO outbox (id, peer_id, created_at, state, next_attempt_at, size, envelope,
                             key_id, forward_secret, payload, fs_policy, otk_id)
         VALUES (?1, ?2, ?3, ?4, ?3, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        id,
        row.peer.to_string(),
        now as i64,
        if row.envelope.is_some() {
            "queued"
        } else {
            "waiting"
        },
        size as i64,
        sealed.envelope,
        sealed.key_id,
        row.envelope.is_some_and(|e| e.otk.is_some()),
        sealed.payload,
        row.policy.as_str(),
        row.envelope.and_then(one_time_key_id),
    ])?;
    Ok(())
}

/// Inserts `row` and the attachments its message carries, in `tx`.
fn insert_with_attachments(
    tx: &rusqlite::Transaction<'_>,
    at_rest: &crate::keys::at_rest::AtRest,
    row: &Row<'_>,
    attachments: &[AttachmentRef],
    now: u64,
) -> Result<(), StoreError> {
    insert_message(tx, at_rest, row, now)?;
    super::attachments::insert_attachments(
        tx,
        at_rest,
        &row.id.to_string(),
        "out",
        row.peer,
        attachments,
    )
}

/// Queues message `id` again with a new `envelope`, due at `now` (keeping `payload` if the
/// envelope is sealed to a one-time key), noting `note` as its last error.
fn requeue(
    tx: &rusqlite::Transaction<'_>,
    at_rest: &crate::keys::at_rest::AtRest,
    id: &str,
    envelope: &Envelope,
    payload: Option<&Payload>,
    now: u64,
    note: Option<&str>,
) -> Result<(), StoreError> {
    let plain = cbor(envelope);
    let payload = payload.map(cbor);
    let sealed = seal_pair(at_rest, id, Some(&plain), payload.as_deref())?;
    let attempts_up = i64::from(note.is_some());
    tx.execute(
        "UPDATE outbox SET state = 'queued', envelope = ?2, payload = ?3, key_id = ?4, size = ?5,
                forward_secret = ?6, next_attempt_at = ?7, last_error = ?8,
                attempts = attempts + ?9, otk_id = ?10
         WHERE id = ?1",
        params![
            id,
            sealed.envelope,
            sealed.payload,
            sealed.key_id,
            plain.len() as i64,
            envelope.otk.is_some(),
            now as i64,
            note,
            attempts_up,
            one_time_key_id(envelope)
        ],
    )?;
    Ok(())
}

/// The id of the one-time key `envelope` is sealed to, as `outbox.otk_id` keeps it.
fn one_time_key_id(envelope: &Envelope) -> Option<Vec<u8>> {
    crate::envelope::one_time_key(envelope)
        .ok()
        .flatten()
        .map(|id| id.to_vec())
}

/// A row's envelope and payload sealed at rest under one key.
struct SealedPair {
    key_id: u32,
    envelope: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Seals a row's envelope and payload (CBOR) under the current key, both under the same one.
fn seal_pair(
    at_rest: &crate::keys::at_rest::AtRest,
    id: &str,
    envelope: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<SealedPair, StoreError> {
    let (key_id, envelope) = match envelope {
        Some(p) => {
            let (key_id, sealed) = at_rest.seal(TABLE, id, p);
            (key_id, Some(sealed))
        }
        None => (at_rest.current(), None),
    };
    let payload = payload
        .map(|p| at_rest.seal_under(key_id, PAYLOAD, id, p))
        .map(|sealed| sealed.ok_or(StoreError::Corrupt("data key retired while sealing")))
        .transpose()?;
    Ok(SealedPair {
        key_id,
        envelope,
        payload,
    })
}

/// Marks message `id` (queued or waiting) as refused for good with `error`, in `tx`.
fn fail(tx: &rusqlite::Transaction<'_>, id: &str, error: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?2
         WHERE id = ?1 AND state IN ('queued', 'waiting')",
        params![id, error],
    )?;
    Ok(())
}

/// Seals `payload` to one of `peer`'s one-time keys, taken from the pool in `tx`; `None` when
/// this node holds none.
fn seal_to_pool_key(
    tx: &rusqlite::Transaction<'_>,
    keys: &crate::keys::Keys,
    peer: &PeerId,
    payload: &Payload,
    now: u64,
) -> Result<Option<Envelope>, StoreError> {
    let Some(k) = super::one_time::take_pool_key(tx, keys.at_rest(), peer, now)? else {
        return Ok(None);
    };
    use hpke::Deserializable;
    let bad = |_| StoreError::Corrupt("one-time key");
    let public = crate::keys::EncPublic::from_bytes(&k.public).map_err(bad)?;
    crate::envelope::seal_forward_secret(keys, peer, &k.id, &public, payload)
        .map(Some)
        .map_err(|_| StoreError::Corrupt("one-time key"))
}

fn open_payload(
    at_rest: &crate::keys::at_rest::AtRest,
    id: &str,
    key_id: u32,
    blob: &[u8],
) -> Result<Payload, StoreError> {
    let plain = at_rest.open(PAYLOAD, id, key_id, blob)?;
    ciborium::from_reader(plain.as_slice()).map_err(|_| StoreError::Corrupt("outbox payload"))
}

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

pub(super) fn parse_id(s: &str) -> Result<MessageId, StoreError> {
    let bytes = hex::decode(s).map_err(|_| StoreError::Corrupt("message id"))?;
    Ok(MessageId(
        bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt("message id"))?,
    ))
}

/// [`Db::outbox_counts`] on any connection (`store::Peek` reads them without the keys: states and
/// times are in clear).
pub(super) fn outbox_counts(conn: &rusqlite::Connection) -> Result<OutboxCounts, StoreError> {
    let mut counts = OutboxCounts::default();
    let mut stmt =
        conn.prepare_cached("SELECT state, COUNT(*), MIN(created_at) FROM outbox GROUP BY state")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let n = r.get::<_, i64>(1)? as u64;
        match OutboxState::parse(&r.get::<_, String>(0)?)? {
            OutboxState::Queued => {
                counts.queued = n;
                counts.oldest_queued_at = r.get::<_, Option<i64>>(2)?.map(|t| t as u64);
            }
            OutboxState::Waiting => counts.waiting = n,
            OutboxState::Delivered => counts.delivered = n,
            OutboxState::Failed => counts.failed = n,
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use crate::store::test_support::temp_db;

    fn envelope() -> Envelope {
        Envelope {
            v: 1,
            sender: vec![1],
            enc: vec![2; 32],
            ct: vec![3; 40],
            otk: None,
        }
    }

    /// Alice's database with bob as a contact, bob's keys, and `n` of bob's one-time keys made
    /// for alice (their secrets, for opening).
    fn alice_and_bob() -> (tempfile::TempDir, Db, std::sync::Arc<Keys>, Keys) {
        let (dir, mut db, alice) = temp_db();
        let bob = Keys::generate();
        db.add_contact("bob", &bob.address(), &[]).expect("contact");
        (dir, db, alice, bob)
    }

    fn give_keys(
        db: &mut Db,
        alice: &Keys,
        bob: &Keys,
        n: usize,
    ) -> Vec<crate::keys::one_time::OneTimeSecret> {
        let (secrets, signed): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| crate::keys::one_time::make(bob, &alice.peer_id(), u64::MAX / 4))
            .unzip();
        db.add_pool_keys(&bob.peer_id(), &signed, 10).expect("pool");
        secrets
    }

    fn payload(text: &str) -> Payload {
        Payload {
            id: MessageId::random(),
            sent_at_ms: 10,
            subject: None,
            body: text.into(),
            attachments: vec![],
        }
    }

    fn entry(db: &Db, id: &MessageId) -> OutboxEntry {
        db.outbox()
            .expect("list")
            .into_iter()
            .find(|e| e.id == id.to_string())
            .expect("listed")
    }

    fn payload_kept(db: &Db, id: &MessageId) -> bool {
        db.conn
            .query_row(
                "SELECT payload IS NOT NULL FROM outbox WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .expect("row")
    }

    /// Queues `p` to bob under `policy`, with a long-term fallback.
    fn queue(
        db: &mut Db,
        alice: &Keys,
        bob: &Keys,
        p: &Payload,
        policy: ForwardSecrecy,
    ) -> Sealing {
        let fallback = crate::envelope::seal(alice, &bob.peer_id(), bob.address().enc_public(), p)
            .expect("seal");
        db.enqueue_with_policy(&p.id, &bob.peer_id(), p, &fallback, &[], 20, policy)
            .expect("queue")
    }

    fn due_envelope(db: &Db, id: &MessageId) -> Option<Envelope> {
        db.due(u64::MAX / 2, 64, &HashMap::new(), &HashSet::new())
            .expect("due")
            .into_iter()
            .flat_map(|b| b.messages)
            .find(|m| m.id == *id)
            .map(|m| m.envelope)
    }

    #[test]
    fn require_waits_for_a_one_time_key_and_prefer_falls_back() {
        let (_dir, mut db, alice, bob) = alice_and_bob();
        let (p1, p2) = (payload("must be forward secret"), payload("rather"));
        assert_eq!(
            queue(&mut db, &alice, &bob, &p1, ForwardSecrecy::Require),
            Sealing::Waiting
        );
        assert_eq!(
            queue(&mut db, &alice, &bob, &p2, ForwardSecrecy::Prefer),
            Sealing::LongTermKey
        );
        let waiting = entry(&db, &p1.id);
        assert_eq!(waiting.state, OutboxState::Waiting);
        assert_eq!(waiting.state.as_str(), "waiting for a one-time key");
        assert_eq!(
            (waiting.forward_secret, waiting.forward_secrecy),
            (false, ForwardSecrecy::Require)
        );
        assert!(
            due_envelope(&db, &p1.id).is_none(),
            "a waiting message is not due"
        );
        assert!(payload_kept(&db, &p1.id));
        // The fallen-back one says so, and keeps no payload: its envelope is all it needs.
        let fell_back = entry(&db, &p2.id);
        assert_eq!(
            (fell_back.state, fell_back.forward_secret),
            (OutboxState::Queued, false)
        );
        assert!(!payload_kept(&db, &p2.id));
        assert_eq!(db.outbox_counts().expect("counts").waiting, 1);
        assert!(
            db.wants_one_time_keys(&bob.peer_id(), ForwardSecrecy::Off)
                .expect("wants"),
            "a waiting message wants keys whatever the policy"
        );

        assert_eq!(db.seal_waiting(&bob.peer_id(), 30).expect("none"), 0);
        let secrets = give_keys(&mut db, &alice, &bob, 1);
        assert_eq!(db.seal_waiting(&bob.peer_id(), 30).expect("seal"), 1);
        let sealed = entry(&db, &p1.id);
        assert_eq!(
            (sealed.state, sealed.forward_secret),
            (OutboxState::Queued, true)
        );
        let env = due_envelope(&db, &p1.id).expect("due once sealed");
        let from = (alice.peer_id(), alice.address().enc_public().clone());
        let opened = crate::envelope::open_forward_secret(
            &secrets[0].secret,
            &bob.peer_id(),
            &from.0,
            &from.1,
            &env,
        )
        .expect("opens with the one-time secret");
        assert_eq!(opened.body, "must be forward secret");
        assert!(
            crate::envelope::open(&bob, &from.0, &from.1, &env).is_err(),
            "not with bob's long-term key"
        );
        assert_eq!(
            db.pool_keys(&bob.peer_id(), 30).expect("pool"),
            0,
            "used up"
        );
        // Delivered: nothing of the message is left on the sender's side.
        db.mark_delivered(&[p1.id], 40).expect("delivered");
        assert!(!payload_kept(&db, &p1.id));
        assert!(
            !db.wants_one_time_keys(&bob.peer_id(), ForwardSecrecy::Off)
                .expect("wants")
        );

        // With a key at hand, prefer and require both seal to it at once.
        give_keys(&mut db, &alice, &bob, 2);
        for policy in [ForwardSecrecy::Prefer, ForwardSecrecy::Require] {
            let p = payload("now");
            assert_eq!(
                queue(&mut db, &alice, &bob, &p, policy),
                Sealing::OneTimeKey
            );
            assert!(entry(&db, &p.id).forward_secret);
        }
        let off = payload("plain");
        assert_eq!(
            queue(&mut db, &alice, &bob, &off, ForwardSecrecy::Off),
            Sealing::LongTermKey
        );
        assert_eq!(entry(&db, &off.id).forward_secrecy, ForwardSecrecy::Off);
    }

    #[test]
    fn a_message_whose_one_time_key_is_gone_is_sealed_again_not_lost() {
        let (_dir, mut db, alice, bob) = alice_and_bob();
        give_keys(&mut db, &alice, &bob, 3);
        let (prefer, require) = (payload("prefer"), payload("require"));
        assert_eq!(
            queue(&mut db, &alice, &bob, &prefer, ForwardSecrecy::Prefer),
            Sealing::OneTimeKey
        );
        assert_eq!(
            queue(&mut db, &alice, &bob, &require, ForwardSecrecy::Require),
            Sealing::OneTimeKey
        );
        assert_eq!(db.pool_keys(&bob.peer_id(), 30).expect("pool"), 1);

        // Bob lost the key: prefer goes again to the long-term key, which bob's keys open.
        db.one_time_key_gone(&prefer.id, 50).expect("gone");
        let e = entry(&db, &prefer.id);
        assert_eq!((e.state, e.forward_secret), (OutboxState::Queued, false));
        assert!(
            e.last_error
                .expect("noted")
                .contains("without forward secrecy")
        );
        let env = due_envelope(&db, &prefer.id).expect("due again");
        let from = (alice.peer_id(), alice.address().enc_public().clone());
        assert_eq!(
            crate::envelope::open(&bob, &from.0, &from.1, &env)
                .expect("opens")
                .body,
            "prefer"
        );
        assert!(!payload_kept(&db, &prefer.id));
        // ... and the rest of the pool, likely lost alike, is dropped.
        assert_eq!(db.pool_keys(&bob.peer_id(), 30).expect("pool"), 0);

        // require waits for a fresh key, then is sealed to it.
        db.one_time_key_gone(&require.id, 50).expect("gone");
        let e = entry(&db, &require.id);
        assert_eq!((e.state, e.forward_secret), (OutboxState::Waiting, false));
        assert!(due_envelope(&db, &require.id).is_none());
        let secrets = give_keys(&mut db, &alice, &bob, 1);
        assert_eq!(db.seal_waiting(&bob.peer_id(), 60).expect("seal"), 1);
        let env = due_envelope(&db, &require.id).expect("due");
        crate::envelope::open_forward_secret(
            &secrets[0].secret,
            &bob.peer_id(),
            &from.0,
            &from.1,
            &env,
        )
        .expect("sealed to the new key");

        // A plain message cannot be sealed again (no payload): it fails, with the reason.
        let plain = MessageId::random();
        db.enqueue(&plain, &bob.peer_id(), &envelope(), &[], 20)
            .expect("queue");
        db.one_time_key_gone(&plain, 50).expect("gone");
        assert_eq!(entry(&db, &plain).state, OutboxState::Failed);
    }

    #[test]
    fn a_waiting_message_expires_retries_cancels_and_survives_a_rekey() {
        let (_dir, mut db, alice, bob) = alice_and_bob();
        let (old, kept) = (payload("old"), payload("kept"));
        queue(&mut db, &alice, &bob, &old, ForwardSecrecy::Require);
        queue(&mut db, &alice, &bob, &kept, ForwardSecrecy::Require);
        assert_eq!(db.expire(21, "expired").expect("expire"), 2);
        assert_eq!(entry(&db, &old.id).state, OutboxState::Failed);
        // Retried, it waits again (it never had an envelope).
        db.retry_now(&old.id.to_string(), 30).expect("retry");
        db.retry_now(&kept.id.to_string(), 30).expect("retry");
        assert_eq!(entry(&db, &old.id).state, OutboxState::Waiting);
        db.cancel(&old.id.to_string()).expect("cancel");
        assert!(
            !payload_kept(&db, &old.id),
            "a cancelled message keeps nothing"
        );
        assert!(db.retry_now(&old.id.to_string(), 30).is_err());

        // A rekey moves the waiting payload to the new key, and it still seals afterwards.
        let keys = db.keys.clone();
        keys.at_rest().install(keys.at_rest().next_key());
        let mut cursor = crate::store::RekeyCursor::default();
        while db.rekey_batch(100, &mut cursor).expect("rekey") > 0 {}
        assert!(!db.rekey_left(keys.at_rest().current()).expect("left"));
        keys.at_rest().retire_old();
        let audit = crate::store::audit(&db.conn, keys.at_rest())
            .expect("audit")
            .expect("every sealed value opens");
        assert_eq!(audit.queued, 1);
        let secrets = give_keys(&mut db, &alice, &bob, 1);
        assert_eq!(db.seal_waiting(&bob.peer_id(), 40).expect("seal"), 1);
        let env = due_envelope(&db, &kept.id).expect("due");
        let opened = crate::envelope::open_forward_secret(
            &secrets[0].secret,
            &bob.peer_id(),
            &alice.peer_id(),
            alice.address().enc_public(),
            &env,
        )
        .expect("opens");
        assert_eq!(opened.body, "kept");
    }

    #[test]
    fn a_peer_with_a_long_backlog_does_not_crowd_out_the_others() {
        let (_dir, mut db, _keys) = temp_db();
        let (slow, other) = (Keys::generate().peer_id(), Keys::generate().peer_id());
        // The slow peer's 3000 messages are all due before the other peer's one, and the slow
        // peer has no room (its batches are all in flight).
        let backlog: Vec<_> = (0..3000)
            .map(|_| (MessageId::random(), slow, envelope()))
            .collect();
        db.enqueue_many(&backlog, 100).expect("enqueue the backlog");
        let late = MessageId::random();
        db.enqueue(&late, &other, &envelope(), &[], 150)
            .expect("enqueue");
        let due = db
            .due(200, 64, &HashMap::from([(slow, 0)]), &HashSet::new())
            .expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].peer, due[0].messages[0].id), (other, late));
        // With room, both get their share, the slow peer at most its limit.
        let due = db
            .due(200, 64, &HashMap::new(), &HashSet::new())
            .expect("due");
        let sizes: HashMap<PeerId, usize> =
            due.iter().map(|b| (b.peer, b.messages.len())).collect();
        assert_eq!(sizes, HashMap::from([(slow, 64), (other, 1)]));
    }

    #[test]
    fn queue_retry_deliver_lifecycle() {
        let (_dir, mut db, _keys) = temp_db();
        let peer = Keys::generate().peer_id();
        let (a, b) = (MessageId::random(), MessageId::random());
        db.enqueue(&a, &peer, &envelope(), &[], 100)
            .expect("enqueue a");
        db.enqueue(&b, &peer, &envelope(), &[], 101)
            .expect("enqueue b");
        let due = db
            .due(200, 64, &HashMap::new(), &HashSet::new())
            .expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(due[0].messages[0].envelope, envelope());
        assert_eq!(
            db.due(200, 1, &HashMap::new(), &HashSet::new())
                .expect("due")[0]
                .messages
                .len(),
            1
        );
        assert!(
            db.due(200, 64, &HashMap::from([(peer, 0)]), &HashSet::new())
                .expect("due")
                .is_empty()
        );

        db.mark_retry(&[(a, 1000), (b, 2000)], "dial failed")
            .expect("retry");
        assert!(
            db.due(500, 64, &HashMap::new(), &HashSet::new())
                .expect("due")
                .is_empty()
        );
        assert_eq!(db.next_due_after(500).expect("next"), Some(1000));
        assert_eq!(db.next_due_after(1500).expect("next"), Some(2000));
        // A peer that connects has every queued message due, whatever the schedule says; a
        // waiver for another peer changes nothing for this one.
        let ids = |waived: &HashSet<PeerId>| {
            db.due_waiving(600, 64, &HashMap::new(), &HashSet::new(), waived)
                .expect("due")
                .into_iter()
                .flat_map(|b| b.messages.into_iter().map(|m| m.id))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&HashSet::from([peer])), vec![a, b]);
        assert_eq!(ids(&HashSet::from([Keys::generate().peer_id()])), vec![]);
        assert_eq!(db.queued_peers().expect("peers"), vec![peer]);

        db.mark_delivered(&[a], 700).expect("deliver");
        db.mark_failed(&b, "refused").expect("fail");
        let list = db.outbox().expect("list");
        assert_eq!(list[0].state, OutboxState::Delivered);
        assert_eq!(list[0].attempts, 2);
        assert_eq!(list[1].state, OutboxState::Failed);
        assert_eq!(list[1].last_error.as_deref(), Some("refused"));
        assert_eq!(db.outbox_counts().expect("counts").queued, 0);
        assert_eq!(db.next_due_after(0).expect("next"), None);
    }

    #[test]
    fn in_flight_expiry_retry_and_cancel() {
        let (_dir, mut db, _keys) = temp_db();
        let peer = Keys::generate().peer_id();
        let (a, b, c) = (
            MessageId::random(),
            MessageId::random(),
            MessageId::random(),
        );
        db.enqueue_many(&[(a, peer, envelope()), (b, peer, envelope())], 100)
            .expect("enqueue");
        db.enqueue(&c, &peer, &envelope(), &[], 5_000)
            .expect("enqueue c");
        // A message in flight is left out of `due`, which reads past it for the others.
        let due = db
            .due(6_000, 2, &HashMap::new(), &HashSet::from([a]))
            .expect("due");
        assert_eq!(
            due[0].messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![b, c]
        );
        // Scheduled later, it is not due until then, unless its peer's schedule is waived.
        db.mark_retry(&[(a, 60_000)], "dial failed").expect("retry");
        let due = |waived| {
            db.due_waiving(6_000, 64, &HashMap::new(), &HashSet::new(), &waived)
                .expect("due")
                .first()
                .map_or(0, |b| b.messages.len())
        };
        assert_eq!(due(HashSet::new()), 2);
        assert_eq!(due(HashSet::from([peer])), 3);
        // a and b are older than the cutoff: they expire; c does not.
        assert_eq!(db.expire(1_000, "too old").expect("expire"), 2);
        let counts = db.outbox_counts().expect("counts");
        assert_eq!(
            (counts.queued, counts.failed, counts.oldest_queued_at),
            (1, 2, Some(5_000))
        );
        // An ack that raced with the expiry wins.
        db.mark_delivered(&[a], 7_000).expect("late ack");
        // A failed message can be queued again; a delivered one cannot.
        let b_text = b.to_string();
        assert_eq!(db.retry_now(&b_text[..6], 8_000).expect("retry"), b_text);
        assert!(matches!(
            db.retry_now(&a.to_string(), 8_000),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            db.cancel(&a.to_string()),
            Err(StoreError::Conflict(_))
        ));
        // Cancel drops the sealed copy, so it cannot be retried.
        db.cancel(&c.to_string()).expect("cancel");
        assert!(matches!(
            db.retry_now(&c.to_string(), 9_000),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            db.retry_now("ffff", 9_000),
            Err(StoreError::NotFound { .. })
        ));
        let list = db.outbox().expect("list");
        let state = |id: &MessageId| {
            list.iter()
                .find(|e| e.id == id.to_string())
                .map(|e| e.state)
        };
        assert_eq!(state(&a), Some(OutboxState::Delivered));
        assert_eq!(state(&b), Some(OutboxState::Queued));
        assert_eq!(state(&c), Some(OutboxState::Failed));
        assert_eq!(
            list.iter()
                .find(|e| e.id == c.to_string())
                .and_then(|e| e.last_error.clone())
                .as_deref(),
            Some("cancelled by the user")
        );
    }
}
