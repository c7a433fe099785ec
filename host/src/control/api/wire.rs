//! What travels over the control socket: a [`Request`] from the CLI, a [`Response`] from the node,
//! and the plain types they carry. Serde types only; [`super::Ops`] carries the requests out.

use serde::{Deserialize, Serialize};

use crate::attachments::AttachmentRef;
use crate::control::ControlError;
use crate::inbox::search::{Hit, IndexStatus, Sort};
use crate::plugins::PluginStatus;
use crate::store::{
    InboxItem, InboxQuery, MessageView, OutboxCounts, OutboxEntry, PeerHealth, RuleView,
    RulesApplied, SaveInfo, SentItem, SentView,
};

/// Most messages one [`Request::InboxMarkMany`] marks.
pub const MAX_MARKED: usize = 1000;

/// A request to a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// This node's identity (and listen addresses, if running).
    Id,
    /// Add a contact.
    ContactsAdd {
        /// Local name.
        name: String,
        /// The contact's pigeon address.
        address: String,
        /// Multiaddrs to dial it at.
        addrs: Vec<String>,
    },
    /// List contacts.
    ContactsList,
    /// Remove a contact.
    ContactsRm {
        /// Local name.
        name: String,
    },
    /// Set a contact's own forward secrecy policy.
    ContactsSetForwardSecrecy {
        /// Local name.
        name: String,
        /// The policy; `None`: `delivery.forward_secrecy`.
        policy: Option<crate::config::ForwardSecrecy>,
    },
    /// Queue a message.
    Send {
        /// Contact name.
        to: String,
        /// Optional subject.
        subject: Option<String>,
        /// The text.
        body: String,
        /// Attachments already staged (sealed) under the home by the caller.
        #[serde(default)]
        attachments: Vec<AttachmentRef>,
        /// This message's forward secrecy policy; `None`: the contact's, else the config's.
        #[serde(default)]
        forward_secrecy: Option<crate::config::ForwardSecrecy>,
    },
    /// The attachments of a received message, with their keys, for saving.
    InboxAttachments {
        /// Message id or unique prefix.
        id: String,
    },
    /// List the outbox.
    OutboxList,
    /// Make a queued or failed message due now.
    OutboxRetry {
        /// Id or unique prefix.
        id: String,
    },
    /// Cancel a message that is not delivered yet.
    OutboxCancel {
        /// Id or unique prefix.
        id: String,
    },
    /// Known peers and the health of their addresses.
    Peers,
    /// Counts and whether a node runs.
    Status,
    /// List the inbox.
    InboxList(InboxQuery),
    /// Add a built-in rule: messages from a contact get a label.
    RulesAdd {
        /// Contact name.
        from: String,
        /// Label.
        label: String,
    },
    /// List the built-in rules.
    RulesList,
    /// Remove a rule.
    RulesRm {
        /// Rule id.
        id: i64,
    },
    /// Run every rule over the inbox; show, or apply, the changes.
    RulesApply {
        /// Only show what would change.
        dry_run: bool,
    },
    /// Every plugin with its state.
    PluginsList,
    /// Add a label to a message.
    LabelAdd {
        /// Message id or unique prefix.
        id: String,
        /// Label.
        label: String,
    },
    /// Remove a label from a message.
    LabelRm {
        /// Message id or unique prefix.
        id: String,
        /// Label.
        label: String,
    },
    /// Read one message.
    InboxRead {
        /// Id or unique prefix.
        id: String,
    },
    /// Fetch a message's attachments again, given up on or waiting out a retry delay.
    InboxFetch {
        /// Id or unique prefix.
        id: String,
    },
    /// Mark a message read or unread.
    InboxMark {
        /// Id or unique prefix.
        id: String,
        /// Read (true) or unread.
        read: bool,
    },
    /// Mark several messages read or unread, in one transaction: all of them, or none if one
    /// id is unknown or ambiguous.
    InboxMarkMany {
        /// Ids or unique prefixes (at most [`MAX_MARKED`]).
        ids: Vec<String>,
        /// Read (true) or unread.
        read: bool,
    },
    /// Archive or unarchive a message.
    InboxArchive {
        /// Id or unique prefix.
        id: String,
        /// Archived (true) or not.
        archived: bool,
    },
    /// Delete a message entirely.
    InboxRm {
        /// Id or unique prefix.
        id: String,
    },
    /// Scrub a message's text and attachments, keeping its metadata.
    InboxRedact {
        /// Id or unique prefix.
        id: String,
    },
    /// The sent history, newest first.
    SentList {
        /// At most this many.
        limit: Option<u32>,
        /// Only messages to this contact (its name).
        to: Option<String>,
    },
    /// Read one sent message.
    SentRead {
        /// Id or unique prefix.
        id: String,
    },
    /// Delete a sent message from the history (and its outbox record).
    SentRm {
        /// Id or unique prefix.
        id: String,
    },
    /// Scrub a sent message's text and files, keeping its metadata.
    SentRedact {
        /// Id or unique prefix.
        id: String,
    },
    /// The last messages between this node and a contact, both ways, oldest first.
    Conversation {
        /// The contact's name.
        contact: String,
        /// At most this many.
        limit: u32,
    },
    /// Follow the inbox (and, if asked, the sent history) as it changes: answered by a stream of
    /// lines, [`Response::Watching`] and then a [`Response::Watched`] for each thing seen, until
    /// the client closes the connection. Only a running node serves it.
    InboxWatch(crate::inbox::watch::WatchSpec),
    /// Search the inbox.
    InboxSearch {
        /// The query, in the search language (`inbox::query`).
        query: String,
        /// At most this many hits.
        limit: u32,
        /// Newest or most relevant first.
        #[serde(default)]
        sort: Sort,
    },
    /// Build the search index again from the inbox. A node starts it and answers at once (follow
    /// it with [`Request::IndexStatus`]); without a node it is done before the answer.
    InboxReindex,
    /// Where the search index stands.
    IndexStatus,
    /// Change the passphrase: re-wrap the keystore under `new` with a fresh data key, then rekey
    /// everything at rest. A node starts the rekey and answers at once (follow it with
    /// [`Request::KeysStatus`]); without a node it is done before the answer.
    KeysPasswd {
        /// The passphrase the keystore opens with now.
        current: Secret,
        /// The one it is to open with.
        new: Secret,
        /// Argon2id memory, KiB (the keystore's own when absent).
        #[serde(default)]
        kdf_m_kib: Option<u32>,
        /// Argon2id passes (the keystore's own when absent).
        #[serde(default)]
        kdf_passes: Option<u32>,
    },
    /// Carry an unfinished rekey on (a node starts it and answers at once).
    KeysRekey,
    /// The keystore and the data keys in use.
    KeysStatus,
}

