//! A hostile peer behind a relay: it holds a reservation at a real relay node, lets a real node
//! reach it through the relay, and then answers the hole punch with garbage, again and again, on
//! the DCUtR protocol. The node refuses each stream and goes on: its other connections stay up and
//! a contact's messages still arrive.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, noise, relay, tcp, yamux};

use pigeon::config::Config;
use pigeon::control::api::Request;
use pigeon::keys::Keys;

use crate::rogue::*;

#[derive(NetworkBehaviour)]
struct Rogue {
    relay_client: relay::client::Behaviour,
    raw: request_response::Behaviour<RawCodec>,
}

/// Garbage the rogue writes where a DCUtR message belongs: not a length-prefixed protobuf, a
/// length that promises too much, and a valid-looking frame of nonsense.
fn garbage(i: usize) -> Vec<u8> {
    match i % 3 {
        0 => vec![0xff; 64],
        1 => vec![0xfe, 0xff, 0xff, 0xff, 0x0f],
        _ => [vec![20u8], vec![0x08; 20]].concat(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_hole_punch_is_refused_and_the_node_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay_config = Config::default();
    relay_config.relay.serve = true;
    let relay_node = start_node_with(dir.path(), "relay", &relay_config).await;
    let victim = start_node(dir.path(), "victim").await;
    let alice = start_node(dir.path(), "alice").await;
    let (relay_address, mut relay_addr) = address_of(&relay_node).await;
    if let Some(Protocol::P2p(_)) = relay_addr.iter().last() {
        relay_addr.pop();
    }
    let relay_peer = relay_address
        .parse::<pigeon::keys::address::Address>()
        .expect("address")
        .peer_id();
    let (victim_address, _) = address_of(&victim).await;
    let victim_peer = victim_address
        .parse::<pigeon::keys::address::Address>()
        .expect("address")
        .peer_id();

    // The rogue reserves a slot at the relay.
    let rogue_keys = Arc::new(Keys::generate());
    let mut rogue = libp2p::SwarmBuilder::with_existing_identity(rogue_keys.identity().clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client")
        .with_behaviour(|_, relay_client| Rogue {
            relay_client,
            raw: request_response::Behaviour::new(
                [(
                    StreamProtocol::new("/libp2p/dcutr"),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            ),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let circuit: Multiaddr = relay_addr
        .clone()
        .with(Protocol::P2p(relay_peer))
        .with(Protocol::P2pCircuit);
    rogue
        .dial(relay_addr.clone().with(Protocol::P2p(relay_peer)))
        .expect("dial relay");
    let reserve = async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                rogue.select_next_some().await
                && peer_id == relay_peer
            {
                break;
            }
        }
        rogue.listen_on(circuit.clone()).expect("listen via relay");
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = rogue.select_next_some().await
                && address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reserve)
        .await
        .expect("the relay granted the rogue a reservation");

    // The victim knows the rogue as a contact at its address through the relay, and alice
    // directly; it sends to the rogue, which makes it connect through the relay.
    add_contact(
        &victim,
        "rogue",
        rogue_keys.address().to_string(),
        vec![circuit.to_string()],
    )
    .await;
    befriend(&victim, "victim", &alice, "alice").await;
    victim
        .ops()
        .handle(Request::Send {
            to: "rogue".into(),
            subject: None,
            body: "hello rogue".into(),
            attachments: vec![],
            forward_secrecy: None,
        })
        .await
        .expect("send");

    // Once the victim is connected through the relay, the rogue answers the hole punch with
    // garbage, 30 times.
    let (mut sent, mut refused) = (0, 0);
    let punch = async {
        loop {
            match rogue.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == victim_peer => {
                    for i in 0..30 {
                        rogue
                            .behaviour_mut()
                            .raw
                            .send_request(&victim_peer, garbage(i));
                        sent += 1;
                    }
                }
                SwarmEvent::Behaviour(RogueEvent::Raw(
                    request_response::Event::OutboundFailure { error, .. },
                )) => {
                    // The node speaks DCUtR on this relayed connection and reads the garbage:
                    // it is refused as such, not as a protocol the node does not offer.
                    assert!(
                        !matches!(
                            error,
                            request_response::OutboundFailure::UnsupportedProtocols
                        ),
                        "{error}"
                    );
                    refused += 1;
                    if refused == sent && sent > 0 {
                        break;
                    }
                }
                SwarmEvent::Behaviour(RogueEvent::Raw(request_response::Event::Message {
                    ..
                })) => panic!("the node answered garbage with a DCUtR message"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), punch)
        .await
        .expect("every garbage stream was refused in time");
    assert_eq!((sent, refused), (30, 30));

    // Alice still reaches the victim, directly.
    still_delivers(&alice, "victim", &victim, 1).await;
}
