//! What a plugin is and what it may do: `[plugins.NAME]` checked and turned into [`PluginSpec`]s,
//! the limits a call runs under, reading and checking a component file (`pigeon plugins check`),
//! and the values that cross the contract: what the hooks are given, and what a discovery plugin
//! returns, checked before the node acts on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::runtime::{Limits, Runtime};
use super::{PluginError, bindings, builtin};
use crate::config::{Config, PluginConfig};

/// Default per-call deadline of a rule plugin.
pub const RULE_DEADLINE_MS: u64 = 50;
/// Default per-call deadline of a discovery plugin.
pub const DISCOVERY_DEADLINE_MS: u64 = 250;
/// Longest deadline a configuration may ask for.
pub const MAX_DEADLINE_MS: u64 = 5_000;
/// Default memory limit, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 16;
/// Largest memory limit a configuration may ask for, in MiB.
pub const MAX_MEMORY_MIB: u64 = 512;
/// Largest component file accepted, in bytes.
pub const MAX_WASM_BYTES: u64 = 64 * 1024 * 1024;

/// What a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// An inbox rule or labeler.
    Rule,
    /// A discovery strategy.
    Discovery,
}

impl PluginKind {
    /// As shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Rule => "rule",
            PluginKind::Discovery => "discovery",
        }
    }
}

/// One plugin as configured.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Its name (`[plugins.NAME]`).
    pub name: String,
    /// Embedded, or a file.
    pub source: Source,
    /// Whether it runs.
    pub enabled: bool,
    /// Per-call deadline, when configured.
    pub timeout_ms: Option<u64>,
    /// Memory limit in MiB, when configured.
    pub memory_mib: Option<u64>,
    /// Its `config` table, as JSON.
    pub config_json: String,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Embedded in the binary.
    Builtin(&'static builtin::Builtin),
    /// A `.wasm` file.
    Path(PathBuf),
}

impl PluginSpec {
    /// Every plugin of `config`, in its order, then the built-in plugins it does not mention
    /// (disabled). Relative paths are taken from `home`.
    pub fn from_config(config: &Config, home: &Path) -> Vec<PluginSpec> {
        let mut specs: Vec<PluginSpec> = config
            .plugins
            .iter()
            .filter_map(|(name, pc)| PluginSpec::one(name, pc, home))
            .collect();
        for b in builtin::BUILTINS {
            if !config.plugins.contains_key(b.name) {
                specs.push(PluginSpec {
                    name: b.name.to_owned(),
                    source: Source::Builtin(b),
                    enabled: false,
                    timeout_ms: None,
                    memory_mib: None,
                    config_json: "{}".to_owned(),
                });
            }
        }
        specs
    }

    fn one(name: &str, pc: &PluginConfig, home: &Path) -> Option<PluginSpec> {
        let source = match (&pc.path, builtin::find(name)) {
            (Some(path), _) => Source::Path(home.join(path)),
            (None, Some(b)) => Source::Builtin(b),
            // Refused when the configuration is read.
            (None, None) => return None,
        };
        Some(PluginSpec {
            name: name.to_owned(),
            source,
            enabled: pc.enabled,
            timeout_ms: pc.timeout_ms,
            memory_mib: pc.memory_mib,
            config_json: serde_json::to_string(&pc.config).unwrap_or_else(|_| "{}".to_owned()),
        })
    }

    /// The kind, when it is known without loading.
    pub fn builtin_kind(&self) -> Option<PluginKind> {
        match &self.source {
            Source::Builtin(b) => Some(b.kind),
            Source::Path(_) => None,
        }
    }

    /// The contract version of a built-in plugin, known without loading it.
    pub fn builtin_api_version(&self) -> Option<String> {
        matches!(self.source, Source::Builtin(_)).then(|| BUILTIN_API_VERSION.to_owned())
    }

    /// "builtin", or the file's path.
    pub fn source_text(&self) -> String {
        match &self.source {
            Source::Builtin(_) => "builtin".to_owned(),
            Source::Path(p) => p.display().to_string(),
        }
    }

