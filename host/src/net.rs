//! The libp2p swarm, owned by one task.
//!
//! TCP and QUIC, Noise, Yamux, connection limits, identify, ping, and `/pigeon/msg/1` and
//! `/pigeon/chunk/1` for contacts only (`net/gate.rs`). The rest of the node holds a
//! cloneable [`Net`] handle that sends [`Command`]s (each with a oneshot reply) and reads
//! [`NetEvent`]s from a channel; nothing else touches the swarm. This file holds that interface
//! and builds the swarm; `net/event_loop.rs` is the task that runs it.

pub mod codec;
mod event_loop;
mod gate;
mod nat;
pub mod protocol;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, connection_limits, dcutr, identify, noise, ping, relay, tcp,
    yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, RelayConfig};
use event_loop::EventLoop;
use gate::Gated;
pub use nat::{Link, NatInfo, NatStatus, Via};

/// Message streams one connection may have open at once (each reads at most a frame).
const MSG_STREAMS_PER_CONNECTION: usize = 8;

/// Network events that may wait for the node at once. The node's pump hands each on in moments
/// (batches to tasks of their own), so the queue fills only when the node cannot keep up; see
/// `EventLoop::emit` for what happens then.
pub(crate) const EVENT_QUEUE: usize = 1024;
use protocol::{
    Batch, BatchResponse, CHUNK_PROTOCOL, ChunkCodec, ChunkRequest, ChunkResponse, MSG_PROTOCOL,
    MsgCodec, OTK_PROTOCOL, OTK_PROTOCOL_V1, OtkCodec, OtkId, OtkRequest, OtkResponse,
};

/// Errors starting or using the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport could not be built.
    #[error("cannot set up the network: {0}")]
    Setup(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The swarm task has stopped.
    #[error("the network task has stopped")]
    Closed,
}

/// Why a batch did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// Something the swarm task reports.
#[derive(Debug)]
pub enum NetEvent {
    /// Now listening on this address.
    Listening(Multiaddr),
    /// A first connection to this peer is up.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its address on that connection.
        addr: Multiaddr,
    },
    /// The last connection to this peer closed.
    PeerDisconnected(PeerId),
    /// A dial to `addr` connected (`ok`) or failed: food for the peer health cache.
    Dialed {
        /// The peer dialed.
        peer: PeerId,
        /// The address tried.
        addr: Multiaddr,
        /// Whether it connected.
        ok: bool,
    },
    /// A peer asks for an attachment chunk; answer it with [`Net::respond_chunk`].
    InboundChunk {
        /// The Noise-authenticated peer.
        peer: PeerId,
        /// What it asks for.
        request: ChunkRequest,
        /// Whether the request came over a relayed connection (chunks never travel over one).
        relayed: bool,
        /// Where the answer goes.
        channel: ResponseChannel<ChunkResponse>,
    },
    /// A contact asks for one-time keys; answer it with [`Net::respond_one_time_keys`].
    InboundOtk {
        /// The Noise-authenticated peer.
        peer: PeerId,
        /// What it asks for.
        request: OtkRequest,
        /// Where the answer goes.
        channel: ResponseChannel<OtkResponse>,
    },
    /// A ping round trip over a connection we dialed to `addr`.
    Rtt {
        /// The peer.
        peer: PeerId,
        /// The connection's address.
        addr: Multiaddr,
        /// The round trip.
        rtt: Duration,
    },
    /// AutoNAT's view of this node's reachability changed.
    NatStatus(NatStatus),
    /// A relay accepted a reservation for this node (not sent for renewals).
    ReservationAccepted(PeerId),
    /// A listener through a relay closed (its reservation was refused or lapsed).
    RelayLost {
        /// The relay.
        relay: PeerId,
        /// Why, as far as libp2p says.
        reason: String,
    },
    /// A hole punch with a peer connected through a relay ended.
    HolePunch {
        /// The peer.
        peer: PeerId,
        /// Why it failed; `None` when it made a direct connection.
        error: Option<String>,
    },
    /// A peer sent a batch; answer it with [`Net::respond`].
    InboundBatch {
        /// The Noise-authenticated sender.
        peer: PeerId,
        /// The batch.
        batch: Batch,
        /// Where the answer goes.
        channel: ResponseChannel<BatchResponse>,
    },
}

