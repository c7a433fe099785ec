//! A running node: the store, the swarm, the send loop and the control socket, wired together.
//!
//! [`Node::start`] takes the home's lock, opens everything and returns once the node listens;
//! [`Node::shutdown`] stops every task and waits for them. `pigeon node run` and the demo both use it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use std::path::PathBuf;

use libp2p::PeerId;

use crate::attachments::{
    self,
    fetch::{self, FetchConfig, FetchWaker},
};
use crate::clock::SystemClock;
use crate::config::{Config, ForwardSecrecy};
use crate::control::api::{NodeLink, Ops};
use crate::control::server;
use crate::delivery::{self, Waker};
use crate::error::{Result, UsageError};
use crate::home::{Home, HomeLock, NODE_LOCK_WAIT};
use crate::inbox;
use crate::inbox::search::LazySearch;
use crate::keys::Keys;
use crate::metrics::METRICS;
use crate::metrics::MetricsServer;
use crate::net::protocol::{
    BatchResponse, ChunkRequest, ChunkResponse, OtkResponse, Outcome, RejectReason,
};
use crate::net::{Net, NetError, NetEvent};
use crate::plugins::{DiscoveryAction, LazyPlugins, NodeEvent, Plugins};
use crate::store::{Store, now_ms};

/// How long `start` waits for the listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Most contacts dialed at once when the node starts.
const STARTUP_DIALS: usize = 16;

/// A node running in this process.
pub struct Node {
    ops: Ops,
    net: Net,
    store: Store,
    plugins: Plugins,
    search: LazySearch,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
    lock: HomeLock,
}

impl Node {
    /// Starts a node for `home` with unlocked `keys`, listening on `listen`.
    pub async fn start(
        home: &Home,
        keys: Keys,
        config: &Config,
        listen: &[Multiaddr],
    ) -> Result<Node> {
        let lock = home.lock_for_node(NODE_LOCK_WAIT).await?;
        let metrics = match config.metrics.listen.as_str() {
            "" => None,
            addr => {
                let addr: std::net::SocketAddr = addr
                    .parse()
                    .map_err(|_| UsageError::MetricsAddr(addr.to_owned()))?;
                let server = crate::metrics::serve(addr)
                    .map_err(|e| NetError::Setup(format!("cannot serve metrics on {addr}: {e}")))?;
                tracing::info!(addr = %server.addr(), "serving /metrics and /healthz");
                Some(server)
            }
        };
        let keys = Arc::new(keys);
        let store = Store::open(&home.database(), keys.clone()).await?;
        remove_orphaned_files(home, &store).await;
        let cancel = CancellationToken::new();
        let contacts = store.call(|db| db.contact_peer_ids()).await?;
        let (net, events, net_task) = Net::spawn(
            keys.identity().clone(),
            listen,
            contacts,
            &config.node,
            &config.relay,
            cancel.child_token(),
        )?;
        let (waker, delivery_task) = delivery::spawn(
            store.clone(),
            net.clone(),
            &config.delivery,
            Arc::new(SystemClock),
            cancel.child_token(),
        );
        let (discovery_tx, discovery_rx) = mpsc::unbounded_channel();
        let plugins = crate::plugins::start(home, config, &keys, Some(discovery_tx));
        let fetcher = FetchWaker::default();
        // Opens at once; the index catches up with the inbox (or is rebuilt) in the background.
        let search = LazySearch::new(&home.search_index(), keys.clone(), store.clone());
        search.get().await?;
        let rekey = crate::rekey::Rekey::new(
            keys.clone(),
            store.clone(),
            search.clone(),
            home.keystore(),
            home.search_index(),
        );
        let refresher = crate::forward_secrecy::Refresher::new(
            keys.clone(),
            store.clone(),
            net.clone(),
            waker.clone(),
        );
        let ops = Ops::new(
            keys.clone(),
            store.clone(),
            Some(NodeLink {
                net: net.clone(),
                waker: waker.clone(),
                fetcher: fetcher.clone(),
                refresher: refresher.clone(),
            }),
            LazyPlugins::running(plugins.clone()),
            search.clone(),
            rekey.clone(),
        )
        .with_forward_secrecy(config.delivery.forward_secrecy);
        if rekey.under_way() {
            tracing::info!("a rekey after a passphrase change is unfinished; carrying it on");
            rekey.start();
        }
        let control_task = server::serve(&home.socket(), ops.clone(), cancel.child_token())?;
        let fetch_task = fetch::spawn(
            home.root().to_owned(),
            store.clone(),
            net.clone(),
            FetchConfig {
                window: config.attachments.window,
                give_up_after_ms: config.attachments.give_up_after_ms(),
            },
            fetcher.clone(),
            cancel.child_token(),
        );
        let waiting_task = tokio::spawn(crate::forward_secrecy::run_waiting(
            refresher.clone(),
            cancel.child_token(),
        ));
        let pump = Pump {
            receiver: inbox::Receiver {
                keys,
                store: store.clone(),
                plugins: plugins.clone(),
                limits: config.attachments.limits(),
                in_progress: Default::default(),
            },
            net: net.clone(),
            waker,
            fetcher,
            home_root: home.root().to_owned(),
            forward_secrecy: config.delivery.forward_secrecy,
            one_time_key_lifetime_ms: config.delivery.one_time_key_lifetime_ms(),
            otk_answered: Default::default(),
            refresher,
        };
        let events_task = tokio::spawn(pump.run(events, cancel.child_token()));
        let discovery_task = tokio::spawn(run_discovery_actions(
            discovery_rx,
            net.clone(),
            cancel.child_token(),
        ));
        let dial_task = tokio::spawn(dial_contacts(store.clone(), net.clone()));
        let node = Node {
            ops,
            net,
            store,
            plugins: plugins.clone(),
            search,
            cancel,
            tasks: vec![
                net_task,
                delivery_task,
                control_task,
                events_task,
                dial_task,
                fetch_task,
                discovery_task,
                waiting_task,
            ],
            metrics,
            lock,
        };
        node.wait_listening(listen.len()).await;
        plugins.event(NodeEvent::Started);
        Ok(node)
    }

