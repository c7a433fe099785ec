//! Host bindings generated from `plugin-sdk/wit`, the single source of the plugin contract.
#![allow(missing_docs, unreachable_pub)]

/// The `inbox-rule` world (and the shared `types` and `host` interfaces).
pub mod rule {
    wasmtime::component::bindgen!({
        world: "inbox-rule",
        path: "../plugin-sdk/wit",
        additional_derives: [PartialEq, Eq],
    });
}

/// The `discovery` world, sharing `types` and `host` with [`rule`].
pub mod discovery {
    wasmtime::component::bindgen!({
        world: "discovery",
        path: "../plugin-sdk/wit",
        with: {
            "pigeon:plugin/types": super::rule::pigeon::plugin::types,
            "pigeon:plugin/host": super::rule::pigeon::plugin::host,
        },
    });
}

pub use rule::pigeon::plugin::types::{
    Action as WitAction, DialFailure, DiscoveryAction as WitDiscoveryAction, Level, Message,
    NatStatus, NodeEvent as WitNodeEvent, PeerAddress, RuleInfo,
};
