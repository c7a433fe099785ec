//! The keystore file: every secret of a node, sealed under a key derived from the passphrase.
//!
//! Layout (CBOR): `{magic, version, header: bytes, sealed: bytes, checksum: bytes}`.
//! - `header` is itself CBOR: the argon2id parameters and salt, the XChaCha20-Poly1305 nonce and the
//!   public keys (so `pigeon id` can answer without the passphrase). It is the associated data of
//!   the seal, so changing any of it makes unlocking fail.
//! - `sealed` holds the secrets (identity seed, X25519 secret, data-encryption keys).
//! - `checksum` is blake2b-256 over header and sealed. It tells a damaged file ("restore from a
//!   backup") from a wrong passphrase, which an AEAD alone cannot.
//!
//! KDF parameters read back from a file are capped, so a hostile file cannot make unlocking take
//! hours or all memory. The file is written atomically (see [`crate::home::write_atomic`]).

use std::collections::BTreeMap;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2b, Digest, digest::consts::U32};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hpke::{Deserializable, Serializable};
use libp2p::identity::{Keypair, PublicKey, ed25519};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::address::Address;
use super::at_rest::AtRest;
use super::{EncPublic, EncSecret, Keys, KeysError};
use crate::home::{HomeError, write_atomic};

const MAGIC: &str = "pigeon-keystore";
const VERSION: u32 = 1;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: OWASP's argon2id floor, about 0.2 s on these machines.
    fn default() -> Self {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl KdfParams {
    /// The most a keystore may ask for when it is read back.
    const MAX: KdfParams = KdfParams {
        m_kib: 1024 * 1024,
        t: 16,
        p: 8,
    };
    /// The least: below this a stolen file is too cheap to attack.
    const MIN: KdfParams = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };

    fn check(&self) -> Result<(), String> {
        let within = |name: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}={v}, allowed {lo}..={hi}"))
            }
        };
        within("m_kib", self.m_kib, Self::MIN.m_kib, Self::MAX.m_kib)?;
        within("t", self.t, Self::MIN.t, Self::MAX.t)?;
        within("p", self.p, Self::MIN.p, Self::MAX.p)
    }

    fn derive(&self, passphrase: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
        let params =
            Params::new(self.m_kib, self.t, self.p, Some(32)).map_err(|e| e.to_string())?;
        let mut kek = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), salt, kek.as_mut())
            .map_err(|e| e.to_string())?;
        Ok(kek)
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    magic: String,
    version: u32,
    #[serde(with = "serde_bytes")]
    header: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sealed: Vec<u8>,
    #[serde(with = "serde_bytes")]
    checksum: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    kdf: KdfParams,
    #[serde(with = "serde_bytes")]
    salt: Vec<u8>,
    #[serde(with = "serde_bytes")]
    nonce: Vec<u8>,
    #[serde(with = "serde_bytes")]
    identity_public: Vec<u8>,
    #[serde(with = "serde_bytes")]
    enc_public: Vec<u8>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Secrets {
    #[serde(with = "serde_bytes")]
    identity_seed: Vec<u8>,
    #[serde(with = "serde_bytes")]
    enc_secret: Vec<u8>,
    current_dek: u32,
    deks: Vec<Dek>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Dek {
    id: u32,
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
}

/// What a passphrase gives: the KDF parameters, the salt and the key derived from them. Kept by
/// an unlocked node so that a rekey can write the keystore again when it drops the old data key,
/// without asking for the passphrase again (it opens nothing the node does not hold already).
pub struct Wrapping {
    kdf: KdfParams,
    salt: Vec<u8>,
    kek: Zeroizing<[u8; 32]>,
}

impl Wrapping {
    /// A wrapping for `passphrase` with a fresh salt; `Err` with the reason if `kdf` is out of
    /// bounds.
    pub fn new(passphrase: &str, kdf: KdfParams) -> Result<Wrapping, String> {
        kdf.check()?;
        let mut salt = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let kek = kdf.derive(passphrase, &salt)?;
        Ok(Wrapping { kdf, salt, kek })
    }

    /// Its KDF parameters.
    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }
}

/// Seals `keys` under `passphrase` and writes the keystore at `path` atomically.
pub fn write(path: &Path, keys: &Keys, passphrase: &str, kdf: KdfParams) -> Result<(), KeysError> {
    let wrapping = Wrapping::new(passphrase, kdf).map_err(|reason| KeysError::KdfLimits {
        path: path.to_owned(),
        reason,
    })?;
    let (current, deks) = keys.at_rest().parts();
    write_parts(path, keys, current, &deks, &wrapping)
}

