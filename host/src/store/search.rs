//! What the search index reads from the inbox, and the hooks that keep it following.
//!
//! The index holds the highest `seq` it has taken in and asks for the messages after it
//! ([`Db::search_feed`]); deletions and redactions leave a row in `search_purge` in their own
//! transaction, so the index lets go of them even after a crash ([`Db::search_purges`]). State
//! that changes (read, archived, labels) is not in the index: the store updates the in-memory
//! [`States`] after each commit that changes it.

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use serde::{Deserialize, Serialize};

use super::{Db, InboxItem, SentItem, StoreError};
use crate::inbox::search::{MsgState, States};

/// How the store tells the search index about changes.
pub struct SearchLink {
    /// Called after a commit that stored, deleted or redacted messages.
    pub wake: Box<dyn Fn() + Send>,
    /// The state table it updates.
    pub states: Arc<States>,
}

/// The table a message is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The inbox.
    Received,
    /// The sent history.
    Sent,
}

/// A message as the index takes it in.
#[derive(Debug, Clone, Default)]
pub struct FeedDoc {
    /// Its sequence number.
    pub seq: u64,
    /// Sender PeerId (this node's own for a message it sent).
    pub sender: String,
    /// For a message this node sent: the recipient's PeerId.
    pub to: Option<String>,
    /// When it arrived, or was sent (ms).
    pub received_at: u64,
    /// Subject ("" when none).
    pub subject: String,
    /// The text ("" once redacted).
    pub body: String,
    /// Its attachments' names.
    pub attachments: Vec<String>,
    /// Whether it was redacted (then only its metadata is indexed).
    pub redacted: bool,
}

/// A hit's listing fields: those of `inbox list` for a received message, of `sent list` for a
/// sent one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Listed {
    /// A received message.
    Received(InboxItem),
    /// A sent message.
    Sent(SentItem),
}

impl Listed {
    /// The message's id.
    pub fn id(&self) -> &str {
        match self {
            Listed::Received(i) => &i.id,
            Listed::Sent(i) => &i.id,
        }
    }
}

/// A search hit as the store fills it in.
#[derive(Debug, Clone)]
pub struct HitRow {
    /// The listing fields.
    pub item: Listed,
    /// The subject, for snippets.
    pub subject: String,
    /// The text, for snippets.
    pub body: String,
    /// Whether it was redacted.
    pub redacted: bool,
}

impl Db {
    /// Lets the search index follow the inbox from now on; returns the highest seq.
    pub fn attach_search(&mut self, link: SearchLink) -> Result<u64, StoreError> {
        self.search = Some(link);
        self.max_seq()
    }

    /// The highest seq given so far (0 for none).
    pub fn max_seq(&self) -> Result<u64, StoreError> {
        let v: i64 = self.conn.query_row(
            "SELECT value FROM counters WHERE name = 'inbox_seq'",
            [],
            |r| r.get(0),
        )?;
        Ok(v as u64)
    }

    /// Tells the index (if one follows) that messages were stored or went.
    pub(super) fn wake_search(&self) {
        if let Some(link) = &self.search {
            (link.wake)();
        }
    }

