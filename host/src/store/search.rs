//! What the search index reads from the inbox, and the hooks that keep it following.
//!
//! The index holds the highest `seq` it has taken in and asks for the messages after it
//! ([`Db::search_feed`]); deletions and redactions leave a row in `search_purge` in their own
//! transaction, so the index lets go of them even after a crash ([`Db::search_purges`]). State
//! that changes (read, archived, labels) is not in the index: the store updates the in-memory
//! [`States`] after each commit that changes it.

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::{Db, InboxItem, StoreError};
use crate::inbox::search::{MsgState, States};

/// How the store tells the search index about changes.
pub struct SearchLink {
    /// Called after a commit that stored, deleted or redacted messages.
    pub wake: Box<dyn Fn() + Send>,
    /// The state table it updates.
    pub states: Arc<States>,
}

/// A message as the index takes it in.
#[derive(Debug, Clone, Default)]
pub struct FeedDoc {
    /// Its sequence number.
    pub seq: u64,
    /// Sender PeerId.
    pub sender: String,
    /// When it arrived (ms).
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

/// A search hit as the store fills it in.
#[derive(Debug, Clone)]
pub struct HitRow {
    /// The listing fields.
    pub item: InboxItem,
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

    /// Up to `limit` messages with a seq above `after`, in seq order, opened for indexing.
    pub fn search_feed(&self, after: u64, limit: u32) -> Result<Vec<FeedDoc>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, sender, received_at, subject, body, key_id, redacted_at,
                    EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = i.id AND a.direction = 'in')
             FROM inbox i WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![after as i64, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(0)? as u64;
            let id: String = r.get(1)?;
            out.push(self.feed_doc(seq, &id, r)?);
        }
        Ok(out)
    }

    fn feed_doc(&self, seq: u64, id: &str, r: &rusqlite::Row<'_>) -> Result<FeedDoc, StoreError> {
        let key_id: u32 = r.get(6)?;
        let redacted = r.get::<_, Option<i64>>(7)?.is_some();
        let has_attachments: bool = r.get(8)?;
        Ok(FeedDoc {
            seq,
            sender: r.get(2)?,
            received_at: r.get::<_, i64>(3)? as u64,
            subject: self
                .open_subject(id, key_id, r.get(4)?)?
                .unwrap_or_default(),
            body: self.body_of(id, key_id, &r.get::<_, Vec<u8>>(5)?, redacted)?,
            attachments: if has_attachments && !redacted {
                self.attachment_views(id)?
                    .into_iter()
                    .map(|a| a.name)
                    .collect()
            } else {
                Vec::new()
            },
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
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, sender, received_at, subject, body, key_id, redacted_at,
                    EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = i.id AND a.direction = 'in')
             FROM inbox i WHERE seq = ?1",
        )?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let mut rows = stmt.query([seq])?;
            let doc = match rows.next()? {
                Some(r) => {
                    let id: String = r.get(1)?;
                    Some(self.feed_doc(seq as u64, &id, r)?)
                }
                None => None,
            };
            out.push((seq as u64, doc));
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

    /// The listing fields and texts of the messages `seqs`, in that order; those that are gone
    /// are left out.
    pub fn search_hits(&self, seqs: &[u64]) -> Result<Vec<HitRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, sender, sender_seal, received_at, subject, body, key_id, read, archived,
                    redacted_at, forward_secret
             FROM inbox WHERE seq = ?1",
        )?;
        let mut names = super::inbox::Names::default();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let mut rows = stmt.query([*seq as i64])?;
            let Some(r) = rows.next()? else {
                continue;
            };
            let redacted = r.get::<_, Option<i64>>(9)?.is_some();
            let (item, body) = self.list_item(r, &mut names)?;
            out.push(HitRow {
                subject: item.subject.clone().unwrap_or_default(),
                item,
                body,
                redacted,
            });
        }
        Ok(out)
    }

    /// How many messages with a seq up to `mark` the inbox holds (what an index caught up to
    /// `mark` must hold).
    pub fn search_census(&self, mark: u64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM inbox WHERE seq <= ?1",
            [mark as i64],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}