/// Writes the keystore at `path` atomically: `keys` with the data keys `deks` (`current` the
/// current one), under `wrapping` with a fresh nonce.
fn write_parts(
    path: &Path,
    keys: &Keys,
    current: u32,
    deks: &BTreeMap<u32, Zeroizing<[u8; 32]>>,
    wrapping: &Wrapping,
) -> Result<(), KeysError> {
    let mut nonce = vec![0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let secrets = secrets_of(keys, current, deks)?;
    let plain = Zeroizing::new(to_cbor(&secrets));
    let address = keys.address();
    let identity_public = keys
        .identity()
        .public()
        .try_into_ed25519()
        .map(|k| k.to_bytes().to_vec());
    let header = to_cbor(&Header {
        kdf: wrapping.kdf,
        salt: wrapping.salt.clone(),
        nonce: nonce.clone(),
        identity_public: identity_public.unwrap_or_default(),
        enc_public: address.enc_public().to_bytes().to_vec(),
    });
    let sealed = XChaCha20Poly1305::new(wrapping.kek.as_ref().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &header,
            },
        )
        .expect("XChaCha20-Poly1305 seals anything under 256 GiB");
    let checksum = checksum(&header, &sealed);
    let file = File {
        magic: MAGIC.to_owned(),
        version: VERSION,
        header,
        sealed,
        checksum,
    };
    write_atomic(path, &to_cbor(&file))?;
    Ok(())
}

/// Where a passphrase change writes the new keystore before it replaces the old one.
pub fn pending_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// The first half of a passphrase change, in restic's order. The keystore, with a fresh data key
/// added as the current one, is written under `new` beside the old file ([`pending_path`],
/// atomically), read back and opened, and only then renamed over the old file (and the directory
/// synced). A crash before the rename leaves the old keystore and a pending file that opens with
/// the new passphrase but holds a key nothing uses; a crash after it, the new keystore. Either
/// way exactly one passphrase opens `path`.
///
/// Returns the new data key; the caller installs it ([`super::at_rest::AtRest::install`]) and
/// rekeys.
pub fn rewrap(path: &Path, keys: &Keys, new: &Wrapping) -> Result<super::at_rest::Dek, KeysError> {
    let dek = keys.at_rest().next_key();
    let (_, mut deks) = keys.at_rest().parts();
    deks.insert(dek.0, dek.1.clone());
    let pending = pending_path(path);
    write_parts(&pending, keys, dek.0, &deks, new)?;
    let reopened = open_with(&pending, &new.kek)?;
    if reopened.peer_id() != keys.peer_id() || reopened.at_rest().current() != dek.0 {
        return Err(KeysError::Damaged {
            path: pending,
            reason: "the new keystore does not read back as written".into(),
        });
    }
    std::fs::rename(&pending, path).map_err(|e| HomeError::io("renaming into", path, e))?;
    crate::home::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(dek)
}

/// Writes the keystore at `path` again under `wrapping`, holding only the current data key: the
/// end of a rekey, when nothing is sealed under the others any more.
pub fn drop_old_keys(path: &Path, keys: &Keys, wrapping: &Wrapping) -> Result<(), KeysError> {
    let (current, mut deks) = keys.at_rest().parts();
    deks.retain(|id, _| *id == current);
    write_parts(path, keys, current, &deks, wrapping)
}

/// What the keystore says without the passphrase: its format version and KDF parameters.
pub fn describe(path: &Path) -> Result<(u32, KdfParams), KeysError> {
    let file = read_file(path)?;
    let header = from_header(path, &file.header)?;
    Ok((file.version, header.kdf))
}

/// Reads the public half of the keystore without the passphrase (for `pigeon id`).
pub fn read_public(path: &Path) -> Result<Address, KeysError> {
    let file = read_file(path)?;
    let header = from_header(path, &file.header)?;
    public_of(path, &header)
}

/// Opens the keystore with `passphrase`.
/// The keys remember what the passphrase derived ([`Keys::wrapping`]).
pub fn unlock(path: &Path, passphrase: &str) -> Result<Keys, KeysError> {
    let (keys, wrapping) = unlock_wrapped(path, passphrase)?;
    keys.set_wrapping(wrapping);
    Ok(keys)
}

/// Opens the keystore with `passphrase`, and returns what the passphrase derived too.
pub fn unlock_wrapped(path: &Path, passphrase: &str) -> Result<(Keys, Wrapping), KeysError> {
    unlock_file(path, read_file(path)?, passphrase)
}

