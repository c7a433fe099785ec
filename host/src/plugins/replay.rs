//! What a fresh discovery instance is told before anything else: the node's state as the events
//! so far left it. An instance that replaces one that trapped would otherwise wait forever for
//! events that came before it: that the node is up, where it listens, its reachability, the
//! relays that hold a reservation for it, and the peers connected now.

use libp2p::{Multiaddr, PeerId};

use super::spec::NodeEvent;

/// Most listen addresses kept (the newest).
const MAX_ADDRESSES: usize = 16;
/// Most connected peers kept (the most recently connected).
const MAX_PEERS: usize = 64;
/// Most relays kept.
const MAX_RELAYS: usize = 8;

/// The node's state as discovery plugins learnt it, bounded whatever the events.
#[derive(Debug, Default)]
pub(super) struct Replay {
    started: bool,
    listening: Vec<Multiaddr>,
    nat: Option<crate::net::NatStatus>,
    relays: Vec<PeerId>,
    connected: Vec<(PeerId, Multiaddr)>,
}

impl Replay {
    /// Takes in what `event` changes.
    pub(super) fn note(&mut self, event: &NodeEvent) {
        match event {
            NodeEvent::Started => self.started = true,
            NodeEvent::NewListenAddress(a) => {
                keep_newest(&mut self.listening, a.clone(), |x| x == a, MAX_ADDRESSES)
            }
            NodeEvent::NatStatus(s) => self.nat = Some(*s),
            NodeEvent::ReservationAccepted(relay) => {
                keep_newest(&mut self.relays, *relay, |r| r == relay, MAX_RELAYS)
            }
            NodeEvent::ReservationLost { relay, .. } => {
                self.relays.retain(|r| r != relay);
                // Its circuit address goes with it.
                self.listening.retain(|a| !through(a, relay));
            }
            NodeEvent::PeerConnected { peer, address } => keep_newest(
                &mut self.connected,
                (*peer, address.clone()),
                |(p, _)| p == peer,
                MAX_PEERS,
            ),
            NodeEvent::PeerDisconnected(peer) => self.connected.retain(|(p, _)| p != peer),
            NodeEvent::DialFailed { .. } | NodeEvent::HolePunch { .. } => {}
        }
    }

    /// The events that tell a fresh instance the state: `started` first, a relay's reservation
    /// before the circuit address it brought.
    pub(super) fn events(&self) -> Vec<NodeEvent> {
        let started = self.started.then_some(NodeEvent::Started);
        let listening = self
            .listening
            .iter()
            .cloned()
            .map(NodeEvent::NewListenAddress);
        let nat = self.nat.map(NodeEvent::NatStatus);
        let relays = self
            .relays
            .iter()
            .copied()
            .map(NodeEvent::ReservationAccepted);
        let connected = self
            .connected
            .iter()
            .map(|(peer, address)| NodeEvent::PeerConnected {
                peer: *peer,
                address: address.clone(),
            });
        started
            .into_iter()
            .chain(nat)
            .chain(relays)
            .chain(listening)
            .chain(connected)
            .collect()
    }
}

/// Whether `address` is a circuit address through `relay` (`.../p2p/RELAY/p2p-circuit...`).
fn through(address: &Multiaddr, relay: &PeerId) -> bool {
    use libp2p::multiaddr::Protocol;
    let mut parts = address.iter().peekable();
    while let Some(part) = parts.next() {
        if part == Protocol::P2p(*relay) && parts.peek() == Some(&Protocol::P2pCircuit) {
            return true;
        }
    }
    false
}

/// Puts `item` last in `list`, dropping any entry `same` matches, then the oldest past `max`.
fn keep_newest<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool, max: usize) {
    list.retain(|x| !same(x));
    list.push(item);
    if list.len() > max {
        list.drain(..list.len() - max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NatStatus;

    fn kinds(replay: &Replay) -> Vec<String> {
        replay
            .events()
            .iter()
            .map(|e| match e {
                NodeEvent::Started => "started".to_owned(),
                NodeEvent::NewListenAddress(a) => format!("listen {a}"),
                NodeEvent::NatStatus(s) => format!("nat {s:?}"),
                NodeEvent::ReservationAccepted(r) => format!("relay {r}"),
                NodeEvent::PeerConnected { peer, .. } => format!("peer {peer}"),
                other => format!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_fresh_instance_learns_the_state_the_events_left() {
        let mut replay = Replay::default();
        assert!(replay.events().is_empty());
        let (a, b) = (PeerId::random(), PeerId::random());
        let relay = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7717".parse().expect("addr");
        for event in [
            NodeEvent::NewListenAddress(addr.clone()),
            NodeEvent::Started,
            NodeEvent::NatStatus(NatStatus::Unknown),
            NodeEvent::PeerConnected {
                peer: a,
                address: addr.clone(),
            },
            NodeEvent::PeerConnected {
                peer: b,
                address: addr.clone(),
            },
            NodeEvent::ReservationAccepted(relay),
            NodeEvent::NatStatus(NatStatus::Private),
            NodeEvent::PeerDisconnected(a),
            NodeEvent::DialFailed {
                peer: a,
                address: addr.clone(),
            },
            NodeEvent::NewListenAddress(addr.clone()),
        ] {
            replay.note(&event);
        }
        assert_eq!(
            kinds(&replay),
            [
                "started".to_owned(),
                "nat Private".to_owned(),
                format!("relay {relay}"),
                format!("listen {addr}"),
                format!("peer {b}"),
            ]
        );
        let circuit: Multiaddr = format!("/ip4/127.0.0.9/tcp/7717/p2p/{relay}/p2p-circuit")
            .parse()
            .expect("circuit");
        replay.note(&NodeEvent::NewListenAddress(circuit.clone()));
        assert!(kinds(&replay).contains(&format!("listen {circuit}")));
        replay.note(&NodeEvent::ReservationLost {
            relay,
            reason: "gone".into(),
        });
        let left = kinds(&replay);
        assert!(!left.contains(&format!("relay {relay}")), "{left:?}");
        assert!(
            !left.contains(&format!("listen {circuit}")),
            "its circuit address goes too"
        );
        assert!(
            left.contains(&format!("listen {addr}")),
            "the direct one stays"
        );
    }

    #[test]
    fn it_stays_bounded_keeping_the_newest() {
        let mut replay = Replay::default();
        let mut last = PeerId::random();
        for port in 0..1000u16 {
            let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
            replay.note(&NodeEvent::NewListenAddress(addr.clone()));
            last = PeerId::random();
            replay.note(&NodeEvent::PeerConnected {
                peer: last,
                address: addr,
            });
            replay.note(&NodeEvent::ReservationAccepted(PeerId::random()));
        }
        let events = replay.events();
        assert_eq!(events.len(), MAX_ADDRESSES + MAX_RELAYS + MAX_PEERS);
        assert!(
            kinds(&replay).contains(&"listen /ip4/127.0.0.1/tcp/999".to_owned()),
            "the newest address stays"
        );
        assert!(kinds(&replay).contains(&format!("peer {last}")));
    }
}