enum Command {
    FetchChunk {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: ChunkRequest,
        reply: oneshot::Sender<Result<ChunkResponse, SendError>>,
    },
    RespondChunk {
        channel: ResponseChannel<ChunkResponse>,
        response: ChunkResponse,
    },
    FetchOtk {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: OtkRequest,
        reply: oneshot::Sender<Result<OtkResponse, SendError>>,
    },
    RespondOtk {
        channel: ResponseChannel<OtkResponse>,
        response: OtkResponse,
    },
    SendBatch {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        batch: Batch,
        reply: oneshot::Sender<Result<BatchResponse, SendError>>,
    },
    Respond {
        channel: ResponseChannel<BatchResponse>,
        response: BatchResponse,
    },
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenViaRelay {
        relay: Multiaddr,
    },
    Links {
        reply: oneshot::Sender<HashMap<PeerId, Vec<Link>>>,
    },
    NatInfo {
        reply: oneshot::Sender<NatInfo>,
    },
    SetContacts {
        peers: HashSet<PeerId>,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First, so that a connection past a limit is denied before anything else sees it.
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    msg: Gated<request_response::Behaviour<MsgCodec>>,
    chunk: Gated<request_response::Behaviour<ChunkCodec>>,
    otk: Gated<request_response::Behaviour<OtkCodec>>,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    autonat: autonat::v2::client::Behaviour,
    /// Only on a node that relays for others (`[relay] serve`), which is reachable by definition:
    /// the relay and the AutoNAT server.
    relay: Toggle<relay::Behaviour>,
    autonat_server: Toggle<autonat::v2::server::Behaviour>,
}

/// A handle to the swarm task.
#[derive(Clone)]
pub struct Net {
    commands: mpsc::Sender<Command>,
    local: PeerId,
}

impl Net {
    /// Starts the swarm listening on `listen`; returns the handle, the event stream and the task.
    ///
    /// Only `contacts` may speak the message and chunk protocols ([`gate`]); keep the set current
    /// with [`Net::set_contacts`].
    pub fn spawn(
        identity: Keypair,
        listen: &[Multiaddr],
        contacts: HashSet<PeerId>,
        limits: &NodeConfig,
        relay: &RelayConfig,
        cancel: CancellationToken,
    ) -> Result<(Net, mpsc::Receiver<NetEvent>, JoinHandle<()>), NetError> {
        let local = identity.public().to_peer_id();
        let mut swarm = build_swarm(identity, contacts, limits, relay)?;
        for addr in relay.external() {
            swarm.add_external_address(addr);
        }
        for addr in listen {
            tcp_port_free(addr).map_err(|reason| NetError::Listen {
                addr: addr.clone(),
                reason,
            })?;
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: describe(&e),
                })?;
        }
        let (commands, commands_rx) = mpsc::channel(256);
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let serving = nat::Serving::from_config(relay);
        let task = tokio::spawn(EventLoop::new(swarm, events, serving).run(commands_rx, cancel));
        Ok((Net { commands, local }, events_rx, task))
    }

    /// This node's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Sends a batch to `peer` (dialing `addrs` if not connected) and waits for its answer.
    pub async fn send_batch(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        batch: Batch,
    ) -> Result<BatchResponse, SendError> {
        self.ask(|reply| Command::SendBatch {
            peer,
            addrs,
            batch,
            reply,
        })
        .await
    }

    /// Asks the swarm task for something it knows; a stopped task answers with the default.
    async fn query<T: Default>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(make(reply)).await.is_err() {
            return T::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Sends the command `make` builds around a reply channel, and waits for the reply.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SendError>>) -> Command,
    ) -> Result<T, SendError> {
        let stopped = || SendError("the network task has stopped".into());
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Asks `peer` for an attachment chunk (dialing `addrs` if not connected).
    pub async fn fetch_chunk(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: ChunkRequest,
    ) -> Result<ChunkResponse, SendError> {
        self.ask(|reply| Command::FetchChunk {
            peer,
            addrs,
            request,
            reply,
        })
        .await
    }

    /// Answers a chunk request.
    pub async fn respond_chunk(
        &self,
        channel: ResponseChannel<ChunkResponse>,
        response: ChunkResponse,
    ) {
        let _ = self
            .commands
            .send(Command::RespondChunk { channel, response })
            .await;
    }

    /// Asks `peer` for up to `want` one-time keys, saying it holds `held` of them, which are
    /// `held_ids` (dialing `addrs` if not connected).
    pub async fn fetch_one_time_keys(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        want: u16,
        held: Option<u16>,
        held_ids: Option<Vec<OtkId>>,
    ) -> Result<OtkResponse, SendError> {
        self.ask(|reply| Command::FetchOtk {
            peer,
            addrs,
            request: OtkRequest {
                want,
                held,
                held_ids,
            },
            reply,
        })
        .await
    }

    /// Answers a request for one-time keys.
    pub async fn respond_one_time_keys(
        &self,
        channel: ResponseChannel<OtkResponse>,
        response: OtkResponse,
    ) {
        let _ = self
            .commands
            .send(Command::RespondOtk { channel, response })
            .await;
    }

    /// Answers an inbound batch.
    pub async fn respond(&self, channel: ResponseChannel<BatchResponse>, response: BatchResponse) {
        let _ = self
            .commands
            .send(Command::Respond { channel, response })
            .await;
    }

    /// Dials `peer` at `addrs` (a connected peer gets its due messages at once).
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self.commands.send(Command::Dial { peer, addrs }).await;
    }

    /// Remembers `addr` for `peer`, for later dials and requests.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.commands.send(Command::AddAddress { peer, addr }).await;
    }

    /// Replaces the peers that may speak the message and chunk protocols (the contacts). A peer
    /// whose standing changes is disconnected, so its next connection follows the new set.
    pub async fn set_contacts(&self, peers: HashSet<PeerId>) {
        let _ = self.commands.send(Command::SetContacts { peers }).await;
    }

    /// Listens through the relay at `relay` (a multiaddr ending in `/p2p/RELAY`).
    pub async fn listen_via_relay(&self, relay: Multiaddr) {
        let _ = self.commands.send(Command::ListenViaRelay { relay }).await;
    }

    /// Every connected peer's connections (direct or relayed, and how).
    pub async fn links(&self) -> HashMap<PeerId, Vec<Link>> {
        self.query(|reply| Command::Links { reply }).await
    }

    /// Reachability and relay state.
    pub async fn nat_info(&self) -> NatInfo {
        self.query(|reply| Command::NatInfo { reply }).await
    }

    /// The peers connected now.
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        self.query(|reply| Command::ConnectedPeers { reply }).await
    }

    /// The addresses the node listens on now.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.query(|reply| Command::ListenAddrs { reply }).await
    }
}

