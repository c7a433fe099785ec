//! The operations the CLI can ask for, and [`Ops`], which carries them out against the store (and
//! the running node's network, when there is one). The request and response types themselves are
//! in `api/wire.rs`.

mod keys;
mod wire;

use super::ControlError;
use std::sync::Arc;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use crate::attachments::AttachmentRef;
use crate::delivery::Waker;
use crate::envelope::{self, MAX_BODY, MAX_SUBJECT, MessageId, Payload};
use crate::error::{Result, UsageError};
use crate::inbox::rules::validate_label;
use crate::inbox::search::{LazySearch, SearchError};
use crate::keys::Keys;
use crate::keys::address::Address;
use crate::net::Net;
use crate::plugins::LazyPlugins;
use crate::store::{RuleChange, RulesApplied, Store, now_ms};

pub use wire::{ContactInfo, IdInfo, MAX_MARKED, Request, Response, Secret, StatusInfo};

/// The running node's parts that requests may use.
#[derive(Clone)]
pub struct NodeLink {
    /// The network handle.
    pub net: Net,
    /// Wakes the send loop.
    pub waker: Waker,
    /// Wakes the attachment fetcher.
    pub fetcher: crate::attachments::fetch::FetchWaker,
    /// Asks contacts for one-time keys and seals the messages waiting for them.
    pub refresher: crate::forward_secrecy::Refresher,
}

/// Carries out requests.
#[derive(Clone)]
pub struct Ops {
    keys: Arc<Keys>,
    store: Store,
    node: Option<NodeLink>,
    plugins: LazyPlugins,
    search: LazySearch,
    rekey: crate::rekey::Rekey,
    /// `delivery.forward_secrecy`: whether `send` seals to a one-time key when one is at hand.
    forward_secrecy: crate::config::ForwardSecrecy,
}

/// Messages `rules apply` runs through the pipeline at a time.
const APPLY_PAGE: u32 = 256;
/// Messages of a `rules apply` page per round trip to the plugin thread.
const APPLY_CHUNK: usize = 16;

impl Ops {
    /// Operations on `store` with `keys`; `node` when a node is running in this process.
    pub fn new(
        keys: Arc<Keys>,
        store: Store,
        node: Option<NodeLink>,
        plugins: LazyPlugins,
        search: LazySearch,
        rekey: crate::rekey::Rekey,
    ) -> Ops {
        Ops {
            keys,
            store,
            node,
            plugins,
            search,
            rekey,
            forward_secrecy: crate::config::ForwardSecrecy::Off,
        }
    }

    /// Sends with `policy` for forward secrecy (`delivery.forward_secrecy`).
    pub fn with_forward_secrecy(mut self, policy: crate::config::ForwardSecrecy) -> Ops {
        self.forward_secrecy = policy;
        self
    }

