//! NAT traversal in the swarm: circuit relay v2 (client always, server when `[relay] serve`),
//! DCUtR hole punching, and AutoNAT v2 (client always, server on relays). Which relays a node
//! listens through is a discovery plugin's choice (`listen-via-relay`); this room does the
//! protocol work and keeps what `pigeon peers` and `pigeon status` show: each connection's kind
//! (direct or relayed) and how a direct one came about, the node's reachability as AutoNAT found
//! it, the relays holding a reservation for it, and what it relays for others.

use std::collections::{HashMap, HashSet};

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, relay};
use serde::{Deserialize, Serialize};

use crate::config::RelayConfig;
use crate::metrics::METRICS;

/// The relay server for `config`.
pub(super) fn relay_server(local: PeerId, config: &RelayConfig) -> relay::Behaviour {
    relay::Behaviour::new(
        local,
        relay::Config {
            max_reservations: config.max_reservations,
            max_reservations_per_peer: config.max_reservations_per_peer,
            max_circuits: config.max_circuits,
            max_circuits_per_peer: config.max_circuits_per_peer,
            max_circuit_duration: config.circuit_duration(),
            max_circuit_bytes: config.max_circuit_bytes,
            ..relay::Config::default()
        },
    )
}

/// What the node knows of its reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatStatus {
    /// No AutoNAT answer yet.
    #[default]
    Unknown,
    /// A peer dialed one of this node's addresses back.
    Public,
    /// Dial-backs failed and none succeeded: behind a NAT or a firewall.
    Private,
}

/// How a connection came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// This node dialed it.
    Dialed,
    /// The peer dialed this node.
    Accepted,
    /// A hole punch (DCUtR) over a relayed connection made it.
    HolePunch,
}

/// One connection to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The peer's address on it.
    pub addr: String,
    /// Whether it goes through a relay.
    pub relayed: bool,
    /// How it came about.
    pub via: Via,
}

/// Reachability and relay state, for `pigeon status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatInfo {
    /// What AutoNAT found.
    pub nat: NatStatus,
    /// Relays that hold a reservation for this node (PeerIds).
    pub reserved_at: Vec<String>,
    /// Whether this node relays for others.
    pub serving: bool,
    /// Reservations it holds for others.
    pub reservations: usize,
    /// Connections it relays now.
    pub circuits: usize,
    /// Its limits (`[relay] max_reservations`, `max_circuits`); 0 when not serving.
    pub max_reservations: usize,
    /// See `max_reservations`.
    pub max_circuits: usize,
}

/// How this node relays for others.
#[derive(Debug, Clone, Copy)]
pub(super) struct Serving {
    /// Whether it announces the addresses it listens on (no `relay.external_addresses`).
    pub(super) announce_listen: bool,
    pub(super) max_reservations: usize,
    pub(super) max_circuits: usize,
}

impl Serving {
    pub(super) fn from_config(config: &RelayConfig) -> Option<Serving> {
        config.serve.then_some(Serving {
            announce_listen: config.external_addresses.is_empty(),
            max_reservations: config.max_reservations,
            max_circuits: config.max_circuits,
        })
    }
}

/// What the event loop tracks for NAT traversal.
#[derive(Default)]
pub(super) struct Nat {
    links: HashMap<ConnectionId, (PeerId, Link)>,
    status: NatStatus,
    confirmed: HashSet<Multiaddr>,
    /// Relays this node listens through, by listener, and those that accepted.
    relay_listeners: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    reserved_at: HashSet<PeerId>,
    serving: Option<Serving>,
    reservations: HashSet<PeerId>,
    circuits: usize,
}

/// The relay's PeerId in a relay address (`.../p2p/RELAY`), if it names one.
pub(super) fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// The address to listen on through the relay at `relay` (`.../p2p/RELAY/p2p-circuit`).
pub(super) fn circuit_listen_addr(relay: &Multiaddr) -> Multiaddr {
    if relay.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return relay.clone();
    }
    relay.clone().with(Protocol::P2pCircuit)
}

/// What the event loop should do after a connection came up.
pub(super) struct Established {
    /// Relayed connections to the same peer that a direct one now replaces: close them (a
    /// request-response behaviour spreads requests over every connection to a peer, and chunks
    /// are refused on relayed ones).
    pub(super) close: Vec<ConnectionId>,
}

