//! The plugin platform: sandboxed WASM components built against the versioned `pigeon:plugin`
//! contract in `plugin-sdk/wit`.
//!
//! - `spec.rs`: the configuration turned into [`PluginSpec`]s, the limits a call runs under,
//!   [`check_file`], and checking what plugins return ([`DiscoveryAction`]).
//! - `status.rs`: where each plugin stands ([`PluginStatus`]), as `pigeon plugins list` shows it.
//! - [`runtime`]: one wasmtime engine per process, the compile cache, the version check.
//! - [`instance`]: one plugin's instance, called under a per-call deadline and memory limit.
//! - [`breaker`]: the circuit breaker that pauses a plugin that keeps failing.
//! - [`service`]: the thread that owns the instances; the node talks to it through [`Plugins`].
//! - [`builtin`]: the first-party plugins embedded in the binary.
//!
//! This file holds the error type, starting the plugin thread and [`LazyPlugins`].
//!
//! Plugins fail open: a trap, a timeout or memory exhaustion is logged with the plugin, the hook
//! and the reason, the instance is dropped, and the message goes on without that plugin's actions.

mod bindings;
pub mod breaker;
pub mod builtin;
pub mod instance;
mod lift;
mod nowait;
mod replay;
pub mod runtime;
pub mod scaffold;
pub mod service;
mod spec;
mod status;

use std::path::PathBuf;

use crate::config::Config;
pub use bindings::{Message as WitMessage, WitAction};
pub use runtime::{Cache, Limits, Runtime};
pub use service::{Budget, Plugins};
pub use spec::{
    BUILTIN_API_VERSION, CheckReport, DEFAULT_MEMORY_MIB, DISCOVERY_DEADLINE_MS, DiscoveryAction,
    MAX_DEADLINE_MS, MAX_MEMORY_MIB, MAX_WASM_BYTES, NodeEvent, PluginKind, PluginSpec,
    RULE_DEADLINE_MS, RuleMessage, Source, check_file, read_wasm, validate_config,
};
pub use status::{PluginState, PluginStatus, describe_offline};

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

    /// Stops the plugin thread if it was started, and waits for it.
    pub async fn close(&self) {
        if let Some(plugins) = self.cell.get() {
            plugins.close().await;
        }
    }
}
