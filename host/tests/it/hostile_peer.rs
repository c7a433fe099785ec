//! A hostile peer speaks `/pigeon/msg/1` to a real node: oversized and garbage frames, envelopes
//! claiming another sender, tampered ciphertext, oversized batches. Each is refused for that peer
//! only; the node goes on delivering real messages, and nothing of the attacker's reaches the inbox.

use std::sync::Arc;
use std::time::Duration;

use pigeon::envelope::{self, Envelope};
use pigeon::keys::{Keys, keystore};
use pigeon::net::protocol::{Batch, MAX_BATCH, Outcome, RejectReason};

use crate::rogue::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_refused_and_the_node_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = start_node(dir.path(), "victim").await;
    let alice = start_node(dir.path(), "alice").await;
    let alice_keys =
        keystore::unlock(&dir.path().join("alice/keystore"), PASS).expect("alice keys");
    let (victim_address, victim_addr) = address_of(&victim).await;
    let victim_peer = victim_address
        .parse::<pigeon::keys::address::Address>()
        .expect("address")
        .peer_id();
    let victim_key = victim_address
        .parse::<pigeon::keys::address::Address>()
        .expect("address")
        .enc_public()
        .clone();

    // The rogue is a contact of the victim, so its envelopes get past the contact check.
    let rogue_keys = Arc::new(Keys::generate());
    add_contact(&victim, "rogue", rogue_keys.address().to_string(), vec![]).await;
    let mut rogue = rogue_swarm(&rogue_keys);

    // 1. A length prefix of 4 GiB: refused before any allocation, the stream dropped.
    let mut huge = vec![0xff, 0xff, 0xff, 0xff];
    huge.extend_from_slice(&[0u8; 64]);
    assert!(
        raw_request(&mut rogue, victim_peer, &victim_addr, huge)
            .await
            .is_err()
    );
    // 2. A well-framed body that is not CBOR, and CBOR of the wrong shape.
    for body in [vec![0xffu8; 32], vec![0xa1, 0x61, 0x78, 0x01]] {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        assert!(
            raw_request(&mut rogue, victim_peer, &victim_addr, bytes)
                .await
                .is_err()
        );
    }
    // 3. A prefix that promises more than ever comes.
    assert!(
        raw_request(
            &mut rogue,
            victim_peer,
            &victim_addr,
            vec![0, 0, 1, 0, 1, 2, 3]
        )
        .await
        .is_err()
    );
    // 4. Too many envelopes in one batch.
    let tiny = Envelope {
        v: 1,
        sender: vec![],
        enc: vec![],
        ct: vec![],
        otk: None,
    };
    let crowd = Batch {
        envelopes: vec![tiny; MAX_BATCH + 1],
    };
    assert!(
        raw_request(&mut rogue, victim_peer, &victim_addr, frame(&crowd))
            .await
            .is_err()
    );

    // 5. Alice's genuine envelope, replayed by the rogue: wrong sender.
    let stolen =
        envelope::seal(&alice_keys, &victim_peer, &victim_key, &payload("replayed")).expect("seal");
    let answer = raw_request(
        &mut rogue,
        victim_peer,
        &victim_addr,
        frame(&Batch {
            envelopes: vec![stolen],
        }),
    )
    .await;
    assert_eq!(
        outcomes(answer),
        vec![Outcome::Rejected(RejectReason::WrongSender)]
    );
    // 6. The rogue's own envelope, tampered; and one of an unknown version.
    let mut tampered =
        envelope::seal(&rogue_keys, &victim_peer, &victim_key, &payload("tampered")).expect("seal");
    let last = tampered.ct.len() - 1;
    tampered.ct[last] ^= 1;
    let mut future =
        envelope::seal(&rogue_keys, &victim_peer, &victim_key, &payload("v9")).expect("seal");
    future.v = 9;
    let answer = raw_request(
        &mut rogue,
        victim_peer,
        &victim_addr,
        frame(&Batch {
            envelopes: vec![tampered, future],
        }),
    )
    .await;
    assert_eq!(
        outcomes(answer),
        vec![
            Outcome::Rejected(RejectReason::Undecryptable),
            Outcome::Rejected(RejectReason::Malformed)
        ]
    );
    assert_eq!(
        inbox_len(&victim).await,
        0,
        "nothing of the attacker's was stored"
    );

    // The node goes on: a real message from a real contact arrives.
    befriend(&victim, "victim", &alice, "alice").await;
    still_delivers(&alice, "victim", &victim, 1).await;
    victim.shutdown().await;
    alice.shutdown().await;
}

