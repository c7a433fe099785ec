//! The node's keys: identity (ed25519, gives the PeerId), encryption key (X25519, for HPKE) and the
//! data-encryption keys that seal what the store keeps at rest.
//!
//! They live together in the keystore file, sealed under a key derived from the passphrase
//! (see [`keystore`]); [`Keys`] is the unlocked form a node holds in memory.

pub mod address;
pub mod at_rest;
pub mod keystore;
pub mod one_time;

use std::sync::Arc;

use hpke::Kem as _;
use hpke::kem::X25519HkdfSha256;
use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::exit::ErrorKind;
use crate::home::HomeError;
use address::Address;
use at_rest::AtRest;

/// The HPKE KEM used for message sealing.
pub type Kem = X25519HkdfSha256;
/// An X25519 private key in the form the `hpke` crate takes.
pub type EncSecret = <Kem as hpke::Kem>::PrivateKey;
/// An X25519 public key in the form the `hpke` crate takes.
pub type EncPublic = <Kem as hpke::Kem>::PublicKey;

/// Errors opening or writing the keystore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The passphrase does not open the keystore.
    #[error("wrong passphrase for {0}")]
    WrongPassphrase(std::path::PathBuf),
    /// The file's checksum or structure is wrong: it was damaged or tampered with.
    #[error("keystore {path} is damaged or was tampered with ({reason}); restore it from a backup")]
    Damaged {
        /// The keystore file.
        path: std::path::PathBuf,
        /// What did not check out.
        reason: String,
    },
    /// The file asks for key-derivation work beyond what pigeon accepts.
    #[error("keystore {path} asks for KDF parameters beyond pigeon's limits ({reason})")]
    KdfLimits {
        /// The keystore file.
        path: std::path::PathBuf,
        /// Which parameter is out of range.
        reason: String,
    },
    /// A stored row's key id is not in the keystore, or its seal does not open.
    #[error(transparent)]
    AtRest(#[from] at_rest::AtRestError),
    /// Reading or writing the file failed.
    #[error(transparent)]
    Io(#[from] HomeError),
    /// A rekey stopped short of its end.
    #[error("the rekey could not finish ({0}); `pigeon keys rekey --resume` carries on")]
    Rekey(String),
}

impl KeysError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            KeysError::WrongPassphrase(_) => ErrorKind::Passphrase,
            KeysError::Damaged { .. } | KeysError::AtRest(_) => ErrorKind::Corrupt,
            KeysError::KdfLimits { .. } => ErrorKind::Corrupt,
            KeysError::Io(e) => e.kind(),
            KeysError::Rekey(_) => ErrorKind::Other,
        }
    }
}

/// The unlocked keys of a node.
pub struct Keys {
    identity: Keypair,
    enc_secret: EncSecret,
    enc_public: EncPublic,
    at_rest: AtRest,
    /// What the passphrase derived, when the keys came from the keystore: a rekey writes the
    /// keystore again with it.
    wrapping: std::sync::RwLock<Option<Arc<keystore::Wrapping>>>,
}

impl Keys {
    /// Fresh keys for a new node: identity, encryption key and a first data-encryption key.
    pub fn generate() -> Keys {
        let mut rng = rand_core09::UnwrapErr(rand_core09::OsRng);
        let (enc_secret, enc_public) = Kem::gen_keypair(&mut rng);
        Keys {
            identity: Keypair::generate_ed25519(),
            enc_secret,
            enc_public,
            at_rest: AtRest::generate(),
            wrapping: Default::default(),
        }
    }

    pub(crate) fn from_parts(
        identity: Keypair,
        enc_secret: EncSecret,
        enc_public: EncPublic,
        at_rest: AtRest,
    ) -> Keys {
        Keys {
            identity,
            enc_secret,
            enc_public,
            at_rest,
            wrapping: Default::default(),
        }
    }

    /// What the passphrase that unlocked these keys derived (`None` for keys made in memory).
    pub fn wrapping(&self) -> Option<Arc<keystore::Wrapping>> {
        self.wrapping.read().map_or(None, |w| w.clone())
    }

    /// Records the wrapping the keystore is now written under.
    pub(crate) fn set_wrapping(&self, wrapping: keystore::Wrapping) {
        if let Ok(mut w) = self.wrapping.write() {
            *w = Some(Arc::new(wrapping));
        }
    }

    /// The libp2p identity.
    pub fn identity(&self) -> &Keypair {
        &self.identity
    }
    /// The node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.identity.public().to_peer_id()
    }
    /// The X25519 secret for opening messages.
    pub(crate) fn enc_secret(&self) -> &EncSecret {
        &self.enc_secret
    }
    /// The X25519 public key others seal to.
    pub fn enc_public(&self) -> &EncPublic {
        &self.enc_public
    }
    /// The data-encryption keys.
    pub fn at_rest(&self) -> &AtRest {
        &self.at_rest
    }
    /// The address to give to contacts.
    pub fn address(&self) -> Address {
        Address::new(self.identity.public(), self.enc_public.clone())
    }
}
