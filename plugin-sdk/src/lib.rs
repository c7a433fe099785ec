//! Write pigeon plugins in Rust.
//!
//! A plugin is a type that implements [`Rule`] (an inbox rule or labeler) or [`Discovery`] (a
//! discovery strategy), plus one line, [`export_rule!`] or [`export_discovery!`]. Every hook has a
//! default, so a plugin implements only what it needs. Its configuration, the
//! `[plugins.NAME.config]` table of the node's `config.toml`, arrives typed: any
//! `serde::Deserialize` type works.
//!
//! ```
//! use pigeon_plugin_sdk::{Action, Message, Rule, export_rule};
//!
//! #[derive(serde::Deserialize, Default)]
//! struct Config { label: String }
//!
//! struct Tagger(Config);
//!
//! impl Rule for Tagger {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> { Ok(Tagger(config)) }
//!     fn on_message(&mut self, m: &Message) -> Vec<Action> {
//!         vec![Action::AddLabel(self.0.label.clone())]
//!     }
//! }
//! export_rule!(Tagger);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`. The plugin runs sandboxed: it can
//! log, read the clock and its own configuration, and nothing else. Files, the environment and
//! sockets are not there. A panic is written to the node's log with its message, and the call
//! that panicked contributes nothing; the next call starts from a fresh instance.
//!
//! Off wasm (in `cargo test`), logging goes to stderr and [`now_ms`] reads the system clock, so a
//! plugin's logic is tested like any Rust code.

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod rule_bindings {
    wit_bindgen::generate!({
        world: "inbox-rule",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_inbox_rule",
        default_bindings_module: "pigeon_plugin_sdk::rule_bindings",
        additional_derives: [PartialEq, Eq],
    });
}

#[doc(hidden)]
pub mod discovery_bindings {
    wit_bindgen::generate!({
        world: "discovery",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_discovery",
        default_bindings_module: "pigeon_plugin_sdk::discovery_bindings",
        with: {
            "pigeon:plugin/types@1.1.0": crate::rule_bindings::pigeon::plugin::types,
            "pigeon:plugin/host@1.1.0": crate::rule_bindings::pigeon::plugin::host,
        },
    });
}

#[cfg(target_arch = "wasm32")]
use rule_bindings::pigeon::plugin::host as wit_host;
pub use rule_bindings::pigeon::plugin::types::{
    Action, DialFailure, DiscoveryAction, HolePunch, Level, Message, NatStatus, NodeEvent,
    PeerAddress, ReservationLoss, RuleInfo,
};

/// The version of the `pigeon:plugin` contract this SDK builds against.
pub const SDK_VERSION: &str = "1.1.0";

/// A configuration type for plugins that take none: accepts any table and ignores it.
pub type NoConfig = serde::de::IgnoredAny;

/// An inbox rule or labeler: sees each incoming message and returns what to do with it.
pub trait Rule: Sized + 'static {
    /// The plugin's configuration, read from `[plugins.NAME.config]`.
    type Config: DeserializeOwned;

    /// Whether the plugin reads bodies. A plugin that sets this to `false` is never given one
    /// ([`Message::body`] is `None`), which is both cheaper and more private.
    const NEEDS_BODY: bool = true;

    /// Builds the plugin from its configuration; an error keeps the plugin from running and is
    /// shown to the user.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Called for every incoming message (and for each inbox message by `pigeon inbox rules
    /// apply`). The default does nothing.
    fn on_message(&mut self, message: &Message) -> Vec<Action> {
        let _ = message;
        Vec::new()
    }
}

/// A discovery strategy: sees node events and a periodic tick, and asks the node to dial.
pub trait Discovery: Sized + 'static {
    /// The plugin's configuration, read from `[plugins.NAME.config]`.
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration; an error keeps the plugin from running.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Called for each node event. The default does nothing.
    fn on_event(&mut self, event: &NodeEvent) -> Vec<DiscoveryAction> {
        let _ = event;
        Vec::new()
    }

    /// Called about once a second with the current time. The default does nothing.
    fn on_tick(&mut self, now_ms: u64) -> Vec<DiscoveryAction> {
        let _ = now_ms;
        Vec::new()
    }
}

/// Writes `message` to the node's log at `level`, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    wit_host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return wit_host::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
}

/// The plugin's configuration table as JSON text (`{}` off wasm).
pub fn config_json() -> String {
    #[cfg(target_arch = "wasm32")]
    return wit_host::config();
    #[cfg(not(target_arch = "wasm32"))]
    return "{}".to_owned();
}

/// Reads a configuration from JSON text, with the error a user can act on.
pub fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, String> {
    serde_json::from_str(json).map_err(|e| format!("invalid configuration: {e}"))
}

/// Checks `label` against the host's rule for labels: 1-64 letters, digits, '-', '_', '.', '/' or
/// ':'. The host ignores (with a warning) any other label a plugin adds; check configured labels in
/// `new` to refuse them up front instead.
///
/// ```
/// assert!(pigeon_plugin_sdk::check_label("finance/2026").is_ok());
/// assert!(pigeon_plugin_sdk::check_label("Finance Dept").is_err());
/// ```
pub fn check_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label {label:?} is not allowed: use 1-64 letters, digits, '-', '_', '.', '/' or ':'"
        ))
    }
}

/// Plumbing for the export macros; not part of the API.
#[doc(hidden)]
pub mod __rt {
    use std::cell::RefCell;