    /// Carries out one request.
    pub async fn handle(&self, request: Request) -> Result<Response> {
        match request {
            Request::Id => Ok(Response::Id(self.id().await)),
            Request::ContactsAdd {
                name,
                address,
                addrs,
            } => self.add_contact(name, &address, &addrs).await,
            Request::ContactsList => self.contacts().await,
            Request::ContactsRm { name } => {
                self.store.call(move |db| db.remove_contact(&name)).await?;
                self.sync_contacts().await?;
                Ok(Response::Done)
            }
            Request::ContactsSetForwardSecrecy { name, policy } => {
                self.store
                    .call(move |db| db.set_contact_forward_secrecy(&name, policy))
                    .await?;
                Ok(Response::Done)
            }
            Request::Send {
                to,
                subject,
                body,
                attachments,
                forward_secrecy,
            } => {
                self.send(to, subject, body, attachments, forward_secrecy)
                    .await
            }
            Request::OutboxList => Ok(Response::Outbox(self.store.call(|db| db.outbox()).await?)),
            Request::OutboxRetry { id } => {
                let id = self
                    .store
                    .call(move |db| db.retry_now(&id, now_ms()))
                    .await?;
                if let Some(node) = &self.node {
                    node.waker.wake();
                }
                Ok(Response::Updated { id })
            }
            Request::OutboxCancel { id } => {
                let id = self.store.call(move |db| db.cancel(&id)).await?;
                Ok(Response::Updated { id })
            }
            Request::Peers => self.peers().await,
            Request::Status => self.status().await,
            Request::InboxList(query) => Ok(Response::Inbox(
                self.store.call(move |db| db.inbox(&query)).await?,
            )),
            Request::RulesAdd { from, label } => {
                validate_label(&label).map_err(UsageError::Label)?;
                let id = self
                    .store
                    .call(move |db| {
                        let contact = db.contact_by_name(&from)?;
                        db.add_rule(&contact.address.peer_id().to_string(), &label)
                    })
                    .await?;
                Ok(Response::RuleAdded { id })
            }
            Request::RulesList => Ok(Response::Rules(self.store.call(|db| db.rules()).await?)),
            Request::RulesRm { id } => {
                self.store.call(move |db| db.remove_rule(id)).await?;
                Ok(Response::Done)
            }
            Request::RulesApply { dry_run } => self.apply_rules(dry_run).await,
            Request::PluginsList => Ok(Response::Plugins(self.plugins.get().status().await)),
            Request::LabelAdd { id, label } => {
                validate_label(&label).map_err(UsageError::Label)?;
                let id = self.store.call(move |db| db.add_label(&id, &label)).await?;
                Ok(Response::Updated { id })
            }
            Request::LabelRm { id, label } => {
                let id = self
                    .store
                    .call(move |db| db.remove_label(&id, &label))
                    .await?;
                Ok(Response::Updated { id })
            }
            Request::InboxRead { id } => Ok(Response::Message(
                self.store
                    .call(move |db| {
                        // Reading a message marks it read; the view says so.
                        let mut m = db.message(&id)?;
                        db.set_read(&m.id, true)?;
                        m.read = true;
                        Ok(m)
                    })
                    .await?,
            )),
            Request::InboxMark { id, read } => Ok(Response::Updated {
                id: self.store.call(move |db| db.set_read(&id, read)).await?,
            }),
            Request::InboxMarkMany { ids, read } => {
                if ids.len() > wire::MAX_MARKED {
                    return Err(UsageError::OutOfRange(format!(
                        "{} messages to mark; at most {} at once",
                        ids.len(),
                        wire::MAX_MARKED
                    ))
                    .into());
                }
                Ok(Response::UpdatedMany {
                    ids: self
                        .store
                        .call(move |db| db.set_read_many(&ids, read))
                        .await?,
                })
            }
            Request::InboxArchive { id, archived } => Ok(Response::Updated {
                id: self
                    .store
                    .call(move |db| db.set_archived(&id, archived))
                    .await?,
            }),
            Request::InboxRm { id } => {
                let (id, attachments) = self.store.call(move |db| db.remove_message(&id)).await?;
                // Gone from the index (its words out of every file) before the answer.
                self.search.get().await?.sync().await?;
                Ok(Response::Removed { id, attachments })
            }
            Request::InboxRedact { id } => {
                let (id, attachments) = self
                    .store
                    .call(move |db| db.redact_message(&id, now_ms()))
                    .await?;
                self.search.get().await?.sync().await?;
                Ok(Response::Removed { id, attachments })
            }
            Request::SentList { limit, to } => {
                let sent = self
                    .store
                    .call(move |db| {
                        let to = match to {
                            Some(name) => {
                                Some(db.contact_by_name(&name)?.address.peer_id().to_string())
                            }
                            None => None,
                        };
                        db.sent(&crate::store::SentQuery { limit, to })
                    })
                    .await?;
                Ok(Response::Sent(sent))
            }
            Request::SentRead { id } => Ok(Response::SentMessage(
                self.store.call(move |db| db.sent_message(&id)).await?,
            )),
            Request::SentRm { id } => {
                let (id, attachments) = self.store.call(move |db| db.remove_sent(&id)).await?;
                // Gone from the index (its words out of every file) before the answer.
                self.search.get().await?.sync().await?;
                Ok(Response::Removed { id, attachments })
            }
            Request::SentRedact { id } => {
                let (id, attachments) = self
                    .store
                    .call(move |db| db.redact_sent(&id, now_ms()))
                    .await?;
                self.search.get().await?.sync().await?;
                Ok(Response::Removed { id, attachments })
            }
            Request::Conversation { contact, limit } => {
                let (peer_id, said) = self
                    .store
                    .call(move |db| {
                        let peer = db.contact_by_name(&contact)?.address.peer_id().to_string();
                        let said = db.conversation(&peer, limit)?;
                        Ok((peer, said))
                    })
                    .await?;
                Ok(Response::Conversation { peer_id, said })
            }
            // A stream: the control server serves it with `Ops::watcher` (see `server.rs`).
            Request::InboxWatch(_) => {
                Err(ControlError::NoNode(std::path::PathBuf::from("this home")).into())
            }
            Request::InboxSearch { query, limit, sort } => {
                // A malformed query is refused before anything is opened.
                let query = crate::inbox::query::parse(&query).map_err(SearchError::from)?;
                let hits = self
                    .search
                    .get()
                    .await?
                    .search_parsed(&self.store, &query, limit as usize, sort)
                    .await?;
                Ok(Response::Hits(hits))
            }
            Request::InboxReindex => {
                let search = self.search.get().await?;
                if self.node.is_some() {
                    search.start_reindex();
                } else {
                    search.reindex().await?;
                }
                Ok(Response::Index(search.status()))
            }
            Request::IndexStatus => Ok(Response::Index(self.search.get().await?.status())),
            Request::KeysPasswd {
                current,
                new,
                kdf_m_kib,
                kdf_passes,
            } => self.passwd(&current, &new, kdf_m_kib, kdf_passes).await,
            Request::KeysRekey => self.carry_rekey_on().await,
            Request::KeysStatus => Ok(Response::Keys(self.rekey.status().await?)),
            Request::InboxFetch { id } => {
                let attachments = self
                    .store
                    .call(move |db| db.resume_attachments(&id))
                    .await?;
                if let Some(node) = &self.node {
                    node.fetcher.retry_all();
                }
                Ok(Response::Fetching { attachments })
            }
            Request::InboxAttachments { id } => {
                let list = self
                    .store
                    .call(move |db| {
                        let message = db.message(&id)?;
                        db.attachments_for_save(&message.id)
                    })
                    .await?;
                Ok(Response::Attachments(list))
            }
        }
    }