impl Nat {
    pub(super) fn new(serving: Option<Serving>) -> Self {
        Nat {
            serving,
            ..Nat::default()
        }
    }

    /// A connection came up.
    pub(super) fn established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) -> Established {
        let relayed = endpoint.is_relayed();
        let relayed_to_peer: Vec<ConnectionId> = self
            .links
            .iter()
            .filter(|(_, (p, l))| *p == peer && l.relayed)
            .map(|(c, _)| *c)
            .collect();
        // A direct connection that appears while a relayed one is open is the punch's (DCUtR
        // reports only the side whose own dial won, so its event alone would miss half).
        let via = if !relayed && !relayed_to_peer.is_empty() {
            Via::HolePunch
        } else if endpoint.is_dialer() {
            Via::Dialed
        } else {
            Via::Accepted
        };
        let link = Link {
            addr: endpoint.get_remote_address().to_string(),
            relayed,
            via,
        };
        METRICS
            .connections
            .with_label_values(&[kind(relayed)])
            .inc();
        self.links.insert(id, (peer, link));
        Established {
            close: if relayed { Vec::new() } else { relayed_to_peer },
        }
    }

    /// A connection closed.
    pub(super) fn closed(&mut self, id: ConnectionId) {
        if let Some((_, link)) = self.links.remove(&id) {
            METRICS
                .connections
                .with_label_values(&[kind(link.relayed)])
                .dec();
        }
    }

    /// Whether connection `id` is relayed (unknown ones count as relayed: chunks never risk it).
    pub(super) fn is_relayed(&self, id: ConnectionId) -> bool {
        self.links.get(&id).is_none_or(|(_, l)| l.relayed)
    }

    /// Every peer's connections.
    pub(super) fn links(&self) -> HashMap<PeerId, Vec<Link>> {
        let mut out: HashMap<PeerId, Vec<Link>> = HashMap::new();
        for (peer, link) in self.links.values() {
            out.entry(*peer).or_default().push(link.clone());
        }
        out
    }

    /// A hole punch ended.
    pub(super) fn punched(&mut self, event: &dcutr::Event) {
        let result = match &event.result {
            Ok(id) => {
                if let Some((_, link)) = self.links.get_mut(id) {
                    link.via = Via::HolePunch;
                }
                "direct"
            }
            Err(_) => "failed",
        };
        METRICS.hole_punches.with_label_values(&[result]).inc();
        match &event.result {
            Ok(_) => {
                tracing::info!(peer = %event.remote_peer_id, "hole punch made a direct connection")
            }
            Err(e) => {
                tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punch failed; the relayed connection stays")
            }
        }
    }

    /// An AutoNAT v2 test ended; returns the new status when it changed.
    pub(super) fn tested(&mut self, event: &autonat::v2::client::Event) -> Option<NatStatus> {
        let before = self.status;
        match &event.result {
            Ok(()) => {
                self.confirmed.insert(event.tested_addr.clone());
                self.status = NatStatus::Public;
            }
            Err(e) => {
                tracing::debug!(addr = %event.tested_addr, error = %e, "AutoNAT: not reachable at this address");
                if self.confirmed.is_empty() {
                    self.status = NatStatus::Private;
                }
            }
        }
        (self.status != before).then_some(self.status)
    }

    /// This node asked to listen through `relay` on listener `id`.
    pub(super) fn listening_via(&mut self, id: libp2p::core::transport::ListenerId, relay: PeerId) {
        self.relay_listeners.insert(id, relay);
    }

    /// A listener closed; returns the relay it listened through, if it was a relay's.
    pub(super) fn listener_closed(
        &mut self,
        id: libp2p::core::transport::ListenerId,
    ) -> Option<PeerId> {
        let relay = self.relay_listeners.remove(&id)?;
        if !self.relay_listeners.values().any(|r| *r == relay) {
            self.reserved_at.remove(&relay);
        }
        Some(relay)
    }

    /// An event of the relay client; returns the relay of a new (not renewed) reservation.
    pub(super) fn client_event(&mut self, event: &relay::client::Event) -> Option<PeerId> {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                self.reserved_at.insert(*relay_peer_id);
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "the relay holds a reservation for this node");
                    return Some(*relay_peer_id);
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "connected through a relay");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "a peer connected through a relay");
            }
        }
        None
    }

    /// An event of the relay server.
    pub(super) fn server_event(&mut self, event: &relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.reservations.insert(*src_peer_id);
            }
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                self.reservations.remove(src_peer_id);
            }
            relay::Event::CircuitReqAccepted { .. } => self.circuits += 1,
            relay::Event::CircuitClosed { .. } => self.circuits = self.circuits.saturating_sub(1),
            relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                tracing::info!(peer = %src_peer_id, "refused a relay reservation (limits)");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                ..
            } => {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "refused to relay a connection (limits, or no reservation)");
            }
            _ => {}
        }
        METRICS
            .relay_reservations
            .set(self.reservations.len() as i64);
        METRICS.relay_circuits.set(self.circuits as i64);
    }

    /// Reachability and relay state now.
    pub(super) fn info(&self) -> NatInfo {
        let mut reserved_at: Vec<String> =
            self.reserved_at.iter().map(ToString::to_string).collect();
        reserved_at.sort();
        NatInfo {
            nat: self.status,
            reserved_at,
            serving: self.serving.is_some(),
            reservations: self.reservations.len(),
            circuits: self.circuits,
            max_reservations: self.serving.map_or(0, |s| s.max_reservations),
            max_circuits: self.serving.map_or(0, |s| s.max_circuits),
        }
    }
}

