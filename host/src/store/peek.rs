//! What the database tells without the passphrase: the columns kept in clear (contact names,
//! message ids, senders, times, labels, address health), read through a read-only connection of
//! its own. For shell completion, which must never prompt and may run while a node writes (WAL
//! readers do not block the writer), and for `status` and `peers` with no node running. Nothing
//! sealed is read here.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// A message as completion shows it without the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glimpse {
    /// Message id.
    pub id: String,
    /// The contact's name, or the PeerId when it is not a contact.
    pub peer: String,
    /// Milliseconds since the Unix epoch: when it arrived (inbox) or was queued (outbox).
    pub at_ms: i64,
}

/// A read-only look at a home's database.
pub struct Peek(Connection);

impl Peek {
    /// Opens the database at `path` read-only; it must exist (nothing is created).
    pub fn open(path: &Path) -> Result<Peek, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A node's checkpoint holds the lock for moments; completion gives up rather than wait.
        conn.busy_timeout(Duration::from_millis(250))?;
        Ok(Peek(conn))
    }

    /// Every contact's name, sorted.
    pub fn contact_names(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare("SELECT name FROM contacts ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    /// The newest `limit` received messages, newest first.
    pub fn inbox(&self, limit: u32) -> Result<Vec<Glimpse>, StoreError> {
        self.glimpses(
            "SELECT i.id, COALESCE(c.name, i.sender), i.received_at FROM inbox i
             LEFT JOIN contacts c ON c.peer_id = i.sender
             ORDER BY i.received_at DESC, i.id LIMIT ?1",
            limit,
        )
    }

    /// The newest `limit` messages still to deliver (queued, waiting or failed: what `outbox
    /// retry` and `outbox cancel` take), newest first.
    pub fn undelivered(&self, limit: u32) -> Result<Vec<Glimpse>, StoreError> {
        self.glimpses(
            "SELECT o.id, COALESCE(c.name, o.peer_id), o.created_at FROM outbox o
             LEFT JOIN contacts c ON c.peer_id = o.peer_id
             WHERE o.state IN ('queued', 'waiting', 'failed')
             ORDER BY o.created_at DESC, o.id LIMIT ?1",
            limit,
        )
    }

    /// The newest `limit` messages of the sent history (what `sent read|rm|redact` take), newest
    /// first.
    pub fn sent(&self, limit: u32) -> Result<Vec<Glimpse>, StoreError> {
        self.glimpses(
            "SELECT s.id, COALESCE(c.name, s.peer_id), s.sent_at FROM sent s
             LEFT JOIN contacts c ON c.peer_id = s.peer_id
             ORDER BY s.sent_at DESC, s.id LIMIT ?1",
            limit,
        )
    }

    /// Every known peer and the health of its addresses (what `pigeon peers` shows when no node
    /// runs: nothing is connected then).
    pub fn peers_health(&self, now: u64) -> Result<Vec<super::PeerHealth>, StoreError> {
        super::health::peers_health(&self.0, now)
    }

    /// Outbox counts by state (what `pigeon status` shows).
    pub fn outbox_counts(&self) -> Result<super::OutboxCounts, StoreError> {
        super::outbox::outbox_counts(&self.0)
    }

    /// Messages in the inbox.
    pub fn inbox_count(&self) -> Result<u64, StoreError> {
        super::inbox::inbox_count(&self.0)
    }

    /// Every label in use on a message or in a rule, sorted.
    pub fn labels(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .0
            .prepare("SELECT label FROM labels UNION SELECT label FROM rules ORDER BY 1")?;
        let labels = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(labels)
    }

    /// What `PRAGMA integrity_check` finds (nothing when every page is sound; at most 20 lines).
    pub fn integrity(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare("PRAGMA integrity_check(20)")?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lines.into_iter().filter(|l| l != "ok").collect())
    }

    /// The schema version, and whether this pigeon knows it.
    pub fn schema_version(&self) -> Result<(usize, bool), StoreError> {
        super::audit::schema_version(&self.0)
    }

    /// Every attachment's id (hex), as its file is named.
    pub fn attachment_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare("SELECT id FROM attachments")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Attachments whose message is in neither the inbox nor the outbox.
    pub fn stranded_transfers(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare(
            "SELECT a.id FROM attachments a
             WHERE NOT EXISTS (SELECT 1 FROM inbox i WHERE i.id = a.message_id)
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id = a.message_id)
             ORDER BY a.id LIMIT 20",
        )?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Opens every sealed value under `at_rest` (see [`super::audit`]).
    pub fn audit(
        &self,
        at_rest: &crate::keys::at_rest::AtRest,
    ) -> Result<Result<super::Audit, super::Unopened>, StoreError> {
        super::audit(&self.0, at_rest)
    }

    fn glimpses(&self, sql: &str, limit: u32) -> Result<Vec<Glimpse>, StoreError> {
        let mut stmt = self.0.prepare(sql)?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(Glimpse {
                    id: r.get(0)?,
                    peer: r.get(1)?,
                    at_ms: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use crate::store::test_support::temp_db;

    #[test]
    fn names_and_labels_are_read_without_keys_and_nothing_is_created() {
        let (dir, mut db, _keys) = temp_db();
        let (bob, alice) = (Keys::generate(), Keys::generate());
        db.add_contact("bob", &bob.address(), &[]).expect("add");
        db.add_contact("alice", &alice.address(), &[]).expect("add");
        db.add_rule(&bob.peer_id().to_string(), "work")
            .expect("rule");
        let peek = Peek::open(&dir.path().join("pigeon.db")).expect("peek");
        assert_eq!(peek.contact_names().expect("names"), ["alice", "bob"]);
        assert_eq!(peek.labels().expect("labels"), ["work"]);
        assert!(peek.inbox(10).expect("inbox").is_empty());
        assert!(peek.undelivered(10).expect("outbox").is_empty());
        assert_eq!(peek.inbox_count().expect("count"), 0);
        assert_eq!(peek.outbox_counts().expect("counts").queued, 0);
        let missing = dir.path().join("none.db");
        assert!(Peek::open(&missing).is_err());
        assert!(!missing.exists(), "nothing created");
    }
}