    use super::*;
    pub use crate::discovery_bindings::__export_discovery;
    pub use crate::discovery_bindings::exports::pigeon::plugin::discovery_hooks::Guest as DiscoveryGuest;
    pub use crate::rule_bindings::__export_inbox_rule;
    pub use crate::rule_bindings::exports::pigeon::plugin::rule_hooks::Guest as RuleGuest;

    /// Sends panics to the host log before the instance traps.
    pub fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                log(Level::Error, &format!("plugin panicked: {info}"));
            }));
        });
    }

    fn build<T, C: DeserializeOwned>(
        new: impl FnOnce(C) -> Result<T, String>,
    ) -> Result<T, String> {
        install_panic_hook();
        new(parse_config(&config_json())?)
    }

    /// Builds the plugin into `slot`.
    pub fn rule_init<R: Rule>(slot: &RefCell<Option<R>>) -> Result<(), String> {
        *slot.borrow_mut() = Some(build(R::new)?);
        Ok(())
    }

    /// Runs `on_message`, building the plugin first if the host did not call `init`.
    pub fn rule_on_message<R: Rule>(slot: &RefCell<Option<R>>, message: Message) -> Vec<Action> {
        with_plugin(slot, R::new, |p| p.on_message(&message))
    }

    /// Builds the plugin into `slot`.
    pub fn discovery_init<D: Discovery>(slot: &RefCell<Option<D>>) -> Result<(), String> {
        *slot.borrow_mut() = Some(build(D::new)?);
        Ok(())
    }

    /// Runs `on_event`.
    pub fn discovery_on_event<D: Discovery>(
        slot: &RefCell<Option<D>>,
        event: NodeEvent,
    ) -> Vec<DiscoveryAction> {
        with_plugin(slot, D::new, |p| p.on_event(&event))
    }

    /// Runs `on_tick`.
    pub fn discovery_on_tick<D: Discovery>(
        slot: &RefCell<Option<D>>,
        now_ms: u64,
    ) -> Vec<DiscoveryAction> {
        with_plugin(slot, D::new, |p| p.on_tick(now_ms))
    }

    fn with_plugin<T, C: DeserializeOwned, A>(
        slot: &RefCell<Option<T>>,
        new: impl FnOnce(C) -> Result<T, String>,
        hook: impl FnOnce(&mut T) -> Vec<A>,
    ) -> Vec<A> {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            match build(new) {
                Ok(plugin) => *slot = Some(plugin),
                Err(e) => {
                    log(Level::Error, &e);
                    return Vec::new();
                }
            }
        }
        slot.as_mut().map(hook).unwrap_or_default()
    }
}

/// Exports a [`Rule`] implementation as this component's inbox rule. Use it once per crate.
#[macro_export]
macro_rules! export_rule {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PIGEON_PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct PigeonRuleExport;
            impl $crate::__rt::RuleGuest for PigeonRuleExport {
                fn describe() -> $crate::RuleInfo {
                    $crate::RuleInfo {
                        needs_body: <$plugin as $crate::Rule>::NEEDS_BODY,
                    }
                }
                fn init() -> ::core::result::Result<(), ::std::string::String> {
                    PIGEON_PLUGIN.with(|slot| $crate::__rt::rule_init::<$plugin>(slot))
                }
                fn on_message(message: $crate::Message) -> ::std::vec::Vec<$crate::Action> {
                    PIGEON_PLUGIN
                        .with(|slot| $crate::__rt::rule_on_message::<$plugin>(slot, message))
                }
            }
            // Off wasm (unit tests) there is nothing to export to, and native linkers refuse the
            // component model's export names.
            #[cfg(target_arch = "wasm32")]
            $crate::__rt::__export_inbox_rule!(PigeonRuleExport with_types_in $crate::rule_bindings);
        };
    };
}

/// Exports a [`Discovery`] implementation as this component's discovery strategy. Use it once per
/// crate.
#[macro_export]
macro_rules! export_discovery {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PIGEON_PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct PigeonDiscoveryExport;
            impl $crate::__rt::DiscoveryGuest for PigeonDiscoveryExport {
                fn init() -> ::core::result::Result<(), ::std::string::String> {
                    PIGEON_PLUGIN.with(|slot| $crate::__rt::discovery_init::<$plugin>(slot))
                }
                fn on_event(event: $crate::NodeEvent) -> ::std::vec::Vec<$crate::DiscoveryAction> {
                    PIGEON_PLUGIN
                        .with(|slot| $crate::__rt::discovery_on_event::<$plugin>(slot, event))
                }
                fn on_tick(now_ms: u64) -> ::std::vec::Vec<$crate::DiscoveryAction> {
                    PIGEON_PLUGIN
                        .with(|slot| $crate::__rt::discovery_on_tick::<$plugin>(slot, now_ms))
                }
            }
            #[cfg(target_arch = "wasm32")]
            $crate::__rt::__export_discovery!(PigeonDiscoveryExport with_types_in $crate::discovery_bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Config {
        label: String,
        #[serde(default)]
        words: Vec<String>,
    }

    #[test]
    fn configs_parse_typed_and_errors_say_what_is_wrong() {
        let c: Config = parse_config(r#"{"label":"x"}"#).expect("valid");
        assert_eq!(
            c,
            Config {
                label: "x".into(),
                words: vec![]
            }
        );
        let e = parse_config::<Config>(r#"{"words":[]}"#).expect_err("label missing");
        assert!(e.contains("missing field `label`"), "{e}");
        let _: NoConfig = parse_config(r#"{"anything":[1,2]}"#).expect("NoConfig takes anything");
    }
}