    /// Runs the built-in rules, then the rule plugins, over every inbox message, a page at a
    /// time, and applies each page's changes as it goes unless `dry_run` (so the answer stays
    /// small and a label removed meanwhile elsewhere is not put back from a stale plan).
    async fn apply_rules(&self, dry_run: bool) -> Result<Response> {
        use crate::inbox::rules::Action;
        let pipeline = self.store.call(|db| db.pipeline()).await?;
        let plugins = self.plugins.get();
        let mut applied = RulesApplied {
            dry_run,
            changed: 0,
            changes: Vec::new(),
        };
        let mut after = 0;
        loop {
            let page = self
                .store
                .call(move |db| db.rule_candidates(after, APPLY_PAGE))
                .await?;
            let Some(last) = page.last() else { break };
            after = last.rowid;
            // A few messages per trip to the plugin thread, so that an incoming batch waits behind
            // one small chunk at most, not a whole page.
            let mut actions = Vec::with_capacity(page.len());
            for chunk in page.chunks(APPLY_CHUNK) {
                let messages = chunk.iter().map(|c| c.message.clone()).collect();
                actions
                    .extend(crate::inbox::run_pipeline(&pipeline, plugins, messages, None).await);
            }
            let changes: Vec<RuleChange> = page
                .into_iter()
                .zip(actions)
                .filter_map(|(c, mut actions)| {
                    // Marking read what is read, or archiving what is archived, changes nothing.
                    actions.retain(|a| match a {
                        Action::MarkRead => !c.read,
                        Action::Archive => !c.archived,
                        _ => true,
                    });
                    (!actions.is_empty()).then_some(RuleChange {
                        id: c.message.id,
                        from: c.from,
                        actions,
                    })
                })
                .collect();
            if changes.is_empty() {
                continue;
            }
            applied.changed += changes.len() as u64;
            let room = RulesApplied::MAX_LISTED.saturating_sub(applied.changes.len());
            applied.changes.extend(changes.iter().take(room).cloned());
            if !dry_run {
                self.store
                    .call(move |db| db.apply_changes(&changes))
                    .await?;
            }
        }
        Ok(Response::RuleChanges(applied))
    }

    async fn id(&self) -> IdInfo {
        let peer = self.keys.peer_id();
        let listen = match &self.node {
            Some(node) => node
                .net
                .listen_addrs()
                .await
                .into_iter()
                .map(|a| a.with(Protocol::P2p(peer)).to_string())
                .collect(),
            None => Vec::new(),
        };
        IdInfo {
            peer_id: peer.to_string(),
            address: self.keys.address().to_string(),
            listen,
        }
    }

