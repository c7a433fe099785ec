//! Attachment records: which attachment belongs to which message and peer, its sealed reference
//! (manifest and content key, under the DEK), and which chunks the receiver holds.

use libp2p::PeerId;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Db, StoreError};
use crate::attachments::AttachmentRef;
use crate::keys::at_rest::AtRest;

pub(super) const TABLE: &str = "attachments";
/// Bad chunks from a peer before an attachment is given up on.
pub const MAX_BAD_CHUNKS: u32 = 3;

/// An attachment as `inbox read` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentView {
    /// Attachment id.
    pub id: String,
    /// File name as it will be saved (the sender's, sanitised).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `complete` or `partial`.
    pub state: String,
    /// Chunks held.
    pub chunks_held: u32,
    /// Chunks in all.
    pub chunks_total: u32,
    /// Why fetching stopped, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An incoming attachment that still misses chunks.
#[derive(Debug, Clone)]
pub struct Download {
    /// Its reference.
    pub attachment: AttachmentRef,
    /// The sender.
    pub peer: PeerId,
    /// Chunk indices not held yet.
    pub missing: Vec<u32>,
}

/// An attachment with its key, for `inbox save`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveInfo {
    /// Its reference (with the content key).
    pub attachment: AttachmentRef,
    /// Chunks held.
    pub chunks_held: u32,
}

