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
    Action as WitAction, DialFailure, DiscoveryAction as WitDiscoveryAction, HolePunch, Level,
    Message, NatStatus, NodeEvent as WitNodeEvent, PeerAddress, ReservationLoss, RuleInfo,
};

/// `node-event` as contract 1.0 has it (the cases before 1.1.0's), for discovery plugins built
/// against 1.0: the types of a component's functions are checked case by case, so a 1.0 plugin's
/// `on-event` takes exactly these. Every other type of 1.0 is unchanged in 1.1.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Clone, Debug)]
#[component(variant)]
pub enum NodeEventV1_0 {
    #[component(name = "started")]
    Started,
    #[component(name = "peer-connected")]
    PeerConnected(PeerAddress),
    #[component(name = "peer-disconnected")]
    PeerDisconnected(String),
    #[component(name = "dial-failed")]
    DialFailed(DialFailure),
    #[component(name = "new-listen-address")]
    NewListenAddress(String),
    #[component(name = "nat-status")]
    NatStatus(NatStatus),
}

impl NodeEventV1_0 {
    /// The event as a 1.0 plugin sees it; `None` for the events 1.0 does not know (they are not
    /// sent to it).
    pub fn from_current(event: &WitNodeEvent) -> Option<NodeEventV1_0> {
        use WitNodeEvent as E;
        Some(match event {
            E::Started => NodeEventV1_0::Started,
            E::PeerConnected(p) => NodeEventV1_0::PeerConnected(p.clone()),
            E::PeerDisconnected(p) => NodeEventV1_0::PeerDisconnected(p.clone()),
            E::DialFailed(f) => NodeEventV1_0::DialFailed(f.clone()),
            E::NewListenAddress(a) => NodeEventV1_0::NewListenAddress(a.clone()),
            E::NatStatus(s) => NodeEventV1_0::NatStatus(*s),
            E::ReservationAccepted(_) | E::ReservationLost(_) | E::HolePunch(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1_0_plugin_is_sent_the_events_it_knows_and_not_the_newer_ones() {
        let known = [
            WitNodeEvent::Started,
            WitNodeEvent::PeerDisconnected("p".into()),
            WitNodeEvent::NewListenAddress("/ip4/127.0.0.1/tcp/1".into()),
            WitNodeEvent::NatStatus(NatStatus::Private),
        ];
        for event in &known {
            assert!(NodeEventV1_0::from_current(event).is_some(), "{event:?}");
        }
        let newer = [
            WitNodeEvent::ReservationAccepted("r".into()),
            WitNodeEvent::ReservationLost(ReservationLoss {
                relay: "r".into(),
                reason: "refused".into(),
            }),
            WitNodeEvent::HolePunch(HolePunch {
                peer: "p".into(),
                direct: true,
                error: None,
            }),
        ];
        for event in &newer {
            assert!(NodeEventV1_0::from_current(event).is_none(), "{event:?}");
        }
    }
}