    async fn add_contact(&self, name: String, address: &str, addrs: &[String]) -> Result<Response> {
        validate_name(&name)?;
        let address: Address = address.parse()?;
        if address.peer_id() == self.keys.peer_id() {
            return Err(UsageError::OwnAddress.into());
        }
        let addrs = addrs
            .iter()
            .map(|a| parse_contact_addr(a, &address))
            .collect::<Result<Vec<_>, _>>()?;
        let (peer, dial) = (address.peer_id(), addrs.clone());
        self.store
            .call(move |db| db.add_contact(&name, &address, &addrs))
            .await?;
        self.sync_contacts().await?;
        if let Some(node) = &self.node
            && !dial.is_empty()
        {
            node.net.dial(peer, dial).await;
        }
        Ok(Response::Done)
    }

    /// Tells the swarm who the contacts are now: only they may speak the message protocols.
    async fn sync_contacts(&self) -> Result<()> {
        if let Some(node) = &self.node {
            let peers = self.store.call(|db| db.contact_peer_ids()).await?;
            node.net.set_contacts(peers).await;
        }
        Ok(())
    }

    async fn connected(&self) -> Vec<libp2p::PeerId> {
        match &self.node {
            Some(node) => node.net.connected_peers().await,
            None => Vec::new(),
        }
    }

    async fn peers(&self) -> Result<Response> {
        let mut peers = self.store.call(|db| db.peers_health(now_ms())).await?;
        let mut links: std::collections::HashMap<String, Vec<crate::net::Link>> = match &self.node {
            Some(node) => node
                .net
                .links()
                .await
                .into_iter()
                .map(|(peer, l)| (peer.to_string(), l))
                .collect(),
            None => Default::default(),
        };
        for p in &mut peers {
            p.connections = links.remove(&p.peer_id).unwrap_or_default();
            p.connected = !p.connections.is_empty();
        }
        // Connected peers the health cache does not know (a relay, a stranger) are listed too.
        let mut rest: Vec<_> = links.into_iter().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        for (peer_id, connections) in rest {
            peers.push(crate::store::PeerHealth {
                peer_id,
                name: None,
                connected: true,
                connections,
                addrs: Vec::new(),
            });
        }
        Ok(Response::Peers(peers))
    }

    /// Starts an `inbox watch` (the control server streams what it sees).
    pub async fn watcher(
        &self,
        spec: crate::inbox::watch::WatchSpec,
    ) -> Result<crate::inbox::watch::Watcher> {
        crate::inbox::watch::Watcher::start(self.store.clone(), self.search.clone(), spec).await
    }

    async fn status(&self) -> Result<Response> {
        let (outbox, inbox) = self
            .store
            .call(|db| Ok((db.outbox_counts()?, db.inbox_count()?)))
            .await?;
        Ok(Response::Status(StatusInfo {
            node_running: self.node.is_some(),
            peer_id: self.keys.peer_id().to_string(),
            outbox,
            inbox,
            connected_peers: self.connected().await.len(),
            nat: match &self.node {
                Some(node) => Some(node.net.nat_info().await),
                None => None,
            },
        }))
    }

    async fn contacts(&self) -> Result<Response> {
        let now = crate::store::now_ms();
        let default = self.forward_secrecy;
        let contacts = self
            .store
            .call(move |db| {
                db.contacts()?
                    .into_iter()
                    .map(|c| {
                        let peer = c.address.peer_id();
                        Ok(ContactInfo {
                            peer_id: peer.to_string(),
                            address: c.address.to_string(),
                            addrs: c.addrs.iter().map(ToString::to_string).collect(),
                            name: c.name,
                            one_time_keys_held: db.pool_keys(&peer, now)?,
                            one_time_keys_handed_out: db.one_time_secrets_out(&peer, now)?,
                            forward_secrecy: c.forward_secrecy,
                            forward_secrecy_effective: c.forward_secrecy.unwrap_or(default),
                        })
                    })
                    .collect::<Result<Vec<_>, crate::store::StoreError>>()
            })
            .await?;
        Ok(Response::Contacts(contacts))
    }

