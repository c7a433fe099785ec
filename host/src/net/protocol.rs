//! `/pigeon/msg/1`: a batch of sealed envelopes, answered with one outcome per envelope, in order.
//! `/pigeon/chunk/1`: one sealed attachment chunk per request, pulled by the receiver.
//! `/pigeon/otk/2`: one-time keys (forward secrecy), pulled by the contact that seals to them;
//! its request may list the keys the asker holds. `/pigeon/otk/1`, the same without that list
//! (requests of at most 64 bytes), is still spoken with nodes that know no other.
//!
//! The receiver answers only after the batch's durable commit; `Stored` and `Duplicate` both mean
//! "acked: forget it". A refused envelope says why, and whether trying again may help.

use std::io;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::codec;
use crate::envelope::Envelope;

/// The protocol name.
pub const MSG_PROTOCOL: StreamProtocol = StreamProtocol::new("/pigeon/msg/1");
/// Largest request frame: a full batch of the largest messages fits with room to spare.
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Largest response frame.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Most envelopes in one batch.
pub const MAX_BATCH: usize = 1024;

/// A batch of envelopes for one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The envelopes, in queue order.
    pub envelopes: Vec<Envelope>,
}

/// The receiver's answer: one outcome per envelope, in the same order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// The outcomes.
    pub outcomes: Vec<Outcome>,
}

/// What happened to one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored durably.
    Stored,
    /// Stored before; acked again.
    Duplicate,
    /// Refused.
    Rejected(RejectReason),
}

/// Why an envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The sender is not one of the receiver's contacts (it may become one: retry later).
    NotAContact,
    /// The envelope's sender field is not the connection's peer.
    WrongSender,
    /// The envelope does not open with the keys the receiver has for the sender.
    Undecryptable,
    /// The contents are malformed or too large.
    Malformed,
    /// The id is taken by another sender's message.
    IdConflict,
    /// The receiver failed to store it (retry later).
    Unavailable,
    /// An attachment is over the receiver's size limit, or its manifest is inconsistent.
    TooLarge,
    /// Sealed to a one-time key the receiver no longer holds (used by another message, expired).
    OneTimeKeyGone,
}

impl RejectReason {
    /// Whether a later attempt may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, RejectReason::NotAContact | RejectReason::Unavailable)
    }

    /// A sentence for `outbox list`.
    pub fn describe(self) -> &'static str {
        match self {
            RejectReason::NotAContact => "the recipient has not added you as a contact yet",
            RejectReason::WrongSender => "the recipient refused the envelope's sender",
            RejectReason::Undecryptable => {
                "the recipient cannot open the message: its contact entry for you may hold old keys"
            }
            RejectReason::Malformed => "the recipient found the message malformed",
            RejectReason::IdConflict => "the recipient holds another message with this id",
            RejectReason::Unavailable => "the recipient could not store the message",
            RejectReason::TooLarge => "an attachment is over the recipient's size limit",
            RejectReason::OneTimeKeyGone => {
                "the recipient no longer holds the one-time key the message was sealed to"
            }
        }
    }
}

/// `/pigeon/chunk/1`: the receiver of an attachment pulls one sealed chunk per request.
pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/pigeon/chunk/1");
/// Largest chunk answer: a sealed chunk of the largest chunk size with room for the framing.
pub const MAX_CHUNK_RESPONSE: usize = crate::attachments::CHUNK_SIZE as usize + 4096;

/// A request for sealed chunk `index` of attachment `attachment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// The attachment id.
    #[serde(with = "serde_bytes")]
    pub attachment: [u8; 16],
    /// The chunk index.
    pub index: u32,
    /// Not a request for a chunk: the receiver holds every chunk, verified, and the sender may drop
    /// its sealed copy (answered [`ChunkResponse::Released`]; `index` is ignored).
    #[serde(default)]
    pub release: bool,
}

/// The answer to a [`ChunkRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkResponse {
    /// The sealed chunk.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// No such attachment for this peer, or no such chunk.
    NotFound,
    /// Refused (for example over a relayed connection).
    Refused,
    /// For a release: the sender has dropped its copy (or had already).
    Released,
}

