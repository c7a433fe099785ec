//! One-time X25519 keys for forward-secret messages.
//!
//! The recipient makes them, signs each with its identity (ed25519) for one contact, and hands
//! them to that contact; the contact seals one message to one key, and the recipient deletes the
//! key's secret once the message is stored. A later theft of either side's long-term keys then
//! opens no delivered message: the secret that could is gone. The signature binds the key to its
//! owner, to the one contact it is for, to its id and to its expiry, so a key cannot be forged,
//! moved to another contact, or kept alive past its time.

use hpke::{Deserializable, Kem as _, Serializable};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{EncPublic, EncSecret, Kem, Keys};
use crate::keys::address::Address;

/// Domain separation for the signed statement.
const DOMAIN: &[u8] = b"pigeon/one-time-key/1\0";
/// Length of an X25519 public key.
const PUBLIC_LEN: usize = 32;
/// Length of an ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// A one-time key as it travels: public, signed by its owner for one holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedKey {
    /// Its id, by which an envelope names it.
    #[serde(with = "serde_bytes")]
    pub id: [u8; 16],
    /// The X25519 public key.
    #[serde(with = "serde_bytes")]
    pub public: Vec<u8>,
    /// When it stops being usable (ms since the Unix epoch, the owner's clock).
    pub expires_at_ms: u64,
    /// The owner's ed25519 signature over the statement (owner, holder, id, key, expiry).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The secret half, kept by the owner until the one message sealed to it is stored.
pub struct OneTimeSecret {
    /// The key's id.
    pub id: [u8; 16],
    /// The X25519 secret.
    pub secret: EncSecret,
    /// When it expires.
    pub expires_at_ms: u64,
}

/// Why a one-time key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OneTimeKeyError {
    /// The signature is missing, malformed, or not the owner's over this key for this holder.
    #[error("the one-time key is not signed by its owner for this node")]
    BadSignature,
    /// The key does not decode, or nothing can be sealed to it.
    #[error("the one-time key is not a usable X25519 key")]
    BadKey,
    /// Its time is past.
    #[error("the one-time key has expired")]
    Expired,
}

/// The bytes signed: the domain, then owner, holder, id, public key and expiry, each fixed-length
/// or length-prefixed, so that no two statements share an encoding.
fn statement(
    owner: &PeerId,
    holder: &PeerId,
    id: &[u8; 16],
    public: &[u8],
    expires_at_ms: u64,
) -> Vec<u8> {
    let mut out = DOMAIN.to_vec();
    for part in [owner.to_bytes(), holder.to_bytes()] {
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(&part);
    }
    out.extend_from_slice(id);
    out.extend_from_slice(&(public.len() as u16).to_be_bytes());
    out.extend_from_slice(public);
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out
}

/// Makes a one-time key for `holder`, valid until `expires_at_ms`, signed by `keys`' identity.
pub fn make(keys: &Keys, holder: &PeerId, expires_at_ms: u64) -> (OneTimeSecret, SignedKey) {
    let mut rng = rand_core09::UnwrapErr(rand_core09::OsRng);
    let (secret, public) = Kem::gen_keypair(&mut rng);
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    let public = public.to_bytes().to_vec();
    let signature = keys
        .identity()
        .sign(&statement(
            &keys.peer_id(),
            holder,
            &id,
            &public,
            expires_at_ms,
        ))
        .unwrap_or_default();
    (
        OneTimeSecret {
            id,
            secret,
            expires_at_ms,
        },
        SignedKey {
            id,
            public,
            expires_at_ms,
            signature,
        },
    )
}

/// Checks a one-time key that `owner` handed to `holder` (this node): the owner's signature over
/// it for this holder, a usable X25519 key, not expired at `now_ms`. Returns the key to seal to.
pub fn verify(
    key: &SignedKey,
    owner: &Address,
    holder: &PeerId,
    now_ms: u64,
) -> Result<EncPublic, OneTimeKeyError> {
    if key.signature.len() != SIGNATURE_LEN || key.public.len() != PUBLIC_LEN {
        return Err(OneTimeKeyError::BadSignature);
    }
    let signed = statement(
        &owner.peer_id(),
        holder,
        &key.id,
        &key.public,
        key.expires_at_ms,
    );
    if !owner.identity().verify(&signed, &key.signature) {
        return Err(OneTimeKeyError::BadSignature);
    }
    let public = EncPublic::from_bytes(&key.public).map_err(|_| OneTimeKeyError::BadKey)?;
    if !crate::envelope::can_seal_to(&public) {
        return Err(OneTimeKeyError::BadKey);
    }
    if key.expires_at_ms <= now_ms {
        return Err(OneTimeKeyError::Expired);
    }
    Ok(public)
}

