//! `bootstrap`: dials a fixed list of peers when the node starts, and redials any that is not
//! connected, with exponential backoff.
//!
//! ```toml
//! [plugins.bootstrap]
//! enabled = true
//! [plugins.bootstrap.config]
//! peers = ["/ip4/192.0.2.7/tcp/7717/p2p/12D3KooW..."]
//! # optional: first and longest redial delay, in milliseconds
//! retry_initial_ms = 1000
//! retry_max_ms = 60000
//! ```

use pigeon_plugin_sdk::{Discovery, DiscoveryAction, Level, NodeEvent, export_discovery, log};
use serde::Deserialize;

/// `[plugins.bootstrap.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs ending in `/p2p/<PeerId>`.
    pub peers: Vec<String>,
    /// First redial delay.
    #[serde(default = "default_initial")]
    pub retry_initial_ms: u64,
    /// Longest redial delay.
    #[serde(default = "default_max")]
    pub retry_max_ms: u64,
}

fn default_initial() -> u64 {
    1_000
}

fn default_max() -> u64 {
    60_000
}

struct Target {
    address: String,
    peer: String,
    connected: bool,
    failures: u32,
    /// When to dial next; `None` while a dial is due at the next tick.
    next_dial_ms: Option<u64>,
}

/// The plugin.
pub struct Bootstrap {
    targets: Vec<Target>,
    initial_ms: u64,
    max_ms: u64,
}

impl Bootstrap {
    fn delay(&self, failures: u32) -> u64 {
        let factor = 1u64.checked_shl(failures.min(20)).unwrap_or(u64::MAX);
        self.initial_ms.saturating_mul(factor).min(self.max_ms)
    }

    fn dial(&mut self, i: usize, now_ms: u64) -> DiscoveryAction {
        let delay = self.delay(self.targets[i].failures);
        let t = &mut self.targets[i];
        t.failures = t.failures.saturating_add(1);
        t.next_dial_ms = Some(now_ms.saturating_add(delay));
        DiscoveryAction::Dial(t.address.clone())
    }
}

impl Discovery for Bootstrap {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.retry_initial_ms == 0 || config.retry_max_ms < config.retry_initial_ms {
            return Err("retry_initial_ms must be positive and at most retry_max_ms".into());
        }
        let mut targets = Vec::new();
        for address in config.peers {
            let Some((_, peer)) = address.rsplit_once("/p2p/") else {
                return Err(format!("{address:?} does not end in /p2p/<PeerId>"));
            };
            if peer.is_empty() || peer.contains('/') {
                return Err(format!("{address:?} does not end in /p2p/<PeerId>"));
            }
            let peer = peer.to_owned();
            targets.push(Target {
                address,
                peer,
                connected: false,
                failures: 0,
                next_dial_ms: None,
            });
        }
        if targets.is_empty() {
            log(Level::Warn, "no peers configured; nothing to dial");
        }
        Ok(Bootstrap {
            targets,
            initial_ms: config.retry_initial_ms,
            max_ms: config.retry_max_ms,
        })
    }

    fn on_event(&mut self, event: &NodeEvent) -> Vec<DiscoveryAction> {
        match event {
            NodeEvent::Started => {
                let now = pigeon_plugin_sdk::now_ms();
                (0..self.targets.len()).map(|i| self.dial(i, now)).collect()
            }
            NodeEvent::PeerConnected(p) => {
                for t in self.targets.iter_mut().filter(|t| t.peer == p.peer) {
                    t.connected = true;
                    t.failures = 0;
                }
                Vec::new()
            }
            NodeEvent::PeerDisconnected(peer) => {
                let now = pigeon_plugin_sdk::now_ms();
                for t in self.targets.iter_mut().filter(|t| &t.peer == peer) {
                    t.connected = false;
                    // Redial soon, not at once: the peer may be restarting.
                    t.next_dial_ms = Some(now.saturating_add(self.initial_ms));
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn on_tick(&mut self, now_ms: u64) -> Vec<DiscoveryAction> {
        let due: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let t = &self.targets[i];
                !t.connected && t.next_dial_ms.is_none_or(|at| at <= now_ms)
            })
            .collect();
        due.into_iter().map(|i| self.dial(i, now_ms)).collect()
    }
}

export_discovery!(Bootstrap);

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_plugin_sdk::PeerAddress;

    const A: &str = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWA";

    fn plugin(peers: &[&str]) -> Bootstrap {
        Bootstrap::new(Config {
            peers: peers.iter().map(|s| s.to_string()).collect(),
            retry_initial_ms: 1000,
            retry_max_ms: 4000,
        })
        .expect("valid")
    }

    #[test]
    fn dials_at_start_and_redials_with_backoff_until_connected() {
        let mut p = plugin(&[A]);
        assert_eq!(
            p.on_event(&NodeEvent::Started),
            vec![DiscoveryAction::Dial(A.into())]
        );
        let t0 = p.targets[0].next_dial_ms.expect("scheduled");
        assert!(p.on_tick(t0 - 1).is_empty(), "not before the delay");
        assert_eq!(p.on_tick(t0).len(), 1);
        let t1 = p.targets[0].next_dial_ms.expect("scheduled");
        assert_eq!(t1 - t0, 2000, "the delay doubles");
        p.on_tick(t1);
        let t2 = p.targets[0].next_dial_ms.expect("scheduled");
        p.on_tick(t2);
        assert_eq!(
            p.targets[0].next_dial_ms.expect("scheduled") - t2,
            4000,
            "capped"
        );
        p.on_event(&NodeEvent::PeerConnected(PeerAddress {
            peer: "12D3KooWA".into(),
            address: "/ip4/127.0.0.1/tcp/1".into(),
        }));
        assert!(
            p.on_tick(u64::MAX).is_empty(),
            "connected peers are left alone"
        );
        p.on_event(&NodeEvent::PeerDisconnected("12D3KooWA".into()));
        assert_eq!(p.on_tick(u64::MAX).len(), 1, "a lost peer is redialed");
    }

    #[test]
    fn addresses_without_a_peer_id_are_refused() {
        for bad in ["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1/p2p/"] {
            let r = Bootstrap::new(Config {
                peers: vec![bad.into()],
                retry_initial_ms: 1,
                retry_max_ms: 1,
            });
            assert!(r.is_err(), "{bad}");
        }
    }
}