fn build_swarm(
    identity: Keypair,
    contacts: HashSet<PeerId>,
    config: &NodeConfig,
    relay: &RelayConfig,
) -> Result<Swarm<Behaviour>, NetError> {
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(config.max_pending_incoming))
        .with_max_pending_outgoing(Some(config.max_pending_outgoing))
        .with_max_established_incoming(Some(config.max_established_incoming))
        .with_max_established(Some(config.max_established))
        .with_max_established_per_peer(Some(config.max_established_per_peer));
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    Ok(libp2p::SwarmBuilder::with_existing_identity(identity)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| Behaviour {
            relay_client,
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            autonat: autonat::v2::client::Behaviour::new(
                rand::rngs::OsRng,
                autonat::v2::client::Config::default(),
            ),
            relay: Toggle::from(
                relay
                    .serve
                    .then(|| nat::relay_server(key.public().to_peer_id(), relay)),
            ),
            autonat_server: Toggle::from(
                relay
                    .serve
                    .then(|| autonat::v2::server::Behaviour::new(rand::rngs::OsRng)),
            ),
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(identify::Config::new(
                "/pigeon/id/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            // Streams per connection bound what one peer can make the node read at once
            // (each up to a frame), so the swarm's memory is bounded by the connection limits.
            msg: Gated::new(
                request_response::Behaviour::new(
                    [(MSG_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(MSG_STREAMS_PER_CONNECTION),
                ),
                contacts.clone(),
            ),
            chunk: Gated::new(
                request_response::Behaviour::new(
                    [(CHUNK_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(64),
                ),
                contacts.clone(),
            ),
            otk: Gated::new(
                request_response::Behaviour::new(
                    [
                        (OTK_PROTOCOL, ProtocolSupport::Full),
                        (OTK_PROTOCOL_V1, ProtocolSupport::Full),
                    ],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(2),
                ),
                contacts,
            ),
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| {
            // Two addresses at a time, healthiest first (the order `dial_addrs` gives).
            c.with_idle_connection_timeout(Duration::from_secs(60))
                .with_dial_concurrency_factor(std::num::NonZeroU8::new(2).expect("2 is not zero"))
        })
        .build())
}

/// Refuses a TCP listen address whose port a socket already listens on. libp2p's TCP listeners set
/// SO_REUSEPORT (so that dials can leave from the listen port), which lets a second node listen on
/// the same port and take the first one's connections. A probe without SO_REUSEPORT cannot bind
/// where anything listens (SO_REUSEADDR keeps old connections in TIME_WAIT from counting).
fn tcp_port_free(addr: &Multiaddr) -> Result<(), String> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let port = match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => port,
        _ => return Ok(()),
    };
    let socket = match ip {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| s.set_reuseaddr(true).map(|()| s))
    .map_err(|e| e.to_string())?;
    match socket.bind((ip, port).into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "port {port} is in use (another pigeon node or program listens there)"
        )),
        // Any other problem is for the real listener to report.
        _ => Ok(()),
    }
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
