//! A hostile contact on `/pigeon/otk/1`. Asked for one-time keys, it answers with forged,
//! unsigned, misaddressed, short-lived, too many, oversized or garbage keys: the node keeps none
//! of them (and takes its good keys afterwards, so the test can tell). Asking, it floods the node
//! with requests, claims to have lost every key, sends oversized and out-of-bounds frames: the
//! node answers a bounded number with keys, never holds more than its bound of secrets for it,
//! and goes on delivering a real contact's messages.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm};

use pigeon::config::{Config, ForwardSecrecy};
use pigeon::control::api::{ContactInfo, Request, Response};
use pigeon::keys::Keys;
use pigeon::keys::one_time::{self, SignedKey};
use pigeon::net::codec;
use pigeon::net::protocol::{MAX_HELD_IDS, OtkId, OtkRequest, OtkResponse};
use pigeon::node::Node;

use crate::rogue::*;

type Rogue = Swarm<request_response::Behaviour<RawCodec>>;

/// The node's entry for contact `name`.
async fn contact(node: &Node, name: &str) -> ContactInfo {
    match node
        .ops()
        .handle(Request::ContactsList)
        .await
        .expect("list")
    {
        Response::Contacts(c) => c.into_iter().find(|c| c.name == name).expect("contact"),
        other => panic!("unexpected {other:?}"),
    }
}

/// How many of the node's requests for one-time keys ended in `result` (`kept`, `refused`,
/// `failed`), as its metrics count them.
fn answers(result: &str) -> u64 {
    pigeon::metrics::METRICS
        .one_time_key_answers
        .with_label_values(&[result])
        .get()
}

