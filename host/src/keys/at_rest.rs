//! Sealing of stored rows under data-encryption keys (DEKs) with XChaCha20-Poly1305.
//!
//! Each sealed value is `nonce (24 bytes) || ciphertext+tag`. The associated data binds the table,
//! the row id and the key id, so a sealed value moved to another row or relabelled with another key id
//! does not open. Every row records the key id it was sealed under, so a later rekey can re-seal rows
//! in batches and resume after a crash.

use std::collections::BTreeMap;
use std::sync::RwLock;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;

/// A failure to open a sealed row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AtRestError {
    /// The row names a key the keystore does not have.
    #[error("stored row {table}/{row} is sealed under unknown key {key_id}")]
    UnknownKey {
        /// The table.
        table: String,
        /// The row id.
        row: String,
        /// The key id recorded with the row.
        key_id: u32,
    },
    /// The seal does not open: the row was damaged or tampered with.
    #[error("stored row {table}/{row} does not decrypt: it was damaged or tampered with")]
    Tampered {
        /// The table.
        table: String,
        /// The row id.
        row: String,
    },
}

/// The set of data-encryption keys, one of them current. A rekey adds a key and makes it current
/// ([`AtRest::install`]), then drops the others once nothing is sealed under them
/// ([`AtRest::retire_old`]); every holder of the set (store, index, plugins) sees the change at once.
pub struct AtRest {
    inner: RwLock<Inner>,
}

struct Inner {
    current: u32,
    keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

/// A data key: its id and its bytes.
pub type Dek = (u32, Zeroizing<[u8; 32]>);

impl AtRest {
    /// A fresh set with one random key, id 1.
    pub fn generate() -> AtRest {
        AtRest::from_parts(1, BTreeMap::from([(1, random_key())]))
    }

    pub(crate) fn from_parts(current: u32, keys: BTreeMap<u32, Zeroizing<[u8; 32]>>) -> AtRest {
        AtRest {
            inner: RwLock::new(Inner { current, keys }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while the lock was held cannot leave the map half changed (each change is one
        // insert or one retain), so a poisoned lock is still good to read.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The current key's id and every key held.
    pub(crate) fn parts(&self) -> (u32, BTreeMap<u32, Zeroizing<[u8; 32]>>) {
        let inner = self.read();
        (inner.current, inner.keys.clone())
    }

    /// The id of the key new seals use.
    pub fn current(&self) -> u32 {
        self.read().current
    }

    /// The ids of every key held, oldest first.
    pub fn ids(&self) -> Vec<u32> {
        self.read().keys.keys().copied().collect()
    }

    /// A fresh random key with an id above every id held, not installed yet.
    pub fn next_key(&self) -> Dek {
        let next = self.read().keys.keys().max().map_or(1, |m| m + 1);
        (next, random_key())
    }

    /// Adds `dek` and makes it the current key.
    pub fn install(&self, dek: Dek) {
        let mut inner = self.write();
        inner.current = dek.0;
        inner.keys.insert(dek.0, dek.1);
    }

    /// Drops (and zeroizes) every key but the current one.
    pub fn retire_old(&self) {
        let mut inner = self.write();
        let current = inner.current;
        inner.keys.retain(|id, _| *id == current);
    }

    /// A 32-byte key for `purpose`, derived from the current data key with keyed BLAKE2b used as
    /// a PRF. Different purposes get independent keys.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use blake2::digest::{FixedOutput, KeyInit, Update};
        type Prf = blake2::Blake2bMac<blake2::digest::consts::U32>;
        let inner = self.read();
        let key = inner
            .keys
            .get(&inner.current)
            .expect("the current key is always held");
        let mut prf = <Prf as KeyInit>::new_from_slice(key.as_ref())
            .expect("32 bytes is a valid BLAKE2b key");
        prf.update(b"pigeon key derivation v1\0");
        prf.update(purpose.as_bytes());
        prf.finalize_fixed().into()
    }

    /// Seals `plaintext` for `table`/`row` under the current key; returns the key id and the blob.
    pub fn seal(&self, table: &str, row: &str, plaintext: &[u8]) -> (u32, Vec<u8>) {
        // One look at the set: the id returned is the key that sealed, even if a rekey installs
        // another one meanwhile.
        let inner = self.read();
        let key = inner
            .keys
            .get(&inner.current)
            .expect("the current key is always held");
        (
            inner.current,
            seal_with(key, inner.current, table, row, plaintext),
        )
    }

    /// Like [`AtRest::seal`], under the key `key_id` (so that a row's parts share its key);
    /// `None` if that key is not held.
    pub fn seal_under(
        &self,
        key_id: u32,
        table: &str,
        row: &str,
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let inner = self.read();
        let key = inner.keys.get(&key_id)?;
        Some(seal_with(key, key_id, table, row, plaintext))
    }

    /// Opens a blob made by [`AtRest::seal`] for the same table, row and key id.
    pub fn open(
        &self,
        table: &str,
        row: &str,
        key_id: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, AtRestError> {
        let inner = self.read();
        let key = inner
            .keys
            .get(&key_id)
            .ok_or_else(|| AtRestError::UnknownKey {
                table: table.to_owned(),
                row: row.to_owned(),
                key_id,
            })?;
        let tampered = || AtRestError::Tampered {
            table: table.to_owned(),
            row: row.to_owned(),
        };
        if blob.len() < NONCE_LEN {
            return Err(tampered());
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let aad = associated_data(table, row, key_id);
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| tampered())
    }
}

fn seal_with(key: &[u8; 32], key_id: u32, table: &str, row: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    // The thread's CSPRNG (ChaCha, seeded and reseeded from the OS): 192 random bits name each
    // seal uniquely, without a system call per row.
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.into());
    let aad = associated_data(table, row, key_id);
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 seals anything under 256 GiB, and rows are far smaller");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    key
}

fn associated_data(table: &str, row: &str, key_id: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + table.len() + row.len());
    aad.extend_from_slice(b"pigeon/at-rest/1\0");
    aad.extend_from_slice(table.as_bytes());
    aad.push(0);
    aad.extend_from_slice(row.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&key_id.to_le_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let keys = AtRest::generate();
        let (id, blob) = keys.seal("inbox", "m1", b"secret body");
        assert_eq!(
            keys.open("inbox", "m1", id, &blob).expect("opens"),
            b"secret body"
        );
        assert!(
            !blob.windows(6).any(|w| w == b"secret"),
            "plaintext visible in blob"
        );
        assert!(matches!(
            keys.open("inbox", "m2", id, &blob),
            Err(AtRestError::Tampered { .. })
        ));
        assert!(matches!(
            keys.open("outbox", "m1", id, &blob),
            Err(AtRestError::Tampered { .. })
        ));
        assert!(matches!(
            keys.open("inbox", "m1", 9, &blob),
            Err(AtRestError::UnknownKey { .. })
        ));
        let mut flipped = blob.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            keys.open("inbox", "m1", id, &flipped),
            Err(AtRestError::Tampered { .. })
        ));
        assert!(matches!(
            keys.open("inbox", "m1", id, &blob[..10]),
            Err(AtRestError::Tampered { .. })
        ));
    }
}