    async fn send(
        &self,
        to: String,
        subject: Option<String>,
        body: String,
        attachments: Vec<AttachmentRef>,
        forward_secrecy: Option<crate::config::ForwardSecrecy>,
    ) -> Result<Response> {
        check_size(subject.as_deref(), &body)?;
        if attachments.iter().any(|a| !a.is_well_formed()) {
            return Err(UsageError::BadManifest.into());
        }
        let contact = self.store.call(move |db| db.contact_by_name(&to)).await?;
        let refs = attachments.clone();
        let (payload, peer, env) = self.seal_for(&contact, subject, body, attachments)?;
        let (id, now) = (payload.id, payload.sent_at_ms);
        let policy = forward_secrecy
            .or(contact.forward_secrecy)
            .unwrap_or(self.forward_secrecy);
        let sealing = self
            .store
            .call(move |db| db.enqueue_with_policy(&id, &peer, &payload, &env, &refs, now, policy))
            .await?;
        tracing::debug!(%peer, message_id = %id, ?sealing, "queued");
        self.wake();
        if policy != crate::config::ForwardSecrecy::Off
            && let Some(node) = &self.node
        {
            // Connected already, maybe: top the pool up (it may be running low, or empty with
            // this message waiting) now rather than at the next connection.
            let refresher = node.refresher.clone();
            tokio::spawn(async move {
                crate::forward_secrecy::refresh(&refresher, peer).await;
            });
        }
        Ok(Response::Queued {
            id: id.to_string(),
            sealing,
            forward_secrecy: policy,
        })
    }

    /// Queues envelopes sealed by the caller to `peer` in one durable transaction (benchmarks
    /// that seal to one-time keys they made).
    pub async fn queue_sealed(
        &self,
        peer: libp2p::PeerId,
        items: Vec<(MessageId, envelope::Envelope)>,
    ) -> Result<()> {
        let items: Vec<_> = items.into_iter().map(|(id, e)| (id, peer, e)).collect();
        self.store
            .call(move |db| db.enqueue_many(&items, now_ms()))
            .await?;
        self.wake();
        Ok(())
    }

    /// Queues many messages to one contact in a single durable transaction (benchmarks, imports).
    pub async fn queue_bulk(&self, to: &str, bodies: Vec<String>) -> Result<Vec<MessageId>> {
        for body in &bodies {
            check_size(None, body)?;
        }
        let name = to.to_owned();
        let contact = self.store.call(move |db| db.contact_by_name(&name)).await?;
        let items: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                let (payload, peer, env) = self.seal_for(&contact, None, body, vec![])?;
                Ok((payload.id, peer, env))
            })
            .collect::<Result<_>>()?;
        let ids = items.iter().map(|(id, _, _)| *id).collect();
        self.store
            .call(move |db| db.enqueue_many(&items, now_ms()))
            .await?;
        self.wake();
        Ok(ids)
    }

    fn seal_for(
        &self,
        contact: &crate::store::Contact,
        subject: Option<String>,
        body: String,
        attachments: Vec<AttachmentRef>,
    ) -> Result<(Payload, libp2p::PeerId, envelope::Envelope)> {
        let payload = Payload {
            id: MessageId::random(),
            sent_at_ms: now_ms(),
            subject,
            body,
            attachments,
        };
        let peer = contact.address.peer_id();
        let env = envelope::seal(&self.keys, &peer, contact.address.enc_public(), &payload)
            // Parsing refused such a key already; only an altered row gets here.
            .map_err(|_| crate::store::StoreError::Corrupt("contact address"))?;
        Ok((payload, peer, env))
    }

    fn wake(&self) {
        if let Some(node) = &self.node {
            node.waker.wake();
        }
    }
}

fn check_size(subject: Option<&str>, body: &str) -> Result<(), UsageError> {
    if body.len() > MAX_BODY {
        return Err(UsageError::BodyTooLarge {
            len: body.len(),
            max: MAX_BODY,
        });
    }
    if subject.is_some_and(|s| s.len() > MAX_SUBJECT) {
        return Err(UsageError::SubjectTooLong { max: MAX_SUBJECT });
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), UsageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(UsageError::ContactName(name.to_owned()))
    }
}

/// Parses a multiaddr for a contact: a trailing `/p2p/<id>` must name the contact, and is dropped.
fn parse_contact_addr(text: &str, address: &Address) -> Result<Multiaddr, UsageError> {
    let mut addr: Multiaddr = text.parse().map_err(|source| UsageError::NotAMultiaddr {
        text: text.to_owned(),
        source,
    })?;
    if let Some(Protocol::P2p(peer)) = addr.iter().last() {
        if peer != address.peer_id() {
            return Err(UsageError::OtherPeer {
                text: text.to_owned(),
                peer: peer.to_string(),
                contact: address.peer_id().to_string(),
            });
        }
        addr.pop();
    }
    if addr.is_empty() || !relay_parts_well_placed(&addr) {
        return Err(UsageError::NotDialable(text.to_owned()));
    }
    Ok(addr)
}

