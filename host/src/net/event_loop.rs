//! The task that owns the swarm: it carries out the [`Command`]s the [`Net`](super::Net) handles
//! send, answers each with its oneshot, and reports what happens on the network as
//! [`NetEvent`]s (every one sent through [`EventLoop::emit`], onto a bounded queue). On shutdown, every reply still pending
//! gets an error.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId, Swarm, ping};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::nat::{self, Nat, Serving};
use super::protocol::{
    Batch, BatchResponse, ChunkRequest, ChunkResponse, OtkRequest, OtkResponse, Outcome,
    RejectReason,
};
use super::{Behaviour, BehaviourEvent, Command, NetEvent, SendError, describe};
use crate::metrics::METRICS;

type Pending<T> = HashMap<OutboundRequestId, oneshot::Sender<Result<T, SendError>>>;

/// Hands the outcome of request `id` to whoever waits for it.
fn answer<T>(pending: &mut Pending<T>, id: OutboundRequestId, result: Result<T, SendError>) {
    if let Some(reply) = pending.remove(&id) {
        let _ = reply.send(result);
    }
}

/// An inbound request, with where it came from and where its answer goes.
type Inbound<Req, Resp> = (
    PeerId,
    ConnectionId,
    Req,
    request_response::ResponseChannel<Resp>,
);

/// The outbound half of a pulled protocol's event: answers and failures go to the requests
/// waiting in `pending`. An inbound request comes back to the caller.
fn settle<Req, Resp>(
    pending: &mut Pending<Resp>,
    event: request_response::Event<Req, Resp>,
    what: &str,
) -> Option<Inbound<Req, Resp>> {
    use request_response::{Event, Message};
    match event {
        Event::Message {
            peer,
            connection_id,
            message: Message::Request {
                request, channel, ..
            },
        } => return Some((peer, connection_id, request, channel)),
        Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => answer(pending, request_id, Ok(response)),
        Event::OutboundFailure {
            request_id, error, ..
        } => answer(pending, request_id, Err(SendError(error.to_string()))),
        Event::InboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "bad {what} request")
        }
        Event::ResponseSent { .. } => {}
    }
    None
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    events: mpsc::Sender<NetEvent>,
    pending: Pending<BatchResponse>,
    listening: Vec<Multiaddr>,
    /// Addresses of the connections this node dialed, for attributing ping RTTs.
    dialed: HashMap<ConnectionId, Multiaddr>,
    /// Connections (direct or relayed), reachability and relay state.
    nat: Nat,
    /// Relays to listen through once the connection to them is up.
    relay_waiting: HashMap<PeerId, Multiaddr>,
    /// Whether this node relays and announces the addresses it listens on (no
    /// `relay.external_addresses` given).
    announce_listen: bool,
    pending_chunks: Pending<ChunkResponse>,
    pending_otks: Pending<OtkResponse>,
    /// Envelopes in each batch in flight, to answer for each when the peer refuses the protocol.
    batch_sizes: HashMap<OutboundRequestId, usize>,
    /// Peers being disconnected because they became or stopped being contacts: a dial to one
    /// goes ahead although its old connections have not closed yet.
    regated: HashSet<PeerId>,
}

