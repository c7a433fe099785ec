//! The inbox: received messages, their bodies and subjects sealed at rest.
//!
//! The message id is the sender's; receiving the same id from the same sender again is a duplicate
//! (re-acked, never stored twice). A batch from the network commits in one durable transaction.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Db, StoreError, format_time};
use crate::envelope::MessageId;
use crate::keys::at_rest::AtRest;

pub(super) const TABLE: &str = "inbox";
/// The table name a subject is sealed for.
pub(super) const SUBJECT: &str = "inbox.subject";
const PREVIEW_CHARS: usize = 60;

/// A message that arrived and opened.
#[derive(Debug, Clone)]
pub struct Received {
    /// The sender's message id.
    pub id: MessageId,
    /// The authenticated sender.
    pub sender: PeerId,
    /// Sender's clock at queueing.
    pub sent_at_ms: u64,
    /// Optional subject.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
    /// Its attachments (to be fetched).
    pub attachments: Vec<crate::attachments::AttachmentRef>,
    /// What the rules pipeline decided for it, applied with the insert.
    pub actions: Vec<crate::inbox::rules::Action>,
    /// For a forward-secret message: the one-time key it was sealed to and the blake2b of its
    /// envelope. The key's secret is deleted, and a tombstone left, in the transaction that
    /// stores the message.
    pub one_time_key: Option<([u8; 16], [u8; 32])>,
}

/// What storing one received message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// Newly stored.
    Stored,
    /// Stored before; nothing changed.
    Duplicate,
    /// The id is taken by another sender's message; refused.
    IdConflict,
}

/// One row of `pigeon inbox list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxItem {
    /// Message id.
    pub id: String,
    /// Contact name, or the PeerId if the sender is not a contact any more.
    pub from: String,
    /// Sender PeerId.
    pub from_peer_id: String,
    /// When it arrived (RFC 3339, UTC).
    pub received_at: String,
    /// Subject, if any.
    pub subject: Option<String>,
    /// Labels.
    pub labels: Vec<String>,
    /// The start of the body, on one line.
    pub preview: String,
    /// Whether it has been read (`inbox read`, `inbox mark read`, a rule).
    #[serde(default)]
    pub read: bool,
    /// Whether it is archived (hidden from `inbox list` unless asked for).
    #[serde(default)]
    pub archived: bool,
    /// Whether it came sealed to a one-time key of this node, since deleted (forward secret).
    #[serde(default)]
    pub forward_secret: bool,
}

impl From<&MessageView> for InboxItem {
    /// The listing row of a whole message.
    fn from(m: &MessageView) -> InboxItem {
        InboxItem {
            id: m.id.clone(),
            from: m.from.clone(),
            from_peer_id: m.from_peer_id.clone(),
            received_at: m.received_at.clone(),
            subject: m.subject.clone(),
            labels: m.labels.clone(),
            preview: if m.redacted_at.is_some() {
                "(redacted)".to_owned()
            } else {
                preview(&m.body)
            },
            read: m.read,
            archived: m.archived,
            forward_secret: m.forward_secret,
        }
    }
}

/// Which messages `inbox list` shows as to archiving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Archived {
    /// Not the archived ones (the default).
    #[default]
    Hide,
    /// Only the archived ones.
    Only,
    /// Both.
    Include,
}

/// What `inbox list` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxQuery {
    /// At most this many, newest first.
    pub limit: Option<u32>,
    /// Only messages with this label.
    #[serde(default)]
    pub label: Option<String>,
    /// Only messages listed after this one (its id), for reading the inbox page by page.
    #[serde(default)]
    pub after: Option<String>,
    /// Only unread messages.
    #[serde(default)]
    pub unread: bool,
    /// Archived messages hidden, alone, or with the others.
    #[serde(default)]
    pub archived: Archived,
}

