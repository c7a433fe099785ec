//! A rogue peer for the hostile-peer and hostile-contact tests: a swarm that writes raw bytes on
//! `/pigeon/msg/1` (or another protocol) and reads the raw answer, or answers a node's requests
//! with raw bytes, and the in-process nodes it talks to.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};

use pigeon::config::Config;
use pigeon::control::api::{Request, Response};
use pigeon::envelope::{MessageId, Payload};
use pigeon::home::Home;
use pigeon::keys::{Keys, keystore};
use pigeon::net::codec;
use pigeon::net::protocol::{Batch, BatchResponse, MAX_REQUEST, Outcome};
use pigeon::node::Node;

pub(crate) const PASS: &str = "hostile peer test";

/// Writes the request bytes exactly as given; reads the whole response.
#[derive(Clone, Default)]
pub(crate) struct RawCodec;

#[async_trait]
impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        io.take(1 << 16).read_to_end(&mut out).await?;
        Ok(out)
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
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await?;
        io.close().await
    }
}

pub(crate) fn rogue_swarm(keys: &Keys) -> Swarm<request_response::Behaviour<RawCodec>> {
    rogue_swarm_on(keys, "/pigeon/msg/1", ProtocolSupport::Outbound)
}

/// A rogue speaking `protocol` raw, asking (`Outbound`), answering (`Inbound`) or both (`Full`).
pub(crate) fn rogue_swarm_on(
    keys: &Keys,
    protocol: &'static str,
    support: ProtocolSupport,
) -> Swarm<request_response::Behaviour<RawCodec>> {
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
                [(StreamProtocol::new(protocol), support)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Sends raw bytes and returns the raw answer, or the failure.
pub(crate) async fn raw_request(
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

pub(crate) async fn start_node(dir: &std::path::Path, name: &str) -> Node {
    start_node_with(dir, name, &Config::default()).await
}

pub(crate) async fn start_node_with(dir: &std::path::Path, name: &str, config: &Config) -> Node {
    let home = Home::resolve(Some(dir.join(name))).expect("home");
    pigeon::init::create_home(&home, PASS).await.expect("init");
    let keys = keystore::unlock(&home.keystore(), PASS).expect("unlock");
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr");
    Node::start(&home, keys, config, &[listen])
        .await
        .expect("start node")
}

pub(crate) async fn address_of(node: &Node) -> (String, Multiaddr) {
    let Response::Id(info) = node.ops().handle(Request::Id).await.expect("id") else {
        panic!("no id")
    };
    (info.address, info.listen[0].parse().expect("listen addr"))
}

/// Makes `a` and `b` contacts of each other (`b` as `b_name` in a's list, `a` as `a_name` in b's),
/// each with the other's listen address.
pub(crate) async fn befriend(a: &Node, a_name: &str, b: &Node, b_name: &str) {
    let (a_address, a_addr) = address_of(a).await;
    let (b_address, b_addr) = address_of(b).await;
    add_contact(a, b_name, b_address, vec![b_addr.to_string()]).await;
    add_contact(b, a_name, a_address, vec![a_addr.to_string()]).await;
}

pub(crate) async fn add_contact(node: &Node, name: &str, address: String, addrs: Vec<String>) {
    node.ops()
        .handle(Request::ContactsAdd {
            name: name.into(),
            address,
            addrs,
        })
        .await
        .expect("add contact");
}

pub(crate) async fn inbox_len(node: &Node) -> usize {
    match node
        .ops()
        .handle(Request::InboxList(Default::default()))
        .await
        .expect("inbox")
    {
        Response::Inbox(items) => items.len(),
        other => panic!("unexpected {other:?}"),
    }
}

pub(crate) fn payload(text: &str) -> Payload {
    Payload {
        id: MessageId::random(),
        sent_at_ms: 1,
        subject: None,
        body: text.into(),
        attachments: vec![],
    }
}

pub(crate) fn frame(batch: &Batch) -> Vec<u8> {
    codec::encode(batch, MAX_REQUEST).expect("encode")
}

pub(crate) fn outcomes(answer: Result<Vec<u8>, String>) -> Vec<Outcome> {
    let bytes = answer.expect("a well-formed batch gets an answer");
    codec::decode::<BatchResponse>(&bytes, 1 << 20)
        .expect("answer decodes")
        .outcomes
}

/// Sends a message from `from` to its contact `to` (the node `victim`) and waits (at most 30 s)
/// until the victim's inbox holds `expected` messages: the node still delivers.
pub(crate) async fn still_delivers(from: &Node, to: &str, victim: &Node, expected: usize) {
    from.ops()
        .handle(Request::Send {
            to: to.into(),
            subject: None,
            body: "still here?".into(),
            attachments: vec![],
            forward_secrecy: None,
        })
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while inbox_len(victim).await < expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the real message did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inbox_len(victim).await, expected);
}