/// Opens a keystore held in memory (one inside a backup); `label` names it in errors.
pub fn unlock_bytes(label: &Path, bytes: &[u8], passphrase: &str) -> Result<Keys, KeysError> {
    let (keys, wrapping) = unlock_file(label, parse_file(label, bytes)?, passphrase)?;
    keys.set_wrapping(wrapping);
    Ok(keys)
}

fn unlock_file(path: &Path, file: File, passphrase: &str) -> Result<(Keys, Wrapping), KeysError> {
    let header = from_header(path, &file.header)?;
    header.kdf.check().map_err(|reason| KeysError::KdfLimits {
        path: path.to_owned(),
        reason,
    })?;
    let kek = header
        .kdf
        .derive(passphrase, &header.salt)
        .map_err(|reason| KeysError::KdfLimits {
            path: path.to_owned(),
            reason,
        })?;
    let keys = open_file(path, &file, &header, &kek)?;
    Ok((
        keys,
        Wrapping {
            kdf: header.kdf,
            salt: header.salt,
            kek,
        },
    ))
}

/// Opens the keystore at `path` with a key already derived.
fn open_with(path: &Path, kek: &[u8; 32]) -> Result<Keys, KeysError> {
    let file = read_file(path)?;
    let header = from_header(path, &file.header)?;
    open_file(path, &file, &header, kek)
}

fn open_file(path: &Path, file: &File, header: &Header, kek: &[u8; 32]) -> Result<Keys, KeysError> {
    let damaged = |reason: &str| KeysError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if header.nonce.len() != 24 {
        return Err(damaged("bad nonce length"));
    }
    let plain = XChaCha20Poly1305::new(kek.into())
        .decrypt(
            XNonce::from_slice(&header.nonce),
            Payload {
                msg: &file.sealed,
                aad: &file.header,
            },
        )
        .map_err(|_| KeysError::WrongPassphrase(path.to_owned()))?;
    let plain = Zeroizing::new(plain);
    let secrets: Secrets =
        ciborium::from_reader(plain.as_slice()).map_err(|_| damaged("secrets"))?;
    let keys = keys_of(&secrets).ok_or_else(|| damaged("secret keys do not decode"))?;
    let public = public_of(path, header)?;
    if public.peer_id() != keys.peer_id() || public.enc_public() != keys.enc_public() {
        return Err(damaged("public keys do not match the secret ones"));
    }
    Ok(keys)
}

fn read_file(path: &Path) -> Result<File, KeysError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            HomeError::NotInitialised(path.parent().unwrap_or(path).to_owned())
        }
        _ => HomeError::io("reading", path, e),
    })?;
    parse_file(path, &bytes)
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<File, KeysError> {
    let damaged = |reason: &str| KeysError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    // A keystore is a few hundred bytes; anything large is not one.
    if bytes.len() > 64 * 1024 {
        return Err(damaged("file too large"));
    }
    let file: File = ciborium::from_reader(bytes).map_err(|_| damaged("not a keystore"))?;
    if file.magic != MAGIC {
        return Err(damaged("not a keystore"));
    }
    if file.version != VERSION {
        return Err(damaged(&format!(
            "unknown keystore version {}",
            file.version
        )));
    }
    if checksum(&file.header, &file.sealed) != file.checksum {
        return Err(damaged("checksum mismatch"));
    }
    Ok(file)
}

fn from_header(path: &Path, bytes: &[u8]) -> Result<Header, KeysError> {
    ciborium::from_reader(bytes).map_err(|_| KeysError::Damaged {
        path: path.to_owned(),
        reason: "header does not decode".to_owned(),
    })
}

fn public_of(path: &Path, header: &Header) -> Result<Address, KeysError> {
    let damaged = || KeysError::Damaged {
        path: path.to_owned(),
        reason: "public keys".to_owned(),
    };
    let ed = ed25519::PublicKey::try_from_bytes(&header.identity_public).map_err(|_| damaged())?;
    let enc = EncPublic::from_bytes(&header.enc_public).map_err(|_| damaged())?;
    Ok(Address::new(PublicKey::from(ed), enc))
}