impl EventLoop {
    /// An event loop for `swarm` that reports on `events`.
    /// `serving`: on a node that relays for others.
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        events: mpsc::Sender<NetEvent>,
        serving: Option<Serving>,
    ) -> Self {
        EventLoop {
            swarm,
            events,
            pending: HashMap::new(),
            listening: Vec::new(),
            dialed: HashMap::new(),
            nat: Nat::new(serving),
            relay_waiting: HashMap::new(),
            announce_listen: serving.is_some_and(|s| s.announce_listen),
            pending_chunks: HashMap::new(),
            pending_otks: HashMap::new(),
            batch_sizes: HashMap::new(),
            regated: HashSet::new(),
        }
    }

    /// Hands `event` to the node. The queue is bounded ([`super::EVENT_QUEUE`]) and the swarm must not
    /// wait on it, so when it is full the event is dropped and counted: an inbound batch is answered
    /// `unavailable` at once (a transient refusal: the sender retries it later, nothing is lost),
    /// a chunk request goes unanswered (the fetcher asks again), and a lost `PeerConnected` or dial
    /// outcome only costs a wake-up or a health sample.
    fn emit(&mut self, event: NetEvent) {
        let event = match self.events.try_send(event) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        METRICS.net_events_dropped.inc();
        tracing::warn!("the node's event queue is full; an event was dropped");
        if let NetEvent::InboundBatch { batch, channel, .. } = event {
            let outcomes =
                vec![Outcome::Rejected(RejectReason::Unavailable); batch.envelopes.len()];
            let _ = self
                .swarm
                .behaviour_mut()
                .msg
                .inner()
                .send_response(channel, BatchResponse { outcomes });
        }
    }

    /// Runs until `cancel` fires or every handle is gone, then fails the replies still pending.
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(SendError("the node is shutting down".into())));
        }
        for (_, reply) in self.pending_chunks.drain() {
            let _ = reply.send(Err(SendError("the node is shutting down".into())));
        }
        for (_, reply) in self.pending_otks.drain() {
            let _ = reply.send(Err(SendError("the node is shutting down".into())));
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::FetchChunk {
                peer,
                addrs,
                request,
                reply,
            } => {
                let chunk = &mut self.swarm.behaviour_mut().chunk;
                if !chunk.allows(&peer) {
                    // Only a contact's connections speak the protocol: a request would wait forever.
                    let _ = reply.send(Err(SendError("not a contact of this node".into())));
                    return;
                }
                let id = chunk
                    .inner()
                    .send_request_with_addresses(&peer, request, addrs);
                self.pending_chunks.insert(id, reply);
            }
            Command::RespondChunk { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .chunk
                    .inner()
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("peer went away before its chunk was sent");
                }
            }
            Command::FetchOtk {
                peer,
                addrs,
                request,
                reply,
            } => {
                let otk = &mut self.swarm.behaviour_mut().otk;
                if !otk.allows(&peer) {
                    let _ = reply.send(Err(SendError("not a contact of this node".into())));
                    return;
                }
                let id = otk
                    .inner()
                    .send_request_with_addresses(&peer, request, addrs);
                self.pending_otks.insert(id, reply);
            }
            Command::RespondOtk { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .otk
                    .inner()
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("peer went away before its one-time keys were sent");
                }
            }
            Command::SendBatch {
                peer,
                addrs,
                batch,
                reply,
            } => {
                let msg = &mut self.swarm.behaviour_mut().msg;
                if !msg.allows(&peer) {
                    let _ = reply.send(Err(SendError("not a contact of this node".into())));
                    return;
                }
                let n = batch.envelopes.len();
                let id = msg.inner().send_request_with_addresses(&peer, batch, addrs);
                self.pending.insert(id, reply);
                self.batch_sizes.insert(id, n);
            }
            Command::SetContacts { peers } => {
                // Both gates hold the same set, so the message gate's changes are the chunk gate's.
                let behaviour = self.swarm.behaviour_mut();
                let changed = behaviour.msg.set_allowed(peers.clone());
                behaviour.chunk.set_allowed(peers.clone());
                behaviour.otk.set_allowed(peers);
                for peer in changed {
                    // Its connections were gated by the old set: the next one gets the new.
                    if self.swarm.is_connected(&peer) {
                        let _ = self.swarm.disconnect_peer_id(peer);
                        self.regated.insert(peer);
                    }
                }
            }
            Command::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .msg
                    .inner()
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("peer went away before its batch was answered");
                }
            }
            Command::Dial { peer, addrs } => {
                if self.swarm.is_connected(&peer) && !self.regated.contains(&peer) {
                    return;
                }
                if let Err(e) = self
                    .swarm
                    .dial(DialOpts::peer_id(peer).addresses(addrs).build())
                {
                    tracing::debug!(%peer, error = %describe(&e), "dial failed");
                }
            }
            Command::AddAddress { peer, addr } => {
                self.swarm.add_peer_address(peer, addr);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listening.clone());
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::ListenViaRelay { relay } => {
                let Some(peer) = nat::relay_peer(&relay) else {
                    tracing::warn!(%relay, "a relay address must end in /p2p/<PeerId>");
                    return;
                };
                if self.swarm.is_connected(&peer) {
                    self.listen_via(peer, &relay);
                    return;
                }
                // A listener asked for before the relay connection is up closes at once: dial,
                // and listen once connected (identify then also tells this node its public
                // address, which a hole punch needs).
                let dialed = self.swarm.dial(
                    DialOpts::peer_id(peer)
                        .addresses(vec![relay.clone()])
                        .build(),
                );
                match dialed {
                    // A dial already under way (a plugin's own) does as well.
                    Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                        self.relay_waiting.insert(peer, relay);
                    }
                    Err(e) => {
                        tracing::warn!(%relay, error = %describe(&e), "cannot dial the relay")
                    }
                }
            }
            Command::Links { reply } => {
                let _ = reply.send(self.nat.links());
            }
            Command::NatInfo { reply } => {
                let _ = reply.send(self.nat.info());
            }
        }
    }

    /// Asks the relay `peer` (connected) for a reservation and listens through it.
    fn listen_via(&mut self, peer: PeerId, relay: &Multiaddr) {
        match self.swarm.listen_on(nat::circuit_listen_addr(relay)) {
            Ok(id) => {
                tracing::info!(%relay, "asking the relay for a reservation");
                self.nat.listening_via(id, peer);
            }
            Err(e) => {
                tracing::warn!(%relay, error = %describe(&e), "cannot listen through the relay")
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                if self.announce_listen && announceable(&address) {
                    // A relay's reservations carry the addresses it is reached at.
                    self.swarm.add_external_address(address.clone());
                }
                self.listening.push(address.clone());
                self.emit(NetEvent::Listening(address));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(relay) = self.nat.listener_closed(listener_id) {
                    let reason = match reason {
                        Ok(()) => "the relay closed the reservation".to_owned(),
                        Err(e) => describe(&e),
                    };
                    tracing::warn!(%relay, %reason, "no longer listening through the relay");
                    self.emit(NetEvent::RelayLost { relay, reason });
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening.retain(|a| *a != address)
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if !endpoint.is_relayed()
                    && let Some(relay) = self.relay_waiting.remove(&peer_id)
                {
                    self.listen_via(peer_id, &relay);
                }
                for relayed in self
                    .nat
                    .established(peer_id, connection_id, &endpoint)
                    .close
                {
                    tracing::debug!(peer = %peer_id, "a direct connection replaces the relayed one");
                    self.swarm.close_connection(relayed);
                }
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone();
                    self.dialed.insert(connection_id, addr.clone());
                    self.emit(NetEvent::Dialed {
                        peer: peer_id,
                        addr,
                        ok: true,
                    });
                }
                if num_established.get() == 1 {
                    METRICS.connected_peers.inc();
                    self.emit(NetEvent::PeerConnected {
                        peer: peer_id,
                        addr: endpoint.get_remote_address().clone(),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.dialed.remove(&connection_id);
                self.nat.closed(connection_id);
                if num_established == 0 {
                    self.regated.remove(&peer_id);
                    METRICS.connected_peers.dec();
                    self.emit(NetEvent::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let failed: Vec<Multiaddr> = match &error {
                    DialError::Transport(attempts) => {
                        attempts.iter().map(|(a, _)| a.clone()).collect()
                    }
                    DialError::WrongPeerId { address, .. } => vec![address.clone()],
                    _ => Vec::new(),
                };
                tracing::debug!(%peer, error = %describe(&error), "dial failed");
                for addr in failed {
                    self.emit(NetEvent::Dialed {
                        peer,
                        addr,
                        ok: false,
                    });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            })) => {
                if let Some(addr) = self.dialed.get(&connection) {
                    self.emit(NetEvent::Rtt {
                        peer,
                        addr: addr.clone(),
                        rtt,
                    });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Msg(event)) => self.on_msg_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(event)) => self.on_chunk_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Otk(event)) => self.on_otk_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                if let Some(relay) = self.nat.client_event(&event) {
                    self.emit(NetEvent::ReservationAccepted(relay));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => self.nat.server_event(&event),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                self.nat.punched(&event);
                self.emit(NetEvent::HolePunch {
                    peer: event.remote_peer_id,
                    error: event.result.as_ref().err().map(|e| e.to_string()),
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => {
                if let Some(status) = self.nat.tested(&event) {
                    tracing::info!(?status, "reachability as AutoNAT found it");
                    self.emit(NetEvent::NatStatus(status));
                }
            }
            _ => {}
        }
    }

    fn on_chunk_event(&mut self, event: request_response::Event<ChunkRequest, ChunkResponse>) {
        if let Some((peer, connection_id, request, channel)) =
            settle(&mut self.pending_chunks, event, "chunk")
        {
            let relayed = self.nat.is_relayed(connection_id);
            self.emit(NetEvent::InboundChunk {
                peer,
                request,
                relayed,
                channel,
            });
        }
    }

    fn on_otk_event(&mut self, event: request_response::Event<OtkRequest, OtkResponse>) {
        if let Some((peer, _, request, channel)) =
            settle(&mut self.pending_otks, event, "one-time key")
        {
            self.emit(NetEvent::InboundOtk {
                peer,
                request,
                channel,
            });
        }
    }

    fn on_msg_event(&mut self, event: request_response::Event<Batch, BatchResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.emit(NetEvent::InboundBatch {
                    peer,
                    batch: request,
                    channel,
                });
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.batch_sizes.remove(&request_id);
                answer(&mut self.pending, request_id, Ok(response));
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let n = self.batch_sizes.remove(&request_id).unwrap_or(0);
                let result = match error {
                    // A pigeon node speaks the message protocol only with its contacts: the
                    // refusal says that this node is not one of the peer's (yet).
                    request_response::OutboundFailure::UnsupportedProtocols => Ok(BatchResponse {
                        outcomes: vec![Outcome::Rejected(RejectReason::NotAContact); n],
                    }),
                    error => {
                        tracing::debug!(%peer, %error, "batch not answered");
                        Err(SendError(error.to_string()))
                    }
                };
                answer(&mut self.pending, request_id, result);
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "bad inbound batch");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

/// Whether a relay announces `addr` as where it is reached: not a circuit, not 0.0.0.0 or `::`.
fn announceable(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().all(|p| match p {
        Protocol::P2pCircuit => false,
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        _ => true,
    })
}