    /// The operations of this node, as the control socket offers them.
    pub fn ops(&self) -> &Ops {
        &self.ops
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::addr)
    }

    /// Where the node listens, each with `/p2p/<id>`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let peer = self.net.local_peer_id();
        self.net
            .listen_addrs()
            .await
            .into_iter()
            .map(|a| a.with(Protocol::P2p(peer)))
            .collect()
    }

    async fn wait_listening(&self, wanted: usize) {
        let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
        while self.net.listen_addrs().await.len() < wanted && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every task and waits for them, then the plugin and store threads (the store finishes
    /// the jobs it was given first); the home lock goes last, so no write outlives it.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.plugins.close().await;
        self.search.close().await;
        self.store.close().await;
        drop(self.metrics);
        drop(self.lock);
    }
}

/// Inbound batches and chunk requests handled at once; past it a batch is answered `unavailable`
/// (the sender retries) and a chunk request goes unanswered (the fetcher asks again). With the
/// connection limits this bounds what peers can make the node hold.
const MAX_HANDLERS: usize = 128;

/// The tasks handling inbound batches and chunk requests, at most `max` at once.
struct Handlers {
    set: tokio::task::JoinSet<()>,
    max: usize,
}

impl Handlers {
    fn new(max: usize) -> Handlers {
        Handlers {
            set: tokio::task::JoinSet::new(),
            max,
        }
    }

    /// Whether a new handler must be refused.
    fn full(&mut self) -> bool {
        // Reap the finished ones first, so that only those still running count.
        while self.set.try_join_next().is_some() {}
        self.set.len() >= self.max
    }

    /// Runs `job`; call only when not [`Handlers::full`].
    fn spawn(&mut self, job: impl std::future::Future<Output = ()> + Send + 'static) {
        debug_assert!(self.set.len() < self.max);
        self.set.spawn(job);
    }
}

