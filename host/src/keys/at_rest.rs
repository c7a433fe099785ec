//! Sealing of stored rows under data-encryption keys (DEKs) with XChaCha20-Poly1305.
//!
//! Each sealed value is `nonce (24 bytes) || ciphertext+tag`. The associated data binds the table,
//! the row id and the key id, so a sealed value moved to another row or relabelled with another key id
//! does not open. Every row records the key id it was sealed under, so a later rekey can re-seal rows
//! in batches and resume after a crash.

use std::collections::BTreeMap;

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

/// The set of data-encryption keys, one of them current.
pub struct AtRest {
    current: u32,
    keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl AtRest {
    /// A fresh set with one random key, id 1.
    pub fn generate() -> AtRest {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        AtRest {
            current: 1,
            keys: BTreeMap::from([(1, key)]),
        }
    }

    pub(crate) fn from_parts(current: u32, keys: BTreeMap<u32, Zeroizing<[u8; 32]>>) -> AtRest {
        AtRest { current, keys }
    }

    pub(crate) fn parts(&self) -> (u32, &BTreeMap<u32, Zeroizing<[u8; 32]>>) {
        (self.current, &self.keys)
    }

    /// A 32-byte key for `purpose`, derived from the current data key with keyed BLAKE2b used as
    /// a PRF. Different purposes get independent keys.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use blake2::digest::{FixedOutput, KeyInit, Update};
        type Prf = blake2::Blake2bMac<blake2::digest::consts::U32>;
        let mut prf = <Prf as KeyInit>::new_from_slice(self.keys[&self.current].as_ref())
            .expect("32 bytes is a valid BLAKE2b key");
        prf.update(b"pigeon key derivation v1\0");
        prf.update(purpose.as_bytes());
        prf.finalize_fixed().into()
    }

    /// Seals `plaintext` for `table`/`row` under the current key; returns the key id and the blob.
    pub fn seal(&self, table: &str, row: &str, plaintext: &[u8]) -> (u32, Vec<u8>) {
        let key_id = self.current;
        let sealed = self
            .seal_under(key_id, table, row, plaintext)
            .expect("the current key is always held");
        (key_id, sealed)
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
        let key = self.keys.get(&key_id)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
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
        Some(out)
    }

    /// Opens a blob made by [`AtRest::seal`] for the same table, row and key id.
    pub fn open(
        &self,
        table: &str,
        row: &str,
        key_id: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, AtRestError> {
        let key = self
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