/// `/pigeon/otk/2`: a contact asks for one-time keys, to seal forward-secret messages to this
/// node; the answer holds fresh keys signed for it (at most [`MAX_ONE_TIME_KEYS`]).
pub const OTK_PROTOCOL: StreamProtocol = StreamProtocol::new("/pigeon/otk/2");
/// `/pigeon/otk/1`: [`OTK_PROTOCOL`] as older nodes speak it, whose requests carry no ids
/// (they refuse a request over 64 bytes). Offered second: a node that knows both uses the first.
pub const OTK_PROTOCOL_V1: StreamProtocol = StreamProtocol::new("/pigeon/otk/1");
/// Most one-time keys asked for or handed out in one exchange.
pub const MAX_ONE_TIME_KEYS: u16 = 32;
/// Most key ids a request may list as held (what a contact may hold unused of this node's keys).
pub const MAX_HELD_IDS: usize = 64;

/// A one-time key's id, as a request lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OtkId(#[serde(with = "serde_bytes")] pub [u8; 16]);

/// A request for up to `want` one-time keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtkRequest {
    /// How many keys the asker would like (at most [`MAX_ONE_TIME_KEYS`]).
    pub want: u16,
    /// How many of this node's keys the asker still holds (unused, or sealing a message not yet
    /// delivered). Fewer than this node handed out means the asker lost some (it restored a
    /// backup, or dropped a pool that proved stale): this node forgets as many of the oldest, so
    /// that the asker gets fresh ones now rather than when those expire. Absent from older askers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u16>,
    /// The ids of the keys counted in `held`, when there are at most [`MAX_HELD_IDS`]. With
    /// them this node forgets exactly the keys the asker lost. A count alone cannot tell them
    /// from the key of a message on its way that this node stores (and so spends) before it
    /// answers: it would forget one too few. Absent from older askers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ids: Option<Vec<OtkId>>,
}

/// The answer to an [`OtkRequest`]: keys signed by their owner for the asker (none when it holds
/// enough already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtkResponse {
    /// The keys.
    pub keys: Vec<crate::keys::one_time::SignedKey>,
}

/// A frame type: its size limit and any check beyond decoding.
pub trait Frame: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// Largest encoded frame.
    const MAX: usize;
    /// For a type with a variant that is one large byte string (`{key: bytes}` on the wire):
    /// its key. The codec then reads and writes those bytes without copying them through CBOR
    /// ([`codec::read_bulk`]); the encoding is the same.
    const BULK_KEY: Option<&'static str> = None;
    /// The bytes of the bulk variant, if this frame is one.
    fn bulk(&self) -> Option<&[u8]> {
        None
    }
    /// The bulk variant holding `bytes`.
    fn from_bulk(_bytes: Vec<u8>) -> Option<Self> {
        None
    }
    /// Checks a decoded frame.
    fn validate(&self) -> io::Result<()> {
        Ok(())
    }
    /// The frame as it goes out on `protocol` (an older version of the protocol may not take
    /// all of it).
    fn for_protocol(self, _protocol: &StreamProtocol) -> Self {
        self
    }
}

impl Frame for Batch {
    const MAX: usize = MAX_REQUEST;
    fn validate(&self) -> io::Result<()> {
        if self.envelopes.len() > MAX_BATCH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "batch has too many envelopes",
            ));
        }
        Ok(())
    }
}
impl Frame for BatchResponse {
    const MAX: usize = MAX_RESPONSE;
}
impl Frame for ChunkRequest {
    const MAX: usize = 1024;
}
impl Frame for ChunkResponse {
    const MAX: usize = MAX_CHUNK_RESPONSE;
    const BULK_KEY: Option<&'static str> = Some("data");
    fn bulk(&self) -> Option<&[u8]> {
        match self {
            ChunkResponse::Data(bytes) => Some(bytes),
            _ => None,
        }
    }
    fn from_bulk(bytes: Vec<u8>) -> Option<Self> {
        Some(ChunkResponse::Data(bytes))
    }
}
impl Frame for OtkRequest {
    // An id is 17 bytes encoded: 64 of them, the count and the field names fit well within.
    const MAX: usize = 1536;
    fn for_protocol(self, protocol: &StreamProtocol) -> Self {
        if *protocol == OTK_PROTOCOL_V1 {
            OtkRequest {
                held_ids: None,
                ..self
            }
        } else {
            self
        }
    }
    fn validate(&self) -> io::Result<()> {
        if self.want > MAX_ONE_TIME_KEYS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "asks for too many one-time keys",
            ));
        }
        if self
            .held_ids
            .as_ref()
            .is_some_and(|ids| ids.len() > MAX_HELD_IDS)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "lists too many one-time keys as held",
            ));
        }
        Ok(())
    }
}
impl Frame for OtkResponse {
    // A key is about 140 bytes encoded.
    const MAX: usize = 16 * 1024;
    fn validate(&self) -> io::Result<()> {
        if self.keys.len() > usize::from(MAX_ONE_TIME_KEYS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many one-time keys",
            ));
        }
        Ok(())
    }
}

