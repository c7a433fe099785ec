//! A discovery plugin built against contract 1.0.0 (`wit/plugin.wit` is that contract as it was
//! released, frozen), as plugins built before 1.1.0 were: pigeon must keep loading it and send it
//! only the events 1.0 knows. It logs each event it is sent, and dials nothing. With
//! `trap_at_tick = N` in its config, each instance panics at its Nth tick: the next instance
//! must be replayed what the node told the first (`started`).

wit_bindgen::generate!({
    world: "discovery",
    path: "wit",
});

use exports::pigeon::plugin::discovery_hooks::Guest;
use pigeon::plugin::host::log;
use pigeon::plugin::types::{DiscoveryAction, Level, NodeEvent};

use std::sync::atomic::{AtomicU64, Ordering};

use pigeon::plugin::host::config;

/// Ticks this instance has seen.
static TICKS: AtomicU64 = AtomicU64::new(0);

/// `trap_at_tick` from the config (a JSON object; read by hand to keep the plugin minimal).
fn trap_at_tick() -> Option<u64> {
    let config = config();
    let rest = config.split("\"trap_at_tick\":").nth(1)?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

struct Old;

impl Guest for Old {
    fn init() -> Result<(), String> {
        Ok(())
    }

    fn on_event(event: NodeEvent) -> Vec<DiscoveryAction> {
        let kind = match event {
            NodeEvent::Started => "started",
            NodeEvent::PeerConnected(_) => "peer-connected",
            NodeEvent::PeerDisconnected(_) => "peer-disconnected",
            NodeEvent::DialFailed(_) => "dial-failed",
            NodeEvent::NewListenAddress(_) => "new-listen-address",
            NodeEvent::NatStatus(_) => "nat-status",
        };
        log(Level::Info, &format!("a 1.0 plugin saw {kind}"));
        Vec::new()
    }

    fn on_tick(_now_ms: u64) -> Vec<DiscoveryAction> {
        let ticks = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        if trap_at_tick() == Some(ticks) {
            panic!("told to trap at tick {ticks}");
        }
        Vec::new()
    }
}

export!(Old);
