//! Messages as they travel: a [`Payload`] sealed with HPKE into an [`Envelope`].
//!
//! Sealing is HPKE (RFC 9180) in auth mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305, through the `hpke` crate. Auth mode proves to the recipient that the sender
//! holds the X25519 key its contact address carries. The message id, time, subject and body are all
//! inside the seal; the associated data binds the sender's and the recipient's PeerIds, so an
//! envelope cannot be replayed as coming from someone else or redirected to another recipient.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use libp2p::PeerId;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::keys::{EncPublic, EncSecret, Kem, Keys};

/// Wire-format version inside `/pigeon/msg/1`.
pub const ENVELOPE_VERSION: u8 = 1;
/// The version of an envelope sealed to a one-time key of the recipient (forward secret).
pub const FS_ENVELOPE_VERSION: u8 = 2;
/// The HPKE `info` string: it separates pigeon's use of these keys from any other.
const INFO: &[u8] = b"pigeon/msg/1";
/// Largest body a message may carry (attachments travel separately).
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest subject.
pub const MAX_SUBJECT: usize = 1024;

/// A message id: 16 random bytes, shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(#[serde(with = "serde_bytes")] pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> MessageId {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        MessageId(id)
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What the sender wrote: everything here is secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The message id, which the receiver dedups on.
    pub id: MessageId,
    /// When the sender queued it (ms since the Unix epoch, sender's clock).
    pub sent_at_ms: u64,
    /// Optional subject.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
    /// Files sent with the message: manifests and content keys (the chunks travel separately).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::attachments::AttachmentRef>,
}

/// A sealed message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`ENVELOPE_VERSION`].
    pub v: u8,
    /// The sender's PeerId (bytes); must equal the connection's authenticated peer.
    #[serde(with = "serde_bytes")]
    pub sender: Vec<u8>,
    /// The HPKE encapsulated key.
    #[serde(with = "serde_bytes")]
    pub enc: Vec<u8>,
    /// The HPKE ciphertext of the CBOR-encoded [`Payload`].
    #[serde(with = "serde_bytes")]
    pub ct: Vec<u8>,
    /// For a forward-secret envelope ([`FS_ENVELOPE_VERSION`]), the id of the recipient's
    /// one-time key it is sealed to.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub otk: Option<Vec<u8>>,
}

/// Why an envelope did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A version this node does not speak.
    #[error("unknown envelope version")]
    Version,
    /// The sender field is not the peer the connection authenticated.
    #[error("envelope sender is not the connected peer")]
    WrongSender,
    /// The seal does not open: tampered, or not sealed by that sender for this node.
    #[error("envelope does not decrypt")]
    Decrypt,
    /// Opened, but the contents are malformed or too large.
    #[error("envelope payload is malformed")]
    Malformed,
    /// Sealed to a one-time key that was spent on this very envelope: a resend of a message
    /// already stored.
    #[error("a resend of a forward-secret message already stored")]
    AlreadyStored,
    /// Sealed to a one-time key this node does not hold (spent on another envelope, expired, or
    /// never handed to this sender).
    #[error("sealed to a one-time key this node does not hold")]
    OneTimeKeyGone,
}

/// What the seal binds besides the payload: both PeerIds and, for a forward-secret envelope, the
/// one-time key's id (so an envelope cannot be moved to another key's name).
fn associated_data(sender: &PeerId, recipient: &PeerId, otk: Option<&[u8; 16]>) -> Vec<u8> {
    let mut aad = sender.to_bytes();
    aad.extend_from_slice(&recipient.to_bytes());
    if let Some(id) = otk {
        aad.extend_from_slice(b"otk");
        aad.extend_from_slice(id);
    }
    aad
}

/// Seals `payload` from `keys` to the recipient with PeerId `to` and X25519 key `to_key`.
///
/// Fails only for a recipient key no message can be sealed to (see [`can_seal_to`]); addresses
/// are checked for that when they are parsed, so a contact's key fails here only if its stored
/// row was altered.
pub fn seal(
    keys: &Keys,
    to: &PeerId,
    to_key: &EncPublic,
    payload: &Payload,
) -> Result<Envelope, SealError> {
    seal_with(keys, to, to_key, payload, None)
}

/// Seals `payload` to one of the recipient's one-time keys (`otk_id`, `otk_public`): forward
/// secret, once the recipient has deleted that key's secret. Still auth mode: the recipient knows
/// the sender by its long-term key.
pub fn seal_forward_secret(
    keys: &Keys,
    to: &PeerId,
    otk_id: &[u8; 16],
    otk_public: &EncPublic,
    payload: &Payload,
) -> Result<Envelope, SealError> {
    seal_with(keys, to, otk_public, payload, Some(otk_id))
}

