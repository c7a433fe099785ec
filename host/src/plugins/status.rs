//! Where each plugin stands, as `pigeon plugins list` shows it: the [`PluginStatus`] lines the
//! plugin thread reports for a running node, and the same built from the configuration alone
//! when no node runs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{PluginKind, PluginSpec, Source, check_file};
use crate::config::Config;

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