/// A whole message, for `pigeon inbox read`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    /// Message id.
    pub id: String,
    /// Contact name, or the PeerId.
    pub from: String,
    /// Sender PeerId.
    pub from_peer_id: String,
    /// Sender's clock when queued (RFC 3339).
    pub sent_at: String,
    /// When it arrived (RFC 3339).
    pub received_at: String,
    /// Subject, if any.
    pub subject: Option<String>,
    /// Labels.
    pub labels: Vec<String>,
    /// The text.
    pub body: String,
    /// Attachments, with how much of each has arrived.
    pub attachments: Vec<super::AttachmentView>,
    /// Whether it has been read.
    #[serde(default)]
    pub read: bool,
    /// Whether it is archived.
    #[serde(default)]
    pub archived: bool,
    /// When it was redacted (RFC 3339): its text and attachments are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_at: Option<String>,
    /// Whether it came sealed to a one-time key of this node, since deleted (forward secret).
    #[serde(default)]
    pub forward_secret: bool,
}

impl Db {
    /// Stores a batch of received messages in one durable transaction.
    pub fn store_received(
        &mut self,
        items: &[Received],
        now: u64,
    ) -> Result<Vec<ReceiveOutcome>, StoreError> {
        // A batch comes from one sender: its PeerId is written out (base58, slow) once.
        let mut senders: HashMap<PeerId, String> = HashMap::new();
        let sealed: Vec<_> = items
            .iter()
            .map(|m| {
                let row = m.id.to_string();
                let sender = senders
                    .entry(m.sender)
                    .or_insert_with(|| m.sender.to_string())
                    .clone();
                let (key_id, body) = self.seal(TABLE, &row, m.body.as_bytes());
                let subject = m
                    .subject
                    .as_ref()
                    .map(|s| self.seal(SUBJECT, &row, s.as_bytes()).1);
                let sender_seal = self.seal(SENDER, &row, sender.as_bytes()).1;
                (row, sender, key_id, body, subject, sender_seal)
            })
            .collect();
        let keys = self.keys.clone();
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut stored = Vec::new();
        let mut spent = false;
        {
            let mut find = tx.prepare_cached("SELECT sender FROM inbox WHERE id = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO inbox (id, sender, sent_at, received_at, size, subject, body, key_id, sender_seal, forward_secret, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            // The counter is read once and written once per batch.
            let mut seq: i64 = tx
                .prepare_cached("SELECT value FROM counters WHERE name = 'inbox_seq'")?
                .query_row([], |r| r.get(0))?;
            let first_seq = seq;
            for (m, (row, sender, key_id, body, subject, sender_seal)) in items.iter().zip(sealed) {
                if let Some((key, hash)) = &m.one_time_key {
                    // The one-time key's secret goes with this commit: stored or a duplicate,
                    // the message is held, and the key may open nothing more.
                    super::one_time::spend_secret(&tx, key, hash, now)?;
                    spent = true;
                }
                let existing: Option<String> = find.query_row([&row], |r| r.get(0)).optional()?;
                outcomes.push(match existing {
                    Some(s) if s == sender => ReceiveOutcome::Duplicate,
                    Some(_) => ReceiveOutcome::IdConflict,
                    None => {
                        let size = m.body.len() + m.subject.as_ref().map_or(0, String::len);
                        seq += 1;
                        insert.execute(params![
                            row,
                            sender,
                            m.sent_at_ms as i64,
                            now as i64,
                            size as i64,
                            subject,
                            body,
                            key_id,
                            sender_seal,
                            m.one_time_key.is_some(),
                            seq
                        ])?;
                        super::attachments::insert_attachments(
                            &tx,
                            keys.at_rest(),
                            &row,
                            "in",
                            &m.sender,
                            &m.attachments,
                        )?;
                        super::rules::apply_actions(&tx, &row, &m.actions)?;
                        stored.push(row);
                        ReceiveOutcome::Stored
                    }
                });
            }
            if seq != first_seq {
                tx.prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'inbox_seq'")?
                    .execute([seq])?;
            }
        }
        tx.commit()?;
        if spent {
            // No older copy of a spent secret's page stays in the WAL (within CHECKPOINT_GAP
            // while the store is busy, at once when it is idle).
            self.checkpoint_soon()?;
        }
        if !stored.is_empty() {
            let ids: Vec<&str> = stored.iter().map(String::as_str).collect();
            self.refresh_states(&ids)?;
            self.wake_search();
        }
        Ok(outcomes)
    }

    /// Which of `ids` the inbox holds already (so a resent batch need not run the rules again).
    pub fn known_received(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut find = self
            .conn
            .prepare_cached("SELECT 1 FROM inbox WHERE id = ?1")?;
        let mut known = HashSet::new();
        for id in ids {
            if find.exists([id])? {
                known.insert(id.clone());
            }
        }
        Ok(known)
    }

    /// The inbox, newest first, at most `limit` messages, only those labelled `label` if given.
    ///
    /// `after` (a message id) continues a listing: only the messages that come after it in this
    /// order. Messages that arrive in between come before it, so a listing read page by page
    /// never shows one twice or skips one.
    pub fn inbox(&self, query: &InboxQuery) -> Result<Vec<InboxItem>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT i.id, i.sender, i.sender_seal, i.received_at, i.subject, i.body, i.key_id,
                    i.read, i.archived, i.redacted_at, i.forward_secret
             FROM inbox i
             WHERE (?2 IS NULL OR EXISTS (SELECT 1 FROM labels l WHERE l.message_id = i.id AND l.label = ?2))
               AND (?3 IS NULL OR (i.received_at, i.rowid) < (SELECT received_at, rowid FROM inbox WHERE id = ?3))
               AND (?4 = 0 OR i.read = 0)
               AND (?5 = 'include' OR (?5 = 'only') = (i.archived = 1))
             ORDER BY i.received_at DESC, i.rowid DESC LIMIT ?1",
        )?;
        let InboxQuery {
            limit,
            label,
            after,
            unread,
            archived,
        } = query;
        let archived = match archived {
            Archived::Hide => "hide",
            Archived::Only => "only",
            Archived::Include => "include",
        };
        if let Some(after) = after {
            // A cursor that names no message would silently list everything.
            let known: bool = self.conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM inbox WHERE id = ?1)",
                [after],
                |r| r.get(0),
            )?;
            if !known {
                return Err(StoreError::NotFound {
                    what: "message",
                    name: after.to_owned(),
                });
            }
        }
        let limit = limit.map_or(-1, i64::from);
        let mut rows = stmt.query(params![limit, label, after, unread, archived])?;
        let mut out = Vec::new();
        let mut names = Names::default();
        while let Some(r) = rows.next()? {
            out.push(self.list_item(r, &mut names)?.0);
        }
        Ok(out)
    }

    /// A listing row from `r`, whose columns are `id, sender, sender_seal, received_at, subject,
    /// body, key_id, read, archived, redacted_at, forward_secret`; with the opened body.
    pub(super) fn list_item(
        &self,
        r: &rusqlite::Row<'_>,
        names: &mut Names,
    ) -> Result<(InboxItem, String), StoreError> {
        let id: String = r.get(0)?;
        let key_id: u32 = r.get(6)?;
        let sender = self.sender_of(&id, key_id, r.get(1)?, r.get(2)?)?;
        let peer_id = sender.to_string();
        let redacted = r.get::<_, Option<i64>>(9)?.is_some();
        let body = self.body_of(&id, key_id, &r.get::<_, Vec<u8>>(5)?, redacted)?;
        let subject = self.open_subject(&id, key_id, r.get(4)?)?;
        let item = InboxItem {
            labels: self.labels_of(&id)?,
            preview: if redacted {
                "(redacted)".to_owned()
            } else {
                preview(&body)
            },
            from: names.of(self, &sender)?.unwrap_or_else(|| peer_id.clone()),
            from_peer_id: peer_id,
            read: r.get(7)?,
            archived: r.get(8)?,
            forward_secret: r.get(10)?,
            received_at: format_time(r.get::<_, i64>(3)? as u64),
            subject,
            id,
        };
        Ok((item, body))
    }

    /// The message whose id is `id` or starts with it (at least 4 hex digits).
    pub fn message(&self, id: &str) -> Result<MessageView, StoreError> {
        let id = self.resolve_id(id)?;
        let m = self.conn.query_row(
            "SELECT sender, sender_seal, sent_at, received_at, subject, body, key_id, read, archived,
                    redacted_at, forward_secret
             FROM inbox WHERE id = ?1",
            [&id],
            |r| {
                Ok(StoredMessage {
                    sender: r.get(0)?,
                    sender_seal: r.get(1)?,
                    sent_at: r.get(2)?,
                    received_at: r.get(3)?,
                    subject: r.get(4)?,
                    body: r.get(5)?,
                    key_id: r.get(6)?,
                    read: r.get(7)?,
                    archived: r.get(8)?,
                    redacted_at: r.get(9)?,
                    forward_secret: r.get(10)?,
                })
            },
        )?;
        let key_id = m.key_id;
        let sender = self.sender_of(&id, key_id, m.sender, m.sender_seal)?;
        let from = Names::default()
            .of(self, &sender)?
            .unwrap_or_else(|| sender.to_string());
        let from_peer_id = sender.to_string();
        Ok(MessageView {
            body: self.body_of(&id, key_id, &m.body, m.redacted_at.is_some())?,
            redacted_at: m.redacted_at.map(|t| format_time(t as u64)),
            subject: self.open_subject(&id, key_id, m.subject)?,
            labels: self.labels_of(&id)?,
            attachments: self.attachment_views(&id)?,
            from,
            from_peer_id,
            sent_at: format_time(m.sent_at as u64),
            received_at: format_time(m.received_at as u64),
            read: m.read,
            archived: m.archived,
            forward_secret: m.forward_secret,
            id,
        })
    }

    /// Marks message `id` (or a unique prefix) read or unread; returns its full id.
    pub fn set_read(&mut self, id: &str, read: bool) -> Result<String, StoreError> {
        let mut ids = self.set_read_many(&[id.to_owned()], read)?;
        ids.pop()
            .ok_or(StoreError::Corrupt("a marked message without its id"))
    }

    /// Marks messages `ids` (or unique prefixes) read or unread, in one transaction: all of them,
    /// or none if one is unknown or ambiguous. Returns their full ids.
    pub fn set_read_many(&mut self, ids: &[String], read: bool) -> Result<Vec<String>, StoreError> {
        let full = ids
            .iter()
            .map(|id| self.resolve_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("UPDATE inbox SET read = ?2 WHERE id = ?1")?;
            for id in &full {
                stmt.execute(params![id, read])?;
            }
        }
        tx.commit()?;
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.refresh_states(&refs)?;
        Ok(full)
    }

    /// Archives or unarchives message `id` (or a unique prefix); returns its full id.
    pub fn set_archived(&mut self, id: &str, archived: bool) -> Result<String, StoreError> {
        let id = self.resolve_id(id)?;
        self.conn.execute(
            "UPDATE inbox SET archived = ?2 WHERE id = ?1",
            params![id, archived],
        )?;
        self.refresh_states(&[&id])?;
        Ok(id)
    }

    /// Redacts message `id` (or a unique prefix) at `now`: its body and subject scrubbed, its
    /// attachment records (content keys included) and chunk records deleted, in one transaction,
    /// then the WAL checkpointed like [`Db::remove_message`]. The id, sender, times, size and labels
    /// stay. Returns the full id and the attachment ids whose sealed files the caller removes.
    pub fn redact_message(
        &mut self,
        id: &str,
        now: u64,
    ) -> Result<(String, Vec<String>), StoreError> {
        let id = self.resolve_id(id)?;
        let tx = self.conn.transaction()?;
        let attachments = super::attachments::delete_of_message(&tx, &id, "in")?;
        tx.execute(
            "UPDATE inbox SET body = X'', subject = NULL, redacted_at = COALESCE(redacted_at, ?2)
             WHERE id = ?1",
            params![id, now as i64],
        )?;
        purge_from_search(&tx, &id)?;
        tx.commit()?;
        self.checkpoint()?;
        self.wake_search();
        Ok((id, attachments))
    }

    /// Deletes message `id` (or a unique prefix) with its labels and attachment records, in one
    /// transaction, then checkpoints the WAL so that no older copy of its pages stays in it (with
    /// `secure_delete` the freed pages are zeroed). Returns its full id and the ids of its
    /// attachments, whose sealed files the caller removes.
    pub fn remove_message(&mut self, id: &str) -> Result<(String, Vec<String>), StoreError> {
        let id = self.resolve_id(id)?;
        let tx = self.conn.transaction()?;
        let attachments = super::attachments::delete_of_message(&tx, &id, "in")?;
        let seq = purge_from_search(&tx, &id)?;
        tx.execute("DELETE FROM labels WHERE message_id = ?1", [&id])?;
        tx.execute("DELETE FROM inbox WHERE id = ?1", [&id])?;
        tx.commit()?;
        self.checkpoint()?;
        self.forget_state(seq);
        self.wake_search();
        Ok((id, attachments))
    }

    /// How many messages the inbox holds.
    pub fn inbox_count(&self) -> Result<u64, StoreError> {
        inbox_count(&self.conn)
    }

    pub(super) fn resolve_id(&self, prefix: &str) -> Result<String, StoreError> {
        self.resolve_prefix("inbox", "message", prefix)
    }

    /// The one id in `table` that starts with `prefix` (a user's, checked first); `what` names
    /// the thing in the error when there is none.
    pub(super) fn resolve_prefix(
        &self,
        table: &str,
        what: &'static str,
        prefix: &str,
    ) -> Result<String, StoreError> {
        let prefix = super::check_id_prefix(prefix)?;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id FROM {table} WHERE id LIKE ?1 || '%' LIMIT 2"
        ))?;
        let ids: Vec<String> = stmt
            .query_map([&prefix], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(StoreError::NotFound { what, name: prefix }),
            _ => Err(StoreError::Ambiguous(prefix)),
        }
    }

    pub(super) fn labels_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT label FROM labels WHERE message_id = ?1 ORDER BY label")?;
        let labels = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(labels)
    }

    /// The sender of message `id` as stored in `sender`, once its seal (under the message's
    /// key) proves the owner's node stored it: a row whose sender was changed is damage.
    pub(super) fn sender_of(
        &self,
        id: &str,
        key_id: u32,
        sender: String,
        seal: Option<Vec<u8>>,
    ) -> Result<PeerId, StoreError> {
        let seal = seal.ok_or(StoreError::Corrupt("message without its sender's seal"))?;
        if self.open_sealed(SENDER, id, key_id, &seal)? != sender.as_bytes() {
            return Err(StoreError::Corrupt(
                "message whose sender disagrees with its seal",
            ));
        }
        sender
            .parse()
            .map_err(|_| StoreError::Corrupt("message sender"))
    }

    /// A message's body: opened, or empty once redacted. An empty blob is never a sealed one, so
    /// a body emptied without the redaction mark is damage.
    pub(super) fn body_of(
        &self,
        id: &str,
        key_id: u32,
        blob: &[u8],
        redacted: bool,
    ) -> Result<String, StoreError> {
        if redacted {
            return Ok(String::new());
        }
        self.open_text(TABLE, id, key_id, blob)
    }

    pub(super) fn open_text(
        &self,
        table: &str,
        id: &str,
        key_id: u32,
        blob: &[u8],
    ) -> Result<String, StoreError> {
        String::from_utf8(self.open_sealed(table, id, key_id, blob)?)
            .map_err(|_| StoreError::Corrupt("message text"))
    }

    pub(super) fn open_subject(
        &self,
        id: &str,
        key_id: u32,
        blob: Option<Vec<u8>>,
    ) -> Result<Option<String>, StoreError> {
        blob.map(|b| self.open_text(SUBJECT, id, key_id, &b))
            .transpose()
    }
}