/// A request-response codec of framed CBOR messages.
pub struct FrameCodec<Req, Resp>(std::marker::PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for FrameCodec<Req, Resp> {
    fn default() -> Self {
        FrameCodec(std::marker::PhantomData)
    }
}
impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        FrameCodec::default()
    }
}

/// The codec of `/pigeon/msg/1`.
pub type MsgCodec = FrameCodec<Batch, BatchResponse>;
/// The codec of `/pigeon/chunk/1`.
pub type ChunkCodec = FrameCodec<ChunkRequest, ChunkResponse>;
/// The codec of `/pigeon/otk/2` and `/pigeon/otk/1`.
pub type OtkCodec = FrameCodec<OtkRequest, OtkResponse>;

/// Reads one frame of type `F`, its bulk bytes straight into their buffer where it has them.
async fn read_frame<F: Frame, T: AsyncRead + Unpin>(io: &mut T) -> io::Result<F> {
    let Some(key) = F::BULK_KEY else {
        return codec::read(io, F::MAX).await;
    };
    match codec::read_bulk::<F, _>(io, F::MAX, key).await? {
        codec::Read::Whole(frame) => Ok(frame),
        codec::Read::Bulk(bytes) => F::from_bulk(bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected bulk frame")),
    }
}

/// Writes one frame of type `F`, its bulk bytes without a copy where it has them.
async fn write_frame<F: Frame, T: AsyncWrite + Unpin>(io: &mut T, frame: &F) -> io::Result<()> {
    match (F::BULK_KEY, frame.bulk()) {
        (Some(key), Some(bytes)) => codec::write_bulk(io, key, bytes, F::MAX).await,
        _ => codec::write(io, frame, F::MAX).await,
    }
}

#[async_trait]
impl<Req: Frame, Resp: Frame> libp2p::request_response::Codec for FrameCodec<Req, Resp> {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame: Req = read_frame(io).await?;
        frame.validate()?;
        Ok(frame)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame: Resp = read_frame(io).await?;
        frame.validate()?;
        Ok(frame)
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req.for_protocol(protocol)).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_listing_every_held_key_fits_and_one_listing_more_is_refused() {
        let full = OtkRequest {
            want: MAX_ONE_TIME_KEYS,
            held: Some(u16::MAX),
            held_ids: Some(vec![OtkId([0xff; 16]); MAX_HELD_IDS]),
        };
        let frame = codec::encode(&full, OtkRequest::MAX).expect("fits");
        let back: OtkRequest = codec::decode(&frame, OtkRequest::MAX).expect("decodes");
        assert_eq!(back, full);
        assert!(back.validate().is_ok());
        let over = OtkRequest {
            held_ids: Some(vec![OtkId([1; 16]); MAX_HELD_IDS + 1]),
            ..full
        };
        assert!(over.validate().is_err(), "more ids than a contact may hold");
        // An older asker's request (no ids) still reads.
        let old = codec::encode(
            &OtkRequest {
                want: 4,
                held: Some(3),
                held_ids: None,
            },
            OtkRequest::MAX,
        )
        .expect("encode");
        let back: OtkRequest = codec::decode(&old, OtkRequest::MAX).expect("decodes");
        assert_eq!(back.held_ids, None);
    }

    #[test]
    fn a_request_to_an_older_node_goes_without_ids_and_within_its_bound() {
        use libp2p::request_response::Codec;
        let full = OtkRequest {
            want: MAX_ONE_TIME_KEYS,
            held: Some(u16::MAX),
            held_ids: Some(vec![OtkId([0xff; 16]); MAX_HELD_IDS]),
        };
        let write = |protocol: &StreamProtocol| {
            let mut out = Vec::new();
            futures::executor::block_on(OtkCodec::default().write_request(
                protocol,
                &mut out,
                full.clone(),
            ))
            .expect("write");
            out
        };
        let v1 = write(&OTK_PROTOCOL_V1);
        // What a node that speaks only /pigeon/otk/1 accepts: 64 bytes at most, no ids.
        let back: OtkRequest = codec::decode(&v1, 64).expect("fits the old bound");
        assert_eq!(back.held_ids, None);
        assert_eq!((back.want, back.held), (full.want, full.held));
        let v2 = write(&OTK_PROTOCOL);
        let back: OtkRequest = codec::decode(&v2, OtkRequest::MAX).expect("decodes");
        assert_eq!(back, full);
    }
}
