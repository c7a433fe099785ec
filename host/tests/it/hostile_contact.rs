//! A contact that is hostile, or only has a broken clock: messages stamped past the year 9999,
//! attachment manifests that would make the node fetch without end, too many or too large files,
//! and names that would hide what a file is. Each is stored safely or refused before anything is
//! fetched; the store keeps working for everyone and the node goes on.

use std::sync::Arc;

use pigeon::attachments::{AttachmentRef, CHUNK_SIZE};
use pigeon::control::api::{Request, Response};
use pigeon::envelope::{self, MessageId, Payload};
use pigeon::keys::Keys;
use pigeon::keys::address::Address;
use pigeon::net::protocol::{Batch, Outcome, RejectReason};

use crate::rogue::*;

/// A manifest of `size` bytes in chunks of `chunk_size`, with `hashes` chunk hashes.
fn manifest(name: &str, size: u64, chunk_size: u32, hashes: usize) -> AttachmentRef {
    AttachmentRef {
        id: rand_id(),
        name: name.into(),
        size,
        chunk_size,
        key: [7; 32],
        chunk_hashes: vec![0; hashes * 32],
        file_hash: [0; 32],
    }
}

fn rand_id() -> [u8; 16] {
    MessageId::random().0
}

fn message(body: &str, sent_at_ms: u64, attachments: Vec<AttachmentRef>) -> Payload {
    Payload {
        id: MessageId::random(),
        sent_at_ms,
        subject: Some(body.into()),
        body: body.into(),
        attachments,
    }
}

async fn read(node: &pigeon::node::Node, id: &MessageId) -> pigeon::store::MessageView {
    match node
        .ops()
        .handle(Request::InboxRead { id: id.to_string() })
        .await
        .expect("inbox read works")
    {
        Response::Message(m) => m,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_contact_cannot_break_the_store_or_make_the_node_fetch_without_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = start_node(dir.path(), "victim").await;
    let (victim_address, victim_addr) = address_of(&victim).await;
    let victim_address: Address = victim_address.parse().expect("address");
    let (victim_peer, victim_key) = (
        victim_address.peer_id(),
        victim_address.enc_public().clone(),
    );
    let rogue_keys = Arc::new(Keys::generate());
    add_contact(&victim, "rogue", rogue_keys.address().to_string(), vec![]).await;
    let mut rogue = rogue_swarm(&rogue_keys);
    let mut send = async |payloads: Vec<Payload>| {
        let envelopes = payloads
            .iter()
            .map(|p| envelope::seal(&rogue_keys, &victim_peer, &victim_key, p).expect("seal"))
            .collect();
        outcomes(
            raw_request(
                &mut rogue,
                victim_peer,
                &victim_addr,
                frame(&Batch { envelopes }),
            )
            .await,
        )
    };

    // 1. A clock in the year 10000, and one at the end of time: stored, and readable.
    let year_10000 = message("from the future", 253_402_300_800_000, vec![]);
    let end_of_time = message("from the end of time", u64::MAX, vec![]);
    assert_eq!(
        send(vec![year_10000.clone(), end_of_time.clone()]).await,
        vec![Outcome::Stored, Outcome::Stored]
    );
    for m in [&year_10000, &end_of_time] {
        let view = read(&victim, &m.id).await;
        assert_eq!(
            view.sent_at, "9999-12-31T23:59:59.999Z",
            "clamped at receipt"
        );
        assert_eq!(view.body, m.body);
    }
    assert_eq!(inbox_len(&victim).await, 2, "the store still answers");

    // 2. Manifests that would make the node fetch without end, or that lie about their size.
    let too_large = |attachments| message("refused", 1, attachments);
    let refused = vec![
        // one-byte chunks: a request per byte
        too_large(vec![manifest("tiny-chunks", 4096, 1, 4096)]),
        // 4 GiB in one-byte chunks: a count that, truncated to 32 bits, agrees with no hashes
        too_large(vec![manifest("wraps", 1 << 32, 1, 0)]),
        // a hash list that does not match the size
        too_large(vec![manifest(
            "short",
            3 * CHUNK_SIZE as u64,
            CHUNK_SIZE,
            1,
        )]),
        // more files than attachments.max_per_message (32)
        too_large(
            (0..33)
                .map(|i| manifest(&format!("f{i}"), 10, CHUNK_SIZE, 1))
                .collect(),
        ),
        // more bytes in one message than attachments.max_message_bytes (2 GiB)
        too_large(
            (0..3)
                .map(|i| manifest(&format!("g{i}"), 1 << 30, CHUNK_SIZE, 1024))
                .collect(),
        ),
    ];
    let n = refused.len();
    assert_eq!(
        send(refused).await,
        vec![Outcome::Rejected(RejectReason::TooLarge); n]
    );
    assert_eq!(inbox_len(&victim).await, 2, "nothing refused was stored");

    // 3. A name that hides its extension behind a right-to-left override, and one too long to
    //    create: both made safe to show and to save.
    let rtl = message(
        "names",
        1,
        vec![
            manifest("invoice\u{202E}fdp.exe", 10, CHUNK_SIZE, 1),
            manifest(&format!("{}.txt", "n".repeat(400)), 10, CHUNK_SIZE, 1),
        ],
    );
    assert_eq!(send(vec![rtl.clone()]).await, vec![Outcome::Stored]);
    let names: Vec<String> = read(&victim, &rtl.id)
        .await
        .attachments
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names[0], "invoicefdp.exe");
    assert!(
        names[1].len() <= 255 && names[1].ends_with(".txt"),
        "{}",
        names[1]
    );

    // The node goes on: an ordinary message from the same contact is stored and read.
    let ordinary = message("still here", 1_700_000_000_000, vec![]);
    assert_eq!(send(vec![ordinary.clone()]).await, vec![Outcome::Stored]);
    assert_eq!(read(&victim, &ordinary.id).await.body, "still here");
    assert_eq!(inbox_len(&victim).await, 4);
    victim.shutdown().await;
}
