//! Frames: a big-endian u32 length, then that many bytes of CBOR.
//!
//! The length is checked against the protocol's maximum before anything is allocated, and every
//! decode failure is an error for that peer, never a panic.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length is over the protocol's maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Fewer bytes than the prefix announced, or fewer than four.
    #[error("frame is truncated")]
    Truncated,
    /// Bytes after the frame.
    #[error("{0} bytes after the frame")]
    Trailing(usize),
    /// Not the CBOR shape expected.
    #[error("frame does not decode: {0}")]
    Decode(String),
}

impl From<FrameError> for std::io::Error {
    fn from(e: FrameError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Encodes `value` as one frame; refuses to produce a frame larger than `max`.
pub fn encode<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    ciborium::into_writer(value, &mut out).map_err(|e| FrameError::Decode(e.to_string()))?;
    let len = out.len() - 4;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes the body of a frame (without its length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    ciborium::from_reader(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Decodes one whole frame held in memory (prefix and body, nothing after it).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, FrameError> {
    let (prefix, body) = bytes
        .split_first_chunk::<4>()
        .ok_or(FrameError::Truncated)?;
    let len = checked_len(*prefix, max)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::Truncated),
        std::cmp::Ordering::Greater => Err(FrameError::Trailing(body.len() - len)),
        std::cmp::Ordering::Equal => decode_body(body),
    }
}

fn checked_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        Err(FrameError::TooLarge { len, max })
    } else {
        Ok(len)
    }
}

/// Reads one frame from `io`, allocating only after the length passed the check.
pub async fn read<T, R>(io: &mut R, max: usize) -> std::io::Result<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let len = checked_len(prefix, max)?;
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(decode_body(&body)?)
}

/// Writes `value` as one frame to `io`.
pub async fn write<T, W>(io: &mut W, value: &T, max: usize) -> std::io::Result<()>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let frame = encode(value, max)?;
    io.write_all(&frame).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::protocol::{Batch, BatchResponse, MAX_REQUEST};
    use futures::io::Cursor;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn round_trip_in_memory_and_over_a_stream() {
        let batch = Batch { envelopes: vec![] };
        let frame = encode(&batch, MAX_REQUEST).expect("encode");
        assert_eq!(decode::<Batch>(&frame, MAX_REQUEST).expect("decode"), batch);
        let got: Batch = block_on(read(&mut Cursor::new(frame), MAX_REQUEST)).expect("read");
        assert_eq!(got, batch);
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        // Announces 4 GiB; must fail on the prefix alone.
        let frame = [0xff, 0xff, 0xff, 0xff, 0xa0];
        assert!(matches!(
            decode::<Batch>(&frame, MAX_REQUEST),
            Err(FrameError::TooLarge { .. })
        ));
        let err = block_on(read::<Batch, _>(
            &mut Cursor::new(frame.to_vec()),
            MAX_REQUEST,
        ))
        .expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let big = Batch {
            envelopes: vec![crate::envelope::Envelope {
                v: 1,
                sender: vec![],
                enc: vec![],
                ct: vec![0; 100],
                otk: None,
            }],
        };
        assert!(matches!(encode(&big, 50), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn garbage_truncated_and_trailing_frames_are_errors() {
        assert!(matches!(
            decode::<Batch>(&[0, 0], MAX_REQUEST),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode::<Batch>(&[0, 0, 0, 9, 1], MAX_REQUEST),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode::<Batch>(&[0, 0, 0, 1, 0xa0, 0], MAX_REQUEST),
            Err(FrameError::Trailing(1))
        ));
        // Well-framed garbage, including CBOR that claims a huge byte string.
        for body in [
            &[0xffu8][..],
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0xa1, 0x61, 0x78, 0x01],
        ] {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            assert!(matches!(
                decode::<Batch>(&frame, MAX_REQUEST),
                Err(FrameError::Decode(_))
            ));
            assert!(decode::<BatchResponse>(&frame, MAX_REQUEST).is_err());
        }
        // Deep nesting must not blow the stack.
        let deep = vec![0x81u8; 100_000];
        let mut frame = (deep.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&deep);
        assert!(decode::<Batch>(&frame, MAX_REQUEST).is_err());
        // A stream that ends early.
        let err = block_on(read::<Batch, _>(
            &mut Cursor::new(vec![0, 0, 0, 10, 1]),
            MAX_REQUEST,
        ))
        .expect_err("eof");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