/// The secret's bytes, to seal at rest.
pub fn secret_bytes(secret: &EncSecret) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(secret.to_bytes().to_vec())
}

/// A secret from its bytes (as sealed at rest).
pub fn secret_from_bytes(bytes: &[u8]) -> Option<EncSecret> {
    EncSecret::from_bytes(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Keys, Keys) {
        (Keys::generate(), Keys::generate())
    }

    #[test]
    fn a_key_checks_out_for_its_holder_only() {
        let (bob, alice) = pair();
        let (secret, key) = make(&bob, &alice.peer_id(), 2_000);
        let public = verify(&key, &bob.address(), &alice.peer_id(), 1_000).expect("sound");
        assert_eq!(public.to_bytes().to_vec(), key.public);
        assert_eq!(secret.id, key.id);
        // For another holder, from another owner, or too late: refused.
        let carol = Keys::generate();
        assert_eq!(
            verify(&key, &bob.address(), &carol.peer_id(), 1_000),
            Err(OneTimeKeyError::BadSignature)
        );
        assert_eq!(
            verify(&key, &carol.address(), &alice.peer_id(), 1_000),
            Err(OneTimeKeyError::BadSignature)
        );
        assert_eq!(
            verify(&key, &bob.address(), &alice.peer_id(), 2_000),
            Err(OneTimeKeyError::Expired)
        );
    }

    #[test]
    fn a_forged_or_altered_key_is_refused() {
        let (bob, alice) = pair();
        let (_, key) = make(&bob, &alice.peer_id(), u64::MAX);
        let check = |k: &SignedKey| verify(k, &bob.address(), &alice.peer_id(), 1);
        let mut unsigned = key.clone();
        unsigned.signature.clear();
        assert_eq!(check(&unsigned), Err(OneTimeKeyError::BadSignature));
        let mut other_id = key.clone();
        other_id.id[0] ^= 1;
        assert_eq!(check(&other_id), Err(OneTimeKeyError::BadSignature));
        let mut other_key = key.clone();
        other_key.public[5] ^= 1;
        assert_eq!(check(&other_key), Err(OneTimeKeyError::BadSignature));
        let mut shorter = key.clone();
        shorter.expires_at_ms -= 1;
        assert_eq!(check(&shorter), Err(OneTimeKeyError::BadSignature));
        let (_, near) = make(&bob, &alice.peer_id(), 1_000);
        let mut longer = near.clone();
        longer.expires_at_ms += 1;
        assert_eq!(
            verify(&longer, &bob.address(), &alice.peer_id(), 1),
            Err(OneTimeKeyError::BadSignature)
        );
        let mut short = key.clone();
        short.public.pop();
        assert_eq!(check(&short), Err(OneTimeKeyError::BadSignature));
        // A key made by someone else and signed by them is not bob's.
        let (_, mallory_key) = make(&Keys::generate(), &alice.peer_id(), u64::MAX);
        assert_eq!(check(&mallory_key), Err(OneTimeKeyError::BadSignature));
    }

    #[test]
    fn a_low_order_key_signed_by_its_owner_is_still_refused() {
        let (bob, alice) = pair();
        let public = vec![0u8; 32];
        let id = [7u8; 16];
        let signature = bob
            .identity()
            .sign(&statement(
                &bob.peer_id(),
                &alice.peer_id(),
                &id,
                &public,
                u64::MAX,
            ))
            .expect("sign");
        let key = SignedKey {
            id,
            public,
            expires_at_ms: u64::MAX,
            signature,
        };
        assert_eq!(
            verify(&key, &bob.address(), &alice.peer_id(), 1),
            Err(OneTimeKeyError::BadKey)
        );
    }
}
