//! `<home>/config.toml`: the node's settings, with defaults for everything.
//!
//! `init` writes the commented template below; unknown keys and wrong types are refused with the
//! file's path and the offending key, so a typo never silently falls back to a default.
//! [`edit`] changes one key at a time for `pigeon config set`, keeping the file's comments.

pub mod edit;
mod relay;

pub use relay::RelayConfig;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::exit::ErrorKind;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{path}: {message}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, from the TOML parser.
        message: String,
    },
    /// The changed file could not be written.
    #[error(transparent)]
    Write(crate::home::HomeError),
}

impl ConfigError {
    /// The exit-code class: a file that cannot be read or written is I/O, not the user's value.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Read { .. } | ConfigError::Write(_) => ErrorKind::Other,
            ConfigError::Invalid { .. } => ErrorKind::Usage,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`
    pub node: NodeConfig,
    /// `[delivery]`
    pub delivery: DeliveryConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[attachments]`
    pub attachments: AttachmentsConfig,
    /// `[relay]`
    pub relay: RelayConfig,
    /// `[plugins.NAME]`, in the file's order (rule plugins run in this order).
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub plugins: IndexMap<String, PluginConfig>,
}

/// `[plugins.NAME]`: one WASM plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Whether it runs.
    pub enabled: bool,
    /// Its `.wasm` file (relative to the home); built-in plugins need none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Per-call deadline in milliseconds (default 50 for rules, 250 for discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Memory limit in MiB (default 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Handed to the plugin as its configuration.
    pub config: toml::Table,
}

/// `[node]`: how the node meets the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Multiaddrs to listen on when `node run` gets no `--listen`.
    pub listen: Vec<String>,
    /// Incoming connections still in their handshake, at most.
    pub max_pending_incoming: u32,
    /// Outgoing dials under way, at most.
    pub max_pending_outgoing: u32,
    /// Established incoming connections, at most.
    pub max_established_incoming: u32,
    /// Established connections in all, at most.
    pub max_established: u32,
    /// Established connections to one peer, at most.
    pub max_established_per_peer: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/7717".to_owned(),
                "/ip4/0.0.0.0/udp/7717/quic-v1".to_owned(),
            ],
            max_pending_incoming: 32,
            max_pending_outgoing: 64,
            max_established_incoming: 256,
            max_established: 512,
            max_established_per_peer: 4,
        }
    }
}

/// `[delivery]`: how the send loop batches and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Most messages in one batch to one peer.
    pub batch_max_messages: usize,
    /// Most bytes of envelopes in one batch.
    pub batch_max_bytes: usize,
    /// How long a batch that is not full waits for more messages, in milliseconds.
    pub linger_ms: u64,
    /// Most batches in flight to one peer at once (each on its own stream).
    pub batches_in_flight: usize,
    /// First retry delay after a failed attempt, in milliseconds.
    pub backoff_initial_ms: u64,
    /// Longest retry delay, for a peer that keeps failing, in milliseconds.
    pub backoff_max_ms: u64,
    /// A message not delivered within this time becomes `failed` (e.g. "30d", "12h").
    pub message_ttl: String,
    /// Whether messages are sealed to a one-time key of the recipient (forward secrecy).
    pub forward_secrecy: ForwardSecrecy,
    /// How long a one-time key this node hands out stays usable (e.g. "30d").
    pub one_time_key_lifetime: String,
}

/// The longest `delivery.one_time_key_lifetime`.
pub const MAX_ONE_TIME_KEY_LIFETIME_MS: u64 = 365 * 24 * 3600 * 1000;

/// `delivery.forward_secrecy`: whether a message is sealed to a one-time key of the recipient,
/// which the recipient deletes once the message is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ForwardSecrecy {
    /// Never: sealed to the recipient's long-term key.
    #[default]
    Off,
    /// When a one-time key of the recipient is at hand; otherwise sealed to its long-term key.
    Prefer,
    /// Always: the message waits until a one-time key of the recipient is at hand.
    Require,
}

impl ForwardSecrecy {
    /// The policy's name, as config and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardSecrecy::Off => "off",
            ForwardSecrecy::Prefer => "prefer",
            ForwardSecrecy::Require => "require",
        }
    }

    /// The policy named `s` (as [`ForwardSecrecy::as_str`] spells it).
    pub fn parse(s: &str) -> Option<ForwardSecrecy> {
        [
            ForwardSecrecy::Off,
            ForwardSecrecy::Prefer,
            ForwardSecrecy::Require,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_max_messages: 64,
            batch_max_bytes: 256 * 1024,
            linger_ms: 5,
            batches_in_flight: 4,
            backoff_initial_ms: 500,
            backoff_max_ms: 300_000,
            message_ttl: "30d".to_owned(),
            forward_secrecy: ForwardSecrecy::Off,
            one_time_key_lifetime: "30d".to_owned(),
        }
    }
}

