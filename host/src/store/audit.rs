//! Reading back everything sealed in a database without changing anything: every sealed value
//! opened under the key its row names, for `backup verify` and `restore`, which run it on the
//! database inside a backup (in memory, or the restored file before it is put in place).

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, params};

use super::StoreError;
use crate::attachments::AttachmentRef;
use crate::keys::at_rest::AtRest;
use zeroize::Zeroizing;

/// What a database holds, every sealed value in it having opened.
#[derive(Debug, Default)]
pub struct Audit {
    /// Contacts.
    pub contacts: u64,
    /// Inbox messages (redacted ones included: their row stays, scrubbed).
    pub messages: u64,
    /// Of those, redacted.
    pub redacted: u64,
    /// Outbox messages still queued.
    pub queued: u64,
    /// Messages in the sent history (redacted ones included).
    pub sent: u64,
    /// Sealed values opened.
    pub sealed: u64,
    /// Plaintext bytes they held.
    pub bytes: u64,
    /// Every attachment with a file to hold, by id (hex).
    pub attachments: BTreeMap<String, AuditedAttachment>,
}

/// One attachment the database says a file holds.
#[derive(Debug)]
pub struct AuditedAttachment {
    /// Its reference (name, size, content key, chunk hashes).
    pub reference: AttachmentRef,
    /// The chunks the file holds, verified when written: all of them for an outgoing attachment,
    /// those recorded so far for an incoming one.
    pub held: BTreeSet<u32>,
}

/// A sealed value that does not open: the table and row, for the error.
pub type Unopened = (String, String);

/// The schema version the database is at, and whether this pigeon knows it (a database from a
/// newer pigeon is not one to restore or to audit).
pub fn schema_version(conn: &Connection) -> Result<(usize, bool), StoreError> {
    let v: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok((v, v <= super::migrations::LATEST))
}

/// Opens every sealed value of `conn` under `at_rest`. `Ok(Err(..))` names the first one that
/// does not open.
pub fn audit(conn: &Connection, at_rest: &AtRest) -> Result<Result<Audit, Unopened>, StoreError> {
    match walk(conn, at_rest) {
        Ok(audit) => Ok(Ok(audit)),
        Err(Stop::Unopened(table, row)) => Ok(Err((table, row))),
        Err(Stop::Sql(e)) => Err(e.into()),
    }
}

/// Why a walk stopped.
enum Stop {
    Sql(rusqlite::Error),
    Unopened(String, String),
}

impl From<rusqlite::Error> for Stop {
    fn from(e: rusqlite::Error) -> Self {
        Stop::Sql(e)
    }
}

/// An inbox row: id, key id, body, subject, sender seal, whether redacted.
type InboxRow = (String, u32, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, bool);

struct Opener<'a> {
    at_rest: &'a AtRest,
    audit: Audit,
}

impl Opener<'_> {
    /// Opens one sealed value; a row whose key id or value is NULL holds none.
    fn open(
        &mut self,
        table: &str,
        row: &str,
        key_id: Option<u32>,
        blob: Option<&[u8]>,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Stop> {
        let (key_id, blob) = match (key_id, blob) {
            (Some(k), Some(b)) => (k, b),
            (_, None) => return Ok(None),
            // A value with no key to open it: damage, not something to trust unopened.
            (None, Some(_)) => return Err(Stop::Unopened(table.to_owned(), row.to_owned())),
        };
        let plain = self
            .at_rest
            .open(table, row, key_id, blob)
            .map(Zeroizing::new)
            .map_err(|_| Stop::Unopened(table.to_owned(), row.to_owned()))?;
        self.audit.sealed += 1;
        self.audit.bytes += plain.len() as u64;
        Ok(Some(plain))
    }
}