/// An inbox row as stored.
struct StoredMessage {
    redacted_at: Option<i64>,
    read: bool,
    archived: bool,
    sender: String,
    sender_seal: Option<Vec<u8>>,
    sent_at: i64,
    received_at: i64,
    subject: Option<Vec<u8>>,
    body: Vec<u8>,
    key_id: u32,
    forward_secret: bool,
}

/// Records (inside the caller's transaction) that the search index must let go of message `id`;
/// returns its seq.
fn purge_from_search(tx: &Transaction<'_>, id: &str) -> Result<u64, StoreError> {
    let seq: i64 = tx.query_row("SELECT seq FROM inbox WHERE id = ?1", [id], |r| r.get(0))?;
    tx.execute(
        "INSERT OR IGNORE INTO search_purge (seq) VALUES (?1)",
        [seq],
    )?;
    Ok(seq as u64)
}

/// Where a message's sender is sealed (the message id is the row).
pub(super) const SENDER: &str = "inbox.sender";

/// Contact names by sender, looked up (and their rows checked) once per listing.
#[derive(Default)]
pub(super) struct Names(HashMap<PeerId, Option<String>>);

impl Names {
    /// The name of the contact `peer` is, if it is one.
    pub(super) fn of(&mut self, db: &Db, peer: &PeerId) -> Result<Option<String>, StoreError> {
        if let Some(name) = self.0.get(peer) {
            return Ok(name.clone());
        }
        let name = db.contact_by_peer(peer)?.map(|c| c.name);
        self.0.insert(*peer, name.clone());
        Ok(name)
    }
}