/// Hands the swarm's events to the rooms they concern.
struct Pump {
    receiver: inbox::Receiver,
    net: Net,
    waker: Waker,
    fetcher: FetchWaker,
    home_root: PathBuf,
    /// `delivery.forward_secrecy`: whether to ask contacts for one-time keys.
    forward_secrecy: ForwardSecrecy,
    /// How long the one-time keys this node hands out stay usable.
    one_time_key_lifetime_ms: u64,
    /// When each contact's last request for one-time keys was answered with keys.
    otk_answered: std::sync::Mutex<OtkAnswered>,
    /// Asks contacts for one-time keys and seals the messages waiting for them.
    refresher: crate::forward_secrecy::Refresher,
}

/// Requests for one-time keys answered with keys, per contact: a burst of this many, then one
/// per [`OTK_REFILL`]; others get none (a contact that keeps asking, or keeps saying it lost its
/// keys, cannot make this node make and store keys without end).
const OTK_BURST: f64 = 8.0;
/// See [`OTK_BURST`].
const OTK_REFILL: Duration = Duration::from_secs(2);

/// Each contact's allowance of answered requests for one-time keys (a token bucket), bounded
/// in size.
#[derive(Default)]
struct OtkAnswered(HashMap<PeerId, (f64, std::time::Instant)>);

impl OtkAnswered {
    /// Whether `peer` may be answered with keys now (and, if so, takes one from its allowance).
    fn allow(&mut self, peer: PeerId, now: std::time::Instant) -> bool {
        let refill = |(tokens, at): (f64, std::time::Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() / OTK_REFILL.as_secs_f64())
                .min(OTK_BURST)
        };
        if self.0.len() >= 4096 {
            // Drop the full ones: they are as good as new.
            self.0.retain(|_, v| refill(*v) < OTK_BURST);
        }
        let tokens = self.0.get(&peer).map_or(OTK_BURST, |v| refill(*v));
        if tokens < 1.0 {
            return false;
        }
        self.0.insert(peer, (tokens - 1.0, now));
        true
    }
}

