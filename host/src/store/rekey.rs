//! A rekey's part in the database: every sealed row moved from an older data key to the current
//! one, in batches (one transaction each, so a node keeps working between them and a crash loses
//! at most the batch in hand), and the count of what each key seals.
//!
//! A row's key id says which key sealed it, so a batch is just "the next rows whose key id is not
//! the current one": resuming after a crash needs no record of where it stopped.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{Db, StoreError};

/// Where each table's sealed values are, for [`Db::rekey_batch`] and [`Db::key_counts`]: the rows
/// that count as sealed (a delivered outbox row no longer holds its envelope; a contact added
/// before rows were sealed holds no seal).
const COUNTS: &str = "
    SELECT key_id, COUNT(*) FROM inbox GROUP BY key_id
    UNION ALL SELECT key_id, COUNT(*) FROM sent GROUP BY key_id
    UNION ALL SELECT key_id, COUNT(*) FROM outbox
              WHERE envelope IS NOT NULL OR payload IS NOT NULL GROUP BY key_id
    UNION ALL SELECT key_id, COUNT(*) FROM attachments GROUP BY key_id
    UNION ALL SELECT key_id, COUNT(*) FROM contacts WHERE seal IS NOT NULL GROUP BY key_id
    UNION ALL SELECT key_id, COUNT(*) FROM otk_secrets GROUP BY key_id
    UNION ALL SELECT key_id, COUNT(*) FROM otk_pool GROUP BY key_id";

/// The one-time key tables: (table, sealed column), each row named in its seal by its id in hex.
const ONE_TIME: [(&str, &str); 2] = [
    (super::one_time::SECRETS, "secret"),
    (super::one_time::POOL, "key"),
];

/// A table of messages: the seal domains of its body, subject and (received only) sender seal.
struct Texts {
    table: &'static str,
    body: &'static str,
    subject: &'static str,
    /// The column and domain of the sender's seal, where there is one.
    sender: Option<&'static str>,
}

const INBOX_TEXTS: Texts = Texts {
    table: "inbox",
    body: super::inbox::TABLE,
    subject: super::inbox::SUBJECT,
    sender: Some(super::inbox::SENDER),
};

const SENT_TEXTS: Texts = Texts {
    table: "sent",
    body: super::sent::TABLE,
    subject: super::sent::SUBJECT,
    sender: None,
};

/// Opens a value (domain, row, key id, sealed) and seals it again under the current key.
type Reseal<'a> = dyn Fn(&str, &str, u32, &[u8]) -> Result<Vec<u8>, StoreError> + 'a;

/// A message row: rowid, id, key id, body, subject, sender seal, whether redacted.
type TextRow = (
    i64,
    String,
    u32,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    bool,
);

