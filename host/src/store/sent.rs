//! The sent history: what the owner sent, kept readable on this side and sealed at rest like the
//! inbox (subject and body under a data key, the key id on the row, so a rekey moves them and a
//! backup holds them).
//!
//! A row is written in the transaction that queues the message, under the outbox row's id; the
//! outbox row says how its delivery goes. `sent rm` deletes the row and `sent redact` scrubs its
//! text (each then checkpoints the WAL, with `secure_delete` on), neither while the message is
//! still on its way: cancel it first. Messages queued in bulk (benchmarks) keep no history.

use libp2p::PeerId;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::inbox::{Names, preview};
use super::outbox::OutboxState;
use super::{Db, StoreError, format_time};
use crate::envelope::Payload;
use crate::keys::at_rest::AtRest;

/// The seal domain of a sent message's body.
pub(super) const TABLE: &str = "sent";
/// The seal domain of a sent message's subject.
pub(super) const SUBJECT: &str = "sent.subject";

/// One row of `pigeon sent list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentItem {
    /// Message id (the outbox's).
    pub id: String,
    /// The recipient: contact name, or PeerId if the contact was removed.
    pub to: String,
    /// Recipient PeerId.
    pub to_peer_id: String,
    /// When it was sent (queued), RFC 3339.
    pub sent_at: String,
    /// Subject, if any.
    pub subject: Option<String>,
    /// The start of the body, on one line.
    pub preview: String,
    /// Delivery state: queued, waiting (for a one-time key), delivered or failed.
    pub state: OutboxState,
    /// When the recipient acked it (RFC 3339).
    pub delivered_at: Option<String>,
    /// Whether it went sealed to a one-time key of the recipient.
    pub forward_secret: bool,
    /// How many files went with it.
    pub attachments: u32,
    /// When its text was redacted (RFC 3339).
    pub redacted_at: Option<String>,
}

/// A whole sent message, for `pigeon sent read`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentView {
    /// Everything `sent list` says of it.
    #[serde(flatten)]
    pub item: SentItem,
    /// The text (empty once redacted).
    pub body: String,
    /// Why delivery failed, or the last error of a retry.
    pub last_error: Option<String>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The files that went with it.
    pub files: Vec<SentFile>,
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentFile {
    /// Its name, made safe.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Whether the recipient said it holds all of it (the sealed copy here is then dropped).
    pub transferred: bool,
}

/// What `sent list` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentQuery {
    /// At most this many, newest first.
    pub limit: Option<u32>,
    /// Only messages to this peer.
    #[serde(default)]
    pub to: Option<String>,
}

const COLUMNS: &str = "s.id, s.peer_id, s.sent_at, s.subject, s.body, s.key_id, s.redacted_at,
    o.state, o.delivered_at, IFNULL(o.forward_secret, 0),
    (SELECT COUNT(*) FROM attachments a WHERE a.message_id = s.id AND a.direction = 'out'),
    o.last_error, IFNULL(o.attempts, 0)";

/// Records `payload`, sent to `peer`, in the history (inside the caller's transaction).
pub(super) fn insert_sent(
    tx: &Transaction<'_>,
    at_rest: &AtRest,
    peer: &PeerId,
    payload: &Payload,
) -> Result<(), StoreError> {
    let id = payload.id.to_string();
    let (key_id, body) = at_rest.seal(TABLE, &id, payload.body.as_bytes());
    let subject = payload
        .subject
        .as_ref()
        .map(|s| {
            at_rest
                .seal_under(key_id, SUBJECT, &id, s.as_bytes())
                .ok_or(StoreError::Corrupt("data key retired while sealing"))
        })
        .transpose()?;
    tx.prepare_cached(
        "INSERT INTO sent (id, peer_id, sent_at, subject, body, key_id, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT value + 1 FROM counters WHERE name = 'inbox_seq'))",
    )?
    .execute(params![
        id,
        peer.to_string(),
        super::clamp_time(payload.sent_at_ms) as i64,
        subject,
        body,
        key_id
    ])?;
    tx.prepare_cached("UPDATE counters SET value = value + 1 WHERE name = 'inbox_seq'")?
        .execute([])?;
    Ok(())
}