    /// Re-reads the state of messages `ids` into the state table, if one is loaded.
    pub(super) fn refresh_states(&self, ids: &[&str]) -> Result<(), StoreError> {
        let Some(link) = &self.search else {
            return Ok(());
        };
        if !link.states.loaded() {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, read, archived FROM inbox WHERE id = ?1")?;
        for id in ids {
            let row: Option<(i64, bool, bool)> = stmt
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            if let Some((seq, read, archived)) = row {
                link.states.set(&MsgState {
                    seq: seq as u64,
                    read,
                    archived,
                    labels: self.labels_of(id)?,
                });
            }
        }
        Ok(())
    }

    /// Forgets message `seq` in the state table.
    pub(super) fn forget_state(&self, seq: u64) {
        if let Some(link) = &self.search {
            link.states.remove(seq);
        }
    }

    /// Loads every message's state into the linked table (on this thread, so no change made in
    /// between is lost).
    pub fn load_states(&self) -> Result<(), StoreError> {
        let Some(link) = &self.search else {
            return Ok(());
        };
        let mut all: Vec<MsgState> = self
            .conn
            .prepare("SELECT seq, read, archived FROM inbox ORDER BY seq")?
            .query_map([], |r| {
                Ok(MsgState {
                    seq: r.get::<_, i64>(0)? as u64,
                    read: r.get(1)?,
                    archived: r.get(2)?,
                    labels: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut labels = self.conn.prepare(
            "SELECT i.seq, l.label FROM labels l JOIN inbox i ON i.id = l.message_id ORDER BY i.seq",
        )?;
        let mut rows = labels.query([])?;
        let mut at = 0;
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(0)? as u64;
            while at < all.len() && all[at].seq < seq {
                at += 1;
            }
            if let Some(m) = all.get_mut(at).filter(|m| m.seq == seq) {
                m.labels.push(r.get(1)?);
            }
        }
        link.states.load(all);
        Ok(())
    }

    /// Up to `limit` messages, received and sent, with a seq above `after`, in seq order, opened
    /// for indexing.
    pub fn search_feed(&self, after: u64, limit: u32) -> Result<Vec<FeedDoc>, StoreError> {
        // The `limit` lowest seqs of both tables (seqs only: nothing opened yet), then the rows up
        // to the last of them from each, opened.
        let mut seqs: Vec<i64> = Vec::new();
        for table in ["inbox", "sent"] {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT seq FROM {table} WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let found = stmt.query_map(params![after as i64, limit], |r| r.get(0))?;
            for seq in found {
                seqs.push(seq?);
            }
        }
        seqs.sort_unstable();
        let Some(&upto) = seqs.get((limit as usize).min(seqs.len()).saturating_sub(1)) else {
            return Ok(Vec::new());
        };
        let range = "seq > ?1 AND seq <= ?2 ORDER BY seq";
        let mut out = self.feed_rows(Side::Received, range, after, upto as u64)?;
        out.extend(self.feed_rows(Side::Sent, range, after, upto as u64)?);
        out.sort_by_key(|d| d.seq);
        Ok(out)
    }

    /// The rows of one side `filter` picks (`?1` and `?2` the two values given), opened for
    /// indexing.
    fn feed_rows(
        &self,
        side: Side,
        filter: &str,
        first: u64,
        second: u64,
    ) -> Result<Vec<FeedDoc>, StoreError> {
        let sql = match side {
            Side::Received => format!(
                "SELECT seq, id, sender, received_at, subject, body, key_id, redacted_at,
                        EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = i.id AND a.direction = 'in'),
                        NULL
                 FROM inbox i WHERE {filter}"
            ),
            Side::Sent => format!(
                "SELECT seq, id, NULL, sent_at, subject, body, key_id, redacted_at,
                        EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = s.id AND a.direction = 'out'),
                        peer_id
                 FROM sent s WHERE {filter}"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![first as i64, second as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(self.feed_doc(side, r)?);
        }
        Ok(out)
    }

    /// A row of [`Db::feed_rows`] as the index takes it in.
    fn feed_doc(&self, side: Side, r: &rusqlite::Row<'_>) -> Result<FeedDoc, StoreError> {
        let seq = r.get::<_, i64>(0)? as u64;
        let id: String = r.get(1)?;
        let key_id: u32 = r.get(6)?;
        let redacted = r.get::<_, Option<i64>>(7)?.is_some();
        let has_attachments = r.get::<_, bool>(8)? && !redacted;
        let (body_domain, subject_domain) = match side {
            Side::Received => (super::inbox::TABLE, super::inbox::SUBJECT),
            Side::Sent => (super::sent::TABLE, super::sent::SUBJECT),
        };
        let subject = match r.get::<_, Option<Vec<u8>>>(4)? {
            Some(b) => self.open_text(subject_domain, &id, key_id, &b)?,
            None => String::new(),
        };
        let body = if redacted {
            String::new()
        } else {
            self.open_text(body_domain, &id, key_id, &r.get::<_, Vec<u8>>(5)?)?
        };
        let attachments = match (side, has_attachments) {
            (_, false) => Vec::new(),
            (Side::Received, true) => self
                .attachment_views(&id)?
                .into_iter()
                .map(|a| a.name)
                .collect(),
            (Side::Sent, true) => self.sent_files(&id)?.into_iter().map(|f| f.name).collect(),
        };
        Ok(FeedDoc {
            seq,
            sender: match side {
                Side::Received => r.get(2)?,
                Side::Sent => self.keys.peer_id().to_string(),
            },
            to: r.get(9)?,
            received_at: r.get::<_, i64>(3)? as u64,
            subject,
            body,
            attachments,
            redacted,
        })
    }

    /// The messages the index must let go of: each seq, with what is left of it to index again
    /// (a redacted message's metadata), or `None` if it is gone.
    pub fn search_purges(&self) -> Result<Vec<(u64, Option<FeedDoc>)>, StoreError> {
        let seqs: Vec<i64> = self
            .conn
            .prepare("SELECT seq FROM search_purge ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let seq = seq as u64;
            let one = "seq >= ?1 AND seq <= ?2";
            let mut doc = self.feed_rows(Side::Received, one, seq, seq)?;
            if doc.is_empty() {
                doc = self.feed_rows(Side::Sent, one, seq, seq)?;
            }
            out.push((seq, doc.pop()));
        }
        Ok(out)
    }

    /// The index has let go of `seqs`.
    pub fn search_purged(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM search_purge WHERE seq = ?1")?;
            for s in seqs {
                del.execute([*s as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The listing fields and texts of the messages `seqs`, in that order, each with its seq;
    /// those that are gone are left out.
    pub fn search_hits(&self, seqs: &[u64]) -> Result<Vec<(u64, HitRow)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, sender, sender_seal, received_at, subject, body, key_id, read, archived,
                    redacted_at, forward_secret
             FROM inbox WHERE seq = ?1",
        )?;
        let mut names = super::inbox::Names::default();
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let mut rows = stmt.query([seq as i64])?;
            let row = match rows.next()? {
                Some(r) => {
                    let redacted = r.get::<_, Option<i64>>(9)?.is_some();
                    let (item, body) = self.list_item(r, &mut names)?;
                    HitRow {
                        subject: item.subject.clone().unwrap_or_default(),
                        item: Listed::Received(item),
                        body,
                        redacted,
                    }
                }
                None => match self.sent_by_seq(seq)? {
                    Some(view) => HitRow {
                        subject: view.item.subject.clone().unwrap_or_default(),
                        redacted: view.item.redacted_at.is_some(),
                        body: view.body,
                        item: Listed::Sent(view.item),
                    },
                    None => continue,
                },
            };
            out.push((seq, row));
        }
        Ok(out)
    }

    /// How many messages with a seq up to `mark` the inbox holds (what an index caught up to
    /// `mark` must hold).
    pub fn search_census(&self, mark: u64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM inbox WHERE seq <= ?1)
                  + (SELECT COUNT(*) FROM sent WHERE seq <= ?1)",
            [mark as i64],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}
