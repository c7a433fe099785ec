//! The plugin platform: sandboxed WASM components built against the versioned `pigeon:plugin`
//! contract in `plugin-sdk/wit`.
//!
//! - [`runtime`]: one wasmtime engine per process, the compile cache, the version check.
//! - [`instance`]: one plugin's instance, called under a per-call deadline and memory limit.
//! - [`breaker`]: the circuit breaker that pauses a plugin that keeps failing.
//! - [`service`]: the thread that owns the instances; the node talks to it through [`Plugins`].
//! - [`builtin`]: the first-party plugins embedded in the binary.
//!
//! Plugins fail open: a trap, a timeout or memory exhaustion is logged with the plugin, the hook
//! and the reason, the instance is dropped, and the message goes on without that plugin's actions.

mod bindings;
pub mod breaker;
pub mod builtin;
pub mod instance;
mod lift;
mod nowait;
pub mod runtime;
pub mod scaffold;
pub mod service;

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::config::{Config, PluginConfig};
pub use bindings::{Message as WitMessage, WitAction};
pub use runtime::{Cache, Limits, Runtime};
pub use service::{Budget, Plugins};

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

/// Errors loading a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a file a plugin can be read from: a directory, a device, a pipe, or too large.
    #[error("{path}: {message}")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        message: String,
    },
    /// Not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// A component that exports no pigeon plugin interface.
    #[error(
        "not a pigeon plugin: it exports {exports}, but a plugin exports pigeon:plugin/rule-hooks or pigeon:plugin/discovery-hooks (build it with pigeon-plugin-sdk)"
    )]
    NotAPlugin {
        /// What it exports instead.
        exports: String,
    },
    /// Built against a contract version this pigeon does not speak.
    #[error(
        "built against {found}, but this pigeon supports pigeon:plugin@{major}.{minor} ({major}.0.0 up to {major}.{minor}.x); rebuild it with pigeon-plugin-sdk {major}.{minor}",
        major = runtime::API_MAJOR,
        minor = runtime::API_MINOR,
    )]
    Version {
        /// The version it was built against.
        found: String,
    },
    /// It imports something the host does not offer.
    #[error("imports something pigeon does not offer: {0}")]
    Link(String),
    /// The engine could not start.
    #[error("WASM engine: {0}")]
    Engine(String),
}

impl PluginError {
    /// The exit-code class of this error.
    pub fn kind(&self) -> crate::exit::ErrorKind {
        use crate::exit::ErrorKind;
        match self {
            PluginError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            PluginError::Read { .. } => ErrorKind::Other,
            PluginError::Engine(_) => ErrorKind::Other,
            _ => ErrorKind::Usage,
        }
    }
}

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

/// The plugins of `config` as `pigeon plugins list` shows them when no node runs: nothing is
/// started, user plugins are only checked.
pub fn describe_offline(config: &Config, home: &Path) -> Vec<PluginStatus> {
    PluginSpec::from_config(config, home)
        .into_iter()
        .map(|spec| {
            let (kind, api_version, problem) = match &spec.source {
                Source::Builtin(b) => (Some(b.kind), spec.builtin_api_version(), None),
                Source::Path(p) => match check_file(p) {
                    Ok(r) => (Some(r.kind), Some(r.api_version), None),
                    Err(e) => (None, None, Some(e.to_string())),
                },
            };
            let (status, state) = match (spec.enabled, &problem) {
                (_, Some(problem)) => {
                    (PluginState::FailedToLoad, format!("cannot load: {problem}"))
                }
                (true, None) => (
                    PluginState::NotRunning,
                    "enabled (node not running)".to_owned(),
                ),
                (false, None) => (PluginState::Disabled, "disabled".to_owned()),
            };
            PluginStatus {
                name: spec.name.clone(),
                kind,
                api_version,
                source: spec.source_text(),
                enabled: spec.enabled,
                status,
                paused_until_ms: None,
                error: problem,
                state,
                calls: 0,
                failures: 0,
                last_failure: None,
            }
        })
        .collect()
}

/// The contract version the embedded plugins are built against (they build with this repository's
/// SDK).
pub const BUILTIN_API_VERSION: &str = "1.0.0";

/// One line of `pigeon plugins list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Name.
    pub name: String,
    /// Kind, once known.
    pub kind: Option<PluginKind>,
    /// The `pigeon:plugin` version it was built against, once loaded.
    pub api_version: Option<String>,
    /// "builtin" or the file.
    pub source: String,
    /// Whether the configuration enables it.
    pub enabled: bool,
    /// Where it stands, for scripts.
    pub status: PluginState,
    /// Until when (ms since the epoch) the circuit breaker pauses it, while it does.
    pub paused_until_ms: Option<u64>,
    /// Why it did not load, when it did not.
    pub error: Option<String>,
    /// The same in words: ready, disabled, failed to load: ..., paused by the circuit breaker ...
    pub state: String,
    /// Calls made since the node started.
    pub calls: u64,
    /// Calls that failed since the node started.
    pub failures: u64,
    /// The last failure, if any.
    pub last_failure: Option<String>,
}

/// Where a plugin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// The configuration does not enable it.
    Disabled,
    /// Enabled, and no node runs (shown by `plugins list` offline).
    NotRunning,
    /// Loaded and called.
    Ready,
    /// Its circuit breaker lets one call through to see whether it works again.
    Trial,
    /// Its circuit breaker pauses it after repeated failures.
    Paused,
    /// It could not be loaded (or refused its configuration); the node runs without it.
    FailedToLoad,
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
}

impl NodeEvent {
    fn to_wit(&self) -> bindings::WitNodeEvent {
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
    fn from_wit(action: bindings::WitDiscoveryAction) -> Result<DiscoveryAction, String> {
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

/// Starts the plugin thread for `config`, with the compile cache in `<home>/plugin-cache`
/// authenticated under a key derived from `keys`.
pub fn start(
    home: &crate::home::Home,
    config: &Config,
    keys: &crate::keys::Keys,
    actions: Option<tokio::sync::mpsc::UnboundedSender<DiscoveryAction>>,
) -> Plugins {
    let specs = PluginSpec::from_config(config, home.root());
    let cache = Cache::new(
        home.plugin_cache(),
        keys.at_rest().derive_key("plugin-cache"),
    );
    Plugins::start(specs, Some(cache), actions)
}

/// Plugins started on first use: commands run without a node start them only if they need them.
#[derive(Clone)]
pub struct LazyPlugins {
    cell: std::sync::Arc<std::sync::OnceLock<Plugins>>,
    make: std::sync::Arc<dyn Fn() -> Plugins + Send + Sync>,
}

impl LazyPlugins {
    /// Plugins already running.
    pub fn running(plugins: Plugins) -> LazyPlugins {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(plugins);
        LazyPlugins {
            cell: std::sync::Arc::new(cell),
            make: std::sync::Arc::new(Plugins::none),
        }
    }

    /// Plugins that `make` starts when first asked for.
    pub fn on_demand(make: impl Fn() -> Plugins + Send + Sync + 'static) -> LazyPlugins {
        LazyPlugins {
            cell: std::sync::Arc::new(std::sync::OnceLock::new()),
            make: std::sync::Arc::new(make),
        }
    }

    /// The plugins, started now if need be.
    pub fn get(&self) -> &Plugins {
        self.cell.get_or_init(|| (self.make)())
    }

    /// Whether they are running.
    pub fn is_running(&self) -> bool {
        self.cell.get().is_some()
    }
}
