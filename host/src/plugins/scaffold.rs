//! `pigeon plugins new`: a plugin crate that builds for wasm32-wasip2 as it is, with a test.
//!
//! The SDK is copied next to the plugin (`pigeon-plugin-sdk/`), so the crate builds without this
//! repository and pins the exact contract this pigeon speaks.

use std::path::{Path, PathBuf};

use super::PluginKind;
use crate::exit::ErrorKind;

const SDK_CARGO: &str = include_str!("../../../plugin-sdk/Cargo.toml");
const SDK_LIB: &str = include_str!("../../../plugin-sdk/src/lib.rs");
const SDK_WIT: &str = include_str!("../../../plugin-sdk/wit/plugin.wit");

/// Errors scaffolding a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaffoldError {
    /// The name cannot be a crate name.
    #[error(
        "{0:?} cannot name a plugin: use 1-64 lower-case letters, digits, '-' or '_', starting with a letter"
    )]
    BadName(String),
    /// The directory is there already.
    #[error("{0} exists already; pick another name or --dir")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ScaffoldError {
    /// The exit-code class of this error.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            ScaffoldError::BadName(_) => ErrorKind::Usage,
            ScaffoldError::Exists(_) => ErrorKind::Conflict,
            ScaffoldError::Io { .. } => ErrorKind::Other,
        }
    }
}

/// What [`new`] made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scaffolded {
    /// The crate's directory.
    pub dir: PathBuf,
    /// Where `cargo build --release --target wasm32-wasip2` puts the component.
    pub wasm: PathBuf,
}

/// Writes a new plugin crate called `name` of `kind` into `parent/name`.
pub fn new(name: &str, kind: PluginKind, parent: &Path) -> Result<Scaffolded, ScaffoldError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let lib = match kind {
        PluginKind::Rule => RULE_TEMPLATE,
        PluginKind::Discovery => DISCOVERY_TEMPLATE,
    };
    let artifact = format!("{}.wasm", name.replace('-', "_"));
    let files = [
        ("Cargo.toml", CARGO_TEMPLATE.to_owned()),
        ("src/lib.rs", lib.to_owned()),
        (
            "README.md",
            README_TEMPLATE.replace("{artifact}", &artifact),
        ),
        (".gitignore", "/target\n".to_owned()),
        ("pigeon-plugin-sdk/Cargo.toml", SDK_CARGO.to_owned()),
        ("pigeon-plugin-sdk/src/lib.rs", SDK_LIB.to_owned()),
        ("pigeon-plugin-sdk/wit/plugin.wit", SDK_WIT.to_owned()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        let io = |source| ScaffoldError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text.replace("{name}", name)).map_err(io)?;
    }
    Ok(Scaffolded {
        wasm: dir.join("target/wasm32-wasip2/release").join(artifact),
        dir,
    })
}

const CARGO_TEMPLATE: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib is the WASM component; rlib lets `cargo test` run the plugin's logic natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
pigeon-plugin-sdk = { path = "pigeon-plugin-sdk" }
serde = { version = "1", features = ["derive"] }

[lints.clippy]
# A panic traps the call: pigeon counts it as a failure, and enough of them open the circuit.
unwrap_used = "warn"

[profile.release]
opt-level = "s"
lto = true
strip = true
panic = "abort"

# A workspace of its own, so it builds wherever it is put.
[workspace]
"#;

const RULE_TEMPLATE: &str = r##"//! `{name}`: a pigeon inbox rule.
//!
//! Messages whose subject contains `word` get `label`. Change `on_message` to do what you need:
//! it may add or remove labels, mark a message read, or archive it.

use pigeon_plugin_sdk::{Action, Level, Message, Rule, check_label, export_rule, log};
use serde::Deserialize;

/// `[plugins.{name}.config]` in the node's config.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The word to look for in subjects (case-insensitive).
    #[serde(default = "default_word")]
    pub word: String,
    /// The label to give.
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_word() -> String {
    "urgent".to_owned()
}

fn default_label() -> String {
    "urgent".to_owned()
}

/// The plugin; it lives as long as its instance.
pub struct Plugin {
    word: String,
    label: String,
}

impl Rule for Plugin {
    type Config = Config;

    // This rule reads subjects only, so it asks not to be given bodies.
    const NEEDS_BODY: bool = false;

    fn new(config: Config) -> Result<Self, String> {
        if config.word.trim().is_empty() {
            return Err("word must not be empty".to_owned());
        }
        // The node would drop an invalid label on every match: refuse it here instead, and the
        // node reports it at start.
        check_label(&config.label)?;
        log(Level::Info, &format!("labelling {:?} as {:?}", config.word, config.label));
        Ok(Plugin {
            word: config.word.to_lowercase(),
            label: config.label,
        })
    }

    fn on_message(&mut self, message: &Message) -> Vec<Action> {
        if message.subject.to_lowercase().contains(&self.word) {
            vec![Action::AddLabel(self.label.clone())]
        } else {
            Vec::new()
        }
    }
}