impl Db {
    /// The sent history, newest first.
    pub fn sent(&self, query: &SentQuery) -> Result<Vec<SentItem>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM sent s LEFT JOIN outbox o ON o.id = s.id
             WHERE (?2 IS NULL OR s.peer_id = ?2)
             ORDER BY s.sent_at DESC, s.rowid DESC LIMIT ?1"
        ))?;
        let limit = query.limit.map_or(-1, i64::from);
        let mut rows = stmt.query(params![limit, query.to])?;
        let mut names = Names::default();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(self.sent_row(r, &mut names)?.item);
        }
        Ok(out)
    }

    /// Sent message `id` (or a unique prefix), whole.
    pub fn sent_message(&self, id: &str) -> Result<SentView, StoreError> {
        let id = self.resolve_sent_id(id)?;
        let mut view = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sent s LEFT JOIN outbox o ON o.id = s.id WHERE s.id = ?1"
            ))?
            .query_row([&id], |r| Ok(self.sent_row(r, &mut Names::default())))??;
        if view.item.redacted_at.is_none() {
            view.files = self.sent_files(&id)?;
        }
        Ok(view)
    }

    /// Sent message `seq` (its place in the search index's order), if it is in the history.
    pub(super) fn sent_by_seq(&self, seq: u64) -> Result<Option<SentView>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM sent s LEFT JOIN outbox o ON o.id = s.id WHERE s.seq = ?1"
            ))?
            .query_row(
                [seq as i64],
                |r| Ok(self.sent_row(r, &mut Names::default())),
            )
            .optional()?
            .transpose()
    }

    /// Deletes sent message `id` (or a unique prefix) from the history, with its outbox record,
    /// leaving no older copy in the database files; refused while it is still on its way.
    /// Returns its full id and the ids of its files, whose sealed copies the caller removes.
    pub fn remove_sent(&mut self, id: &str) -> Result<(String, Vec<String>), StoreError> {
        let id = self.resolve_sent_id(id)?;
        let tx = self.conn.transaction()?;
        settled(&tx, &id)?;
        let files = super::attachments::delete_of_message(&tx, &id, "out")?;
        purge_from_search(&tx, &id)?;
        tx.execute("DELETE FROM sent WHERE id = ?1", [&id])?;
        tx.execute("DELETE FROM outbox WHERE id = ?1", [&id])?;
        tx.commit()?;
        self.checkpoint()?;
        self.wake_search();
        Ok((id, files))
    }

    /// Scrubs the text and subject of sent message `id` (or a unique prefix), and the names and
    /// keys of its files, keeping its id, recipient, times and delivery record; refused while it
    /// is still on its way. Returns its full id and the ids of its files, as
    /// [`Db::remove_sent`] does.
    pub fn redact_sent(&mut self, id: &str, now: u64) -> Result<(String, Vec<String>), StoreError> {
        let id = self.resolve_sent_id(id)?;
        let tx = self.conn.transaction()?;
        settled(&tx, &id)?;
        tx.execute(
            "UPDATE sent SET body = X'', subject = NULL, redacted_at = COALESCE(redacted_at, ?2)
             WHERE id = ?1",
            params![id, now as i64],
        )?;
        let files = super::attachments::delete_of_message(&tx, &id, "out")?;
        purge_from_search(&tx, &id)?;
        tx.commit()?;
        self.checkpoint()?;
        self.wake_search();
        Ok((id, files))
    }

    /// How many messages the sent history holds.
    pub fn sent_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM sent", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn resolve_sent_id(&self, prefix: &str) -> Result<String, StoreError> {
        self.resolve_prefix("sent", "sent message", prefix)
    }

    /// A row whose columns are [`COLUMNS`], opened.
    fn sent_row(&self, r: &rusqlite::Row<'_>, names: &mut Names) -> Result<SentView, StoreError> {
        let id: String = r.get(0)?;
        let peer: String = r.get(1)?;
        let peer_id: PeerId = peer
            .parse()
            .map_err(|_| StoreError::Corrupt("sent message recipient"))?;
        let key_id: u32 = r.get(5)?;
        let redacted_at: Option<i64> = r.get(6)?;
        let redacted = redacted_at.is_some();
        let body = if redacted {
            String::new()
        } else {
            self.open_text(TABLE, &id, key_id, &r.get::<_, Vec<u8>>(4)?)?
        };
        let subject = r
            .get::<_, Option<Vec<u8>>>(3)?
            .map(|b| self.open_text(SUBJECT, &id, key_id, &b))
            .transpose()?;
        // A row whose outbox record is gone (it cannot be, short of damage) shows as failed.
        let state = match r.get::<_, Option<String>>(7)? {
            Some(s) => OutboxState::parse(&s)?,
            None => OutboxState::Failed,
        };
        let item = SentItem {
            to: names.of(self, &peer_id)?.unwrap_or_else(|| peer.clone()),
            to_peer_id: peer,
            sent_at: format_time(r.get::<_, i64>(2)? as u64),
            subject,
            preview: if redacted {
                "(redacted)".to_owned()
            } else {
                preview(&body)
            },
            state,
            delivered_at: r.get::<_, Option<i64>>(8)?.map(|t| format_time(t as u64)),
            forward_secret: r.get(9)?,
            attachments: r.get(10)?,
            redacted_at: redacted_at.map(|t| format_time(t as u64)),
            id,
        };
        Ok(SentView {
            item,
            body,
            last_error: r.get(11)?,
            attempts: r.get(12)?,
            files: Vec::new(),
        })
    }

    pub(super) fn sent_files(&self, id: &str) -> Result<Vec<SentFile>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, ref, key_id, released FROM attachments
             WHERE message_id = ?1 AND direction = 'out' ORDER BY rowid",
        )?;
        let mut rows = stmt.query([id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let aid: String = r.get(0)?;
            let a = self.attachment_ref(&aid, &r.get::<_, Vec<u8>>(1)?, r.get(2)?)?;
            out.push(SentFile {
                name: crate::attachments::sanitize_name(&a.name),
                size: a.size,
                transferred: r.get(3)?,
            });
        }
        Ok(out)
    }
}