/// Moves up to `limit` rows of `t` sealed under another key than `current` (after rowid `at`,
/// which it advances) to `current` with `reseal`; returns how many.
fn rekey_texts(
    tx: &rusqlite::Transaction<'_>,
    t: &Texts,
    current: u32,
    limit: usize,
    at: &mut i64,
    reseal: &Reseal<'_>,
) -> Result<usize, StoreError> {
    let (sender_column, set_sender) = match t.sender {
        Some(_) => ("sender_seal", ", sender_seal = ?4"),
        None => ("NULL", ""),
    };
    let rows: Vec<TextRow> = tx
        .prepare_cached(&format!(
            "SELECT rowid, id, key_id, body, subject, {sender_column}, redacted_at IS NOT NULL
             FROM {} WHERE rowid > ?3 AND key_id != ?1 ORDER BY rowid LIMIT ?2",
            t.table
        ))?
        .query_map(params![current, limit as i64, *at], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let moved = rows.len();
    for (rowid, id, key_id, body, subject, sender, redacted) in rows {
        *at = rowid;
        let body = if redacted {
            // Scrubbed: nothing sealed is left in it.
            body
        } else {
            reseal(t.body, &id, key_id, &body)?
        };
        let subject = subject
            .map(|s| reseal(t.subject, &id, key_id, &s))
            .transpose()?;
        let sender = match (sender, t.sender) {
            (Some(s), Some(domain)) => Some(reseal(domain, &id, key_id, &s)?),
            _ => None,
        };
        tx.prepare_cached(&format!(
            "UPDATE {} SET body = ?2, subject = ?3{set_sender}, key_id = ?5 WHERE id = ?1",
            t.table
        ))?
        .execute(params![id, body, subject, sender, current])?;
    }
    Ok(moved)
}

/// Where a pass of batches has got to in each table (the last rowid looked at), so that each
/// batch goes on from there instead of scanning again the rows already moved: a row's key id
/// sits after its sealed blobs, and reaching it means reading them. Kept in memory only: a pass
/// that starts afresh (after a crash) starts from the first row.
#[derive(Debug, Default, Clone, Copy)]
pub struct RekeyCursor {
    inbox: i64,
    sent: i64,
    outbox: i64,
    attachments: i64,
    contacts: i64,
    one_time: [i64; 2],
}

impl Db {
    /// Re-seals under the current key up to `limit` rows sealed under another one, in one
    /// transaction, going on from `cursor`; returns how many it moved (0 when none is left past
    /// the cursor).
    pub fn rekey_batch(
        &mut self,
        limit: usize,
        cursor: &mut RekeyCursor,
    ) -> Result<usize, StoreError> {
        let keys = self.keys.clone();
        let at_rest = keys.at_rest();
        let current = at_rest.current();
        let open = |table: &str, row: &str, key_id: u32, blob: &[u8]| {
            at_rest
                .open(table, row, key_id, blob)
                .map_err(StoreError::from)
        };
        let seal = |table: &str, row: &str, plain: &[u8]| {
            at_rest
                .seal_under(current, table, row, plain)
                .ok_or(StoreError::Corrupt("the current data key is not held"))
        };
        // A value sealed under `key_id`, sealed again under the current key.
        let reseal = |table: &str, row: &str, key_id: u32, blob: &[u8]| {
            let plain = zeroize::Zeroizing::new(open(table, row, key_id, blob)?);
            seal(table, row, &plain)
        };
        let tx = self.conn.transaction()?;
        let mut moved = 0;

        for (texts, at) in [
            (&INBOX_TEXTS, &mut cursor.inbox),
            (&SENT_TEXTS, &mut cursor.sent),
        ] {
            let left = limit.saturating_sub(moved);
            moved += rekey_texts(&tx, texts, current, left, at, &reseal)?;
        }

        let left = limit.saturating_sub(moved);
        #[allow(clippy::type_complexity)]
        let rows: Vec<(i64, String, u32, Option<Vec<u8>>, Option<Vec<u8>>)> = tx
            .prepare_cached(
                "SELECT rowid, id, key_id, envelope, payload FROM outbox
                 WHERE rowid > ?3 AND key_id IS NOT NULL AND key_id != ?1 ORDER BY rowid LIMIT ?2",
            )?
            .query_map(params![current, left as i64, cursor.outbox], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        for (rowid, id, key_id, envelope, payload) in rows {
            cursor.outbox = rowid;
            let again = |table: &str, blob: Option<Vec<u8>>| match blob {
                Some(b) => seal(table, &id, &open(table, &id, key_id, &b)?).map(Some),
                None => Ok(None),
            };
            let envelope = again(super::outbox::TABLE, envelope)?;
            let payload = again(super::outbox::PAYLOAD, payload)?;
            tx.prepare_cached(
                "UPDATE outbox SET envelope = ?2, payload = ?3, key_id = ?4 WHERE id = ?1",
            )?
            .execute(params![id, envelope, payload, current])?;
            moved += 1;
        }

        let left = limit.saturating_sub(moved);
        let rows: Vec<(i64, String, u32, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT rowid, id, key_id, ref FROM attachments
                 WHERE rowid > ?3 AND key_id != ?1 ORDER BY rowid LIMIT ?2",
            )?
            .query_map(params![current, left as i64, cursor.attachments], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        for (rowid, id, key_id, sealed) in rows {
            cursor.attachments = rowid;
            let plain =
                zeroize::Zeroizing::new(open(super::attachments::TABLE, &id, key_id, &sealed)?);
            let sealed = seal(super::attachments::TABLE, &id, &plain)?;
            tx.prepare_cached("UPDATE attachments SET ref = ?2, key_id = ?3 WHERE id = ?1")?
                .execute(params![id, sealed, current])?;
            moved += 1;
        }

        let left = limit.saturating_sub(moved);
        let rows: Vec<(i64, String, u32, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT rowid, peer_id, key_id, seal FROM contacts
                 WHERE rowid > ?3 AND seal IS NOT NULL AND key_id != ?1 ORDER BY rowid LIMIT ?2",
            )?
            .query_map(params![current, left as i64, cursor.contacts], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        for (rowid, peer, key_id, sealed) in rows {
            cursor.contacts = rowid;
            let plain = open(super::contacts::TABLE, &peer, key_id, &sealed)?;
            let sealed = seal(super::contacts::TABLE, &peer, &plain)?;
            tx.prepare_cached("UPDATE contacts SET seal = ?2, key_id = ?3 WHERE peer_id = ?1")?
                .execute(params![peer, sealed, current])?;
            moved += 1;
        }
        for (i, (table, column)) in ONE_TIME.iter().enumerate() {
            let left = limit.saturating_sub(moved);
            let rows: Vec<(i64, Vec<u8>, u32, Vec<u8>)> = tx
                .prepare_cached(&format!(
                    "SELECT rowid, id, key_id, {column} FROM {table}
                     WHERE rowid > ?3 AND key_id != ?1 ORDER BY rowid LIMIT ?2"
                ))?
                .query_map(params![current, left as i64, cursor.one_time[i]], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            for (rowid, id, key_id, sealed) in rows {
                cursor.one_time[i] = rowid;
                let row = hex::encode(&id);
                let plain = zeroize::Zeroizing::new(open(table, &row, key_id, &sealed)?);
                let sealed = seal(table, &row, &plain)?;
                tx.prepare_cached(&format!(
                    "UPDATE {table} SET {column} = ?2, key_id = ?3 WHERE rowid = ?1"
                ))?
                .execute(params![rowid, sealed, current])?;
                moved += 1;
            }
        }
        tx.commit()?;
        Ok(moved)
    }

    /// How many sealed rows each data key seals.
    pub fn key_counts(&self) -> Result<BTreeMap<u32, u64>, StoreError> {
        let mut out = BTreeMap::new();
        let mut stmt = self.conn.prepare_cached(COUNTS)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key_id: Option<u32> = r.get(0)?;
            let n: i64 = r.get(1)?;
            if let Some(key_id) = key_id {
                *out.entry(key_id).or_insert(0) += n as u64;
            }
        }
        Ok(out)
    }

    /// Bytes of sealed values in the database (what a rekey opens and seals again).
    pub fn sealed_bytes(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE((SELECT SUM(LENGTH(body) + IFNULL(LENGTH(subject), 0)
                                      + IFNULL(LENGTH(sender_seal), 0)) FROM inbox), 0)
                  + COALESCE((SELECT SUM(LENGTH(body) + IFNULL(LENGTH(subject), 0)) FROM sent), 0)
                  + COALESCE((SELECT SUM(IFNULL(LENGTH(envelope), 0)
                                      + IFNULL(LENGTH(payload), 0)) FROM outbox), 0)
                  + COALESCE((SELECT SUM(LENGTH(ref)) FROM attachments), 0)
                  + COALESCE((SELECT SUM(LENGTH(seal)) FROM contacts), 0)
                  + COALESCE((SELECT SUM(LENGTH(secret)) FROM otk_secrets), 0)
                  + COALESCE((SELECT SUM(LENGTH(key)) FROM otk_pool), 0)",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Whether any row is still sealed under a key other than `current`.
    pub fn rekey_left(&self, current: u32) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM inbox WHERE key_id != ?1
                 UNION ALL SELECT 1 FROM sent WHERE key_id != ?1
                 UNION ALL SELECT 1 FROM outbox WHERE key_id IS NOT NULL AND key_id != ?1
                 UNION ALL SELECT 1 FROM attachments WHERE key_id != ?1
                 UNION ALL SELECT 1 FROM contacts WHERE seal IS NOT NULL AND key_id != ?1
                 UNION ALL SELECT 1 FROM otk_secrets WHERE key_id != ?1
                 UNION ALL SELECT 1 FROM otk_pool WHERE key_id != ?1
                 LIMIT 1",
                [current],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}