/// Seals the senders of messages stored before senders were sealed (inside the caller's
/// transaction), each under its message's key.
pub(super) fn seal_unsealed_senders(
    tx: &Transaction<'_>,
    at_rest: &AtRest,
) -> Result<(), StoreError> {
    let rows: Vec<(String, String, u32)> = tx
        .prepare("SELECT id, sender, key_id FROM inbox WHERE sender_seal IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut update = tx.prepare("UPDATE inbox SET sender_seal = ?2 WHERE id = ?1")?;
    for (id, sender, key_id) in rows {
        let seal = at_rest
            .seal_under(key_id, SENDER, &id, sender.as_bytes())
            .ok_or(StoreError::Corrupt(
                "message sealed under a key this node does not hold",
            ))?;
        update.execute(params![id, seal])?;
    }
    Ok(())
}

pub(super) fn preview(body: &str) -> String {
    opening(body, PREVIEW_CHARS)
}

/// The start of `text` on one line: whitespace runs as one space, none at the ends, at most
/// `max` characters and `…` if there was more. Reads no further than it needs (a body may be a
/// megabyte).
pub fn opening(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut taken = 0;
    let mut gap = false;
    for c in text.chars() {
        if c.is_whitespace() {
            gap = taken > 0;
            continue;
        }
        if taken == max {
            out.push('…');
            break;
        }
        if gap {
            out.push(' ');
            taken += 1;
            gap = false;
            if taken == max {
                out.push('…');
                break;
            }
        }
        out.push(c);
        taken += 1;
    }
    out
}

/// [`Db::inbox_count`] on any connection (`store::Peek` needs no keys for it).
pub(super) fn inbox_count(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get::<_, i64>(0))? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use crate::store::test_support::temp_db;

    fn received(sender: PeerId, body: &str) -> Received {
        Received {
            id: MessageId::random(),
            sender,
            sent_at_ms: 5,
            subject: Some("s".into()),
            body: body.into(),
            attachments: vec![],
            actions: vec![],
            one_time_key: None,
        }
    }

    #[test]
    fn duplicates_are_not_stored_twice_and_ids_are_per_sender() {
        let (_dir, mut db, _keys) = temp_db();
        let alice = Keys::generate().peer_id();
        let mallory = Keys::generate().peer_id();
        let m = received(alice, "hello there");
        let out = db
            .store_received(&[m.clone(), m.clone()], 10)
            .expect("store");
        assert_eq!(out, vec![ReceiveOutcome::Stored, ReceiveOutcome::Duplicate]);
        assert_eq!(
            db.store_received(std::slice::from_ref(&m), 11)
                .expect("again"),
            vec![ReceiveOutcome::Duplicate]
        );
        let stolen = Received {
            sender: mallory,
            ..m.clone()
        };
        assert_eq!(
            db.store_received(&[stolen], 12).expect("conflict"),
            vec![ReceiveOutcome::IdConflict]
        );
        assert_eq!(db.inbox_count().expect("count"), 1);
        let view = db.message(&m.id.to_string()[..8]).expect("by prefix");
        assert_eq!(view.body, "hello there");
        assert_eq!(view.subject.as_deref(), Some("s"));
        assert_eq!(view.from, alice.to_string());
        let other = received(alice, "not stored");
        let known = db
            .known_received(&[m.id.to_string(), other.id.to_string()])
            .expect("known");
        assert_eq!(known, HashSet::from([m.id.to_string()]));
    }

    #[test]
    fn the_preview_is_the_body_on_one_line_cut_short() {
        let reference = |body: &str| {
            let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut chars = one_line.chars();
            let mut out: String = chars.by_ref().take(PREVIEW_CHARS).collect();
            if chars.next().is_some() {
                out.push('…');
            }
            out
        };
        let p = PREVIEW_CHARS;
        let cases = [
            String::new(),
            "  \n ".into(),
            "  lead and trail  \n".into(),
            "a\n\n b\tc".into(),
            "x".repeat(p),
            "x".repeat(p + 1),
            format!("{} y", "x".repeat(p - 1)),
            format!("{} y", "x".repeat(p)),
            format!("{}   ", "x".repeat(p)),
            format!("{} y", "é".repeat(p - 2)),
            "word ".repeat(200),
        ];
        for body in &cases {
            assert_eq!(preview(body), reference(body), "{body:?}");
        }
    }

    #[test]
    fn list_previews_and_limits() {
        let (_dir, mut db, _keys) = temp_db();
        let alice = Keys::generate().peer_id();
        let long = "word ".repeat(40);
        db.store_received(
            &[received(alice, "first\nline"), received(alice, &long)],
            10,
        )
        .expect("store");
        let all = db.inbox(&InboxQuery::default()).expect("list");
        assert_eq!(all.len(), 2);
        assert!(all.iter().any(|i| i.preview == "first line"));
        assert!(all.iter().any(|i| i.preview.ends_with('…') && i.preview.chars().count() == PREVIEW_CHARS + 1));
        assert_eq!(
            db.inbox(&InboxQuery {
                limit: Some(1),
                ..Default::default()
            })
            .expect("limited")
            .len(),
            1
        );
        assert!(matches!(
            db.inbox(&InboxQuery {
                after: Some("0000".into()),
                ..Default::default()
            }),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(db.message("zz"), Err(StoreError::BadId(_))));
        assert!(matches!(db.message("zzzz"), Err(StoreError::BadId(_))));
        assert!(matches!(
            db.message("0000"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn pages_continue_after_a_cursor_and_miss_nothing_that_arrives_between() {
        let (_dir, mut db, _keys) = temp_db();
        let alice = Keys::generate().peer_id();
        // Five messages in one instant, so the order falls back to arrival (rowid).
        let first: Vec<Received> = (0..5).map(|i| received(alice, &format!("m{i}"))).collect();
        db.store_received(&first, 10).expect("store");
        let page1 = db
            .inbox(&InboxQuery {
                limit: Some(2),
                ..Default::default()
            })
            .expect("page 1");
        // One arrives between pages: it is newer, so it belongs before the cursor.
        db.store_received(&[received(alice, "late")], 20)
            .expect("store");
        let mut seen: Vec<String> = page1.iter().map(|i| i.preview.clone()).collect();
        let mut after = page1.last().map(|i| i.id.clone());
        for _ in 0..10 {
            let page = db
                .inbox(&InboxQuery {
                    limit: Some(2),
                    after: after.clone(),
                    ..Default::default()
                })
                .expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().map(|i| i.id.clone());
            seen.extend(page.into_iter().map(|i| i.preview));
        }
        assert_eq!(seen, ["m4", "m3", "m2", "m1", "m0"]);
    }
}
