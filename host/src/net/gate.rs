//! A protocol only contacts may speak: [`Gated`] wraps a behaviour (the message and chunk
//! protocols) and gives it a connection only when the peer is a contact. A stranger's connection
//! gets a handler that supports nothing, so its `/pigeon/msg/1` stream is refused during protocol
//! negotiation, before one byte of its frame is read, and the wrapped behaviour never hears of
//! that connection.
//!
//! The set of contacts comes from the node ([`Gated::set_allowed`]); a peer whose standing changes
//! while connected is disconnected by the event loop, so its next connection is gated afresh.

use std::collections::{HashMap, HashSet};
use std::task::{Context, Poll};

use either::Either;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// `inner`, for contacts only.
pub(super) struct Gated<B> {
    inner: B,
    allowed: HashSet<PeerId>,
    /// Connections whose handler is `inner`'s, until the swarm reports them established.
    handed_out: HashSet<ConnectionId>,
    /// The established connections `inner` was given, per peer (it must see counts of its own
    /// connections only).
    open: HashMap<PeerId, HashSet<ConnectionId>>,
}

impl<B> Gated<B> {
    pub(super) fn new(inner: B, allowed: HashSet<PeerId>) -> Gated<B> {
        Gated {
            inner,
            allowed,
            handed_out: HashSet::new(),
            open: HashMap::new(),
        }
    }

    /// The wrapped behaviour.
    pub(super) fn inner(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Whether `peer` may speak the protocol.
    pub(super) fn allows(&self, peer: &PeerId) -> bool {
        self.allowed.contains(peer)
    }

    /// Replaces the allowed peers; returns the connected peers whose standing changed (the caller
    /// disconnects them, so that their next connection is gated by the new set).
    pub(super) fn set_allowed(&mut self, allowed: HashSet<PeerId>) -> Vec<PeerId> {
        let changed = self
            .allowed
            .symmetric_difference(&allowed)
            .copied()
            .collect();
        self.allowed = allowed;
        changed
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = Either<THandler<B>, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !self.allowed.contains(&peer) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        let handler = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        self.handed_out.insert(id);
        Ok(Either::Left(handler))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !self.allowed.contains(&peer) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        let handler = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        self.handed_out.insert(id);
        Ok(Either::Left(handler))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                // Only the connections that got the inner handler.
                if !self.handed_out.remove(&e.connection_id) {
                    return;
                }
                let open = self.open.entry(e.peer_id).or_default();
                let other_established = open.len();
                open.insert(e.connection_id);
                self.inner.on_swarm_event(FromSwarm::ConnectionEstablished(
                    ConnectionEstablished {
                        other_established,
                        ..e
                    },
                ));
            }
            FromSwarm::ConnectionClosed(e) => {
                let Some(open) = self.open.get_mut(&e.peer_id) else {
                    return;
                };
                if !open.remove(&e.connection_id) {
                    return;
                }
                let remaining_established = open.len();
                if remaining_established == 0 {
                    self.open.remove(&e.peer_id);
                }
                self.inner
                    .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                        remaining_established,
                        ..e
                    }));
            }
            FromSwarm::AddressChange(e) => {
                if self
                    .open
                    .get(&e.peer_id)
                    .is_some_and(|open| open.contains(&e.connection_id))
                {
                    self.inner.on_swarm_event(FromSwarm::AddressChange(e));
                }
            }
            FromSwarm::DialFailure(e) => {
                // A handler made for a connection another behaviour then denied.
                self.handed_out.remove(&e.connection_id);
                self.inner.on_swarm_event(FromSwarm::DialFailure(e));
            }
            FromSwarm::ListenFailure(e) => {
                self.handed_out.remove(&e.connection_id);
                self.inner.on_swarm_event(FromSwarm::ListenFailure(e));
            }
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(event) => self.inner.on_connection_handler_event(peer, id, event),
            Either::Right(never) => libp2p::core::util::unreachable(never),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|event| event.map_in(Either::Left))
    }
}