/// Whether every `/p2p/` left in a contact's address names a relay: it follows a transport and is
/// followed by `/p2p-circuit` (`/ip4/.../udp/7717/quic-v1/p2p/RELAY/p2p-circuit`), and every
/// `/p2p-circuit` follows one.
fn relay_parts_well_placed(addr: &Multiaddr) -> bool {
    let parts: Vec<Protocol> = addr.iter().collect();
    parts.iter().enumerate().all(|(i, p)| match p {
        Protocol::P2p(_) => i > 0 && matches!(parts.get(i + 1), Some(Protocol::P2pCircuit)),
        Protocol::P2pCircuit => i > 0 && matches!(parts[i - 1], Protocol::P2p(_)),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_addrs_must_match_the_contact() {
        let bob = Keys::generate().address();
        let plain = parse_contact_addr("/ip4/127.0.0.1/tcp/1", &bob).expect("plain");
        let with_id =
            parse_contact_addr(&format!("/ip4/127.0.0.1/tcp/1/p2p/{}", bob.peer_id()), &bob)
                .expect("with id");
        assert_eq!(plain, with_id);
        let other = Keys::generate().peer_id();
        let err = parse_contact_addr(&format!("/ip4/127.0.0.1/tcp/1/p2p/{other}"), &bob)
            .expect_err("other peer");
        assert!(err.to_string().contains("not to this contact"), "{err}");
        assert!(parse_contact_addr("nonsense", &bob).is_err());
        assert!(parse_contact_addr(&format!("/p2p/{}", bob.peer_id()), &bob).is_err());
        // Through a relay: the relay's id stays, the contact's is dropped.
        let relay = Keys::generate().peer_id();
        let circuit = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{relay}/p2p-circuit");
        let through = parse_contact_addr(&circuit, &bob).expect("circuit");
        assert_eq!(through.to_string(), circuit);
        let with_id = parse_contact_addr(&format!("{circuit}/p2p/{}", bob.peer_id()), &bob)
            .expect("circuit with id");
        assert_eq!(with_id, through);
        for bad in [
            format!("/ip4/127.0.0.1/tcp/1/p2p/{relay}/tcp/2"),
            "/ip4/127.0.0.1/tcp/1/p2p-circuit".to_owned(),
            format!("/p2p/{relay}/p2p-circuit"),
        ] {
            assert!(
                matches!(
                    parse_contact_addr(&bad, &bob),
                    Err(UsageError::NotDialable(_))
                ),
                "{bad}"
            );
        }
    }

    /// What a user can get wrong is a typed usage refusal (exit 2), not an internal failure.
    #[test]
    fn bad_input_is_a_usage_refusal() {
        let bob = Keys::generate().address();
        assert!(matches!(
            parse_contact_addr("127.0.0.1:7717", &bob),
            Err(UsageError::NotAMultiaddr { .. })
        ));
        let other = Keys::generate().peer_id();
        assert!(matches!(
            parse_contact_addr(&format!("/ip4/127.0.0.1/tcp/1/p2p/{other}"), &bob),
            Err(UsageError::OtherPeer { .. })
        ));
        assert!(matches!(
            parse_contact_addr(&format!("/p2p/{}", bob.peer_id()), &bob),
            Err(UsageError::NotDialable(_))
        ));
        assert!(matches!(
            check_size(None, &"x".repeat(MAX_BODY + 1)),
            Err(UsageError::BodyTooLarge { .. })
        ));
        assert!(matches!(
            check_size(Some(&"s".repeat(MAX_SUBJECT + 1)), ""),
            Err(UsageError::SubjectTooLong { .. })
        ));
        assert!(matches!(
            validate_name("a b"),
            Err(UsageError::ContactName(_))
        ));
        let e = crate::Error::from(UsageError::NotDialable("/p2p/x".into()));
        assert_eq!(e.kind().exit_code(), 2);
    }

    #[test]
    fn contact_names_are_checked() {
        assert!(validate_name("bob.smith@home").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
