//! A hostile peer speaks `/pigeon/msg/1` to a real node: oversized and garbage frames, envelopes
//! claiming another sender, tampered ciphertext, oversized batches. Each is refused for that peer
//! only; the node goes on delivering real messages, and nothing of the attacker's reaches the inbox.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};

use pigeon::config::Config;
use pigeon::control::api::{Request, Response};
use pigeon::envelope::{self, Envelope, MessageId, Payload};
use pigeon::home::Home;
use pigeon::keys::{Keys, keystore};
use pigeon::net::codec;
use pigeon::net::protocol::{Batch, BatchResponse, MAX_BATCH, MAX_REQUEST, Outcome, RejectReason};
use pigeon::node::Node;

const PASS: &str = "hostile peer test";

/// Writes the request bytes exactly as given; reads the whole response.
#[derive(Clone, Default)]
struct RawCodec;

#[async_trait]
impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("the rogue serves nothing"))
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        io.take(1 << 20).read_to_end(&mut out).await?;
        if out.is_empty() {
            // The node dropped the stream without answering.
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"));
        }
        Ok(out)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Ok(())
    }
}

fn rogue_swarm(keys: &Keys) -> Swarm<request_response::Behaviour<RawCodec>> {
    libp2p::SwarmBuilder::with_existing_identity(keys.identity().clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::Behaviour::new(
                [(
                    StreamProtocol::new("/pigeon/msg/1"),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Sends raw bytes and returns the raw answer, or the failure.
async fn raw_request(
    swarm: &mut Swarm<request_response::Behaviour<RawCodec>>,
    peer: PeerId,
    addr: &Multiaddr,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let id = swarm
        .behaviour_mut()
        .send_request_with_addresses(&peer, bytes, vec![addr.clone()]);
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) if request_id == id => {
                    return Err(error.to_string());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the node answered or failed in time")
}

async fn start_node(dir: &std::path::Path, name: &str) -> Node {
    let home = Home::resolve(Some(dir.join(name))).expect("home");
    pigeon::init::create_home(&home, PASS).await.expect("init");
    let keys = keystore::unlock(&home.keystore(), PASS).expect("unlock");
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr");
    Node::start(&home, keys, &Config::default(), &[listen])
        .await
        .expect("start node")
}

async fn address_of(node: &Node) -> (String, Multiaddr) {
    let Response::Id(info) = node.ops().handle(Request::Id).await.expect("id") else {
        panic!("no id")
    };
    (info.address, info.listen[0].parse().expect("listen addr"))
}

async fn add_contact(node: &Node, name: &str, address: String, addrs: Vec<String>) {
    node.ops()
        .handle(Request::ContactsAdd {
            name: name.into(),
            address,
            addrs,
        })
        .await
        .expect("add contact");
}

async fn inbox_len(node: &Node) -> usize {
    match node
        .ops()
        .handle(Request::InboxList {
            limit: None,
            label: None,
        })
        .await
        .expect("inbox")
    {
        Response::Inbox(items) => items.len(),
        other => panic!("unexpected {other:?}"),
    }
}

fn payload(text: &str) -> Payload {
    Payload {
        id: MessageId::random(),
        sent_at_ms: 1,
        subject: None,
        body: text.into(),
        attachments: vec![],
    }
}

fn frame(batch: &Batch) -> Vec<u8> {
    codec::encode(batch, MAX_REQUEST).expect("encode")
}

fn outcomes(answer: Result<Vec<u8>, String>) -> Vec<Outcome> {
    let bytes = answer.expect("a well-formed batch gets an answer");
    codec::decode::<BatchResponse>(&bytes, 1 << 20)
        .expect("answer decodes")
        .outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_refused_and_the_node_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = start_node(dir.path(), "victim").await;
    let alice = start_node(dir.path(), "alice").await;
    let alice_keys =
        keystore::unlock(&dir.path().join("alice/keystore"), PASS).expect("alice keys");
    let (victim_address, victim_addr) = address_of(&victim).await;
    let (alice_address, alice_addr) = address_of(&alice).await;
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
    let stolen = envelope::seal(&alice_keys, &victim_peer, &victim_key, &payload("replayed"));
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
    let mut tampered = envelope::seal(&rogue_keys, &victim_peer, &victim_key, &payload("tampered"));
    let last = tampered.ct.len() - 1;
    tampered.ct[last] ^= 1;
    let mut future = envelope::seal(&rogue_keys, &victim_peer, &victim_key, &payload("v9"));
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
    add_contact(
        &victim,
        "alice",
        alice_address,
        vec![alice_addr.to_string()],
    )
    .await;
    add_contact(
        &alice,
        "victim",
        victim_address,
        vec![victim_addr.to_string()],
    )
    .await;
    alice
        .ops()
        .handle(Request::Send {
            to: "victim".into(),
            subject: None,
            body: "still here?".into(),
            attachments: vec![],
        })
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while inbox_len(&victim).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the real message did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inbox_len(&victim).await, 1);
    victim.shutdown().await;
    alice.shutdown().await;
}