    /// The component's bytes.
    pub fn wasm(&self) -> Result<std::borrow::Cow<'static, [u8]>, PluginError> {
        match &self.source {
            Source::Builtin(b) => Ok(b.wasm.into()),
            Source::Path(p) => read_wasm(p).map(Into::into),
        }
    }

    /// The limits for a plugin of `kind`: the configured ones, or the defaults.
    pub fn limits(&self, kind: PluginKind) -> Limits {
        let default = match kind {
            PluginKind::Rule => RULE_DEADLINE_MS,
            PluginKind::Discovery => DISCOVERY_DEADLINE_MS,
        };
        Limits {
            deadline: Duration::from_millis(self.timeout_ms.unwrap_or(default)),
            memory_bytes: (self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB) << 20) as usize,
        }
    }
}

/// The contract version the embedded plugins are built against (they build with this repository's
/// SDK).
pub const BUILTIN_API_VERSION: &str = "1.1.0";

/// Reads a component file, refusing anything too large to be a plugin.
pub fn read_wasm(path: &Path) -> Result<Vec<u8>, PluginError> {
    use std::io::Read;
    let read_error = |source| PluginError::Read {
        path: path.to_owned(),
        source,
    };
    let not_a_file = |message: String| PluginError::NotAFile {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if !meta.is_file() {
        return Err(not_a_file(
            "not a regular file (a plugin is a .wasm file)".into(),
        ));
    }
    let too_large = |size: u64| {
        not_a_file(format!(
            "{size} bytes is larger than the {MAX_WASM_BYTES} bytes a plugin may be"
        ))
    };
    if meta.len() > MAX_WASM_BYTES {
        return Err(too_large(meta.len()));
    }
    // The file may grow between the look and the read: read no more than the limit allows.
    let mut wasm = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_WASM_BYTES + 1).read_to_end(&mut wasm))
        .map_err(read_error)?;
    if wasm.len() as u64 > MAX_WASM_BYTES {
        return Err(too_large(wasm.len() as u64));
    }
    Ok(wasm)
}

/// What `pigeon plugins check` reports about a valid component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// The file checked.
    pub path: String,
    /// Its kind.
    pub kind: PluginKind,
    /// The `pigeon:plugin` version it was built against.
    pub api_version: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Compiles, version-checks and links the component at `path` without running any of it.
pub fn check_file(path: &Path) -> Result<CheckReport, PluginError> {
    let wasm = read_wasm(path)?;
    let loaded = Runtime::new()?.load(&wasm, None)?;
    Ok(CheckReport {
        path: path.display().to_string(),
        kind: loaded.kind,
        api_version: loaded.api_version,
        size: wasm.len() as u64,
    })
}

/// An incoming message, as the rule plugins are given it.
#[derive(Debug, Clone)]
pub struct RuleMessage {
    /// Message id.
    pub id: String,
    /// Sender PeerId.
    pub sender: String,
    /// Sender's contact name.
    pub contact: Option<String>,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// When it was sent (ms since the epoch).
    pub sent_at_ms: u64,
    /// Attachment file names.
    pub attachments: Vec<String>,
    /// Labels it has now.
    pub labels: Vec<String>,
}

/// A node event, for discovery plugins.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// The node is up.
    Started,
    /// A first connection to a peer is up.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its address on that connection.
        address: Multiaddr,
    },
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A dial failed.
    DialFailed {
        /// The peer.
        peer: PeerId,
        /// The address tried.
        address: Multiaddr,
    },
    /// The node listens on a new address.
    NewListenAddress(Multiaddr),
    /// AutoNAT's view of the node's reachability changed.
    NatStatus(crate::net::NatStatus),
    /// A relay holds a (new) reservation for this node. Contract 1.1.
    ReservationAccepted(PeerId),
    /// The node no longer listens through a relay. Contract 1.1.
    ReservationLost {
        /// The relay.
        relay: PeerId,
        /// Why.
        reason: String,
    },
    /// A hole punch ended. Contract 1.1.
    HolePunch {
        /// The peer.
        peer: PeerId,
        /// Why it failed; `None` when it made a direct connection.
        error: Option<String>,
    },
}