fn kind(relayed: bool) -> &'static str {
    if relayed { "relayed" } else { "direct" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str, dialer: bool) -> ConnectedPoint {
        let address: Multiaddr = addr.parse().expect("multiaddr");
        if dialer {
            ConnectedPoint::Dialer {
                address,
                role_override: libp2p::core::Endpoint::Dialer,
                port_use: libp2p::core::transport::PortUse::Reuse,
            }
        } else {
            ConnectedPoint::Listener {
                local_addr: "/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr"),
                send_back_addr: address,
            }
        }
    }

    #[test]
    fn a_direct_connection_beside_a_relayed_one_is_the_punch_and_replaces_it() {
        let mut nat = Nat::new(None);
        let (peer, relay) = (PeerId::random(), PeerId::random());
        let circuit = format!("/ip4/127.0.0.1/tcp/9/p2p/{relay}/p2p-circuit/p2p/{peer}");
        let relayed = ConnectionId::new_unchecked(1);
        let first = nat.established(peer, relayed, &endpoint(&circuit, true));
        assert!(first.close.is_empty());
        assert!(nat.is_relayed(relayed));
        let direct = ConnectionId::new_unchecked(2);
        let second = nat.established(peer, direct, &endpoint("/ip4/127.0.0.1/tcp/7", false));
        assert_eq!(second.close, vec![relayed]);
        assert!(!nat.is_relayed(direct));
        let links = nat.links();
        let kinds: Vec<(bool, Via)> = links[&peer].iter().map(|l| (l.relayed, l.via)).collect();
        assert!(kinds.contains(&(false, Via::HolePunch)), "{kinds:?}");
        assert!(kinds.contains(&(true, Via::Dialed)), "{kinds:?}");
        nat.closed(relayed);
        assert_eq!(nat.links()[&peer].len(), 1);
        // A plain dial to another peer is just that.
        let other = PeerId::random();
        nat.established(
            other,
            ConnectionId::new_unchecked(3),
            &endpoint("/ip4/127.0.0.1/tcp/8", true),
        );
        assert_eq!(nat.links()[&other][0].via, Via::Dialed);
        // Unknown connections count as relayed, so chunks are never served on a guess.
        assert!(nat.is_relayed(ConnectionId::new_unchecked(99)));
    }

    #[test]
    fn circuit_listen_addresses_and_relay_ids() {
        let relay = PeerId::random();
        let addr: Multiaddr = format!("/ip4/198.51.100.1/udp/4001/quic-v1/p2p/{relay}")
            .parse()
            .expect("multiaddr");
        let listen = circuit_listen_addr(&addr);
        assert!(listen.to_string().ends_with("/p2p-circuit"));
        assert_eq!(circuit_listen_addr(&listen), listen);
        assert_eq!(relay_peer(&addr), Some(relay));
    }
}
