//! `/pigeon/msg/1`: a batch of sealed envelopes, answered with one outcome per envelope, in order.
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
        }
    }
}

/// The request-response codec for `/pigeon/msg/1`.
#[derive(Debug, Clone, Default)]
pub struct MsgCodec;

#[async_trait]
impl libp2p::request_response::Codec for MsgCodec {
    type Protocol = StreamProtocol;
    type Request = Batch;
    type Response = BatchResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Batch>
    where
        T: AsyncRead + Unpin + Send,
    {
        let batch: Batch = codec::read(io, MAX_REQUEST).await?;
        if batch.envelopes.len() > MAX_BATCH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "batch has too many envelopes",
            ));
        }
        Ok(batch)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<BatchResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        codec::read(io, MAX_RESPONSE).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Batch,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        codec::write(io, &req, MAX_REQUEST).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: BatchResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        codec::write(io, &res, MAX_RESPONSE).await
    }
}