/// A stranger (not a contact) cannot make the node read a frame: `/pigeon/msg/1` is not offered on
/// its connection, so a batch, or a prefix promising 16 MiB, is refused during protocol
/// negotiation. Once the stranger is added as a contact, while still connected, its next batch is
/// read and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_refused_before_its_frame_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = start_node(dir.path(), "victim").await;
    let (victim_address, victim_addr) = address_of(&victim).await;
    let victim_address: pigeon::keys::address::Address = victim_address.parse().expect("address");
    let (victim_peer, victim_key) = (
        victim_address.peer_id(),
        victim_address.enc_public().clone(),
    );
    let stranger_keys = Arc::new(Keys::generate());
    let mut stranger = rogue_swarm(&stranger_keys);
    let sealed = |text: &str| {
        envelope::seal(&stranger_keys, &victim_peer, &victim_key, &payload(text)).expect("seal")
    };
    let batch = |text: &str| {
        frame(&Batch {
            envelopes: vec![sealed(text)],
        })
    };
    let mut promise = (16u32 << 20).to_be_bytes().to_vec();
    promise.extend_from_slice(&[0u8; 1024]);
    for bytes in [batch("hello from a stranger"), promise] {
        let refused = raw_request(&mut stranger, victim_peer, &victim_addr, bytes)
            .await
            .expect_err("a stranger's stream is refused");
        assert!(
            refused.contains("none of the requested protocols"),
            "{refused}"
        );
    }
    assert_eq!(inbox_len(&victim).await, 0);

    add_contact(
        &victim,
        "now-known",
        stranger_keys.address().to_string(),
        vec![],
    )
    .await;
    // The node drops the stranger's gated connection; the next request dials afresh.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match raw_request(&mut stranger, victim_peer, &victim_addr, batch("known now")).await {
            Ok(answer) => break answer,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(outcomes(Ok(answer)), vec![Outcome::Stored]);
    assert_eq!(inbox_len(&victim).await, 1);
    victim.shutdown().await;
}

/// Strangers cannot open connections without end: past `node.max_established_incoming` a new
/// one is closed at once, while the ones within the limit stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = pigeon::config::Config::default();
    config.node.max_established_incoming = 2;
    let victim = start_node_with(dir.path(), "victim", &config).await;
    let (victim_address, victim_addr) = address_of(&victim).await;
    let victim_peer = victim_address
        .parse::<pigeon::keys::address::Address>()
        .expect("address")
        .peer_id();
    let mut strangers: Vec<_> = (0..3)
        .map(|_| rogue_swarm(&Arc::new(Keys::generate())))
        .collect();
    let mut errors = Vec::new();
    for stranger in &mut strangers {
        let e = raw_request(stranger, victim_peer, &victim_addr, vec![0, 0, 0, 1, 0])
            .await
            .expect_err("strangers get no answer");
        errors.push(e);
    }
    // The first two hold a connection (only the protocol is refused); the third gets none.
    for e in &errors[..2] {
        assert!(e.contains("none of the requested protocols"), "{e}");
    }
    assert!(
        errors[2].contains("Connection was closed") || errors[2].contains("Failed to dial"),
        "a third connection was kept: {}",
        errors[2]
    );
    victim.shutdown().await;
}
