//! Arbitrary bytes as a peer frame (u32 big-endian length + CBOR body) of every protocol type:
//! `/pigeon/msg/1` batches and answers, `/pigeon/chunk/1` requests and answers.
//!
//! Checks: decoding never panics (in memory or streamed); a frame that decodes in memory also
//! decodes, equal, through the streaming reader; whatever decodes re-encodes and decodes back equal.

#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use pigeon::net::codec::{self, FrameError};
use pigeon::net::protocol::{
    Batch, BatchResponse, ChunkRequest, ChunkResponse, Frame, MAX_REQUEST, MAX_RESPONSE,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    check::<Batch>(data, MAX_REQUEST);
    check::<BatchResponse>(data, MAX_RESPONSE);
    check::<ChunkRequest>(data, ChunkRequest::MAX);
    check::<ChunkResponse>(data, ChunkResponse::MAX);
});

fn check<T>(data: &[u8], max: usize)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let in_memory: Result<T, FrameError> = codec::decode(data, max);
    let streamed: std::io::Result<T> = block_on(codec::read(&mut Cursor::new(data), max));

    // The streaming reader stops after one frame, so it may accept input with trailing bytes, but
    // it must agree with the in-memory decoder on the frame it read.
    if let Ok(value) = &streamed {
        let len = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
        let frame = &data[..4 + len];
        let again: T = codec::decode(frame, max).expect("streamed frame decodes in memory");
        assert_eq!(&again, value, "in-memory and streamed decode differ");
    }

    if let Ok(value) = in_memory {
        let streamed = streamed.expect("in-memory frame also decodes when streamed");
        assert_eq!(streamed, value, "in-memory and streamed decode differ");

        // Round trip. The re-encoding may be longer than the input (which can use terser CBOR),
        // so only over-length is tolerated; with libFuzzer's default -max_len it cannot happen.
        let frame = match codec::encode(&value, max) {
            Ok(frame) => frame,
            Err(FrameError::TooLarge { .. }) => return,
            Err(e) => panic!("a decoded frame does not re-encode: {e}"),
        };
        let back: T = codec::decode(&frame, max).expect("a re-encoded frame decodes");
        assert_eq!(back, value, "round trip changed the value");
    }
}