/// Inserts attachment rows inside the caller's transaction.
/// Deletes the records (and chunk records) of the attachments of message `id` in `direction`
/// ('in' or 'out') inside the caller's transaction; returns their ids, whose files the caller
/// removes.
pub(super) fn delete_of_message(
    tx: &Transaction<'_>,
    id: &str,
    direction: &str,
) -> Result<Vec<String>, StoreError> {
    let attachments: Vec<String> = tx
        .prepare_cached("SELECT id FROM attachments WHERE message_id = ?1 AND direction = ?2")?
        .query_map([id, direction], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for a in &attachments {
        tx.execute(
            "DELETE FROM attachment_chunks WHERE attachment_id = ?1",
            [a],
        )?;
    }
    tx.execute(
        "DELETE FROM attachments WHERE message_id = ?1 AND direction = ?2",
        [id, direction],
    )?;
    Ok(attachments)
}

pub(super) fn insert_attachments(
    tx: &Transaction<'_>,
    at_rest: &AtRest,
    message_id: &str,
    direction: &str,
    peer: &PeerId,
    refs: &[AttachmentRef],
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO attachments (id, message_id, direction, peer_id, ref, key_id, size, chunk_count, held)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for r in refs {
        let id = r.id_hex();
        let mut plain = zeroize::Zeroizing::new(Vec::new());
        ciborium::into_writer(r, &mut *plain).expect("CBOR encoding into a Vec cannot fail");
        let (key_id, sealed) = at_rest.seal(TABLE, &id, &plain);
        // The sender holds every chunk from the start; the receiver none.
        let held = if direction == "out" {
            r.chunk_count()
        } else {
            0
        };
        stmt.execute(params![
            id,
            message_id,
            direction,
            peer.to_string(),
            sealed,
            key_id,
            r.size as i64,
            r.chunk_count(),
            held
        ])?;
    }
    Ok(())
}

impl Db {
    pub(super) fn attachment_ref(
        &self,
        id: &str,
        sealed: &[u8],
        key_id: u32,
    ) -> Result<AttachmentRef, StoreError> {
        let plain = zeroize::Zeroizing::new(self.open_sealed(TABLE, id, key_id, sealed)?);
        ciborium::from_reader(plain.as_slice())
            .map_err(|_| StoreError::Corrupt("attachment reference"))
    }

    /// The outgoing attachment `id` if it was sent to `peer` (for serving its chunks).
    pub fn outgoing_attachment(
        &self,
        id: &str,
        peer: &PeerId,
    ) -> Result<Option<AttachmentRef>, StoreError> {
        let row: Option<(Vec<u8>, u32)> = self
            .conn
            .query_row(
                "SELECT ref, key_id FROM attachments
                 WHERE id = ?1 AND direction = 'out' AND peer_id = ?2 AND released = 0",
                params![id, peer.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(sealed, key_id)| self.attachment_ref(id, &sealed, key_id))
            .transpose()
    }

    /// Records that `peer`, the recipient of outgoing attachment `id`, holds all of it; returns
    /// whether there was such an attachment (released now or before). The caller removes the file.
    pub fn release_outgoing(&mut self, id: &str, peer: &PeerId) -> Result<bool, StoreError> {
        let found = self.conn.execute(
            "UPDATE attachments SET released = 1, held = 0
             WHERE id = ?1 AND direction = 'out' AND peer_id = ?2",
            params![id, peer.to_string()],
        )?;
        Ok(found > 0)
    }

    /// Incoming attachments held whole whose sender has not confirmed dropping its copy: `(id,
    /// sender)`.
    pub fn unreleased(&self) -> Result<Vec<([u8; 16], PeerId)>, StoreError> {
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT id, peer_id FROM attachments
                 WHERE direction = 'in' AND held >= chunk_count AND released = 0 ORDER BY rowid",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, peer)| {
                let mut raw = [0u8; 16];
                hex::decode_to_slice(&id, &mut raw)
                    .map_err(|_| StoreError::Corrupt("attachment id"))?;
                let peer = peer
                    .parse()
                    .map_err(|_| StoreError::Corrupt("attachment peer"))?;
                Ok((raw, peer))
            })
            .collect()
    }

    /// The sender of incoming attachment `id` has dropped its copy.
    pub fn mark_released(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE attachments SET released = 1 WHERE id = ?1 AND direction = 'in'",
            [id],
        )?;
        Ok(())
    }

    /// The ids of every attachment, sent or received (the files `attachments/` may hold).
    pub fn attachment_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id FROM attachments")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Bytes of the attachments received from `peer` that the node holds or fetches (what
    /// `attachments.max_peer_bytes` bounds).
    pub fn incoming_attachment_bytes(&self, peer: &PeerId) -> Result<u64, StoreError> {
        let bytes: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(size), 0) FROM attachments WHERE direction = 'in' AND peer_id = ?1",
            [peer.to_string()],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    /// Incoming attachments still missing chunks (and not given up on).
    pub fn downloads(&self) -> Result<Vec<Download>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, ref, key_id, peer_id FROM attachments
             WHERE direction = 'in' AND held < chunk_count AND error IS NULL ORDER BY rowid",
        )?;
        let rows: Vec<(String, Vec<u8>, u32, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (id, sealed, key_id, peer) in rows {
            let attachment = self.attachment_ref(&id, &sealed, key_id)?;
            let mut held_stmt = self
                .conn
                .prepare_cached("SELECT idx FROM attachment_chunks WHERE attachment_id = ?1")?;
            let held: std::collections::HashSet<u32> = held_stmt
                .query_map([&id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let missing = (0..attachment.chunk_count())
                .filter(|i| !held.contains(i))
                .collect();
            let peer = peer
                .parse()
                .map_err(|_| StoreError::Corrupt("attachment peer"))?;
            out.push(Download {
                attachment,
                peer,
                missing,
            });
        }
        Ok(out)
    }

    /// Records, in one transaction, that the chunks `(id, index)` are written, verified and synced;
    /// returns the attachments among them now held whole.
    pub fn record_chunks(&mut self, chunks: &[(String, u32)]) -> Result<Vec<String>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut touched: Vec<&str> = Vec::new();
        for (id, index) in chunks {
            let added = tx.execute(
                "INSERT OR IGNORE INTO attachment_chunks (attachment_id, idx) VALUES (?1, ?2)",
                params![id, index],
            )?;
            if added > 0 {
                tx.execute(
                    "UPDATE attachments SET held = held + 1, failing_since = NULL WHERE id = ?1",
                    [id],
                )?;
                if !touched.contains(&id.as_str()) {
                    touched.push(id);
                }
            }
        }
        let mut complete = Vec::new();
        for id in touched {
            let (held, total): (u32, u32) = tx.query_row(
                "SELECT held, chunk_count FROM attachments WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if held >= total {
                complete.push(id.to_owned());
            }
        }
        tx.commit()?;
        Ok(complete)
    }

    /// Records a chunk that failed its hash; after [`MAX_BAD_CHUNKS`] the attachment is given up on
    /// with `reason`. Returns whether it was given up on.
    pub fn record_bad_chunk(&mut self, id: &str, reason: &str) -> Result<bool, StoreError> {
        self.conn.execute(
            "UPDATE attachments SET bad_chunks = bad_chunks + 1 WHERE id = ?1",
            [id],
        )?;
        let bad: u32 = self.conn.query_row(
            "SELECT bad_chunks FROM attachments WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if bad >= MAX_BAD_CHUNKS {
            self.conn.execute(
                "UPDATE attachments SET error = ?2 WHERE id = ?1",
                params![id, reason],
            )?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Records that a chunk of `id` could not be fetched at `now` (the sender did not answer or
    /// refused). When fetching has been failing for longer than `give_up_after_ms`, with no chunk
    /// since, the attachment is given up on with `reason`. Returns whether it was.
    pub fn record_fetch_failure(
        &mut self,
        id: &str,
        reason: &str,
        now: u64,
        give_up_after_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.conn.execute(
            "UPDATE attachments SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1",
            params![id, now],
        )?;
        let since: Option<i64> = self
            .conn
            .query_row(
                "SELECT failing_since FROM attachments WHERE id = ?1 AND error IS NULL",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(since) = since else {
            return Ok(false);
        };
        if now.saturating_sub(since) < i64::try_from(give_up_after_ms).unwrap_or(i64::MAX) {
            return Ok(false);
        }
        let why = format!(
            "given up: no chunk from the sender for {} ({reason}); `pigeon inbox fetch` tries again",
            humantime::format_duration(std::time::Duration::from_secs(
                u64::try_from(now - since).unwrap_or(0) / 1000
            ))
        );
        self.conn.execute(
            "UPDATE attachments SET error = ?2 WHERE id = ?1",
            params![id, why],
        )?;
        Ok(true)
    }

    /// Fetches the incoming attachments of message `message_id` again, given up on or not:
    /// errors, bad-chunk counts and failing times cleared. Returns how many still miss chunks.
    pub fn resume_attachments(&mut self, message_id: &str) -> Result<u32, StoreError> {
        let message_id = self.resolve_id(message_id)?;
        self.conn.execute(
            "UPDATE attachments SET error = NULL, bad_chunks = 0, failing_since = NULL
             WHERE message_id = ?1 AND direction = 'in'",
            [&message_id],
        )?;
        let missing: u32 = self.conn.query_row(
            "SELECT COUNT(*) FROM attachments WHERE message_id = ?1 AND direction = 'in' AND held < chunk_count",
            [&message_id],
            |r| r.get(0),
        )?;
        Ok(missing)
    }

    /// The attachments of message `message_id`, for display.
    pub fn attachment_views(&self, message_id: &str) -> Result<Vec<AttachmentView>, StoreError> {
        Ok(self
            .attachment_rows(message_id)?
            .into_iter()
            .map(|(r, held, error)| AttachmentView {
                id: r.id_hex(),
                name: crate::attachments::sanitize_name(&r.name),
                size: r.size,
                state: if held >= r.chunk_count() {
                    "complete"
                } else {
                    "partial"
                }
                .to_owned(),
                chunks_held: held,
                chunks_total: r.chunk_count(),
                error,
            })
            .collect())
    }

    /// The attachments of message `message_id` with their keys, for `inbox save`.
    pub fn attachments_for_save(&self, message_id: &str) -> Result<Vec<SaveInfo>, StoreError> {
        Ok(self
            .attachment_rows(message_id)?
            .into_iter()
            .map(|(attachment, chunks_held, _)| SaveInfo {
                attachment,
                chunks_held,
            })
            .collect())
    }

    fn attachment_rows(
        &self,
        message_id: &str,
    ) -> Result<Vec<(AttachmentRef, u32, Option<String>)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, ref, key_id, held, error FROM attachments WHERE message_id = ?1 AND direction = 'in' ORDER BY rowid",
        )?;
        let mut rows = stmt.query([message_id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            let sealed: Vec<u8> = r.get(1)?;
            out.push((
                self.attachment_ref(&id, &sealed, r.get(2)?)?,
                r.get(3)?,
                r.get(4)?,
            ));
        }
        Ok(out)
    }
}