/// A passphrase on its way to the node: never printed, not even by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// Done; nothing to report.
    Done,
    /// For [`Request::Id`].
    Id(IdInfo),
    /// For [`Request::ContactsList`].
    Contacts(Vec<ContactInfo>),
    /// For [`Request::Send`]: the new message id.
    Queued {
        /// The message id.
        id: String,
        /// How it was sealed (to a one-time key, to the long-term key, or waiting for a key).
        #[serde(default = "long_term")]
        sealing: crate::store::Sealing,
        /// The forward secrecy policy it was sent with.
        #[serde(default)]
        forward_secrecy: crate::config::ForwardSecrecy,
    },
    /// For [`Request::OutboxList`].
    Outbox(Vec<OutboxEntry>),
    /// For [`Request::InboxList`].
    Inbox(Vec<InboxItem>),
    /// For [`Request::InboxRead`].
    Message(MessageView),
    /// For [`Request::Conversation`].
    Conversation {
        /// The contact's PeerId.
        peer_id: String,
        /// The messages, oldest first.
        said: Vec<crate::store::Said>,
    },
    /// The first line of the answer to [`Request::InboxWatch`]: the watch has started.
    Watching,
    /// Each further line of the answer to [`Request::InboxWatch`].
    Watched(crate::store::Said),
    /// For [`Request::SentList`].
    Sent(Vec<SentItem>),
    /// For [`Request::SentRead`].
    SentMessage(SentView),
    /// For [`Request::InboxAttachments`].
    Attachments(Vec<SaveInfo>),
    /// For [`Request::OutboxRetry`], [`Request::OutboxCancel`], [`Request::LabelAdd`] and
    /// [`Request::LabelRm`]: the full message id.
    Updated {
        /// The message id.
        id: String,
    },
    /// For [`Request::InboxMarkMany`]: the full message ids, in the order asked.
    UpdatedMany {
        /// The message ids.
        ids: Vec<String>,
    },
    /// For [`Request::InboxRm`], [`Request::InboxRedact`], [`Request::SentRm`] and
    /// [`Request::SentRedact`]: the full id, and the attachments whose sealed files the caller
    /// removes.
    Removed {
        /// The message id.
        id: String,
        /// Its attachments' ids.
        attachments: Vec<String>,
    },
    /// For [`Request::InboxFetch`].
    Fetching {
        /// Attachments of the message that still miss chunks.
        attachments: u32,
    },
    /// For [`Request::Peers`].
    Peers(Vec<PeerHealth>),
    /// For [`Request::RulesAdd`].
    RuleAdded {
        /// The new rule's id.
        id: i64,
    },
    /// For [`Request::RulesList`].
    Rules(Vec<RuleView>),
    /// For [`Request::PluginsList`].
    Plugins(Vec<PluginStatus>),
    /// For [`Request::RulesApply`].
    RuleChanges(RulesApplied),
    /// For [`Request::Status`].
    Status(StatusInfo),
    /// For [`Request::InboxSearch`].
    Hits(Vec<Hit>),
    /// For [`Request::InboxReindex`] and [`Request::IndexStatus`].
    Index(IndexStatus),
    /// For [`Request::KeysPasswd`], [`Request::KeysRekey`] and [`Request::KeysStatus`].
    Keys(crate::rekey::KeysStatus),
}