impl Pump {
    async fn run(self, mut events: mpsc::Receiver<NetEvent>, cancel: CancellationToken) {
        let mut handlers = Handlers::new(MAX_HANDLERS);
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = handlers.set.join_next(), if !handlers.set.is_empty() => continue,
                event = events.recv() => match event { Some(e) => e, None => break },
            };
            self.on_event(event, &mut handlers).await;
        }
        handlers.set.shutdown().await;
    }

    async fn on_event(&self, event: NetEvent, handlers: &mut Handlers) {
        let store = &self.receiver.store;
        let plugins = &self.receiver.plugins;
        match event {
            NetEvent::Listening(addr) => {
                tracing::info!(%addr, "listening");
                plugins.event(NodeEvent::NewListenAddress(addr));
            }
            NetEvent::PeerConnected { peer, addr } => {
                tracing::debug!(%peer, "peer connected");
                plugins.event(NodeEvent::PeerConnected {
                    peer,
                    address: addr,
                });
                // Whatever its backoff says, a peer that is here now gets its messages now.
                self.waker.peer_connected(peer);
                self.fetcher.peer_connected(peer);
                if !handlers.full() {
                    let (refresher, store) = (self.refresher.clone(), store.clone());
                    let policy = self.forward_secrecy;
                    handlers.spawn(async move {
                        let wanted = store
                            .call(move |db| db.wants_one_time_keys(&peer, policy))
                            .await;
                        if matches!(wanted, Ok(true)) {
                            crate::forward_secrecy::refresh(&refresher, peer).await;
                        }
                    });
                }
            }
            NetEvent::Dialed { peer, addr, ok } => {
                if !ok {
                    plugins.event(NodeEvent::DialFailed {
                        peer,
                        address: addr.clone(),
                    });
                }
                let _ = store
                    .call(move |db| db.record_dial(&peer, &addr, ok, now_ms()))
                    .await;
            }
            NetEvent::Rtt { peer, addr, rtt } => {
                let ms = rtt.as_secs_f64() * 1000.0;
                let _ = store
                    .call(move |db| db.record_rtt(&peer, &addr, ms, now_ms()))
                    .await;
            }
            NetEvent::PeerDisconnected(peer) => {
                tracing::debug!(%peer, "peer disconnected");
                plugins.event(NodeEvent::PeerDisconnected(peer));
            }
            NetEvent::NatStatus(status) => plugins.event(NodeEvent::NatStatus(status)),
            NetEvent::ReservationAccepted(relay) => {
                plugins.event(NodeEvent::ReservationAccepted(relay))
            }
            NetEvent::RelayLost { relay, reason } => {
                plugins.event(NodeEvent::ReservationLost { relay, reason })
            }
            NetEvent::HolePunch { peer, error } => {
                plugins.event(NodeEvent::HolePunch { peer, error })
            }
            NetEvent::InboundBatch {
                peer,
                batch,
                channel,
            } => {
                if handlers.full() {
                    // Busy: a transient refusal, so the sender keeps the batch and sends it later.
                    let outcomes =
                        vec![Outcome::Rejected(RejectReason::Unavailable); batch.envelopes.len()];
                    self.net.respond(channel, BatchResponse { outcomes }).await;
                    return;
                }
                let (receiver, net) = (self.receiver.clone(), self.net.clone());
                let fetcher = self.fetcher.clone();
                handlers.spawn(async move {
                    let response = inbox::receive_batch(&receiver, peer, batch).await;
                    net.respond(channel, response).await;
                    fetcher.wake();
                });
            }
            NetEvent::InboundOtk {
                peer,
                request,
                channel,
            } => {
                if handlers.full() {
                    // Unanswered: the contact asks again at its next connection.
                    return;
                }
                let allowed = self
                    .otk_answered
                    .lock()
                    .map(|mut a| a.allow(peer, std::time::Instant::now()))
                    .unwrap_or(false);
                if !allowed {
                    tracing::debug!(%peer, "asked for one-time keys again too soon; answered none");
                    self.net
                        .respond_one_time_keys(channel, OtkResponse { keys: Vec::new() })
                        .await;
                    return;
                }
                let (keys, store, net) =
                    (self.receiver.keys.clone(), store.clone(), self.net.clone());
                let lifetime = self.one_time_key_lifetime_ms;
                handlers.spawn(async move {
                    let keys =
                        crate::forward_secrecy::hand_out(&keys, &store, peer, &request, lifetime)
                            .await;
                    net.respond_one_time_keys(channel, OtkResponse { keys })
                        .await;
                });
            }
            NetEvent::InboundChunk {
                peer,
                request,
                relayed,
                channel,
            } => {
                if handlers.full() {
                    // Unanswered: the channel drops and the fetcher asks again later.
                    return;
                }
                let (store, net, root) = (store.clone(), self.net.clone(), self.home_root.clone());
                handlers.spawn(async move {
                    let response = serve_chunk(&store, &root, peer, request, relayed).await;
                    net.respond_chunk(channel, response).await;
                });
            }
        }
    }
}

/// Answers a chunk request: only the peer an attachment was sent to gets its chunks, and never over
/// a relayed connection.
async fn serve_chunk(
    store: &Store,
    root: &std::path::Path,
    peer: PeerId,
    request: ChunkRequest,
    relayed: bool,
) -> ChunkResponse {
    if relayed {
        return ChunkResponse::Refused;
    }
    let id = hex::encode(request.attachment);
    if request.release {
        return release_chunks(store, root, peer, id).await;
    }
    let key = id.clone();
    let Ok(Some(attachment)) = store
        .call(move |db| db.outgoing_attachment(&key, &peer))
        .await
    else {
        return ChunkResponse::NotFound;
    };
    if request.index >= attachment.chunk_count() {
        return ChunkResponse::NotFound;
    }
    let path = attachments::file_path(root, &id);
    let read = tokio::task::spawn_blocking(move || {
        attachments::read_chunk(&path, &attachment, request.index)
    })
    .await;
    match read {
        Ok(Ok(data)) => {
            METRICS.attachment_chunks_served.inc();
            ChunkResponse::Data(data)
        }
        _ => ChunkResponse::NotFound,
    }
}

