//! The outbox: sealed envelopes waiting for their recipient's ack.
//!
//! A message is `queued` until the recipient acks it (`delivered`, and its envelope is dropped) or
//! it is refused for good (`failed`, with the reason). Each attempt records when the next one is due.

use std::collections::{BTreeMap, HashSet};

use libp2p::{Multiaddr, PeerId};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Db, StoreError, format_time};
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

/// A message ready to go.
#[derive(Debug, Clone)]
pub struct DueMessage {
    /// Its id.
    pub id: MessageId,
    /// The sealed envelope.
    pub envelope: Envelope,
    /// Attempts so far.
    pub attempts: u32,
}

/// Due messages for one peer, oldest first, with the addresses to dial.
#[derive(Debug, Clone)]
pub struct DueBatch {
    /// The recipient.
    pub peer: PeerId,
    /// Its known addresses.
    pub addrs: Vec<Multiaddr>,
    /// The messages.
    pub messages: Vec<DueMessage>,
}

const TABLE: &str = "outbox";

impl Db {
    /// Queues a sealed envelope for `peer`, durably.
    pub fn enqueue(
        &mut self,
        id: &MessageId,
        peer: &PeerId,
        envelope: &Envelope,
        now: u64,
    ) -> Result<(), StoreError> {
        let row = id.to_string();
        let mut plain = Vec::new();
        ciborium::into_writer(envelope, &mut plain).expect("CBOR encoding into a Vec cannot fail");
        let (key_id, sealed) = self.seal(TABLE, &row, &plain);
        self.conn.execute(
            "INSERT INTO outbox (id, peer_id, created_at, state, next_attempt_at, size, envelope, key_id)
             VALUES (?1, ?2, ?3, 'queued', ?3, ?4, ?5, ?6)",
            params![row, peer.to_string(), now as i64, plain.len() as i64, sealed, key_id],
        )?;
        Ok(())
    }

    /// Due messages (queued, next attempt at or before `now`), at most `per_peer` for each peer,
    /// skipping peers in `busy`.
    pub fn due(
        &self,
        now: u64,
        per_peer: usize,
        busy: &HashSet<PeerId>,
    ) -> Result<Vec<DueBatch>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, peer_id, envelope, key_id, attempts FROM outbox
             WHERE state = 'queued' AND next_attempt_at <= ?1 ORDER BY created_at, rowid LIMIT 4096",
        )?;
        let mut rows = stmt.query([now as i64])?;
        let mut batches: BTreeMap<PeerId, Vec<DueMessage>> = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let peer: PeerId = r
                .get::<_, String>(1)?
                .parse()
                .map_err(|_| StoreError::Corrupt("outbox peer id"))?;
            if busy.contains(&peer) || batches.get(&peer).is_some_and(|b| b.len() >= per_peer) {
                continue;
            }
            let row: String = r.get(0)?;
            let blob: Vec<u8> = r.get(2)?;
            let plain = self.open_sealed(TABLE, &row, r.get(3)?, &blob)?;
            let envelope: Envelope = ciborium::from_reader(plain.as_slice())
                .map_err(|_| StoreError::Corrupt("outbox envelope"))?;
            let id = parse_id(&row)?;
            batches.entry(peer).or_default().push(DueMessage {
                id,
                envelope,
                attempts: r.get(4)?,
            });
        }
        batches
            .into_iter()
            .map(|(peer, messages)| {
                Ok(DueBatch {
                    peer,
                    addrs: self.addrs_of(&peer)?,
                    messages,
                })
            })
            .collect()
    }

    /// When the earliest queued message not for a `busy` peer is due.
    pub fn next_due(&self, busy: &HashSet<PeerId>) -> Result<Option<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT peer_id, MIN(next_attempt_at) FROM outbox WHERE state = 'queued' GROUP BY peer_id",
        )?;
        let mut rows = stmt.query([])?;
        let mut earliest: Option<u64> = None;
        while let Some(r) = rows.next()? {
            let peer: Option<PeerId> = r.get::<_, String>(0)?.parse().ok();
            if peer.is_some_and(|p| busy.contains(&p)) {
                continue;
            }
            let at = r.get::<_, i64>(1)? as u64;
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
        Ok(earliest)
    }

    /// Records acks: the messages are delivered and their envelopes dropped, in one transaction.
    pub fn mark_delivered(&mut self, ids: &[MessageId], now: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?2, attempts = attempts + 1,
                 envelope = NULL, key_id = NULL, last_error = NULL WHERE id = ?1 AND state = 'queued'",
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

    /// Marks a message as refused for good.
    pub fn mark_failed(&mut self, id: &MessageId, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?2,
             envelope = NULL, key_id = NULL WHERE id = ?1 AND state = 'queued'",
            params![id.to_string(), error],
        )?;
        Ok(())
    }

    /// Makes every queued message for `peer` due now (it just connected).
    pub fn make_due_now(&mut self, peer: &PeerId, now: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE outbox SET next_attempt_at = ?2 WHERE peer_id = ?1 AND state = 'queued' AND next_attempt_at > ?2",
            params![peer.to_string(), now as i64],
        )?)
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

    /// How many messages are queued.
    pub fn queued_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = ?1",
            [OutboxState::Queued.as_str()],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
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
        }
    }

    #[test]
    fn queue_retry_deliver_lifecycle() {
        let (_dir, mut db, _keys) = temp_db();
        let peer = Keys::generate().peer_id();
        let (a, b) = (MessageId::random(), MessageId::random());
        db.enqueue(&a, &peer, &envelope(), 100).expect("enqueue a");
        db.enqueue(&b, &peer, &envelope(), 101).expect("enqueue b");
        let due = db.due(200, 64, &HashSet::new()).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(due[0].messages[0].envelope, envelope());
        assert_eq!(
            db.due(200, 1, &HashSet::new()).expect("due")[0]
                .messages
                .len(),
            1
        );
        assert!(
            db.due(200, 64, &HashSet::from([peer]))
                .expect("due")
                .is_empty()
        );

        db.mark_retry(&[(a, 1000), (b, 2000)], "dial failed")
            .expect("retry");
        assert!(db.due(500, 64, &HashSet::new()).expect("due").is_empty());
        assert_eq!(db.next_due(&HashSet::new()).expect("next"), Some(1000));
        assert_eq!(db.make_due_now(&peer, 600).expect("due now"), 2);
        assert_eq!(
            db.due(600, 64, &HashSet::new()).expect("due")[0]
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
        assert_eq!(db.queued_count().expect("count"), 0);
        assert_eq!(db.next_due(&HashSet::new()).expect("next"), None);
    }
}
