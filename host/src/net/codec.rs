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

/// Reads a frame's length prefix and checks it against `max`.
async fn read_len<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> std::io::Result<usize> {
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    Ok(checked_len(prefix, max)?)
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
    let len = read_len(io, max).await?;
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

/// A frame read by [`read_bulk`]: decoded, or the byte string of a `{key: bytes}` frame.
#[derive(Debug)]
pub enum Read<T> {
    /// Any other frame, decoded.
    Whole(T),
    /// The bytes of a `{key: bytes}` frame.
    Bulk(Vec<u8>),
}

/// The CBOR head of a byte string of `len` bytes (major type 2, shortest form, as ciborium
/// writes it).
fn bytes_head(len: usize) -> Vec<u8> {
    match len {
        0..=23 => vec![0x40 | len as u8],
        24..=0xff => vec![0x58, len as u8],
        0x100..=0xffff => [&[0x59][..], &(len as u16).to_be_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0x5a][..], &(len as u32).to_be_bytes()].concat(),
        _ => [&[0x5b][..], &(len as u64).to_be_bytes()].concat(),
    }
}

/// The CBOR before the bytes of `{key: bytes}`: a map of one entry whose key is a short text.
fn bulk_head(key: &str, len: usize) -> Vec<u8> {
    debug_assert!(key.len() < 24, "bulk keys are short");
    let mut head = vec![0xa1, 0x60 | key.len() as u8];
    head.extend_from_slice(key.as_bytes());
    head.extend_from_slice(&bytes_head(len));
    head
}

/// Writes the frame `{key: bytes}` (the CBOR that serde and ciborium give an enum's newtype
/// variant `key` holding `serde_bytes`) without copying `bytes` into a buffer first: for an
/// attachment chunk, a copy of a megabyte saved at each end.
pub async fn write_bulk<W>(io: &mut W, key: &str, bytes: &[u8], max: usize) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let head = bulk_head(key, bytes.len());
    let len = head.len() + bytes.len();
    if len > max {
        return Err(FrameError::TooLarge { len, max }.into());
    }
    let mut start = (len as u32).to_be_bytes().to_vec();
    start.extend_from_slice(&head);
    io.write_all(&start).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

/// Reads one frame like [`read`], except that a `{key: bytes}` frame (as [`write_bulk`] writes
/// it) gives its bytes, read straight into their own buffer. Any other frame is decoded whole.
pub async fn read_bulk<T, R>(io: &mut R, max: usize, key: &str) -> std::io::Result<Read<T>>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let len = read_len(io, max).await?;
    // The map, the key and the first byte of the byte string's head; then its length bytes.
    let fixed = bulk_head(key, 0).len();
    let mut head = vec![0u8; fixed.min(len)];
    io.read_exact(&mut head).await?;
    if head.len() == fixed && head[..fixed - 1] == bulk_head(key, 0)[..fixed - 1] {
        let extra = match head[fixed - 1] {
            b @ 0x40..=0x57 => Some((0, usize::from(b - 0x40))),
            0x58 => Some((1, 0)),
            0x59 => Some((2, 0)),
            0x5a => Some((4, 0)),
            0x5b => Some((8, 0)),
            _ => None,
        };
        if let Some((n, short)) = extra.filter(|(n, _)| fixed + n <= len) {
            let mut be = [0u8; 8];
            io.read_exact(&mut be[8 - n..]).await?;
            head.extend_from_slice(&be[8 - n..]);
            let bytes = if n == 0 {
                short
            } else {
                u64::from_be_bytes(be) as usize
            };
            if bytes == len - head.len() {
                let mut data = vec![0u8; bytes];
                io.read_exact(&mut data).await?;
                return Ok(Read::Bulk(data));
            }
        }
    }
    // Not the bulk shape: the rest of the frame, decoded with what was read of it.
    let mut body = head;
    let read = body.len();
    body.resize(len, 0);
    io.read_exact(&mut body[read..]).await?;
    Ok(Read::Whole(decode_body(&body)?))
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Bulky {
        Data(#[serde(with = "serde_bytes")] Vec<u8>),
        Other,
        Pair(#[serde(with = "serde_bytes")] Vec<u8>, u8),
    }

    #[test]
    fn bulk_frames_are_the_same_cbor_and_read_back_either_way() {
        for len in [0, 1, 23, 24, 255, 256, 65_535, 65_536, (1 << 20) + 16] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut written = Vec::new();
            block_on(write_bulk(&mut written, "data", &bytes, usize::MAX)).expect("write");
            let frame = encode(&Bulky::Data(bytes.clone()), usize::MAX).expect("encode");
            assert_eq!(written, frame, "length {len}");
            let got = block_on(read_bulk::<Bulky, _>(
                &mut Cursor::new(frame),
                usize::MAX,
                "data",
            ))
            .expect("read");
            assert!(matches!(got, Read::Bulk(b) if b == bytes), "length {len}");
        }
        // Other shapes, and other keys, decode whole.
        for other in [Bulky::Other, Bulky::Pair(vec![1, 2, 3], 4)] {
            let frame = encode(&other, 1024).expect("encode");
            let got = block_on(read_bulk::<Bulky, _>(&mut Cursor::new(frame), 1024, "data"))
                .expect("read");
            assert!(matches!(got, Read::Whole(w) if w == other));
        }
        let frame = encode(&Bulky::Data(vec![9; 40]), 1024).expect("encode");
        let got =
            block_on(read_bulk::<Bulky, _>(&mut Cursor::new(frame), 1024, "dat")).expect("read");
        assert!(matches!(got, Read::Whole(Bulky::Data(b)) if b == vec![9; 40]));
        // A byte string whose length disagrees with the frame's, and a frame cut short.
        let mut frame = encode(&Bulky::Data(vec![9; 300]), 1024).expect("encode");
        frame[0..4].copy_from_slice(&303u32.to_be_bytes());
        frame.truncate(4 + 303);
        assert!(block_on(read_bulk::<Bulky, _>(&mut Cursor::new(frame), 1024, "data")).is_err());
        let frame = encode(&Bulky::Data(vec![9; 300]), 1024).expect("encode");
        let cut = frame[..frame.len() - 1].to_vec();
        assert!(block_on(read_bulk::<Bulky, _>(&mut Cursor::new(cut), 1024, "data")).is_err());
        assert!(block_on(write_bulk(&mut Vec::new(), "data", &[0; 100], 50)).is_err());
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