/// The recipient of attachment `id` holds all of it: the sealed copy kept to serve it goes.
async fn release_chunks(
    store: &Store,
    root: &std::path::Path,
    peer: PeerId,
    id: String,
) -> ChunkResponse {
    let key = id.clone();
    match store.call(move |db| db.release_outgoing(&key, &peer)).await {
        Ok(true) => {
            let path = attachments::file_path(root, &id);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    tracing::info!(%peer, attachment = %id, "the recipient holds the attachment; dropped the sealed copy")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(attachment = %id, error = %e, "cannot remove a released attachment's file")
                }
            }
            ChunkResponse::Released
        }
        Ok(false) => ChunkResponse::NotFound,
        Err(e) => {
            tracing::error!(attachment = %id, error = %e, "cannot record a release");
            ChunkResponse::NotFound
        }
    }
}

/// Carries out what discovery plugins ask for.
async fn run_discovery_actions(
    mut actions: mpsc::UnboundedReceiver<DiscoveryAction>,
    net: Net,
    cancel: CancellationToken,
) {
    loop {
        let action = tokio::select! {
            _ = cancel.cancelled() => break,
            a = actions.recv() => match a { Some(a) => a, None => break },
        };
        match action {
            DiscoveryAction::Dial { peer, address } => net.dial(peer, vec![address]).await,
            DiscoveryAction::AddAddress { peer, address } => net.add_address(peer, address).await,
            DiscoveryAction::ListenViaRelay(relay) => net.listen_via_relay(relay).await,
        }
    }
}

/// Dials every contact with a known address, a few at a time, so that peers holding messages for
/// this node see it connect and deliver at once.
async fn dial_contacts(store: Store, net: Net) {
    let Ok(contacts) = store.call(|db| db.contacts()).await else {
        return;
    };
    let targets: Vec<_> = contacts
        .into_iter()
        .filter(|c| !c.addrs.is_empty())
        .collect();
    for chunk in targets.chunks(STARTUP_DIALS) {
        for contact in chunk {
            net.dial(contact.address.peer_id(), contact.addrs.clone())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes the sealed attachment files a crash left behind ([`crate::attachments::remove_orphans`]).
async fn remove_orphaned_files(home: &Home, store: &Store) {
    let known = match store.call(|db| db.attachment_ids()).await {
        Ok(known) => known,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the attachments; no leftover files removed");
            return;
        }
    };
    let root = home.root().to_owned();
    let removed = tokio::task::spawn_blocking(move || {
        crate::attachments::remove_orphans(&root, &known, std::time::SystemTime::now())
    })
    .await
    .unwrap_or(0);
    if removed > 0 {
        tracing::info!(
            removed,
            "removed sealed attachment files nothing refers to (left by a crash)"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_contact_gets_a_burst_of_answers_then_one_per_refill() {
        let mut a = OtkAnswered::default();
        let (peer, other) = (PeerId::random(), PeerId::random());
        let t0 = std::time::Instant::now();
        let answered = (0..20).filter(|_| a.allow(peer, t0)).count();
        assert_eq!(answered, OTK_BURST as usize);
        assert!(a.allow(other, t0), "each contact has its own allowance");
        assert!(!a.allow(peer, t0 + OTK_REFILL / 2));
        assert!(a.allow(peer, t0 + OTK_REFILL + OTK_REFILL / 10));
        assert!(!a.allow(peer, t0 + OTK_REFILL + OTK_REFILL / 5));
    }

    use super::*;

    #[tokio::test]
    async fn handlers_are_bounded_and_a_finished_one_frees_its_place() {
        let mut handlers = Handlers::new(3);
        let (release, wait) = tokio::sync::watch::channel(false);
        for _ in 0..3 {
            assert!(!handlers.full());
            let mut wait = wait.clone();
            handlers.spawn(async move {
                let _ = wait.wait_for(|go| *go).await;
            });
        }
        assert!(handlers.full(), "a fourth would be refused");
        release.send(true).expect("release");
        for _ in 0..100 {
            if !handlers.full() {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("finished handlers still count");
    }
}