impl Response {
    /// The error for this answer where the request asks for another kind: the CLI and the node
    /// disagree about the protocol (different versions, or a bug).
    pub fn unexpected(&self) -> ControlError {
        ControlError::UnexpectedAnswer(format!("{self:?}"))
    }
}

/// What `pigeon status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether a node is running for this home.
    pub node_running: bool,
    /// This node's PeerId.
    pub peer_id: String,
    /// Outbox counts by state.
    pub outbox: OutboxCounts,
    /// Messages in the inbox.
    pub inbox: u64,
    /// Peers connected now (0 when no node runs).
    pub connected_peers: usize,
    /// Reachability and relay state (while a node runs).
    #[serde(default)]
    pub nat: Option<crate::net::NatInfo>,
}

/// A node's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdInfo {
    /// The PeerId.
    pub peer_id: String,
    /// The address to give to contacts.
    pub address: String,
    /// Where the node listens, with `/p2p/<id>`; empty when no node runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
}

/// A contact, for listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContactInfo {
    /// Local name.
    pub name: String,
    /// PeerId.
    pub peer_id: String,
    /// Pigeon address.
    pub address: String,
    /// Multiaddrs.
    pub addrs: Vec<String>,
    /// Forward secrecy: the contact's one-time keys this node holds, unused and unexpired.
    #[serde(default)]
    pub one_time_keys_held: u64,
    /// This node's one-time keys the contact holds (handed out, unused, unexpired).
    #[serde(default)]
    pub one_time_keys_handed_out: u64,
    /// The contact's own forward secrecy policy (`None`: the config's).
    #[serde(default)]
    pub forward_secrecy: Option<crate::config::ForwardSecrecy>,
    /// The policy messages to it are sent with unless `send --forward-secrecy` says otherwise.
    #[serde(default)]
    pub forward_secrecy_effective: crate::config::ForwardSecrecy,
}

fn long_term() -> crate::store::Sealing {
    crate::store::Sealing::LongTermKey
}
