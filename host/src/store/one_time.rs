//! One-time keys for forward secrecy, on both sides: the secrets this node handed out (until the
//! one message sealed to each is stored), the tombstones of used ones, and the keys received from
//! contacts (until one message is sealed to each). Secrets and received keys are sealed at rest
//! under the data key, with its id, like every other sealed row.

use libp2p::PeerId;
use rusqlite::{OptionalExtension, Transaction, params};

use super::{Db, StoreError};
use crate::keys::EncSecret;
use crate::keys::one_time::{self, OneTimeSecret, SignedKey};

/// The AAD table name of a handed-out secret.
pub(super) const SECRETS: &str = "otk_secrets";
/// The AAD table name of a received key.
pub(super) const POOL: &str = "otk_pool";

/// Most unused keys this node keeps handed out to one contact, and most it keeps from one.
pub const MAX_PER_CONTACT: u64 = 64;
/// The outbox rows to `?1` sealed to one of its one-time keys and not yet delivered: queued, or
/// failed (`outbox retry` sends the same envelope again, which its key must still open).
const SEALED_TO_A_KEY: &str = "peer_id = ?1 AND forward_secret = 1 AND envelope IS NOT NULL
     AND state IN ('queued', 'failed')";

/// The keys of a contact's that this node holds ([`Db::one_time_keys_held`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKeys {
    /// How many.
    pub count: u64,
    /// Their ids, unless there are more than [`MAX_PER_CONTACT`].
    pub ids: Option<Vec<[u8; 16]>>,
}

/// How long the tombstone of a used key is kept: longer than any resend of its envelope (a
/// message is given up after `delivery.message_ttl`, 30 days by default).
const TOMBSTONE_KEPT_MS: u64 = 90 * 24 * 3600 * 1000;