impl DeliveryConfig {
    /// `one_time_key_lifetime` in milliseconds (validated when the configuration is read).
    pub fn one_time_key_lifetime_ms(&self) -> u64 {
        humantime::parse_duration(&self.one_time_key_lifetime)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .map_or(30 * 24 * 3600 * 1000, |ms| {
                ms.min(MAX_ONE_TIME_KEY_LIFETIME_MS)
            })
    }

    /// `message_ttl` in milliseconds (validated when the configuration is read).
    pub fn message_ttl_ms(&self) -> u64 {
        humantime::parse_duration(&self.message_ttl).map_or(u64::MAX, |d| d.as_millis() as u64)
    }
}

/// `[attachments]`: files sent with messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// Largest attachment sent or accepted, in bytes.
    pub max_size: u64,
    /// Most attachments one received message may carry.
    pub max_per_message: usize,
    /// Most attachment bytes one received message may carry, all its files together.
    pub max_message_bytes: u64,
    /// Most attachment bytes the node holds or fetches from one contact, all messages together.
    pub max_peer_bytes: u64,
    /// Chunks in flight while fetching.
    pub window: usize,
    /// An attachment whose chunks could not be fetched for this long, with none arriving since,
    /// is given up on ("7d", "12h"); `pigeon inbox fetch` resumes it.
    pub give_up_after: String,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        const GIB: u64 = 1024 * 1024 * 1024;
        AttachmentsConfig {
            max_size: GIB,
            max_per_message: 32,
            max_message_bytes: 2 * GIB,
            max_peer_bytes: 8 * GIB,
            window: 8,
            give_up_after: "7d".to_owned(),
        }
    }
}

impl AttachmentsConfig {
    /// `give_up_after` in milliseconds (validated when the configuration is read).
    pub fn give_up_after_ms(&self) -> u64 {
        humantime::parse_duration(&self.give_up_after).map_or(u64::MAX, |d| d.as_millis() as u64)
    }