/// Records (inside the caller's transaction) that the search index must let go of sent message
/// `id` (it goes back in with its metadata only if it was redacted).
fn purge_from_search(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO search_purge (seq) SELECT seq FROM sent WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

/// Refuses (a conflict) when message `id` is still on its way: queued, waiting for a one-time
/// key, or with a file the recipient has not said it holds.
fn settled(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    let state: Option<String> = tx
        .query_row("SELECT state FROM outbox WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    let on_its_way = matches!(state.as_deref(), Some("queued" | "waiting"));
    let sending: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM attachments
                        WHERE message_id = ?1 AND direction = 'out' AND released = 0)",
        [id],
        |r| r.get(0),
    )?;
    if on_its_way || (sending && state.as_deref() == Some("delivered")) {
        return Err(StoreError::Conflict(format!(
            "message {id} is still on its way; wait for it, or cancel it first (pigeon outbox cancel {id})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ForwardSecrecy;
    use crate::envelope::MessageId;
    use crate::keys::Keys;
    use crate::store::test_support::temp_db;

    /// Alice's database with bob as a contact, and bob's keys.
    fn alice_and_bob() -> (tempfile::TempDir, Db, std::sync::Arc<Keys>, Keys) {
        let (dir, mut db, alice) = temp_db();
        let bob = Keys::generate();
        db.add_contact("bob", &bob.address(), &[]).expect("contact");
        (dir, db, alice, bob)
    }

    /// Queues a message to bob as `pigeon send` does; returns its id.
    fn send(db: &mut Db, alice: &Keys, bob: &Keys, subject: Option<&str>, body: &str) -> String {
        let p = Payload {
            id: MessageId::random(),
            sent_at_ms: 1_700_000_000_000,
            subject: subject.map(str::to_owned),
            body: body.to_owned(),
            attachments: vec![],
        };
        let env = crate::envelope::seal(alice, &bob.peer_id(), bob.address().enc_public(), &p)
            .expect("seal");
        db.enqueue_with_policy(
            &p.id,
            &bob.peer_id(),
            &p,
            &env,
            &[],
            20,
            ForwardSecrecy::Off,
        )
        .expect("queue");
        p.id.to_string()
    }

    #[test]
    fn what_is_sent_is_kept_sealed_with_its_delivery_state() {
        let (dir, mut db, alice, bob) = alice_and_bob();
        let first = send(&mut db, &alice, &bob, Some("plans"), "sentword-one for bob");
        let second = send(&mut db, &alice, &bob, None, "sentword-two\nsecond line");

        let listed = db.sent(&SentQuery::default()).expect("list");
        let ids: Vec<_> = listed.iter().map(|i| i.id.clone()).collect();
        assert_eq!(ids, [second.clone(), first.clone()], "newest first");
        assert!(listed.iter().all(|i| i.state == OutboxState::Queued));
        assert_eq!(listed[0].to, "bob");
        assert_eq!(listed[0].preview, "sentword-two second line");
        assert_eq!(listed[1].subject.as_deref(), Some("plans"));

        let id = crate::store::outbox::parse_id(&first).expect("id");
        db.mark_delivered(&[id], 30).expect("delivered");
        let read = db.sent_message(&first[..8]).expect("read");
        assert_eq!(read.item.state, OutboxState::Delivered);
        assert!(read.item.delivered_at.is_some());
        assert_eq!(read.body, "sentword-one for bob");

        // Only to one contact, and a limit.
        let carol = Keys::generate();
        db.add_contact("carol", &carol.address(), &[])
            .expect("contact");
        send(&mut db, &alice, &carol, None, "to carol");
        let to_bob = SentQuery {
            limit: None,
            to: Some(bob.peer_id().to_string()),
        };
        assert_eq!(db.sent(&to_bob).expect("list").len(), 2);
        let one = SentQuery {
            limit: Some(1),
            to: None,
        };
        assert_eq!(db.sent(&one).expect("list")[0].to, "carol");
        assert_eq!(db.sent_count().expect("count"), 3);

        // Nothing of it in clear in the database files.
        db.checkpoint().expect("checkpoint");
        for entry in std::fs::read_dir(dir.path()).expect("ls") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            for word in [&b"sentword"[..], b"plans"] {
                assert!(
                    !bytes.windows(word.len()).any(|w| w == word),
                    "{} in clear",
                    String::from_utf8_lossy(word)
                );
            }
        }
    }

    #[test]
    fn rm_and_redact_wait_for_delivery_and_leave_nothing() {
        let (dir, mut db, alice, bob) = alice_and_bob();
        let gone = send(
            &mut db,
            &alice,
            &bob,
            Some("secret subject"),
            "scrubword text",
        );
        let kept = send(&mut db, &alice, &bob, None, "redactword text");

        // On its way: refused, and nothing changes.
        let refused = db.redact_sent(&kept, 40).expect_err("queued");
        assert!(matches!(refused, StoreError::Conflict(_)), "{refused}");
        assert!(db.remove_sent(&gone).is_err());
        assert_eq!(
            db.sent_message(&kept).expect("read").body,
            "redactword text"
        );

        let ids: Vec<MessageId> = [&gone, &kept]
            .iter()
            .map(|i| crate::store::outbox::parse_id(i).expect("id"))
            .collect();
        db.mark_delivered(&ids, 50).expect("delivered");
        db.remove_sent(&gone).expect("rm");
        assert!(matches!(
            db.sent_message(&gone),
            Err(StoreError::NotFound { .. })
        ));
        assert!(db.outbox().expect("outbox").iter().all(|e| e.id != gone));
        db.redact_sent(&kept, 60).expect("redact");
        let read = db.sent_message(&kept).expect("read");
        assert_eq!(read.body, "");
        assert_eq!(read.item.preview, "(redacted)");
        assert!(read.item.redacted_at.is_some());
        assert_eq!(read.item.state, OutboxState::Delivered, "the record stays");

        // secure_delete and the checkpoint: no older copy in the files either.
        for entry in std::fs::read_dir(dir.path()).expect("ls") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            for word in [&b"scrubword"[..], b"redactword", b"secret subject"] {
                assert!(!bytes.windows(word.len()).any(|w| w == word));
            }
        }
        // A prefix that names nothing, or is not an id.
        assert!(matches!(
            db.sent_message("abcdabcd"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(db.sent_message("zz"), Err(StoreError::BadId(_))));
    }

    #[test]
    fn a_rekey_moves_the_history_and_an_audit_opens_it() {
        let (_dir, mut db, alice, bob) = alice_and_bob();
        let plain = send(&mut db, &alice, &bob, Some("subject"), "kept across keys");
        let scrubbed = send(&mut db, &alice, &bob, None, "scrubbed");
        let ids: Vec<MessageId> = [&plain, &scrubbed]
            .iter()
            .map(|i| crate::store::outbox::parse_id(i).expect("id"))
            .collect();
        db.mark_delivered(&ids, 50).expect("delivered");
        db.redact_sent(&scrubbed, 60).expect("redact");
        let old = db.keys.at_rest().current();

        let keys = db.keys.clone();
        keys.at_rest().install(keys.at_rest().next_key());
        let mut cursor = crate::store::RekeyCursor::default();
        while db.rekey_batch(1, &mut cursor).expect("rekey") > 0 {}
        let current = keys.at_rest().current();
        assert!(!db.rekey_left(current).expect("left"));
        assert!(!db.key_counts().expect("counts").contains_key(&old));
        keys.at_rest().retire_old();
        assert_eq!(
            db.sent_message(&plain).expect("read").body,
            "kept across keys"
        );
        let audit = crate::store::audit(&db.conn, keys.at_rest())
            .expect("audit")
            .expect("every sealed value opens");
        assert_eq!(audit.sent, 2);
    }
}
