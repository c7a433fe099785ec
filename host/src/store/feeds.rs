//! What `inbox watch` reads: the inbox in the order it was stored (by seq, after a given one), and
//! the sent history's new rows and delivery states, so that a watcher that was slow, or woke
//! late, reads from here what it missed: nothing is pushed to it, so nothing is lost or blocked.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::outbox::OutboxState;
use super::{Db, MessageView, SentView, StoreError};

/// A message either way, as `inbox watch --json` prints it and `pigeon chat` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Said {
    /// A message stored in the inbox: the fields of `inbox read --json`.
    Received(MessageView),
    /// A message sent (or a new delivery state of one): the fields of `sent read --json`.
    Sent(SentView),
}

impl Db {
    /// Up to `limit` messages stored after seq `after`, in the order they were stored, with their
    /// seqs.
    pub fn inbox_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, MessageView)>, StoreError> {
        let ids: Vec<(i64, String)> = self
            .conn
            .prepare_cached("SELECT seq, id FROM inbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
            .query_map(params![after as i64, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        ids.into_iter()
            .map(|(seq, id)| Ok((seq as u64, self.message(&id)?)))
            .collect()
    }

    /// The last `limit` messages between this node and `peer`, both ways, oldest first: received
    /// ones by when they arrived, sent ones by when they were sent (`pigeon chat`).
    pub fn conversation(&self, peer: &str, limit: u32) -> Result<Vec<Said>, StoreError> {
        let rows: Vec<(bool, String)> = self
            .conn
            .prepare_cached(
                "SELECT mine, id FROM (
                     SELECT 0 AS mine, id, received_at AS at, rowid AS r FROM inbox WHERE sender = ?1
                     UNION ALL
                     SELECT 1, id, sent_at, rowid FROM sent WHERE peer_id = ?1)
                 ORDER BY at DESC, r DESC LIMIT ?2",
            )?
            .query_map(params![peer, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .rev()
            .map(|(mine, id)| {
                Ok(if mine {
                    Said::Sent(self.sent_message(&id)?)
                } else {
                    Said::Received(self.message(&id)?)
                })
            })
            .collect()
    }

    /// The seq of inbox message `id` (or a unique prefix).
    pub fn seq_of(&self, id: &str) -> Result<u64, StoreError> {
        let id = self.resolve_id(id)?;
        let seq: i64 = self
            .conn
            .query_row("SELECT seq FROM inbox WHERE id = ?1", [&id], |r| r.get(0))?;
        Ok(seq as u64)
    }

    /// The last row of the sent history (0 when it is empty), where a watch of it starts.
    pub fn sent_mark(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT IFNULL(MAX(rowid), 0) FROM sent", [], |r| r.get(0))?)
    }

    /// Up to `limit` rows of the sent history after row `after`, oldest first, with their rows.
    pub fn sent_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, SentView)>, StoreError> {
        let ids: Vec<(i64, String)> = self
            .conn
            .prepare_cached("SELECT rowid, id FROM sent WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?
            .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        ids.into_iter()
            .map(|(row, id)| Ok((row, self.sent_message(&id)?)))
            .collect()
    }

    /// The sent messages not yet delivered, with their states.
    pub fn sent_open(&self) -> Result<Vec<(String, OutboxState)>, StoreError> {
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT s.id, IFNULL(o.state, 'failed') FROM sent s LEFT JOIN outbox o ON o.id = s.id
                 WHERE o.state IS NOT 'delivered'",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, state)| Ok((id, OutboxState::parse(&state)?)))
            .collect()
    }

    /// The delivery state of each of `ids` (`None`: no longer in the history).
    pub fn sent_states(&self, ids: &[String]) -> Result<Vec<Option<OutboxState>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT IFNULL(o.state, 'failed') FROM sent s LEFT JOIN outbox o ON o.id = s.id
             WHERE s.id = ?1",
        )?;
        ids.iter()
            .map(|id| {
                stmt.query_row([id], |r| r.get::<_, String>(0))
                    .optional()?
                    .map(|s| OutboxState::parse(&s))
                    .transpose()
            })
            .collect()
    }
}