    /// What the receive path checks a message's attachments against.
    pub fn limits(&self) -> crate::attachments::Limits {
        crate::attachments::Limits {
            max_size: self.max_size,
            max_per_message: self.max_per_message,
            max_message_bytes: self.max_message_bytes,
            max_peer_bytes: self.max_peer_bytes,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// HOST:PORT to serve `/metrics` and `/healthz` on; empty means off.
    pub listen: String,
}

/// The file `init` writes: every setting with its default and a comment.
pub const TEMPLATE: &str = r#"# pigeon node configuration. Every key is optional; the values shown are the defaults.
# Change a value with `pigeon config set KEY VALUE`, e.g. `pigeon config set delivery.linger_ms 10`.

[node]
# Addresses `pigeon node run` listens on when no --listen is given (TCP and QUIC).
listen = ["/ip4/0.0.0.0/tcp/7717", "/ip4/0.0.0.0/udp/7717/quic-v1"]
# Connection limits: in their handshake (incoming, outgoing), established (incoming, in all,
# per peer). A connection past one is closed at once; with them the swarm's memory is bounded.
max_pending_incoming = 32
max_pending_outgoing = 64
max_established_incoming = 256
max_established = 512
max_established_per_peer = 4

[delivery]
# A batch to one peer closes at this many messages or bytes, or after lingering this long.
batch_max_messages = 64
batch_max_bytes = 262144
linger_ms = 5
# Batches in flight to one peer at once.
batches_in_flight = 4
# Retry delays grow exponentially (with full jitter) from the first towards the longest, in
# milliseconds. The longest adapts to the peer: short for one that usually answers, up to this
# maximum for one that keeps failing.
backoff_initial_ms = 500
backoff_max_ms = 300000
# A message not delivered within this time is marked failed ("30d", "12h", "90m").
message_ttl = "30d"
# Forward secrecy: "off", "prefer" or "require" (a contact's own, `pigeon contacts set NAME
# --forward-secrecy`, and `pigeon send --forward-secrecy` win over this). Unless "off" this node
# asks its contacts for one-time keys while connected and seals each message to one: "prefer"
# sends without when none is at hand (and says so), "require" keeps the message waiting for one.
# The keys this node hands out are usable this long (1h to 365d).
forward_secrecy = "off"
one_time_key_lifetime = "30d"

[metrics]
# Serve Prometheus /metrics and /healthz on HOST:PORT (e.g. "127.0.0.1:9717"); empty means off.
listen = ""

[attachments]
# Largest file sent or accepted, in bytes (1 GiB).
max_size = 1073741824
# A received message with more files than this, or more bytes in all (2 GiB), is refused before
# anything is fetched; so is one that would take a contact's files past max_peer_bytes (8 GiB).
max_per_message = 32
max_message_bytes = 2147483648
max_peer_bytes = 8589934592
# Chunks (1 MiB each) in flight while fetching; memory use follows it, not the file size.
window = 8
# An attachment whose sender has not answered for this long (no chunk since) is given up on;
# `pigeon inbox fetch ID` tries again.
give_up_after = "7d"

[relay]
# Relay for others (circuit relay v2; also `pigeon node run --relay`): run it on a box with a
# public address that you control. Nodes behind NATs reserve a slot, are reached through it and
# then punch direct connections. Attachments never cross a relay.
serve = false
# The addresses others reach this relay at (announced in reservations); empty: every address
# it listens on (0.0.0.0 stands for each interface's).
external_addresses = []
# Reservations and relayed connections at once, in all and per peer; a relayed connection is
# closed after max_circuit_duration or max_circuit_bytes (both ways together).
max_reservations = 128
max_reservations_per_peer = 4
max_circuits = 16
max_circuits_per_peer = 4
max_circuit_duration = "30m"
max_circuit_bytes = 16777216

# WASM plugins, one table each; rule plugins run in the order they appear here, after the
# built-in rules. `pigeon plugins list` shows them all. Built-in ones need no path:
#
# [plugins.keyword-labeler]      # labels messages that mention a word
# enabled = true
# [plugins.keyword-labeler.config]
# invoice = "finance"
#
# [plugins.bootstrap]            # dials these peers at start and redials them
# enabled = true
# [plugins.bootstrap.config]
# peers = ["/ip4/192.0.2.7/tcp/7717/p2p/12D3KooW..."]
#
# [plugins.nat-traversal]        # behind a NAT: listen through these relays (see README)
# enabled = true
# [plugins.nat-traversal.config]
# relays = ["/ip4/203.0.113.5/udp/7717/quic-v1/p2p/12D3KooW..."]
#
# [plugins.my-rule]              # your own, built with `pigeon plugins new`
# enabled = true
# path = "plugins/my_rule.wasm"  # relative to this home
# timeout_ms = 50                # per call (default 50 for rules, 250 for discovery)
# memory_mib = 16
"#;

impl Config {
    /// Parses and validates configuration text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.message().to_owned() + &location(text, e.span()),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        self.relay.check().map_err(invalid)?;
        for addr in &self.node.listen {
            addr.parse::<libp2p::Multiaddr>()
                .map_err(|e| invalid(format!("node.listen: {addr:?} is not a multiaddr ({e})")))?;
        }
        let d = &self.delivery;
        if d.batch_max_messages == 0 || d.batch_max_messages > crate::net::protocol::MAX_BATCH {
            return Err(invalid(format!(
                "delivery.batch_max_messages must be between 1 and {}",
                crate::net::protocol::MAX_BATCH
            )));
        }
        if d.backoff_initial_ms == 0 || d.backoff_initial_ms > d.backoff_max_ms {
            return Err(invalid(
                "delivery.backoff_initial_ms must be above 0 and at most backoff_max_ms".to_owned(),
            ));
        }
        if d.batch_max_bytes < 1024 || d.batch_max_bytes > crate::net::protocol::MAX_REQUEST / 2 {
            return Err(invalid(format!(
                "delivery.batch_max_bytes must be between 1024 and {}",
                crate::net::protocol::MAX_REQUEST / 2
            )));
        }
        if d.batches_in_flight == 0 || d.batches_in_flight > 64 {
            return Err(invalid(
                "delivery.batches_in_flight must be between 1 and 64".to_owned(),
            ));
        }
        if d.linger_ms > 10_000 {
            return Err(invalid(
                "delivery.linger_ms must be at most 10000".to_owned(),
            ));
        }
        match humantime::parse_duration(&d.one_time_key_lifetime) {
            Ok(t)
                if t >= std::time::Duration::from_secs(3600)
                    && t.as_millis() <= u128::from(MAX_ONE_TIME_KEY_LIFETIME_MS) => {}
            Ok(_) => {
                return Err(invalid(
                    "delivery.one_time_key_lifetime must be between 1h and 365d".to_owned(),
                ));
            }
            Err(e) => {
                return Err(invalid(format!(
                    "delivery.one_time_key_lifetime {:?} is not a duration like \"30d\" ({e})",
                    d.one_time_key_lifetime
                )));
            }
        }
        match humantime::parse_duration(&d.message_ttl) {
            Ok(ttl) if ttl.as_secs() >= 1 => {}
            Ok(_) => {
                return Err(invalid(
                    "delivery.message_ttl must be at least 1s".to_owned(),
                ));
            }
            Err(e) => {
                return Err(invalid(format!(
                    "delivery.message_ttl {:?} is not a duration like \"30d\" or \"12h\" ({e})",
                    d.message_ttl
                )));
            }
        }
        let n = &self.node;
        for (key, value) in [
            ("max_pending_incoming", n.max_pending_incoming),
            ("max_pending_outgoing", n.max_pending_outgoing),
            ("max_established_incoming", n.max_established_incoming),
            ("max_established", n.max_established),
            ("max_established_per_peer", n.max_established_per_peer),
        ] {
            if value == 0 {
                return Err(invalid(format!("node.{key} must be at least 1")));
            }
        }
        let a = &self.attachments;
        if a.max_size == 0 || a.max_size > crate::attachments::HARD_MAX_SIZE {
            return Err(invalid(format!(
                "attachments.max_size must be between 1 and {}",
                crate::attachments::HARD_MAX_SIZE
            )));
        }
        if a.max_per_message == 0 || a.max_per_message > crate::attachments::HARD_MAX_PER_MESSAGE {
            return Err(invalid(format!(
                "attachments.max_per_message must be between 1 and {}",
                crate::attachments::HARD_MAX_PER_MESSAGE
            )));
        }
        if a.max_message_bytes < a.max_size || a.max_peer_bytes < a.max_message_bytes {
            return Err(invalid(
                "attachments: max_size <= max_message_bytes <= max_peer_bytes must hold".to_owned(),
            ));
        }
        if !humantime::parse_duration(&a.give_up_after)
            .is_ok_and(|d| d >= std::time::Duration::from_secs(1))
        {
            return Err(invalid(format!(
                "attachments.give_up_after {:?} is not a duration of at least 1s like \"7d\" or \"12h\"",
                a.give_up_after
            )));
        }
        if a.window == 0 || a.window > 64 {
            return Err(invalid(
                "attachments.window must be between 1 and 64".to_owned(),
            ));
        }
        for (name, pc) in &self.plugins {
            crate::plugins::validate_config(name, pc).map_err(invalid)?;
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(format!(
                "metrics.listen {:?} is not HOST:PORT like \"127.0.0.1:9717\"",
                self.metrics.listen
            )));
        }
        Ok(())
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_defaults() {
        let parsed = Config::parse(TEMPLATE, Path::new("config.toml")).expect("template parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_and_wrong_type_are_refused() {
        let err = Config::parse("[delivery]\nbackof_max_ms = 3\n", Path::new("c.toml"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("backof_max_ms"), "{err}");
        let err = Config::parse("[delivery]\nbackoff_max_ms = \"x\"\n", Path::new("c.toml"))
            .expect_err("wrong type");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Config::parse("[node]\nlisten = [\"nope\"]\n", Path::new("c.toml"))
            .expect_err("bad addr");
        assert!(err.to_string().contains("node.listen"), "{err}");
    }

    /// A bad value is the user's to fix (exit 2); a file that cannot be read is I/O (exit 1).
    #[test]
    fn a_bad_value_is_usage_and_an_unreadable_file_is_not() {
        let err = Config::parse("[delivery]\nbackof_max_ms = 3\n", Path::new("c.toml"))
            .expect_err("unknown key");
        assert_eq!(err.kind(), ErrorKind::Usage);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Config::load(dir.path()).expect_err("a directory is no config file");
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Other);
    }

    #[test]
    fn plugins_keep_their_order_and_bad_entries_are_refused() {
        let text = "[plugins.zeta]\nenabled = true\npath = \"z.wasm\"\n\
                    [plugins.alpha]\npath = \"a.wasm\"\n[plugins.alpha.config]\nx = [1, 2]\n";
        let c = Config::parse(text, Path::new("c.toml")).expect("valid");
        let names: Vec<&String> = c.plugins.keys().collect();
        assert_eq!(names, ["zeta", "alpha"], "file order, not sorted");
        assert!(c.plugins["zeta"].enabled && !c.plugins["alpha"].enabled);
        for (bad, says) in [
            ("[plugins.mine]\nenabled = true\n", "needs a path"),
            ("[plugins.keyword-labeler]\ntimeout_ms = 0\n", "timeout_ms"),
            (
                "[plugins.keyword-labeler]\nmemory_mib = 100000\n",
                "memory_mib",
            ),
            ("[plugins.keyword-labeler]\nenable = true\n", "enable"),
            ("[plugins.\"Bad Name\"]\npath = \"x\"\n", "plugin name"),
        ] {
            let err = Config::parse(bad, Path::new("c.toml")).expect_err(bad);
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }
}