fn secrets_of(
    keys: &Keys,
    current_dek: u32,
    deks: &BTreeMap<u32, Zeroizing<[u8; 32]>>,
) -> Result<Secrets, KeysError> {
    let ed = keys
        .identity()
        .clone()
        .try_into_ed25519()
        .map_err(|_| KeysError::Damaged {
            path: Default::default(),
            reason: "identity is not ed25519".to_owned(),
        })?;
    Ok(Secrets {
        identity_seed: ed.secret().as_ref().to_vec(),
        enc_secret: keys.enc_secret().to_bytes().to_vec(),
        current_dek,
        deks: deks
            .iter()
            .map(|(id, key)| Dek {
                id: *id,
                key: key.to_vec(),
            })
            .collect(),
    })
}

fn keys_of(secrets: &Secrets) -> Option<Keys> {
    let mut seed = Zeroizing::new(secrets.identity_seed.clone());
    let identity = Keypair::ed25519_from_bytes(seed.as_mut_slice()).ok()?;
    let enc_secret = EncSecret::from_bytes(&secrets.enc_secret).ok()?;
    let enc_public = <super::Kem as hpke::Kem>::sk_to_pk(&enc_secret);
    let mut deks = BTreeMap::new();
    for dek in &secrets.deks {
        let key: [u8; 32] = dek.key.as_slice().try_into().ok()?;
        deks.insert(dek.id, Zeroizing::new(key));
    }
    deks.get(&secrets.current_dek)?;
    Some(Keys::from_parts(
        identity,
        enc_secret,
        enc_public,
        AtRest::from_parts(secrets.current_dek, deks),
    ))
}

fn checksum(header: &[u8], sealed: &[u8]) -> Vec<u8> {
    let mut h = Blake2b::<U32>::new();
    h.update((header.len() as u64).to_le_bytes());
    h.update(header);
    h.update(sealed);
    h.finalize().to_vec()
}

fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempfile::TempDir, std::path::PathBuf, Keys) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keystore");
        let keys = Keys::generate();
        write(&path, &keys, "correct horse", KdfParams::default()).expect("write");
        (dir, path, keys)
    }

    #[test]
    fn unlocks_with_the_right_passphrase_only() {
        let (_dir, path, keys) = fixture();
        let opened = unlock(&path, "correct horse").expect("unlock");
        assert_eq!(opened.peer_id(), keys.peer_id());
        let (_, sealed) = opened.at_rest().seal("t", "r", b"x");
        assert_eq!(
            keys.at_rest().open("t", "r", 1, &sealed).expect("same DEK"),
            b"x"
        );
        assert!(matches!(
            unlock(&path, "wrong horse"),
            Err(KeysError::WrongPassphrase(_))
        ));
        assert_eq!(
            read_public(&path).expect("public").peer_id(),
            keys.peer_id()
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (_dir, path, _keys) = fixture();
        let original = std::fs::read(&path).expect("read");
        for i in 0..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 0x01;
            std::fs::write(&path, &bytes).expect("write");
            // The checksum covers everything, so tampering reads as damage, not as a wrong passphrase.
            match unlock(&path, "correct horse") {
                Err(KeysError::Damaged { .. }) => {}
                Err(other) => panic!("byte {i}: unexpected error {other}"),
                Ok(_) => panic!("byte {i}: tampered keystore opened"),
            }
        }
    }

    #[test]
    fn a_new_keystore_records_the_documented_kdf_cost() {
        // README and threat model: argon2id, 64 MiB, 3 passes. `pigeon init` writes with the
        // defaults; weakening them must fail here.
        let (_dir, path, _keys) = fixture();
        let file = read_file(&path).expect("file");
        let header = from_header(&path, &file.header).expect("header");
        assert_eq!(
            (header.kdf.m_kib, header.kdf.t, header.kdf.p),
            (64 * 1024, 3, 1)
        );
    }

    #[test]
    fn hostile_kdf_parameters_are_capped() {
        let (_dir, path, _keys) = fixture();
        let mut file = read_file(&path).expect("file");
        let mut header = from_header(&path, &file.header).expect("header");
        header.kdf.m_kib = 64 * 1024 * 1024; // 64 GiB
        file.header = to_cbor(&header);
        file.checksum = checksum(&file.header, &file.sealed);
        std::fs::write(&path, to_cbor(&file)).expect("write");
        let err = unlock(&path, "correct horse").err().expect("refused");
        assert!(matches!(err, KeysError::KdfLimits { .. }), "{err}");
    }

    #[test]
    fn garbage_and_missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keystore");
        assert!(matches!(
            unlock(&path, "x"),
            Err(KeysError::Io(HomeError::NotInitialised(_)))
        ));
        std::fs::write(&path, b"not cbor at all").expect("write");
        assert!(matches!(unlock(&path, "x"), Err(KeysError::Damaged { .. })));
    }
}