impl NodeEvent {
    pub(super) fn to_wit(&self) -> bindings::WitNodeEvent {
        use bindings::{DialFailure, PeerAddress, WitNodeEvent as E};
        match self {
            NodeEvent::Started => E::Started,
            NodeEvent::PeerConnected { peer, address } => E::PeerConnected(PeerAddress {
                peer: peer.to_string(),
                address: address.to_string(),
            }),
            NodeEvent::PeerDisconnected(peer) => E::PeerDisconnected(peer.to_string()),
            NodeEvent::DialFailed { peer, address } => E::DialFailed(DialFailure {
                peer: Some(peer.to_string()),
                address: Some(address.to_string()),
                error: "dial failed".to_owned(),
            }),
            NodeEvent::NewListenAddress(a) => E::NewListenAddress(a.to_string()),
            NodeEvent::NatStatus(status) => E::NatStatus(match status {
                crate::net::NatStatus::Unknown => bindings::NatStatus::Unknown,
                crate::net::NatStatus::Public => bindings::NatStatus::Public,
                crate::net::NatStatus::Private => bindings::NatStatus::Private,
            }),
            NodeEvent::ReservationAccepted(relay) => E::ReservationAccepted(relay.to_string()),
            NodeEvent::ReservationLost { relay, reason } => {
                E::ReservationLost(bindings::ReservationLoss {
                    relay: relay.to_string(),
                    reason: reason.clone(),
                })
            }
            NodeEvent::HolePunch { peer, error } => E::HolePunch(bindings::HolePunch {
                peer: peer.to_string(),
                direct: error.is_none(),
                error: error.clone(),
            }),
        }
    }
}

/// What a discovery plugin asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryAction {
    /// Dial `peer` at `address`.
    Dial {
        /// The peer (from the address's `/p2p/`).
        peer: PeerId,
        /// The address without its `/p2p/` part.
        address: Multiaddr,
    },
    /// Remember an address of a peer.
    AddAddress {
        /// The peer.
        peer: PeerId,
        /// Its address.
        address: Multiaddr,
    },
    /// Listen through a relay.
    ListenViaRelay(Multiaddr),
}

impl DiscoveryAction {
    pub(super) fn from_wit(
        action: bindings::WitDiscoveryAction,
    ) -> Result<DiscoveryAction, String> {
        use bindings::WitDiscoveryAction as A;
        let parse = |s: &str| {
            s.parse::<Multiaddr>()
                .map_err(|e| format!("{s:?} is not a multiaddr: {e}"))
        };
        let peer_id = |s: &str| {
            s.parse::<PeerId>()
                .map_err(|_| format!("{s:?} is not a PeerId"))
        };
        Ok(match action {
            A::Dial(addr) => {
                let mut address = parse(&addr)?;
                let Some(Protocol::P2p(peer)) = address.pop() else {
                    return Err(format!("{addr:?} does not end in /p2p/<PeerId>"));
                };
                DiscoveryAction::Dial { peer, address }
            }
            A::AddAddress(pa) => DiscoveryAction::AddAddress {
                peer: peer_id(&pa.peer)?,
                address: parse(&pa.address)?,
            },
            A::ListenViaRelay(addr) => DiscoveryAction::ListenViaRelay(parse(&addr)?),
        })
    }
}

/// Checks a `[plugins.NAME]` entry; the message names what is wrong.
pub fn validate_config(name: &str, pc: &PluginConfig) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "plugins.{name}: a plugin name is 1-64 lower-case letters, digits, '-' or '_'"
        ));
    }
    if pc.path.is_none() && builtin::find(name).is_none() {
        let builtins: Vec<&str> = builtin::BUILTINS.iter().map(|b| b.name).collect();
        return Err(format!(
            "plugins.{name}: needs a path to its .wasm file (the built-in plugins, which need none, are: {})",
            builtins.join(", ")
        ));
    }
    if let Some(t) = pc.timeout_ms
        && !(1..=MAX_DEADLINE_MS).contains(&t)
    {
        return Err(format!(
            "plugins.{name}.timeout_ms: {t} is outside 1..={MAX_DEADLINE_MS}"
        ));
    }
    if let Some(m) = pc.memory_mib
        && !(1..=MAX_MEMORY_MIB).contains(&m)
    {
        return Err(format!(
            "plugins.{name}.memory_mib: {m} is outside 1..={MAX_MEMORY_MIB}"
        ));
    }
    Ok(())
}