fn seal_with(
    keys: &Keys,
    to: &PeerId,
    to_key: &EncPublic,
    payload: &Payload,
    otk: Option<&[u8; 16]>,
) -> Result<Envelope, SealError> {
    let sender = keys.peer_id();
    let mut plain = Vec::new();
    ciborium::into_writer(payload, &mut plain).expect("CBOR encoding into a Vec cannot fail");
    let mode = OpModeS::Auth((keys.enc_secret().clone(), keys.enc_public().clone()));
    let sealed = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &mode,
        to_key,
        INFO,
        &plain,
        &associated_data(&sender, to, otk),
        &mut rand_core09::UnwrapErr(rand_core09::OsRng),
    )
    .map_err(|_| SealError);
    zeroize::Zeroize::zeroize(&mut plain);
    let (enc, ct) = sealed?;
    Ok(Envelope {
        v: if otk.is_some() {
            FS_ENVELOPE_VERSION
        } else {
            ENVELOPE_VERSION
        },
        sender: sender.to_bytes(),
        enc: enc.to_bytes().to_vec(),
        ct,
        otk: otk.map(|id| id.to_vec()),
    })
}

/// The recipient's X25519 key is one no message can be sealed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the contact's encryption key is unusable (a low-order X25519 point, which would make every shared secret zero); ask the contact for their address again"
)]
pub struct SealError;

/// Whether messages can be sealed to `key`. HPKE refuses an X25519 key whose Diffie-Hellman
/// results are all zero (the low-order points, RFC 9180 section 7.1.4), so a trial encapsulation
/// to a throwaway key pair tells.
pub fn can_seal_to(key: &EncPublic) -> bool {
    hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        key,
        INFO,
        &mut rand_core09::UnwrapErr(rand_core09::OsRng),
    )
    .is_ok()
}

/// Opens an envelope that arrived over a connection authenticated as `from`, whose X25519 key is
/// `from_key` (from the contact entry).
pub fn open(
    keys: &Keys,
    from: &PeerId,
    from_key: &EncPublic,
    env: &Envelope,
) -> Result<Payload, OpenError> {
    if env.v != ENVELOPE_VERSION || env.otk.is_some() {
        return Err(OpenError::Version);
    }
    open_with(
        keys.enc_secret(),
        &keys.peer_id(),
        from,
        from_key,
        env,
        None,
    )
}

/// The one-time key a forward-secret envelope is sealed to; `None` for any other envelope, or
/// `Err` for one that says it is forward secret but names no key properly.
pub fn one_time_key(env: &Envelope) -> Result<Option<[u8; 16]>, OpenError> {
    match (env.v, &env.otk) {
        (ENVELOPE_VERSION, None) => Ok(None),
        (FS_ENVELOPE_VERSION, Some(id)) => <[u8; 16]>::try_from(id.as_slice())
            .map(Some)
            .map_err(|_| OpenError::Malformed),
        (ENVELOPE_VERSION | FS_ENVELOPE_VERSION, _) => Err(OpenError::Malformed),
        _ => Err(OpenError::Version),
    }
}

/// The blake2b-256 of an envelope's ciphertext: what a spent one-time key's tombstone records.
pub fn envelope_hash(env: &Envelope) -> [u8; 32] {
    crate::attachments::hash(&env.ct)
}

/// Opens a forward-secret envelope with the secret of the one-time key it names (`recipient` is
/// this node's PeerId).
pub fn open_forward_secret(
    otk_secret: &EncSecret,
    recipient: &PeerId,
    from: &PeerId,
    from_key: &EncPublic,
    env: &Envelope,
) -> Result<Payload, OpenError> {
    let Some(id) = one_time_key(env)? else {
        return Err(OpenError::Version);
    };
    open_with(otk_secret, recipient, from, from_key, env, Some(&id))
}