fn walk(conn: &Connection, at_rest: &AtRest) -> Result<Audit, Stop> {
    let mut o = Opener {
        at_rest,
        audit: Audit::default(),
    };

    let mut stmt = conn.prepare("SELECT peer_id, key_id, seal FROM contacts")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (peer, key_id, seal): (String, Option<u32>, Option<Vec<u8>>) =
            (r.get(0)?, r.get(1)?, r.get(2)?);
        o.audit.contacts += 1;
        o.open(super::contacts::TABLE, &peer, key_id, seal.as_deref())?;
    }

    let mut stmt = conn.prepare(
        "SELECT id, key_id, body, subject, sender_seal, redacted_at IS NOT NULL FROM inbox",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (id, key_id, body, subject, sender, redacted): InboxRow = (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        );
        o.audit.messages += 1;
        if redacted {
            // Scrubbed: nothing sealed is left in it.
            o.audit.redacted += 1;
            continue;
        }
        o.open(super::inbox::TABLE, &id, Some(key_id), Some(&body))?;
        o.open(super::inbox::SUBJECT, &id, Some(key_id), subject.as_deref())?;
        o.open(super::inbox::SENDER, &id, Some(key_id), sender.as_deref())?;
    }

    // A backup from an older pigeon may lack the later columns and tables (migrations 9 to 11).
    let has = |column: &str, table: &str| {
        conn.prepare(&format!("SELECT {column} FROM {table} LIMIT 0"))
            .is_ok()
    };
    if has("body", "sent") {
        let mut stmt =
            conn.prepare("SELECT id, key_id, body, subject, redacted_at IS NOT NULL FROM sent")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, key_id, body, subject, redacted): (
                String,
                u32,
                Vec<u8>,
                Option<Vec<u8>>,
                bool,
            ) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            o.audit.sent += 1;
            if redacted {
                continue;
            }
            o.open(super::sent::TABLE, &id, Some(key_id), Some(&body))?;
            o.open(super::sent::SUBJECT, &id, Some(key_id), subject.as_deref())?;
        }
    }

    let sql = if has("payload", "outbox") {
        "SELECT id, key_id, envelope, state, payload FROM outbox"
    } else {
        "SELECT id, key_id, envelope, state, NULL FROM outbox"
    };
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (id, key_id, envelope, state): (String, Option<u32>, Option<Vec<u8>>, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let payload: Option<Vec<u8>> = r.get(4)?;
        if state == "queued" || state == "waiting" {
            o.audit.queued += 1;
        }
        o.open(super::outbox::TABLE, &id, key_id, envelope.as_deref())?;
        o.open(super::outbox::PAYLOAD, &id, key_id, payload.as_deref())?;
    }

    for (table, column) in [
        (super::one_time::SECRETS, "secret"),
        (super::one_time::POOL, "key"),
    ] {
        if !has(column, table) {
            continue;
        }
        let mut stmt = conn.prepare(&format!("SELECT id, key_id, {column} FROM {table}"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, key_id, sealed): (Vec<u8>, Option<u32>, Option<Vec<u8>>) =
                (r.get(0)?, r.get(1)?, r.get(2)?);
            o.open(table, &hex::encode(&id), key_id, sealed.as_deref())?;
        }
    }

    let mut stmt =
        conn.prepare("SELECT id, key_id, ref, direction = 'out', released FROM attachments")?;
    let mut chunks = conn.prepare("SELECT idx FROM attachment_chunks WHERE attachment_id = ?1")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (id, key_id, sealed, outgoing, released): (String, u32, Vec<u8>, bool, bool) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let table = super::attachments::TABLE;
        let plain = o
            .open(table, &id, Some(key_id), Some(&sealed))?
            .unwrap_or_default();
        let reference = match ciborium::from_reader::<AttachmentRef, _>(plain.as_slice()) {
            Ok(r) if r.is_well_formed() => r,
            _ => return Err(Stop::Unopened(table.to_owned(), id)),
        };
        if outgoing && released {
            // The receiver holds it whole; the sender's copy is gone.
            continue;
        }
        let held = if outgoing {
            (0..reference.chunk_count()).collect()
        } else {
            chunks
                .query_map(params![id], |r| r.get::<_, u32>(0))?
                .collect::<Result<_, _>>()?
        };
        o.audit
            .attachments
            .insert(id, AuditedAttachment { reference, held });
    }
    Ok(o.audit)
}