impl Db {
    /// Forgets the secrets handed to `holder` beyond the newest `keep` unexpired ones (the holder
    /// says it holds only `keep`, without listing them: it uses the oldest first, so those are
    /// the ones it lost; [`Db::forget_secrets_not_held`] is exact where the holder lists them).
    /// Returns how many went. A message sealed to one of them after all is refused
    /// `one_time_key_gone` and sealed again by its sender, not lost.
    pub fn forget_lost_secrets(
        &mut self,
        holder: &PeerId,
        keep: u64,
        now: u64,
    ) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM otk_secrets WHERE rowid IN (
                 SELECT rowid FROM otk_secrets WHERE holder = ?1 AND expires_at > ?3
                 ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?2)",
            params![
                holder.to_string(),
                keep.min(i64::MAX as u64) as i64,
                now as i64
            ],
        )?)
    }

    /// Forgets the unexpired secrets handed to `holder` that are not in `held` (the holder lists
    /// every key of this node's it still holds; one it no longer lists it lost). Returns how
    /// many went. A listed id with no secret (a message sealed to it was stored, and spent it,
    /// while the list was on its way) changes nothing.
    pub fn forget_secrets_not_held(
        &mut self,
        holder: &PeerId,
        held: &[[u8; 16]],
        now: u64,
    ) -> Result<usize, StoreError> {
        let held: std::collections::HashSet<&[u8; 16]> = held.iter().collect();
        let tx = self.conn.transaction()?;
        let out: Vec<Vec<u8>> = tx
            .prepare("SELECT id FROM otk_secrets WHERE holder = ?1 AND expires_at > ?2")?
            .query_map(params![holder.to_string(), now as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut lost = 0;
        for id in out {
            let listed = <[u8; 16]>::try_from(id.as_slice()).is_ok_and(|id| held.contains(&id));
            if !listed {
                lost += tx.execute("DELETE FROM otk_secrets WHERE id = ?1", params![id])?;
            }
        }
        tx.commit()?;
        Ok(lost)
    }

    /// The one-time keys of `owner`'s this node holds for use: unused and unexpired in the pool,
    /// or sealing a message not yet delivered (which `owner` still has to open). Their ids too
    /// when there are at most [`MAX_PER_CONTACT`] (all a contact may hand out unused).
    pub fn one_time_keys_held(&self, owner: &PeerId, now: u64) -> Result<HeldKeys, StoreError> {
        let owner_text = owner.to_string();
        let in_flight: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM outbox WHERE {SEALED_TO_A_KEY}"),
            [&owner_text],
            |r| r.get(0),
        )?;
        let count = self.pool_keys(owner, now)? + in_flight as u64;
        if count > MAX_PER_CONTACT {
            return Ok(HeldKeys { count, ids: None });
        }
        let mut ids = Vec::new();
        let mut pool = self
            .conn
            .prepare("SELECT id FROM otk_pool WHERE owner = ?1 AND expires_at > ?2")?;
        for id in pool.query_map(params![owner_text, now as i64], |r| r.get::<_, Vec<u8>>(0))? {
            ids.push(
                <[u8; 16]>::try_from(id?.as_slice())
                    .map_err(|_| StoreError::Corrupt("one-time key id"))?,
            );
        }
        let mut sealed = self.conn.prepare(&format!(
            "SELECT id, otk_id, envelope, key_id FROM outbox WHERE {SEALED_TO_A_KEY}"
        ))?;
        let mut rows = sealed.query([&owner_text])?;
        while let Some(r) = rows.next()? {
            let kept: Option<Vec<u8>> = r.get(1)?;
            let id = match kept.as_deref().map(<[u8; 16]>::try_from) {
                Some(Ok(id)) => Some(id),
                // Sealed before the column was: the id is in the envelope.
                _ => {
                    let row: String = r.get(0)?;
                    let blob: Vec<u8> = r.get(2)?;
                    self.open_sealed(super::outbox::TABLE, &row, r.get(3)?, &blob)
                        .ok()
                        .and_then(|plain| {
                            ciborium::from_reader::<crate::envelope::Envelope, _>(plain.as_slice())
                                .ok()
                        })
                        .and_then(|env| crate::envelope::one_time_key(&env).ok().flatten())
                }
            };
            match id {
                Some(id) => ids.push(id),
                None => {
                    // The count alone, then: the contact forgets the oldest it handed out.
                    tracing::warn!(%owner, "a queued forward-secret message does not say its one-time key");
                    return Ok(HeldKeys { count, ids: None });
                }
            }
        }
        Ok(HeldKeys {
            count,
            ids: Some(ids),
        })
    }

    /// Stores the secrets of keys about to be handed to `holder`, as many as keep it within
    /// [`MAX_PER_CONTACT`] unused ones, in one transaction (so concurrent requests cannot pass
    /// the bound together), after dropping its expired ones and tombstones past any resend;
    /// returns how many it stored (the first ones of `secrets`), durable before they are handed out.
    pub fn store_one_time_secrets(
        &mut self,
        holder: &PeerId,
        secrets: &[OneTimeSecret],
        now: u64,
    ) -> Result<usize, StoreError> {
        self.store_one_time_secrets_within(holder, secrets, now, MAX_PER_CONTACT)
    }

    /// [`Db::store_one_time_secrets`] with another bound than [`MAX_PER_CONTACT`] (benchmarks
    /// that drain more forward-secret messages than a contact may hold keys for).
    pub fn store_one_time_secrets_within(
        &mut self,
        holder: &PeerId,
        secrets: &[OneTimeSecret],
        now: u64,
        bound: u64,
    ) -> Result<usize, StoreError> {
        let at_rest = self.keys.clone();
        let holder = holder.to_string();
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM otk_secrets WHERE holder = ?1 AND expires_at <= ?2",
            params![holder, now as i64],
        )?;
        tx.execute(
            "DELETE FROM otk_used WHERE used_at < ?1",
            params![now.saturating_sub(TOMBSTONE_KEPT_MS) as i64],
        )?;
        let out: i64 = tx.query_row(
            "SELECT COUNT(*) FROM otk_secrets WHERE holder = ?1",
            params![holder],
            |r| r.get(0),
        )?;
        let room = bound.saturating_sub(out as u64).min(usize::MAX as u64) as usize;
        let stored = secrets.len().min(room);
        for s in &secrets[..stored] {
            let row = hex::encode(s.id);
            let (key_id, sealed) =
                at_rest
                    .at_rest()
                    .seal(SECRETS, &row, &one_time::secret_bytes(&s.secret));
            tx.prepare_cached(
                "INSERT INTO otk_secrets (id, holder, secret, key_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.id.as_slice(),
                holder,
                sealed,
                key_id,
                now as i64,
                s.expires_at_ms.min(i64::MAX as u64) as i64
            ])?;
        }
        tx.commit()?;
        Ok(stored)
    }

    /// How many unexpired keys handed to `holder` are still unused.
    pub fn one_time_secrets_out(&self, holder: &PeerId, now: u64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM otk_secrets WHERE holder = ?1 AND expires_at > ?2",
            params![holder.to_string(), now as i64],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// The secret of one-time key `id` if it was handed to `holder` and is not used.
    pub fn one_time_secret(
        &self,
        id: &[u8; 16],
        holder: &PeerId,
    ) -> Result<Option<EncSecret>, StoreError> {
        let row: Option<(Vec<u8>, u32)> = self
            .conn
            .prepare_cached("SELECT secret, key_id FROM otk_secrets WHERE id = ?1 AND holder = ?2")?
            .query_row(params![id.as_slice(), holder.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((sealed, key_id)) = row else {
            return Ok(None);
        };
        let plain = zeroize::Zeroizing::new(self.open_sealed(
            SECRETS,
            &hex::encode(id),
            key_id,
            &sealed,
        )?);
        one_time::secret_from_bytes(&plain)
            .map(Some)
            .ok_or(StoreError::Corrupt("one-time key secret"))
    }

    /// The blake2b of the envelope that used one-time key `id`, if it was used.
    pub fn one_time_key_used(&self, id: &[u8; 16]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT envelope_hash FROM otk_used WHERE id = ?1")?
            .query_row(params![id.as_slice()], |r| r.get(0))
            .optional()?)
    }

    /// Keeps keys received from `owner` (already verified), up to [`MAX_PER_CONTACT`], after
    /// dropping its expired ones; returns how many were kept.
    pub fn add_pool_keys(
        &mut self,
        owner: &PeerId,
        keys: &[SignedKey],
        now: u64,
    ) -> Result<usize, StoreError> {
        let at_rest = self.keys.clone();
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM otk_pool WHERE owner = ?1 AND expires_at <= ?2",
            params![owner.to_string(), now as i64],
        )?;
        let held: i64 = tx.query_row(
            "SELECT COUNT(*) FROM otk_pool WHERE owner = ?1",
            params![owner.to_string()],
            |r| r.get(0),
        )?;
        let room = MAX_PER_CONTACT.saturating_sub(held as u64) as usize;
        let mut kept = 0;
        for k in keys.iter().take(room) {
            let row = hex::encode(k.id);
            let mut plain = Vec::new();
            ciborium::into_writer(k, &mut plain).expect("CBOR encoding into a Vec cannot fail");
            let (key_id, sealed) = at_rest.at_rest().seal(POOL, &row, &plain);
            kept += tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO otk_pool (id, owner, key, key_id, expires_at, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    k.id.as_slice(),
                    owner.to_string(),
                    sealed,
                    key_id,
                    k.expires_at_ms.min(i64::MAX as u64) as i64,
                    now as i64
                ])?;
        }
        tx.commit()?;
        Ok(kept)
    }

    /// How many unexpired keys from `owner` this node holds.
    pub fn pool_keys(&self, owner: &PeerId, now: u64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM otk_pool WHERE owner = ?1 AND expires_at > ?2",
            params![owner.to_string(), now as i64],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

/// Takes one unexpired key from `owner` out of the pool, in `tx` (the transaction that writes the
/// envelope sealed to it, so a key is never used twice nor lost): the soonest to expire.
pub(super) fn take_pool_key(
    tx: &Transaction<'_>,
    at_rest: &crate::keys::at_rest::AtRest,
    owner: &PeerId,
    now: u64,
) -> Result<Option<SignedKey>, StoreError> {
    let row: Option<(Vec<u8>, Vec<u8>, u32)> = tx
        .query_row(
            "SELECT id, key, key_id FROM otk_pool WHERE owner = ?1 AND expires_at > ?2
             ORDER BY expires_at LIMIT 1",
            params![owner.to_string(), now as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((id, sealed, key_id)) = row else {
        return Ok(None);
    };
    tx.execute("DELETE FROM otk_pool WHERE id = ?1", params![id])?;
    let plain = at_rest.open(POOL, &hex::encode(&id), key_id, &sealed)?;
    let key: SignedKey =
        ciborium::from_reader(plain.as_slice()).map_err(|_| StoreError::Corrupt("one-time key"))?;
    Ok(Some(key))
}

/// Deletes the secret of one-time key `id` and records the envelope that used it, in `tx` (the
/// transaction that stores the message).
pub(super) fn spend_secret(
    tx: &Transaction<'_>,
    id: &[u8; 16],
    envelope_hash: &[u8],
    now: u64,
) -> Result<(), StoreError> {
    // Once per forward-secret message received: statements kept compiled.
    tx.prepare_cached("DELETE FROM otk_secrets WHERE id = ?1")?
        .execute(params![id.as_slice()])?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO otk_used (id, envelope_hash, used_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![id.as_slice(), envelope_hash, now as i64])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::keys::Keys;

    #[test]
    fn a_handed_out_secret_opens_until_it_is_spent() {
        let (_dir, mut db, keys) = crate::store::test_support::temp_db();
        let holder = Keys::generate().peer_id();
        let (secrets, signed): (Vec<OneTimeSecret>, Vec<SignedKey>) = (0..3)
            .map(|_| one_time::make(&keys, &holder, 5_000))
            .unzip();
        db.store_one_time_secrets(&holder, &secrets, 1_000)
            .expect("store");
        assert_eq!(db.one_time_secrets_out(&holder, 1_000).expect("count"), 3);
        assert_eq!(
            db.one_time_secrets_out(&holder, 5_000).expect("count"),
            0,
            "expired"
        );
        let id = signed[1].id;
        let secret = db
            .one_time_secret(&id, &holder)
            .expect("read")
            .expect("there");
        assert_eq!(
            one_time::secret_bytes(&secret),
            one_time::secret_bytes(&secrets[1].secret)
        );
        // Only for the contact it was handed to.
        let other = Keys::generate().peer_id();
        assert!(db.one_time_secret(&id, &other).expect("read").is_none());
        let tx = db.conn.transaction().expect("tx");
        spend_secret(&tx, &id, b"hash", 2_000).expect("spend");
        tx.commit().expect("commit");
        assert!(db.one_time_secret(&id, &holder).expect("read").is_none());
        assert_eq!(
            db.one_time_key_used(&id).expect("used"),
            Some(b"hash".to_vec())
        );
        assert_eq!(db.one_time_secrets_out(&holder, 1_000).expect("count"), 2);
    }

    #[test]
    fn storing_a_forward_secret_message_spends_its_secret_and_owes_a_checkpoint_paid_when_idle() {
        let (dir, mut db, keys) = crate::store::test_support::temp_db();
        let sender = Keys::generate();
        db.add_contact("alice", &sender.address(), &[])
            .expect("contact");
        let received = |key: [u8; 16]| crate::store::Received {
            id: crate::envelope::MessageId::random(),
            sender: sender.peer_id(),
            sent_at_ms: 1,
            subject: None,
            body: "forward secret".into(),
            attachments: vec![],
            actions: vec![],
            one_time_key: Some((key, [7; 32])),
        };
        let (secret, signed) = one_time::make(&keys, &sender.peer_id(), u64::MAX / 4);
        db.store_one_time_secrets(&sender.peer_id(), &[secret], 1)
            .expect("secret");
        // As if it had just checkpointed (however slow this machine): the checkpoint is owed.
        db.last_checkpoint = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        db.store_received(&[received(signed.id)], 2).expect("store");
        assert!(
            db.one_time_secret(&signed.id, &sender.peer_id())
                .expect("read")
                .is_none(),
            "spent in the commit"
        );
        let wal = dir.path().join("pigeon.db-wal");
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert!(wal_len() > 0, "owed while busy");
        db.pay_checkpoint(false);
        assert!(
            wal_len() > 0,
            "not yet: the gap has not passed and the store is busy"
        );
        db.pay_checkpoint(true);
        assert_eq!(
            wal_len(),
            0,
            "paid once idle: no older copy of the secret in the WAL"
        );
        // Past the gap, a spend checkpoints at once.
        let (secret, signed) = one_time::make(&keys, &sender.peer_id(), u64::MAX / 4);
        db.store_one_time_secrets(&sender.peer_id(), &[secret], 3)
            .expect("secret");
        db.last_checkpoint = std::time::Instant::now() - super::super::CHECKPOINT_GAP;
        db.store_received(&[received(signed.id)], 4).expect("store");
        assert_eq!(wal_len(), 0);
    }

    #[test]
    fn a_holder_that_lost_keys_gets_the_oldest_forgotten() {
        let (_dir, mut db, keys) = crate::store::test_support::temp_db();
        let holder = Keys::generate().peer_id();
        let mut ids = Vec::new();
        for t in 0..10u64 {
            let (secret, signed) = one_time::make(&keys, &holder, 1_000_000);
            db.store_one_time_secrets(&holder, &[secret], 100 + t)
                .expect("store");
            ids.push(signed.id);
        }
        // The holder says it holds 4: the 6 handed out first go, the newest 4 stay.
        assert_eq!(db.forget_lost_secrets(&holder, 4, 200).expect("forget"), 6);
        assert_eq!(db.one_time_secrets_out(&holder, 200).expect("out"), 4);
        for (i, id) in ids.iter().enumerate() {
            let kept = db.one_time_secret(id, &holder).expect("read").is_some();
            assert_eq!(kept, i >= 6, "key {i}");
        }
        // Holding as many as handed out, or more (a message's ack on its way), forgets nothing.
        assert_eq!(db.forget_lost_secrets(&holder, 4, 200).expect("forget"), 0);
        assert_eq!(db.forget_lost_secrets(&holder, 90, 200).expect("forget"), 0);
    }

    #[test]
    fn a_holder_that_lists_its_keys_gets_exactly_the_others_forgotten() {
        let (_dir, mut db, keys) = crate::store::test_support::temp_db();
        let holder = Keys::generate().peer_id();
        let (secrets, signed): (Vec<OneTimeSecret>, Vec<SignedKey>) = (0..6)
            .map(|_| one_time::make(&keys, &holder, 1_000_000))
            .unzip();
        db.store_one_time_secrets(&holder, &secrets, 100)
            .expect("store");
        // Another contact's secret is never touched by this holder's list.
        let other = Keys::generate().peer_id();
        let (theirs, _) = one_time::make(&keys, &other, 1_000_000);
        db.store_one_time_secrets(&other, &[theirs], 100)
            .expect("store");
        // It lists keys 1, 3 and 4, and an id already spent (a message on its way when it
        // asked): 0, 2 and 5 go, whatever their age.
        let spent = [9u8; 16];
        let listed = [signed[1].id, signed[3].id, signed[4].id, spent];
        assert_eq!(
            db.forget_secrets_not_held(&holder, &listed, 200)
                .expect("forget"),
            3
        );
        for (i, k) in signed.iter().enumerate() {
            let kept = db.one_time_secret(&k.id, &holder).expect("read").is_some();
            assert_eq!(kept, [1, 3, 4].contains(&i), "key {i}");
        }
        assert_eq!(db.one_time_secrets_out(&other, 200).expect("out"), 1);
        // Listing them again forgets nothing; listing none forgets the rest.
        assert_eq!(
            db.forget_secrets_not_held(&holder, &listed, 200)
                .expect("forget"),
            0
        );
        assert_eq!(
            db.forget_secrets_not_held(&holder, &[], 200)
                .expect("forget"),
            3
        );
        assert_eq!(db.one_time_secrets_out(&holder, 200).expect("out"), 0);
    }

    #[test]
    fn keys_held_count_the_pool_and_the_messages_sealed_to_keys_not_yet_delivered() {
        let (_dir, mut db, alice) = crate::store::test_support::temp_db();
        let bob = Keys::generate();
        db.add_contact("bob", &bob.address(), &[]).expect("contact");
        let signed: Vec<SignedKey> = (0..3)
            .map(|_| one_time::make(&bob, &alice.peer_id(), 1_000_000).1)
            .collect();
        db.add_pool_keys(&bob.peer_id(), &signed, 10).expect("pool");
        let payload = crate::envelope::Payload {
            id: crate::envelope::MessageId::random(),
            sent_at_ms: 10,
            subject: None,
            body: "x".into(),
            attachments: vec![],
        };
        let fallback =
            crate::envelope::seal(&alice, &bob.peer_id(), bob.address().enc_public(), &payload)
                .expect("seal");
        db.enqueue_with_policy(
            &payload.id,
            &bob.peer_id(),
            &payload,
            &fallback,
            &[],
            20,
            crate::config::ForwardSecrecy::Prefer,
        )
        .expect("queue");
        assert_eq!(db.pool_keys(&bob.peer_id(), 30).expect("pool"), 2);
        let sorted = |mut ids: Vec<[u8; 16]>| {
            ids.sort();
            ids
        };
        let held = db.one_time_keys_held(&bob.peer_id(), 30).expect("held");
        assert_eq!(held.count, 3);
        // The two left in the pool and the one the queued message is sealed to: all three.
        assert_eq!(
            sorted(held.ids.expect("ids")),
            sorted(signed.iter().map(|k| k.id).collect())
        );
        let sealed_to = crate::envelope::one_time_key(
            &db.due(40, 8, &HashMap::new(), &HashSet::new())
                .expect("due")[0]
                .messages[0]
                .envelope,
        )
        .expect("envelope")
        .expect("forward secret");
        // The id is kept in clear beside the sealed envelope; a row sealed before that column
        // was (NULL) has it read from the envelope.
        let kept: Vec<u8> = db
            .conn
            .query_row("SELECT otk_id FROM outbox", [], |r| r.get(0))
            .expect("otk_id");
        assert_eq!(kept, sealed_to.to_vec());
        db.conn
            .execute("UPDATE outbox SET otk_id = NULL", [])
            .expect("as an older row");
        let again = db.one_time_keys_held(&bob.peer_id(), 30).expect("held");
        assert_eq!(again.count, 3);
        assert_eq!(
            sorted(again.ids.expect("ids")),
            sorted(signed.iter().map(|k| k.id).collect())
        );
        db.mark_delivered(&[payload.id], 40).expect("delivered");
        let held = db.one_time_keys_held(&bob.peer_id(), 30).expect("held");
        assert_eq!(held.count, 2);
        assert_eq!(
            sorted(held.ids.expect("ids")),
            sorted(
                signed
                    .iter()
                    .map(|k| k.id)
                    .filter(|id| *id != sealed_to)
                    .collect()
            )
        );
        // A full pool: all of them listed. One more held than a contact may hand out (a
        // benchmark's pool): the count alone.
        let more: Vec<SignedKey> = (0..MAX_PER_CONTACT)
            .map(|_| one_time::make(&bob, &alice.peer_id(), 1_000_000).1)
            .collect();
        db.add_pool_keys(&bob.peer_id(), &more, 50).expect("pool");
        let held = db.one_time_keys_held(&bob.peer_id(), 60).expect("held");
        assert_eq!(held.count, MAX_PER_CONTACT);
        assert_eq!(
            held.ids.map(|ids| ids.len()),
            Some(MAX_PER_CONTACT as usize)
        );
        let next = crate::envelope::Payload {
            id: crate::envelope::MessageId::random(),
            ..payload
        };
        db.enqueue_with_policy(
            &next.id,
            &bob.peer_id(),
            &next,
            &fallback,
            &[],
            60,
            crate::config::ForwardSecrecy::Prefer,
        )
        .expect("queue");
        db.add_pool_keys(
            &bob.peer_id(),
            &[one_time::make(&bob, &alice.peer_id(), 1_000_000).1],
            60,
        )
        .expect("pool");
        assert_eq!(
            db.one_time_keys_held(&bob.peer_id(), 60).expect("held"),
            HeldKeys {
                count: MAX_PER_CONTACT + 1,
                ids: None
            }
        );
    }

    #[test]
    fn secrets_handed_out_stay_within_the_bound_and_expired_ones_go() {
        let (_dir, mut db, keys) = crate::store::test_support::temp_db();
        let holder = Keys::generate().peer_id();
        let make = |n: usize, expires: u64| -> Vec<OneTimeSecret> {
            (0..n)
                .map(|_| one_time::make(&keys, &holder, expires).0)
                .collect()
        };
        // Two requests' worth at once: the second gets what is left of the bound.
        assert_eq!(
            db.store_one_time_secrets(&holder, &make(40, 5_000), 1)
                .expect("first"),
            40
        );
        assert_eq!(
            db.store_one_time_secrets(&holder, &make(40, 9_000), 1)
                .expect("second"),
            24
        );
        assert_eq!(db.one_time_secrets_out(&holder, 1).expect("out"), 64);
        assert_eq!(
            db.store_one_time_secrets(&holder, &make(1, 9_000), 1)
                .expect("full"),
            0
        );
        // Once the first 40 have expired they are dropped, and make room.
        assert_eq!(
            db.store_one_time_secrets(&holder, &make(10, 9_000), 6_000)
                .expect("after"),
            10
        );
        let rows: i64 = db
            .conn
            .query_row("SELECT COUNT(*) FROM otk_secrets", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 34, "the expired secrets are gone from the table");
    }

    #[test]
    fn removing_a_contact_removes_the_keys_exchanged_with_it() {
        let (_dir, mut db, keys) = crate::store::test_support::temp_db();
        let contact = Keys::generate();
        db.add_contact("bob", &contact.address(), &[]).expect("add");
        let peer = contact.peer_id();
        db.store_one_time_secrets(&peer, &[one_time::make(&keys, &peer, u64::MAX).0], 1)
            .expect("secrets");
        db.add_pool_keys(
            &peer,
            &[one_time::make(&contact, &keys.peer_id(), u64::MAX).1],
            1,
        )
        .expect("pool");
        db.remove_contact("bob").expect("rm");
        assert_eq!(db.one_time_secrets_out(&peer, 1).expect("out"), 0);
        assert_eq!(db.pool_keys(&peer, 1).expect("pool"), 0);
    }

    #[test]
    fn a_rekey_moves_one_time_keys_and_an_audit_opens_them() {
        let (_dir, mut db, keys) = crate::store::test_support::temp_db();
        let peer = Keys::generate();
        let (secrets, signed): (Vec<OneTimeSecret>, Vec<SignedKey>) = (0..3)
            .map(|_| one_time::make(&keys, &peer.peer_id(), u64::MAX))
            .unzip();
        db.store_one_time_secrets(&peer.peer_id(), &secrets, 1)
            .expect("store");
        let theirs: Vec<SignedKey> = (0..4)
            .map(|_| one_time::make(&peer, &keys.peer_id(), u64::MAX).1)
            .collect();
        db.add_pool_keys(&peer.peer_id(), &theirs, 1).expect("add");
        let old = keys.at_rest().current();
        keys.at_rest().install(keys.at_rest().next_key());
        let mut cursor = crate::store::RekeyCursor::default();
        let mut moved = 0;
        loop {
            let n = db.rekey_batch(2, &mut cursor).expect("rekey");
            if n == 0 {
                break;
            }
            moved += n;
        }
        assert_eq!(moved, 7);
        let counts = db.key_counts().expect("counts");
        assert_eq!(counts.get(&old), None, "{counts:?}");
        assert!(!db.rekey_left(keys.at_rest().current()).expect("left"));
        let audit = crate::store::audit(&db.conn, keys.at_rest())
            .expect("audit")
            .expect("every value opens");
        assert_eq!(audit.sealed, 7);
        assert!(
            db.one_time_secret(&signed[2].id, &peer.peer_id())
                .expect("read")
                .is_some()
        );
    }

    #[test]
    fn the_pool_is_bounded_and_gives_each_key_once_soonest_first() {
        let (_dir, mut db, keys) = crate::store::test_support::temp_db();
        let owner = Keys::generate();
        let keys_in: Vec<SignedKey> = (0..70u64)
            .map(|i| one_time::make(&owner, &keys.peer_id(), 10_000 + 100 * (70 - i)).1)
            .collect();
        assert_eq!(
            db.add_pool_keys(&owner.peer_id(), &keys_in, 1)
                .expect("add"),
            64
        );
        assert_eq!(db.pool_keys(&owner.peer_id(), 1).expect("count"), 64);
        let at_rest = keys.clone();
        let tx = db.conn.transaction().expect("tx");
        let first = take_pool_key(&tx, at_rest.at_rest(), &owner.peer_id(), 1)
            .expect("take")
            .expect("a key");
        let second = take_pool_key(&tx, at_rest.at_rest(), &owner.peer_id(), 1)
            .expect("take")
            .expect("a key");
        tx.commit().expect("commit");
        assert!(first.expires_at_ms <= second.expires_at_ms);
        assert_ne!(first.id, second.id);
        assert_eq!(db.pool_keys(&owner.peer_id(), 1).expect("count"), 62);
        // Expired keys are neither counted nor taken.
        let late = 1_000_000;
        assert_eq!(db.pool_keys(&owner.peer_id(), late).expect("count"), 0);
        let tx = db.conn.transaction().expect("tx");
        assert!(
            take_pool_key(&tx, at_rest.at_rest(), &owner.peer_id(), late)
                .expect("take")
                .is_none()
        );
    }
}
