//! The outbox: sealed envelopes waiting for their recipient's ack.
//!
//! A message is `queued` until the recipient acks it (`delivered`, and its envelope is dropped) or
//! it is refused for good (`failed`, with the reason). Each attempt records when the next one is due.

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p::{Multiaddr, PeerId};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Db, StoreError, format_time};
use crate::attachments::AttachmentRef;
use crate::envelope::{Envelope, MessageId};

/// The delivery state of an outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting to be delivered.
    Queued,
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
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Result<OutboxState, StoreError> {
        match s {
            "queued" => Ok(OutboxState::Queued),
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
        insert_message(
            &tx,
            keys.at_rest(),
            id,
            peer,
            envelope.clone(),
            attachments,
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Queues message `payload` to `peer` as [`Db::enqueue`] does, sealed to one of the peer's
    /// one-time keys when this node holds one (taken from the pool in the same transaction, so it
    /// seals this message and no other), else as `fallback` (sealed to the peer's long-term key).
    /// Returns whether the message is forward secret.
    pub fn enqueue_preferring_forward_secrecy(
        &mut self,
        id: &MessageId,
        peer: &PeerId,
        payload: &crate::envelope::Payload,
        fallback: &Envelope,
        attachments: &[AttachmentRef],
        now: u64,
    ) -> Result<bool, StoreError> {
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        let sealed = match super::one_time::take_pool_key(&tx, keys.at_rest(), peer, now)? {
            Some(k) => {
                use hpke::Deserializable;
                let bad = |_| StoreError::Corrupt("one-time key");
                let public = crate::keys::EncPublic::from_bytes(&k.public).map_err(bad)?;
                Some(
                    crate::envelope::seal_forward_secret(&keys, peer, &k.id, &public, payload)
                        .map_err(|_| StoreError::Corrupt("one-time key"))?,
                )
            }
            None => None,
        };
        let forward_secret = sealed.is_some();
        let envelope = sealed.unwrap_or_else(|| fallback.clone());
        insert_message(&tx, keys.at_rest(), id, peer, envelope, attachments, now)?;
        tx.commit()?;
        Ok(forward_secret)
    }

    /// Queues several envelopes (without attachments) in one durable transaction.
    pub fn enqueue_many(
        &mut self,
        items: &[(MessageId, PeerId, Envelope)],
        now: u64,
    ) -> Result<(), StoreError> {
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        insert_outbox(&tx, keys.at_rest(), items, now)?;
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
        let mut batches: BTreeMap<PeerId, Vec<DueMessage>> = BTreeMap::new();
        for text in self.queued_peers()? {
            let peer: PeerId = text
                .parse()
                .map_err(|_| StoreError::Corrupt("outbox peer id"))?;
            let limit = room.get(&peer).copied().unwrap_or(per_peer);
            if limit == 0 {
                continue;
            }
            let messages = self.due_for(&text, now, limit, in_flight)?;
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

    /// The peers (as stored) with queued messages: one index probe per peer (a loose index scan
    /// of `outbox_peer_due`), however many messages each has queued.
    fn queued_peers(&self) -> Result<Vec<String>, StoreError> {
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
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(peers)
    }

    /// Up to `limit` due messages to `peer` (as stored), earliest due first, leaving out
    /// `in_flight`.
    fn due_for(
        &self,
        peer: &str,
        now: u64,
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
        let mut rows = stmt.query(params![peer, now as i64, rows_wanted])?;
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

    /// Puts messages handed to the network out of reach of `due` until `until` (the attempt's
    /// deadline); the attempt's outcome replaces this with delivered or a retry time.
    pub fn lease(&mut self, ids: &[MessageId], until: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1 AND state = 'queued'",
            )?;
            for id in ids {
                stmt.execute(params![id.to_string(), until as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Makes every queued message due now: after a restart, nothing is in flight and every peer
    /// deserves a fresh try.
    pub fn reset_schedule(&mut self, now: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE outbox SET next_attempt_at = ?1 WHERE state = 'queued' AND next_attempt_at > ?1",
            [now as i64],
        )?)
    }

    /// Records acks: the messages are delivered and their envelopes dropped, in one transaction.
    /// An ack wins over an expiry or a cancel that raced with it: the recipient has the message.
    pub fn mark_delivered(&mut self, ids: &[MessageId], now: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?2, attempts = attempts + 1,
                 envelope = NULL, key_id = NULL, last_error = NULL WHERE id = ?1 AND state != 'delivered'",
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
        self.conn.execute(
            "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?2
             WHERE id = ?1 AND state = 'queued'",
            params![id.to_string(), error],
        )?;
        Ok(())
    }

    /// Makes every queued message for `peer` due now (it just connected), except those in flight.
    pub fn make_due_now(
        &mut self,
        peer: &PeerId,
        now: u64,
        in_flight: &HashSet<MessageId>,
    ) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut changed = 0;
        {
            let mut select = tx.prepare_cached(
                "SELECT id FROM outbox WHERE peer_id = ?1 AND state = 'queued' AND next_attempt_at > ?2",
            )?;
            let ids: Vec<String> = select
                .query_map(params![peer.to_string(), now as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut update =
                tx.prepare_cached("UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1")?;
            for id in ids {
                if !in_flight.contains(&parse_id(&id)?) {
                    changed += update.execute(params![id, now as i64])?;
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// The whole outbox, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT o.id, COALESCE(c.name, o.peer_id), o.peer_id, o.state, o.attempts, o.created_at,
                    o.next_attempt_at, o.last_error, o.delivered_at
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
            });
        }
        Ok(out)
    }

    /// Marks queued messages older than `cutoff` as failed; returns how many.
    pub fn expire(&mut self, cutoff: u64, reason: &str) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE outbox SET state = 'failed', last_error = ?2 WHERE state = 'queued' AND created_at < ?1",
            params![cutoff as i64, reason],
        )?)
    }

    /// Makes a queued or failed message due now (a failed one is queued again); returns its id.
    pub fn retry_now(&mut self, prefix: &str, now: u64) -> Result<String, StoreError> {
        let (id, state) = self.resolve_outbox_id(prefix)?;
        match state {
            OutboxState::Delivered => Err(StoreError::Conflict(format!(
                "message {id} was delivered already"
            ))),
            _ => {
                let changed = self.conn.execute(
                    "UPDATE outbox SET state = 'queued', next_attempt_at = ?2, last_error = NULL
                     WHERE id = ?1 AND envelope IS NOT NULL",
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
             key_id = NULL WHERE id = ?1",
            [&id],
        )?;
        Ok(id)
    }

    /// Counts by state, and when the oldest queued message was queued.
    pub fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let mut counts = OutboxCounts::default();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*), MIN(created_at) FROM outbox GROUP BY state")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let n = r.get::<_, i64>(1)? as u64;
            match OutboxState::parse(&r.get::<_, String>(0)?)? {
                OutboxState::Queued => {
                    counts.queued = n;
                    counts.oldest_queued_at = r.get::<_, Option<i64>>(2)?.map(|t| t as u64);
                }
                OutboxState::Delivered => counts.delivered = n,
                OutboxState::Failed => counts.failed = n,
            }
        }
        Ok(counts)
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

fn insert_outbox(
    tx: &rusqlite::Transaction<'_>,
    at_rest: &crate::keys::at_rest::AtRest,
    items: &[(MessageId, PeerId, Envelope)],
    now: u64,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO outbox (id, peer_id, created_at, state, next_attempt_at, size, envelope, key_id, forward_secret)
         VALUES (?1, ?2, ?3, 'queued', ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (id, peer, envelope) in items {
        let row = id.to_string();
        let mut plain = Vec::new();
        ciborium::into_writer(envelope, &mut plain).expect("CBOR encoding into a Vec cannot fail");
        let (key_id, sealed) = at_rest.seal(TABLE, &row, &plain);
        stmt.execute(params![
            row,
            peer.to_string(),
            now as i64,
            plain.len() as i64,
            sealed,
            key_id,
            envelope.otk.is_some()
        ])?;
    }
    Ok(())
}

/// One queued message and its attachments, in `tx`.
fn insert_message(
    tx: &rusqlite::Transaction<'_>,
    at_rest: &crate::keys::at_rest::AtRest,
    id: &MessageId,
    peer: &PeerId,
    envelope: Envelope,
    attachments: &[AttachmentRef],
    now: u64,
) -> Result<(), StoreError> {
    insert_outbox(tx, at_rest, &[(*id, *peer, envelope)], now)?;
    super::attachments::insert_attachments(tx, at_rest, &id.to_string(), "out", peer, attachments)
}

pub(super) fn parse_id(s: &str) -> Result<MessageId, StoreError> {
    let bytes = hex::decode(s).map_err(|_| StoreError::Corrupt("message id"))?;
    Ok(MessageId(
        bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt("message id"))?,
    ))
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
        assert_eq!(
            db.make_due_now(&peer, 600, &HashSet::from([b]))
                .expect("due now"),
            1
        );
        assert_eq!(
            db.make_due_now(&peer, 600, &HashSet::new())
                .expect("due now"),
            1
        );
        assert_eq!(
            db.due(600, 64, &HashMap::new(), &HashSet::new())
                .expect("due")[0]
                .messages
                .len(),
            2
        );

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
    fn leases_expiry_retry_and_cancel() {
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
        // A leased message is out of `due` until the lease ends; a restart ends every lease.
        db.lease(&[a], 60_000).expect("lease");
        let due = db
            .due(6_000, 64, &HashMap::new(), &HashSet::new())
            .expect("due");
        assert_eq!(
            due[0].messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![b, c]
        );
        assert_eq!(db.reset_schedule(6_000).expect("reset"), 1);
        assert_eq!(
            db.due(6_000, 64, &HashMap::new(), &HashSet::new())
                .expect("due")[0]
                .messages
                .len(),
            3
        );
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
