//! `[relay]`: whether this node relays for others (circuit relay v2), and within what limits.
//!
//! A relay needs an address others can reach: a box with a public address that its owner
//! controls. Nodes behind a NAT reserve a slot on it (their discovery plugin decides which relay;
//! see the `nat-traversal` plugin), are reached through it, and then punch a direct connection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[relay]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Relay for others (also `pigeon node run --relay`).
    pub serve: bool,
    /// The addresses others reach this relay at, announced in each reservation. Empty: every
    /// address it listens on (for 0.0.0.0, each interface's).
    pub external_addresses: Vec<String>,
    /// Reservations held at once, at most.
    pub max_reservations: usize,
    /// Reservations one peer may hold, at most.
    pub max_reservations_per_peer: usize,
    /// Relayed connections at once, at most.
    pub max_circuits: usize,
    /// Relayed connections one peer may have, at most.
    pub max_circuits_per_peer: usize,
    /// A relayed connection is closed after this long ("2m", "30m"; at most 24h).
    pub max_circuit_duration: String,
    /// ... or once this many bytes crossed it, both ways together.
    pub max_circuit_bytes: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            serve: false,
            external_addresses: Vec::new(),
            max_reservations: 128,
            max_reservations_per_peer: 4,
            max_circuits: 16,
            max_circuits_per_peer: 4,
            // Messages are small and a punched connection replaces the circuit within seconds;
            // attachments never cross a relay.
            max_circuit_duration: "30m".to_owned(),
            max_circuit_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The longest `max_circuit_duration` taken.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl RelayConfig {
    /// Why the section is invalid, if it is.
    pub(super) fn check(&self) -> Result<(), String> {
        for addr in &self.external_addresses {
            addr.parse::<libp2p::Multiaddr>().map_err(|e| {
                format!("relay.external_addresses: {addr:?} is not a multiaddr ({e})")
            })?;
        }
        let counts = [
            ("max_reservations", self.max_reservations),
            ("max_reservations_per_peer", self.max_reservations_per_peer),
            ("max_circuits", self.max_circuits),
            ("max_circuits_per_peer", self.max_circuits_per_peer),
        ];
        for (name, value) in counts {
            if value == 0 || value > 100_000 {
                return Err(format!("relay.{name} must be between 1 and 100000"));
            }
        }
        match humantime::parse_duration(&self.max_circuit_duration) {
            Ok(d) if d >= Duration::from_secs(1) && d <= MAX_DURATION => {}
            _ => {
                return Err(format!(
                    "relay.max_circuit_duration must be a duration from 1s to 24h (like \"30m\"), not {:?}",
                    self.max_circuit_duration
                ));
            }
        }
        if self.max_circuit_bytes == 0 {
            return Err("relay.max_circuit_bytes must be above 0".to_owned());
        }
        Ok(())
    }

    /// The announced addresses (valid once [`RelayConfig::check`] passed).
    pub fn external(&self) -> Vec<libp2p::Multiaddr> {
        self.external_addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The circuit duration (valid once [`RelayConfig::check`] passed).
    pub fn circuit_duration(&self) -> Duration {
        humantime::parse_duration(&self.max_circuit_duration)
            .map_or(MAX_DURATION, |d| d.min(MAX_DURATION))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_bound_is_checked() {
        assert_eq!(RelayConfig::default().check(), Ok(()));
        let bad = [
            RelayConfig {
                max_circuits: 0,
                ..RelayConfig::default()
            },
            RelayConfig {
                max_reservations_per_peer: 100_001,
                ..RelayConfig::default()
            },
            RelayConfig {
                max_circuit_duration: "0s".into(),
                ..RelayConfig::default()
            },
            RelayConfig {
                max_circuit_duration: "25h".into(),
                ..RelayConfig::default()
            },
            RelayConfig {
                max_circuit_duration: "soon".into(),
                ..RelayConfig::default()
            },
            RelayConfig {
                max_circuit_bytes: 0,
                ..RelayConfig::default()
            },
            RelayConfig {
                external_addresses: vec!["not an address".into()],
                ..RelayConfig::default()
            },
        ];
        for config in bad {
            let err = config.check().expect_err("refused");
            assert!(err.starts_with("relay."), "{err}");
        }
        assert_eq!(
            RelayConfig::default().circuit_duration(),
            Duration::from_secs(1800)
        );
    }
}