/// Connects to the node, answers its request for one-time keys with `answer`, stays until the
/// node has taken the answer in (its metrics count one more answer ending in `result`: leaving at
/// once could close the connection before the node read it), and disconnects; returns the request
/// the node sent.
async fn answer_once(
    rogue: &mut Rogue,
    node: PeerId,
    addr: &Multiaddr,
    answer: Vec<u8>,
    result: &str,
) -> Vec<u8> {
    let before = answers(result);
    rogue
        .dial(
            DialOpts::peer_id(node)
                .addresses(vec![addr.clone()])
                .build(),
        )
        .expect("dial");
    let served = async {
        let mut request = None;
        loop {
            match rogue.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request: r,
                            channel,
                            ..
                        },
                    ..
                }) => {
                    request = Some(r);
                    // The node may drop the stream at once on a bad answer: no matter.
                    let _ = rogue.behaviour_mut().send_response(channel, answer.clone());
                }
                SwarmEvent::Behaviour(request_response::Event::ResponseSent { .. })
                | SwarmEvent::Behaviour(request_response::Event::InboundFailure { .. })
                    if request.is_some() =>
                {
                    return request.take().expect("a request");
                }
                _ => {}
            }
        }
    };
    let request = tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("the node asked for keys on connecting");
    let taken_in = async {
        while answers(result) == before {
            tokio::select! {
                _ = rogue.select_next_some() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), taken_in)
        .await
        .unwrap_or_else(|_| panic!("the node did not count the answer as {result}"));
    let _ = rogue.disconnect_peer_id(node);
    let closed = async {
        loop {
            if let SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } = rogue.select_next_some().await
                && peer_id == node
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("disconnected");
    request
}

fn keys_frame(keys: Vec<SignedKey>) -> Vec<u8> {
    codec::encode(&OtkResponse { keys }, 1 << 20).expect("encode")
}

fn now_ms() -> u64 {
    pigeon::store::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_one_time_keys_are_refused_and_requests_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.delivery.forward_secrecy = ForwardSecrecy::Prefer;
    let victim = start_node_with(dir.path(), "victim", &config).await;
    let (victim_address, victim_addr) = address_of(&victim).await;
    let victim_peer = victim_address
        .parse::<pigeon::keys::address::Address>()
        .expect("address")
        .peer_id();
    let rogue_keys = Keys::generate();
    add_contact(&victim, "rogue", rogue_keys.address().to_string(), vec![]).await;
    let mut rogue = rogue_swarm_on(&rogue_keys, "/pigeon/otk/1", ProtocolSupport::Full);

    let month = now_ms() + 30 * 24 * 3600 * 1000;
    let good = |n: usize| -> Vec<SignedKey> {
        (0..n)
            .map(|_| one_time::make(&rogue_keys, &victim_peer, month).1)
            .collect()
    };
    let other = Keys::generate();
    let mut unsigned = good(4);
    for k in &mut unsigned {
        k.signature = vec![0; 64];
    }
    let mut empty_signature = good(4);
    for k in &mut empty_signature {
        k.signature.clear();
    }
    let mut altered = good(4);
    for k in &mut altered {
        k.public[0] ^= 1;
    }
    let mut oversized = vec![0, 0x10, 0, 0];
    oversized.extend_from_slice(&[0u8; 32 * 1024]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "signed by someone else",
            keys_frame(
                (0..4)
                    .map(|_| one_time::make(&other, &victim_peer, month).1)
                    .collect(),
            ),
            "refused",
        ),
        (
            "for another holder",
            keys_frame(
                (0..4)
                    .map(|_| one_time::make(&rogue_keys, &other.peer_id(), month).1)
                    .collect(),
            ),
            "refused",
        ),
        ("unsigned", keys_frame(unsigned), "refused"),
        (
            "without a signature",
            keys_frame(empty_signature),
            "refused",
        ),
        ("altered after signing", keys_frame(altered), "refused"),
        (
            "expiring within the minute",
            keys_frame(
                (0..4)
                    .map(|_| one_time::make(&rogue_keys, &victim_peer, now_ms() + 60_000).1)
                    .collect(),
            ),
            "refused",
        ),
        ("more than a frame may hold", keys_frame(good(33)), "failed"),
        ("an oversized frame", oversized, "failed"),
        (
            "garbage",
            vec![0, 0, 0, 8, 0xff, 0xfe, 0xfd, 0xfc, 1, 2, 3, 4],
            "failed",
        ),
    ];
    for (what, answer, result) in cases {
        let asked = answer_once(&mut rogue, victim_peer, &victim_addr, answer, result).await;
        let request: OtkRequest = codec::decode(&asked, 1024).expect("the node's request decodes");
        assert_eq!(request.want, 32, "{what}");
        assert_eq!(request.held, Some(0), "{what}");
        assert_eq!(
            contact(&victim, "rogue").await.one_time_keys_held,
            0,
            "kept keys {what}"
        );
    }
    // Good keys, with a flood of more than were asked for: the node keeps what it asked for.
    answer_once(
        &mut rogue,
        victim_peer,
        &victim_addr,
        keys_frame(good(32)),
        "kept",
    )
    .await;
    assert_eq!(
        contact(&victim, "rogue").await.one_time_keys_held,
        32,
        "the good keys were kept"
    );

    // Asking: a flood of requests, each claiming every key was lost.
    let started = Instant::now();
    let mut with_keys = 0;
    for round in 0..30 {
        // Half of them by count, half listing no key (or keys never handed out) as held.
        let held_ids = (round % 2 == 1).then(|| vec![OtkId([round as u8; 16]); round % 5]);
        let request = codec::encode(
            &OtkRequest {
                want: 32,
                held: Some(0),
                held_ids,
            },
            2048,
        )
        .expect("encode");
        let answer = raw_request(&mut rogue, victim_peer, &victim_addr, request)
            .await
            .expect("answered");
        let answer: OtkResponse = codec::decode(&answer, 1 << 20).expect("decodes");
        assert!(answer.keys.len() <= 32);
        if !answer.keys.is_empty() {
            with_keys += 1;
        }
        assert!(contact(&victim, "rogue").await.one_time_keys_handed_out <= 64);
    }
    let refills = (started.elapsed().as_secs_f64() / 2.0).ceil() as usize;
    assert!(
        (1..=8 + refills).contains(&with_keys),
        "{with_keys} answers with keys in {:?}",
        started.elapsed()
    );
    // Out of bounds: too many keys asked for, too many listed as held, a frame larger than a
    // request may be.
    for bad in [
        OtkRequest {
            want: 33,
            held: None,
            held_ids: None,
        },
        OtkRequest {
            want: 1,
            held: None,
            held_ids: Some(vec![OtkId([7; 16]); MAX_HELD_IDS + 1]),
        },
    ] {
        let frame = codec::encode(&bad, 4096).expect("encode");
        assert!(
            raw_request(&mut rogue, victim_peer, &victim_addr, frame)
                .await
                .is_err()
        );
    }
    let mut big = 2000u32.to_be_bytes().to_vec();
    big.extend_from_slice(&[0u8; 2000]);
    assert!(
        raw_request(&mut rogue, victim_peer, &victim_addr, big)
            .await
            .is_err()
    );

    // The node goes on: a real contact's message arrives.
    let alice = start_node(dir.path(), "alice").await;
    befriend(&victim, "victim", &alice, "alice").await;
    still_delivers(&alice, "victim", &victim, 1).await;
    victim.shutdown().await;
    alice.shutdown().await;
}
