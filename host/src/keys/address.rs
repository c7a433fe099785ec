//! The contact address: one copy-pasteable string that carries a node's identity key (and so its
//! PeerId) and its X25519 encryption key.
//!
//! Format: bech32m (BIP-350) with the human-readable part `pigeon` over
//! `version (1) || ed25519 public key (32) || X25519 public key (32)`. The bech32m checksum catches
//! any single typo and most longer ones, and the string survives being read aloud (one case, no
//! look-alike characters).

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use hpke::{Deserializable, Serializable};
use libp2p::PeerId;
use libp2p::identity::{PublicKey, ed25519};

use super::EncPublic;

const HRP: &str = "pigeon";
const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 32 + 32;

/// Why an address string was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Not bech32m, or the checksum does not match.
    #[error(
        "not a valid pigeon address (a character is wrong or missing): {0}; copy the whole `address:` line that `pigeon id` prints"
    )]
    Checksum(String),
    /// A libp2p PeerId where the address belongs.
    #[error(
        "this is a PeerId, not a pigeon address: give the `address:` line (pigeon1...) that `pigeon id` prints on the contact's machine; it carries the PeerId and the encryption key"
    )]
    PeerIdGiven,
    /// A bech32m string for something else.
    #[error("not a pigeon address: it must start with `pigeon1`")]
    WrongPrefix,
    /// A version or length this pigeon does not know.
    #[error("unsupported pigeon address (version {version}, {len} bytes); is this pigeon older?")]
    Unsupported {
        /// The version byte.
        version: u8,
        /// The payload length.
        len: usize,
    },
    /// The keys inside do not decode.
    #[error("pigeon address carries an invalid key")]
    BadKey,
    /// The X25519 key decodes but nothing can be sealed to it (a low-order point).
    #[error(
        "pigeon address carries an unusable encryption key (a low-order X25519 point, which no message can be sealed to); this is not an address `pigeon id` prints"
    )]
    UnusableKey,
}

/// A parsed contact address.
#[derive(Clone)]
pub struct Address {
    identity: PublicKey,
    enc: EncPublic,
}

impl Address {
    /// An address from its two public keys.
    pub fn new(identity: PublicKey, enc: EncPublic) -> Address {
        Address { identity, enc }
    }
    /// The PeerId this address belongs to.
    pub fn peer_id(&self) -> PeerId {
        self.identity.to_peer_id()
    }
    /// The X25519 public key messages to this node are sealed to.
    pub fn enc_public(&self) -> &EncPublic {
        &self.enc
    }
    /// The identity key (ed25519) that signs what this node hands out.
    pub fn identity(&self) -> &PublicKey {
        &self.identity
    }

    fn payload(&self) -> Vec<u8> {
        let ed = self
            .identity
            .clone()
            .try_into_ed25519()
            .map(|k| k.to_bytes())
            .unwrap_or([0; 32]);
        let mut out = Vec::with_capacity(PAYLOAD_LEN);
        out.push(VERSION);
        out.extend_from_slice(&ed);
        out.extend_from_slice(&self.enc.to_bytes());
        out
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hrp = Hrp::parse_unchecked(HRP);
        let s = bech32::encode::<Bech32m>(hrp, &self.payload()).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Address, AddressError> {
        let address = Address::decode(s)?;
        if !crate::envelope::can_seal_to(&address.enc) {
            return Err(AddressError::UnusableKey);
        }
        Ok(address)
    }
}

impl Address {
    /// An address this node checked in full when it was first given (a contact's, read back from
    /// the store, whose seal vouches for it): decoded without trying a seal to its key again,
    /// which costs three X25519 operations and would be paid on every batch received.
    pub(crate) fn parse_stored(s: &str) -> Result<Address, AddressError> {
        Address::decode(s)
    }

    /// Checksum, prefix, version, length and both keys' encodings.
    fn decode(s: &str) -> Result<Address, AddressError> {
        let s = s.trim();
        if s.parse::<libp2p::PeerId>().is_ok() {
            return Err(AddressError::PeerIdGiven);
        }
        let checked = CheckedHrpstring::new::<Bech32m>(s)
            .map_err(|e| AddressError::Checksum(e.to_string()))?;
        if checked.hrp().to_lowercase() != HRP {
            return Err(AddressError::WrongPrefix);
        }
        let data: Vec<u8> = checked.byte_iter().collect();
        let version = data.first().copied().unwrap_or(0);
        if version != VERSION || data.len() != PAYLOAD_LEN {
            return Err(AddressError::Unsupported {
                version,
                len: data.len(),
            });
        }
        let ed =
            ed25519::PublicKey::try_from_bytes(&data[1..33]).map_err(|_| AddressError::BadKey)?;
        let enc = EncPublic::from_bytes(&data[33..65]).map_err(|_| AddressError::BadKey)?;
        Ok(Address {
            identity: ed.into(),
            enc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    #[test]
    fn round_trips_and_carries_peer_id() {
        let keys = Keys::generate();
        let text = keys.address().to_string();
        assert!(text.starts_with("pigeon1"), "{text}");
        let parsed: Address = text.parse().expect("parses");
        assert_eq!(parsed.peer_id(), keys.peer_id());
        assert_eq!(parsed.enc_public().to_bytes(), keys.enc_public().to_bytes());
        let upper: Address = text.to_uppercase().parse().expect("case-insensitive");
        assert_eq!(upper.peer_id(), keys.peer_id());
    }

    #[test]
    fn every_single_typo_is_caught() {
        let text = Keys::generate().address().to_string();
        let alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
        for (i, c) in text.char_indices().skip(HRP.len() + 1) {
            let other = alphabet
                .chars()
                .find(|&a| a != c)
                .expect("alphabet has two letters");
            let mut typo = text.clone();
            typo.replace_range(i..i + 1, &other.to_string());
            assert!(typo.parse::<Address>().is_err(), "typo at {i} accepted");
        }
        assert!(
            text[..text.len() - 1].parse::<Address>().is_err(),
            "truncation accepted"
        );
    }

    #[test]
    fn other_strings_are_refused_with_a_reason() {
        assert!(matches!(
            "hello".parse::<Address>(),
            Err(AddressError::Checksum(_))
        ));
        let other = bech32::encode::<Bech32m>(Hrp::parse_unchecked("other"), &[1; PAYLOAD_LEN])
            .expect("encodes");
        assert!(matches!(
            other.parse::<Address>(),
            Err(AddressError::WrongPrefix)
        ));
        let short =
            bech32::encode::<Bech32m>(Hrp::parse_unchecked(HRP), &[1; 10]).expect("encodes");
        assert!(matches!(
            short.parse::<Address>(),
            Err(AddressError::Unsupported { .. })
        ));
        // Low-order X25519 points (zero, one, and one of order 8): every shared secret would be
        // zero, so nothing can be sealed to them; `contacts add` refuses them here.
        let identity = Keys::generate().identity().public();
        for point in [
            [0u8; 32],
            {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            },
            hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        ] {
            let enc = EncPublic::from_bytes(&point).expect("32 bytes decode");
            let text = Address::new(identity.clone(), enc).to_string();
            assert!(
                matches!(text.parse::<Address>(), Err(AddressError::UnusableKey)),
                "{point:?}"
            );
        }
        let peer_id = Keys::generate().peer_id().to_string();
        let e = peer_id.parse::<Address>().expect_err("a PeerId");
        assert!(matches!(e, AddressError::PeerIdGiven));
        assert!(e.to_string().contains("pigeon id"), "{e}");
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }
}