export_rule!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn message(subject: &str) -> Message {
        Message {
            id: "0193a7d2-0000-7000-8000-000000000000".into(),
            sender: "12D3KooW...".into(),
            contact: Some("alice".into()),
            subject: subject.into(),
            body: None,
            size: 0,
            sent_at_ms: 0,
            attachments: vec![],
            labels: vec![],
        }
    }

    #[test]
    fn labels_subjects_with_the_word() {
        let config = pigeon_plugin_sdk::parse_config(r#"{"word": "Urgent", "label": "now"}"#)
            .expect("valid config");
        let mut plugin = Plugin::new(config).expect("plugin");
        assert_eq!(
            plugin.on_message(&message("URGENT: call me")),
            vec![Action::AddLabel("now".into())]
        );
        assert!(plugin.on_message(&message("lunch?")).is_empty());
    }

    #[test]
    fn refuses_a_label_the_node_would_drop() {
        let config = pigeon_plugin_sdk::parse_config(r#"{"label": "not a label"}"#)
            .expect("valid config");
        assert!(Plugin::new(config).is_err());
    }
}
"##;

const DISCOVERY_TEMPLATE: &str = r##"//! `{name}`: a pigeon discovery strategy.
//!
//! Dials the configured `peers` when the node starts, and again on every tick while one is not
//! connected. Change the hooks to find peers your own way.

use pigeon_plugin_sdk::{Discovery, DiscoveryAction, Level, NodeEvent, export_discovery, log};
use serde::Deserialize;

/// `[plugins.{name}.config]` in the node's config.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs ending in /p2p/<PeerId>.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// The plugin; it lives as long as its instance.
pub struct Plugin {
    peers: Vec<String>,
    connected: Vec<String>,
}

impl Discovery for Plugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Plugin {
            peers: config.peers,
            connected: Vec::new(),
        })
    }

    fn on_event(&mut self, event: &NodeEvent) -> Vec<DiscoveryAction> {
        match event {
            NodeEvent::Started => self.peers.iter().cloned().map(DiscoveryAction::Dial).collect(),
            NodeEvent::PeerConnected(p) => {
                log(Level::Info, &format!("connected to {}", p.peer));
                self.connected.push(p.peer.clone());
                Vec::new()
            }
            NodeEvent::PeerDisconnected(peer) => {
                self.connected.retain(|c| c != peer);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn on_tick(&mut self, _now_ms: u64) -> Vec<DiscoveryAction> {
        self.peers
            .iter()
            .filter(|a| !self.connected.iter().any(|c| a.ends_with(&format!("/p2p/{c}"))))
            .cloned()
            .map(DiscoveryAction::Dial)
            .collect()
    }
}

export_discovery!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dials_its_peers_until_they_connect() {
        let addr = "/ip4/127.0.0.1/tcp/7717/p2p/12D3KooWabc";
        let mut plugin = Plugin::new(Config {
            peers: vec![addr.into()],
        })
        .expect("plugin");
        assert_eq!(
            plugin.on_event(&NodeEvent::Started),
            vec![DiscoveryAction::Dial(addr.into())]
        );
        plugin.on_event(&NodeEvent::PeerConnected(pigeon_plugin_sdk::PeerAddress {
            peer: "12D3KooWabc".into(),
            address: "/ip4/127.0.0.1/tcp/7717".into(),
        }));
        assert!(plugin.on_tick(0).is_empty());
    }
}
"##;

const README_TEMPLATE: &str = r#"# {name}

A pigeon plugin. Build, test and check it:

```sh
cargo test
cargo build --release --target wasm32-wasip2
pigeon plugins check target/wasm32-wasip2/release/{artifact}
```

Then enable it in the node's `config.toml` (paths are relative to the node's home):

```toml
[plugins.{name}]
enabled = true
path = "/absolute/path/to/target/wasm32-wasip2/release/{artifact}"
[plugins.{name}.config]
# the fields of `Config` in src/lib.rs
```

and restart the node; `pigeon plugins list` shows its state. The plugin can log, read the clock and
its configuration, and nothing else: no files, no environment, no sockets. Each call has a deadline
(50 ms for rules, 250 ms for discovery; `timeout_ms` changes it) and a memory limit (16 MiB;
`memory_mib`).
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_crate_and_refuses_bad_names_and_existing_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let made = new("my-rule", PluginKind::Rule, tmp.path()).expect("new");
        let cargo = std::fs::read_to_string(made.dir.join("Cargo.toml")).expect("read");
        assert!(cargo.contains("name = \"my-rule\""));
        assert!(made.wasm.ends_with("my_rule.wasm"));
        assert!(made.dir.join("pigeon-plugin-sdk/wit/plugin.wit").is_file());
        assert!(matches!(
            new("my-rule", PluginKind::Rule, tmp.path()),
            Err(ScaffoldError::Exists(_))
        ));
        for bad in ["", "My", "1x", "a b", "../x"] {
            assert!(
                matches!(
                    new(bad, PluginKind::Discovery, tmp.path()),
                    Err(ScaffoldError::BadName(_))
                ),
                "{bad:?}"
            );
        }
    }
}