fn open_with(
    secret: &EncSecret,
    recipient: &PeerId,
    from: &PeerId,
    from_key: &EncPublic,
    env: &Envelope,
    otk: Option<&[u8; 16]>,
) -> Result<Payload, OpenError> {
    if env.sender != from.to_bytes() {
        return Err(OpenError::WrongSender);
    }
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&env.enc).map_err(|_| OpenError::Decrypt)?;
    let mode = OpModeR::Auth(from_key.clone());
    let plain = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &mode,
        secret,
        &enc,
        INFO,
        &env.ct,
        &associated_data(from, recipient, otk),
    )
    .map_err(|_| OpenError::Decrypt)?;
    let plain = zeroize::Zeroizing::new(plain);
    let payload: Payload =
        ciborium::from_reader(plain.as_slice()).map_err(|_| OpenError::Malformed)?;
    if payload.body.len() > MAX_BODY
        || payload
            .subject
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SUBJECT)
    {
        return Err(OpenError::Malformed);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpke::Kem as _;
    use rand_core09::{CryptoRng, RngCore};

    fn payload(body: &str) -> Payload {
        Payload {
            id: MessageId::random(),
            sent_at_ms: 1,
            subject: Some("hi".into()),
            body: body.into(),
            attachments: vec![],
        }
    }

    #[test]
    fn a_forward_secret_envelope_opens_with_its_one_time_secret_only() {
        let (alice, bob) = (Keys::generate(), Keys::generate());
        let (secret, key) = crate::keys::one_time::make(&bob, &alice.peer_id(), u64::MAX);
        let public =
            crate::keys::one_time::verify(&key, &bob.address(), &alice.peer_id(), 1).expect("key");
        let msg = payload("forward secret");
        let env =
            seal_forward_secret(&alice, &bob.peer_id(), &key.id, &public, &msg).expect("seal");
        assert_eq!(env.v, FS_ENVELOPE_VERSION);
        assert_eq!(one_time_key(&env), Ok(Some(key.id)));
        let from = (&alice.peer_id(), alice.enc_public());
        let opened = open_forward_secret(&secret.secret, &bob.peer_id(), from.0, from.1, &env);
        assert_eq!(opened, Ok(msg));
        // Not with bob's long-term key, by either door.
        assert_eq!(open(&bob, from.0, from.1, &env), Err(OpenError::Version));
        assert_eq!(
            open_forward_secret(bob.enc_secret(), &bob.peer_id(), from.0, from.1, &env),
            Err(OpenError::Decrypt)
        );
        // Renamed to another key id, it opens for nobody.
        let mut moved = env.clone();
        if let Some(id) = moved.otk.as_mut() {
            id[0] ^= 1;
        }
        assert_eq!(
            open_forward_secret(&secret.secret, &bob.peer_id(), from.0, from.1, &moved),
            Err(OpenError::Decrypt)
        );
        // Inconsistent version and key id: malformed.
        let mut no_id = env.clone();
        no_id.otk = None;
        assert_eq!(one_time_key(&no_id), Err(OpenError::Malformed));
        let mut short = env.clone();
        short.otk = Some(vec![1, 2, 3]);
        assert_eq!(one_time_key(&short), Err(OpenError::Malformed));
        let plain = seal(&alice, &bob.peer_id(), bob.enc_public(), &payload("x")).expect("seal");
        assert_eq!(one_time_key(&plain), Ok(None));
        let mut v1_with_id = plain.clone();
        v1_with_id.otk = Some(vec![0; 16]);
        assert_eq!(one_time_key(&v1_with_id), Err(OpenError::Malformed));
        assert_eq!(
            open(&bob, from.0, from.1, &v1_with_id),
            Err(OpenError::Version)
        );
    }

    #[test]
    fn sealed_message_opens_for_its_recipient_only() {
        let (alice, bob, eve) = (Keys::generate(), Keys::generate(), Keys::generate());
        let msg = payload("meet at noon");
        let env = seal(&alice, &bob.peer_id(), bob.enc_public(), &msg).expect("seal");
        assert!(!env.ct.windows(4).any(|w| w == b"noon"));
        assert_eq!(
            open(&bob, &alice.peer_id(), alice.enc_public(), &env),
            Ok(msg)
        );
        // Eve is not the recipient.
        assert_eq!(
            open(&eve, &alice.peer_id(), alice.enc_public(), &env),
            Err(OpenError::Decrypt)
        );
    }

    #[test]
    fn tampered_ciphertext_is_rejected() {
        let (alice, bob) = (Keys::generate(), Keys::generate());
        let env = seal(&alice, &bob.peer_id(), bob.enc_public(), &payload("x")).expect("seal");
        for i in 0..env.ct.len() {
            let mut bad = env.clone();
            bad.ct[i] ^= 0x80;
            assert_eq!(
                open(&bob, &alice.peer_id(), alice.enc_public(), &bad),
                Err(OpenError::Decrypt)
            );
        }
        let mut bad = env.clone();
        bad.enc[0] ^= 1;
        assert_eq!(
            open(&bob, &alice.peer_id(), alice.enc_public(), &bad),
            Err(OpenError::Decrypt)
        );
    }

    #[test]
    fn wrong_sender_is_rejected() {
        let (alice, bob, mallory) = (Keys::generate(), Keys::generate(), Keys::generate());
        // Mallory seals with her own key but claims, on the connection, to be Alice.
        let env = seal(&mallory, &bob.peer_id(), bob.enc_public(), &payload("x")).expect("seal");
        assert_eq!(
            open(&bob, &alice.peer_id(), alice.enc_public(), &env),
            Err(OpenError::WrongSender)
        );
        // Relabelled as Alice's envelope: the auth-mode seal and the AAD both refuse it.
        let mut relabelled = env.clone();
        relabelled.sender = alice.peer_id().to_bytes();
        assert_eq!(
            open(&bob, &alice.peer_id(), alice.enc_public(), &relabelled),
            Err(OpenError::Decrypt)
        );
        // Alice's genuine envelope replayed over Mallory's connection.
        let genuine = seal(&alice, &bob.peer_id(), bob.enc_public(), &payload("y")).expect("seal");
        assert_eq!(
            open(&bob, &mallory.peer_id(), mallory.enc_public(), &genuine),
            Err(OpenError::WrongSender)
        );
    }

    /// An RNG that hands out fixed bytes, so the ephemeral key is the RFC's.
    struct Fixed(Vec<u8>);
    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            unreachable!("HPKE draws bytes")
        }
        fn next_u64(&mut self) -> u64 {
            unreachable!("HPKE draws bytes")
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            let n = dest.len();
            dest.copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
        }
    }
    impl CryptoRng for Fixed {}

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test vector hex")
    }

    /// RFC 9180 appendix A.2.3: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, auth mode,
    /// first encryption. Exercises the exact primitive composition `seal` and `open` use.
    #[test]
    fn rfc9180_a_2_3_auth_mode_vector() {
        let info = unhex("4f6465206f6e2061204772656369616e2055726e");
        let (sk_r, pk_r) = Kem::derive_keypair(&unhex(
            "64835d5ee64aa7aad57c6f2e4f758f7696617f8829e70bc9ac7a5ef95d1c756c",
        ));
        let (sk_s, pk_s) = Kem::derive_keypair(&unhex(
            "9d8f94537d5a3ddef71234c0baedfad4ca6861634d0b94c3007fed557ad17df6",
        ));
        assert_eq!(
            pk_r.to_bytes().to_vec(),
            unhex("1a478716d63cb2e16786ee93004486dc151e988b34b475043d3e0175bdb01c44")
        );
        assert_eq!(
            sk_r.to_bytes().to_vec(),
            unhex("3ca22a6d1cda1bb9480949ec5329d3bf0b080ca4c45879c95eddb55c70b80b82")
        );
        assert_eq!(
            pk_s.to_bytes().to_vec(),
            unhex("f0f4f9e96c54aeed3f323de8534fffd7e0577e4ce269896716bcb95643c8712b")
        );
        assert_eq!(
            sk_s.to_bytes().to_vec(),
            unhex("2def0cb58ffcf83d1062dd085c8aceca7f4c0c3fd05912d847b61f3e54121f05")
        );
        let pt = unhex("4265617574792069732074727574682c20747275746820626561757479");
        let aad = unhex("436f756e742d30");
        let mut rng = Fixed(unhex(
            "938d3daa5a8904540bc24f48ae90eed3f4f7f11839560597b55e7c9598c996c0",
        ));
        let mode = OpModeS::Auth((sk_s, pk_s.clone()));
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
            &mode, &pk_r, &info, &pt, &aad, &mut rng,
        )
        .expect("seal");
        assert_eq!(
            enc.to_bytes().to_vec(),
            unhex("f7674cc8cd7baa5872d1f33dbaffe3314239f6197ddf5ded1746760bfc847e0e")
        );
        assert_eq!(
            ct,
            unhex(
                "ab1a13c9d4f01a87ec3440dbd756e2677bd2ecf9df0ce7ed73869b98e00c09be111cb9fdf077347aeb88e61bdf"
            )
        );
        let opened = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Auth(pk_s),
            &sk_r,
            &enc,
            &info,
            &ct,
            &aad,
        )
        .expect("open");
        assert_eq!(opened, pt);
    }
}
