//! `nat-traversal`: when the node is behind a NAT, listens through one of the configured relays
//! (circuit relay v2), so that peers can reach it through the relay; the node then hole-punches
//! (DCUtR) a direct connection to each peer that comes in that way.
//!
//! ```toml
//! [plugins.nat-traversal]
//! enabled = true
//! [plugins.nat-traversal.config]
//! relays = ["/ip4/198.51.100.1/udp/4001/quic-v1/p2p/12D3KooW..."]
//! # optional:
//! listen = "when-private"          # or "always": from the start, whatever AutoNAT says
//! reservation_timeout_ms = 10000   # how long a relay has to grant a reservation
//! retry_initial_ms = 1000          # first wait after a lost reservation or a round of failures
//! retry_max_ms = 60000             # longest wait (the wait doubles each failed round)
//! ```
//!
//! It asks one relay at a time: it dials the relay (the connection must be up first, so that
//! identify learns the address the relay observes), asks the node to listen through it, and waits
//! for the node to report the reservation (`reservation-accepted`, or a `/p2p-circuit` listen
//! address through that relay). A relay that grants none within `reservation_timeout_ms`, whose
//! dial fails, that refuses or that disconnects first is given up on for the next one; after a
//! full round without a reservation it waits (from `retry_initial_ms`, doubling up to
//! `retry_max_ms`) and starts another round. When the relay holding the reservation drops it
//! (`reservation-lost`: refused at renewal, lapsed) or disconnects, it asks the same relay again
//! after `retry_initial_ms`, then goes on through the others as before. Hole punches are logged.
//!
//! It needs these node events: `started`, `nat-status` (with `"when-private"`),
//! `new-listen-address` for circuit addresses, `peer-disconnected`, `dial-failed`, and from
//! contract 1.1 `reservation-accepted`, `reservation-lost` and `hole-punch`. Time comes only from
//! `on-tick`: a deadline that an event sets starts at the next tick, so a wait may last up to one
//! tick longer than configured, never shorter.

use pigeon_plugin_sdk::{
    DialFailure, Discovery, DiscoveryAction, HolePunch, Level, NatStatus, NodeEvent,
    export_discovery, log,
};
use serde::Deserialize;

/// The longest string the host takes from a plugin.
const MAX_ADDRESS_LEN: usize = 1024;

/// `[plugins.nat-traversal.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The relays' multiaddrs, each ending in `/p2p/<PeerId>`, asked in this order.
    pub relays: Vec<String>,
    /// When to listen through a relay.
    #[serde(default)]
    pub listen: Listen,
    /// How long a relay has to grant a reservation before the next one is asked.
    #[serde(default = "default_timeout")]
    pub reservation_timeout_ms: u64,
    /// First wait after a lost reservation or a round in which no relay granted one.
    #[serde(default = "default_initial")]
    pub retry_initial_ms: u64,
    /// Longest wait.
    #[serde(default = "default_max")]
    pub retry_max_ms: u64,
}

/// `listen`: when to listen through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Listen {
    /// Once the node learns it is behind a NAT (`nat-status(private)`).
    #[default]
    WhenPrivate,
    /// From the node's start.
    Always,
}

fn default_timeout() -> u64 {
    10_000
}

fn default_initial() -> u64 {
    1_000
}

fn default_max() -> u64 {
    60_000
}

struct Relay {
    address: String,
    peer: String,
}

/// Where the plugin is. A time that is `None` is set at the next tick (events carry no time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not listening through a relay, and not trying to.
    Idle,
    /// Asked `relay` for a reservation; it is given up on at `deadline_ms`.
    Trying {
        relay: usize,
        deadline_ms: Option<u64>,
    },
    /// Holds a reservation at `relay`.
    Reserved { relay: usize },
    /// Asks `relay` again `delay_ms` after the wait began, at `at_ms`.
    Waiting {
        relay: usize,
        delay_ms: u64,
        at_ms: Option<u64>,
    },
}

/// The plugin.
pub struct NatTraversal {
    relays: Vec<Relay>,
    listen: Listen,
    timeout_ms: u64,
    initial_ms: u64,
    max_ms: u64,
    state: State,
    started: bool,
    nat: NatStatus,
    /// Relays that failed since the round began (a round is one failure per configured relay).
    failures_in_round: usize,
    /// Rounds in a row without a reservation; sets the wait.
    failed_rounds: u32,
}

/// The PeerId an address ends in (`.../p2p/<PeerId>`), if it ends in one.
fn peer_of(address: &str) -> Option<&str> {
    let (_, peer) = address.rsplit_once("/p2p/")?;
    (!peer.is_empty() && !peer.contains('/')).then_some(peer)
}

/// The relay's PeerId in a circuit address (`<relay address>/p2p/<relay>/p2p-circuit[/...]`).
fn circuit_relay(address: &str) -> Option<&str> {
    let (before, after) = address.split_once("/p2p-circuit")?;
    if !(after.is_empty() || after.starts_with('/')) {
        return None;
    }
    peer_of(before)
}

fn check_relay(address: &str) -> Result<String, String> {
    if address.contains("/p2p-circuit") {
        return Err(format!(
            "relay {address:?} is a circuit address (it contains /p2p-circuit): give the relay's own address, ending in /p2p/<PeerId>"
        ));
    }
    if !address.contains("/p2p/") {
        return Err(format!(
            "relay {address:?} has no /p2p/<PeerId>: give the relay's address ending in /p2p/<PeerId>"
        ));
    }
    let Some(peer) = peer_of(address) else {
        return Err(format!("relay {address:?} does not end in /p2p/<PeerId>"));
    };
    if !address.starts_with('/') || address.chars().any(char::is_whitespace) {
        return Err(format!(
            "relay {address:?} is not a multiaddr (like /ip4/198.51.100.1/udp/4001/quic-v1/p2p/12D3KooW...)"
        ));
    }
    if address.len() > MAX_ADDRESS_LEN {
        return Err(format!(
            "relay {:?}... is longer than {MAX_ADDRESS_LEN} bytes",
            address.chars().take(64).collect::<String>()
        ));
    }
    Ok(peer.to_owned())
}

impl NatTraversal {
    fn relay(&self, i: usize) -> &str {
        &self.relays[i].address
    }

    /// Whether to go on asking relays (after a failure or a lapse).
    fn wanted(&self) -> bool {
        match self.listen {
            Listen::Always => true,
            Listen::WhenPrivate => self.nat != NatStatus::Public,
        }
    }

    /// The wait after `rounds` failed rounds in a row (1, 2, ...).
    fn backoff(&self, rounds: u32) -> u64 {
        let factor = 1u64
            .checked_shl(rounds.saturating_sub(1).min(32))
            .unwrap_or(u64::MAX);
        self.initial_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// Leaves idle: a first round from the first relay.
    fn start(&mut self, why: &str) -> Vec<DiscoveryAction> {
        log(Level::Info, why);
        self.failures_in_round = 0;
        self.failed_rounds = 0;
        self.begin(0, None)
    }

    /// Asks relay `i` for a reservation: the dial first, then the listen, once per attempt.
    fn begin(&mut self, i: usize, now_ms: Option<u64>) -> Vec<DiscoveryAction> {
        log(
            Level::Info,
            &format!("asking relay {} for a reservation", self.relay(i)),
        );
        self.state = State::Trying {
            relay: i,
            deadline_ms: now_ms.map(|now| now.saturating_add(self.timeout_ms)),
        };
        let address = self.relays[i].address.clone();
        vec![
            DiscoveryAction::Dial(address.clone()),
            DiscoveryAction::ListenViaRelay(address),
        ]
    }

    /// Relay `i` did not grant a reservation: the next relay, or a wait after a full round.
    fn fail(&mut self, i: usize, reason: &str, now_ms: Option<u64>) -> Vec<DiscoveryAction> {
        log(
            Level::Warn,
            &format!("no reservation at relay {}: {reason}", self.relay(i)),
        );
        if !self.wanted() {
            log(
                Level::Info,
                "publicly reachable: no longer asking relays for a reservation",
            );
            self.state = State::Idle;
            return Vec::new();
        }
        let n = self.relays.len();
        let next = (i + 1) % n;
        self.failures_in_round += 1;
        if self.failures_in_round < n {
            return self.begin(next, now_ms);
        }
        self.failures_in_round = 0;
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        let delay_ms = self.backoff(self.failed_rounds);
        log(
            Level::Warn,
            &format!("no relay granted a reservation ({n} asked); asking again in {delay_ms} ms"),
        );
        self.state = State::Waiting {
            relay: next,
            delay_ms,
            at_ms: now_ms.map(|now| now.saturating_add(delay_ms)),
        };
        Vec::new()
    }

    fn on_started(&mut self) -> Vec<DiscoveryAction> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        match (self.listen, self.state) {
            (Listen::Always, State::Idle) => {
                self.start("node started; listening through a relay (listen = \"always\")")
            }
            (Listen::WhenPrivate, State::Idle) => {
                log(
                    Level::Info,
                    "node started; listening through a relay once it is found to be behind a NAT",
                );
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn on_nat_status(&mut self, status: NatStatus) -> Vec<DiscoveryAction> {
        let changed = self.nat != status;
        self.nat = status;
        match status {
            NatStatus::Private => match (self.listen, self.state) {
                (Listen::WhenPrivate, State::Idle) => {
                    self.start("behind a NAT: listening through a relay")
                }
                _ => Vec::new(),
            },
            NatStatus::Public if changed => {
                match (self.listen, self.state) {
                    (_, State::Idle) => {
                        log(Level::Info, "publicly reachable: no relay needed");
                    }
                    (_, State::Reserved { relay }) => log(
                        Level::Info,
                        &format!(
                            "publicly reachable now; keeping the reservation at relay {}",
                            self.relay(relay)
                        ),
                    ),
                    (Listen::WhenPrivate, _) => {
                        log(
                            Level::Info,
                            "publicly reachable now: no longer asking relays for a reservation",
                        );
                        self.state = State::Idle;
                    }
                    (Listen::Always, _) => log(
                        Level::Info,
                        "publicly reachable; still asking relays (listen = \"always\")",
                    ),
                }
                Vec::new()
            }
            NatStatus::Public | NatStatus::Unknown => Vec::new(),
        }
    }

    fn on_listen_address(&mut self, address: &str) -> Vec<DiscoveryAction> {
        match circuit_relay(address) {
            Some(peer) => self.reserved(peer, &format!("reachable at {address}")),
            None => Vec::new(),
        }
    }

    /// The relay `peer` holds a reservation for this node (`detail` says how it is known).
    fn reserved(&mut self, peer: &str, detail: &str) -> Vec<DiscoveryAction> {
        let found = match self.state {
            State::Trying { relay, .. } if self.relays[relay].peer == peer => Some(relay),
            _ => self.relays.iter().position(|r| r.peer == peer),
        };
        let Some(relay) = found else {
            log(
                Level::Info,
                &format!("reserved at {peer}, a relay not in the configuration: {detail}"),
            );
            return Vec::new();
        };
        match self.state {
            State::Reserved { relay: held } if self.relays[held].peer == peer => {}
            State::Reserved { relay: held } => log(
                Level::Info,
                &format!(
                    "also reserved at relay {} (an earlier request); following the one at {}",
                    self.relay(relay),
                    self.relay(held)
                ),
            ),
            _ => {
                log(
                    Level::Info,
                    &format!("reserved at relay {}: {detail}", self.relay(relay)),
                );
                self.state = State::Reserved { relay };
                self.failures_in_round = 0;
                self.failed_rounds = 0;
            }
        }
        Vec::new()
    }

    /// The reservation at relay `peer` is gone (`why`): ask again, or the next relay.
    fn lost(&mut self, peer: &str, why: &str) -> Vec<DiscoveryAction> {
        match self.state {
            State::Reserved { relay } if self.relays[relay].peer == peer => {
                if !self.wanted() {
                    log(
                        Level::Warn,
                        &format!(
                            "the reservation at relay {} lapsed ({why}); publicly reachable, so not asking again",
                            self.relay(relay)
                        ),
                    );
                    self.state = State::Idle;
                    return Vec::new();
                }
                log(
                    Level::Warn,
                    &format!(
                        "the reservation at relay {} lapsed ({why}); asking it again in {} ms",
                        self.relay(relay),
                        self.initial_ms
                    ),
                );
                self.failures_in_round = 0;
                self.failed_rounds = 0;
                self.state = State::Waiting {
                    relay,
                    delay_ms: self.initial_ms,
                    at_ms: None,
                };
                Vec::new()
            }
            State::Trying { relay, .. } if self.relays[relay].peer == peer => {
                self.fail(relay, &format!("{why} before granting one"), None)
            }
            _ => Vec::new(),
        }
    }

    fn on_disconnected(&mut self, peer: &str) -> Vec<DiscoveryAction> {
        self.lost(peer, "it disconnected")
    }

    fn on_hole_punch(&mut self, punch: &HolePunch) -> Vec<DiscoveryAction> {
        match &punch.error {
            None => log(
                Level::Info,
                &format!("hole punch with {}: direct connection", punch.peer),
            ),
            Some(e) => log(
                Level::Info,
                &format!(
                    "hole punch with {} failed ({e}); its messages go on through the relay",
                    punch.peer
                ),
            ),
        }
        Vec::new()
    }

    fn on_dial_failed(&mut self, failure: &DialFailure) -> Vec<DiscoveryAction> {
        let State::Trying { relay, .. } = self.state else {
            return Vec::new();
        };
        let peer = self.relays[relay].peer.as_str();
        let ours = match (&failure.peer, &failure.address) {
            (Some(p), _) => p == peer,
            (None, Some(address)) => peer_of(address) == Some(peer),
            (None, None) => false,
        };
        if !ours {
            return Vec::new();
        }
        let reason = format!("the dial failed: {}", failure.error);
        self.fail(relay, &reason, None)
    }

    fn event(&mut self, event: &NodeEvent) -> Vec<DiscoveryAction> {
        match event {
            NodeEvent::Started => self.on_started(),
            NodeEvent::NatStatus(status) => self.on_nat_status(*status),
            NodeEvent::NewListenAddress(address) => self.on_listen_address(address),
            NodeEvent::PeerDisconnected(peer) => self.on_disconnected(peer),
            NodeEvent::DialFailed(failure) => self.on_dial_failed(failure),
            NodeEvent::PeerConnected(_) => Vec::new(),
            NodeEvent::ReservationAccepted(relay) => {
                self.reserved(relay, "the relay accepted the request")
            }
            NodeEvent::ReservationLost(loss) => self.lost(&loss.relay, &loss.reason),
            NodeEvent::HolePunch(punch) => self.on_hole_punch(punch),
        }
    }

    fn tick(&mut self, now_ms: u64) -> Vec<DiscoveryAction> {
        match self.state {
            State::Trying { relay, deadline_ms } => {
                let latest = now_ms.saturating_add(self.timeout_ms);
                // Unset: an event began the attempt. Too far ahead: the clock went back.
                let deadline = deadline_ms.filter(|&d| d <= latest).unwrap_or(latest);
                self.state = State::Trying {
                    relay,
                    deadline_ms: Some(deadline),
                };
                if now_ms < deadline {
                    return Vec::new();
                }
                let reason = format!("none granted within {} ms", self.timeout_ms);
                self.fail(relay, &reason, Some(now_ms))
            }
            State::Waiting {
                relay,
                delay_ms,
                at_ms,
            } => {
                let latest = now_ms.saturating_add(delay_ms);
                let at = at_ms.filter(|&at| at <= latest).unwrap_or(latest);
                self.state = State::Waiting {
                    relay,
                    delay_ms,
                    at_ms: Some(at),
                };
                if now_ms < at {
                    return Vec::new();
                }
                self.begin(relay, Some(now_ms))
            }
            State::Idle | State::Reserved { .. } => Vec::new(),
        }
    }
}

impl Discovery for NatTraversal {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.relays.is_empty() {
            return Err(
                "relays is empty: list at least one relay multiaddr ending in /p2p/<PeerId>".into(),
            );
        }
        if config.reservation_timeout_ms == 0 {
            return Err("reservation_timeout_ms must be positive".into());
        }
        if config.retry_initial_ms == 0 || config.retry_max_ms < config.retry_initial_ms {
            return Err("retry_initial_ms must be positive and at most retry_max_ms".into());
        }
        let mut relays: Vec<Relay> = Vec::new();
        for address in config.relays {
            let peer = check_relay(&address)?;
            if relays.iter().any(|r| r.address == address) {
                return Err(format!("relay {address:?} is listed twice"));
            }
            relays.push(Relay { address, peer });
        }
        log(
            Level::Info,
            &format!(
                "{} relay(s); listening through one {}",
                relays.len(),
                match config.listen {
                    Listen::WhenPrivate => "when behind a NAT",
                    Listen::Always => "always",
                }
            ),
        );
        Ok(NatTraversal {
            relays,
            listen: config.listen,
            timeout_ms: config.reservation_timeout_ms,
            initial_ms: config.retry_initial_ms,
            max_ms: config.retry_max_ms,
            state: State::Idle,
            started: false,
            nat: NatStatus::Unknown,
            failures_in_round: 0,
            failed_rounds: 0,
        })
    }

    fn on_event(&mut self, event: &NodeEvent) -> Vec<DiscoveryAction> {
        self.event(event)
    }

    fn on_tick(&mut self, now_ms: u64) -> Vec<DiscoveryAction> {
        self.tick(now_ms)
    }
}

export_discovery!(NatTraversal);

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_plugin_sdk::{PeerAddress, parse_config};

    const R0: &str = "/ip4/198.51.100.1/udp/4001/quic-v1/p2p/12D3KooWRelayZero";
    const R1: &str = "/ip4/198.51.100.2/tcp/4001/p2p/12D3KooWRelayOne";
    const R2: &str = "/dns4/relay.example.net/tcp/4001/p2p/12D3KooWRelayTwo";
    const TIMEOUT: u64 = 10_000;

    fn config(listen: Listen, relays: &[&str]) -> Config {
        Config {
            relays: relays.iter().map(|s| s.to_string()).collect(),
            listen,
            reservation_timeout_ms: TIMEOUT,
            retry_initial_ms: 1_000,
            retry_max_ms: 4_000,
        }
    }

    fn plugin(listen: Listen, relays: &[&str]) -> NatTraversal {
        NatTraversal::new(config(listen, relays)).expect("valid")
    }

    fn attempt(relay: &str) -> Vec<DiscoveryAction> {
        vec![
            DiscoveryAction::Dial(relay.into()),
            DiscoveryAction::ListenViaRelay(relay.into()),
        ]
    }

    fn circuit(relay: &str) -> NodeEvent {
        NodeEvent::NewListenAddress(format!("{relay}/p2p-circuit"))
    }

    fn peer(relay: &str) -> String {
        peer_of(relay).expect("a relay address").to_owned()
    }

    fn dial_failed(peer: Option<String>, address: Option<&str>) -> NodeEvent {
        NodeEvent::DialFailed(DialFailure {
            peer,
            address: address.map(str::to_owned),
            error: "connection refused".into(),
        })
    }

    /// Starts an `always` plugin and arms its first deadline at `t`.
    fn trying_at(relays: &[&str], t: u64) -> NatTraversal {
        let mut p = plugin(Listen::Always, relays);
        assert_eq!(p.event(&NodeEvent::Started), attempt(relays[0]));
        assert!(p.tick(t).is_empty(), "armed, not expired");
        p
    }

    #[test]
    fn configs_parse_with_defaults_and_refuse_unknown_fields() {
        let c: Config = parse_config(&format!(r#"{{"relays":["{R0}"]}}"#)).expect("valid");
        assert_eq!(c.listen, Listen::WhenPrivate);
        assert_eq!(
            (c.reservation_timeout_ms, c.retry_initial_ms, c.retry_max_ms),
            (10_000, 1_000, 60_000)
        );
        let c: Config =
            parse_config(&format!(r#"{{"relays":["{R0}"],"listen":"always"}}"#)).expect("valid");
        assert_eq!(c.listen, Listen::Always);

        let e = parse_config::<Config>(r#"{"relays":[],"peers":[]}"#).expect_err("unknown");
        assert!(e.contains("unknown field `peers`"), "{e}");
        let e = parse_config::<Config>(r#"{"relays":[],"listen":"sometimes"}"#)
            .expect_err("bad listen");
        assert!(e.contains("when-private") && e.contains("always"), "{e}");
        let e = parse_config::<Config>("{}").expect_err("no relays");
        assert!(e.contains("missing field `relays`"), "{e}");
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let refused = |c: Config| match NatTraversal::new(c) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        let e = refused(config(Listen::Always, &[]));
        assert!(e.contains("at least one relay"), "{e}");
        let e = refused(config(Listen::Always, &["/ip4/198.51.100.1/tcp/4001"]));
        assert!(e.contains("no /p2p/<PeerId>"), "{e}");
        let e = refused(config(
            Listen::Always,
            &["/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWRelay/p2p-circuit"],
        ));
        assert!(e.contains("/p2p-circuit"), "{e}");
        let e = refused(config(Listen::Always, &["/ip4/198.51.100.1/tcp/4001/p2p/"]));
        assert!(e.contains("does not end in /p2p/<PeerId>"), "{e}");
        let e = refused(config(Listen::Always, &["ip4/1.2.3.4/tcp/1/p2p/12D3KooWX"]));
        assert!(e.contains("is not a multiaddr"), "{e}");
        let e = refused(config(Listen::Always, &[R0, R1, R0]));
        assert!(e.contains("listed twice"), "{e}");
        let long = format!("/dns4/{}.example/tcp/1/p2p/12D3KooWX", "a".repeat(1100));
        let e = refused(config(Listen::Always, &[&long]));
        assert!(e.contains("longer than 1024 bytes"), "{e}");

        let mut c = config(Listen::Always, &[R0]);
        c.reservation_timeout_ms = 0;
        assert!(refused(c).contains("reservation_timeout_ms"));
        let mut c = config(Listen::Always, &[R0]);
        c.retry_initial_ms = 0;
        assert!(refused(c).contains("retry_initial_ms"));
        let mut c = config(Listen::Always, &[R0]);
        c.retry_max_ms = 10;
        assert!(refused(c).contains("at most retry_max_ms"));
    }

    #[test]
    fn always_starts_at_started_and_when_private_waits_for_a_private_status() {
        let mut p = plugin(Listen::Always, &[R0, R1]);
        assert!(p.tick(0).is_empty(), "idle before the node starts");
        assert_eq!(p.event(&NodeEvent::Started), attempt(R0));
        assert!(p.event(&NodeEvent::Started).is_empty(), "started once");
        assert!(
            p.event(&NodeEvent::NatStatus(NatStatus::Private))
                .is_empty(),
            "already asking"
        );

        let mut p = plugin(Listen::WhenPrivate, &[R0, R1]);
        assert!(p.event(&NodeEvent::Started).is_empty());
        assert!(
            p.event(&NodeEvent::NatStatus(NatStatus::Unknown))
                .is_empty()
        );
        assert!(p.tick(u64::MAX / 2).is_empty());
        assert_eq!(p.state, State::Idle);
        assert_eq!(
            p.event(&NodeEvent::NatStatus(NatStatus::Private)),
            attempt(R0)
        );
        assert!(
            p.event(&NodeEvent::NatStatus(NatStatus::Private))
                .is_empty(),
            "not asked twice"
        );
    }

    #[test]
    fn public_status_keeps_it_idle_and_keeps_a_reservation() {
        let mut p = plugin(Listen::WhenPrivate, &[R0]);
        p.event(&NodeEvent::Started);
        assert!(p.event(&NodeEvent::NatStatus(NatStatus::Public)).is_empty());
        assert_eq!(p.state, State::Idle);
        assert!(p.tick(0).is_empty() && p.tick(1_000_000).is_empty());
        assert_eq!(p.state, State::Idle);

        assert_eq!(
            p.event(&NodeEvent::NatStatus(NatStatus::Private)),
            attempt(R0)
        );
        p.event(&circuit(R0));
        assert!(p.event(&NodeEvent::NatStatus(NatStatus::Public)).is_empty());
        assert_eq!(
            p.state,
            State::Reserved { relay: 0 },
            "no harm in keeping it"
        );

        // Public while still asking (when-private): it stops; a lapse is not asked for again.
        let mut p = plugin(Listen::WhenPrivate, &[R0, R1]);
        p.event(&NodeEvent::NatStatus(NatStatus::Private));
        p.event(&NodeEvent::NatStatus(NatStatus::Public));
        assert_eq!(p.state, State::Idle);
        assert!(p.tick(1_000_000).is_empty());
        let mut p = plugin(Listen::WhenPrivate, &[R0]);
        p.event(&NodeEvent::NatStatus(NatStatus::Private));
        p.event(&circuit(R0));
        p.event(&NodeEvent::NatStatus(NatStatus::Public));
        assert!(p.event(&NodeEvent::PeerDisconnected(peer(R0))).is_empty());
        assert_eq!(p.state, State::Idle);

        // With "always" a public status changes nothing.
        let mut p = trying_at(&[R0, R1], 0);
        p.event(&NodeEvent::NatStatus(NatStatus::Public));
        assert_eq!(p.tick(TIMEOUT), attempt(R1));
    }

    #[test]
    fn a_circuit_listen_address_through_the_relay_is_the_reservation() {
        let mut p = trying_at(&[R0, R1], 0);
        for other in [
            NodeEvent::NewListenAddress("/ip4/10.0.0.2/tcp/7717".into()),
            NodeEvent::NewListenAddress(R0.into()),
            circuit("/ip4/203.0.113.9/tcp/1/p2p/12D3KooWStranger"),
            NodeEvent::NewListenAddress(format!("{R0}/p2p-circuitx")),
            NodeEvent::PeerConnected(PeerAddress {
                peer: peer(R0),
                address: "/ip4/198.51.100.1/udp/4001/quic-v1".into(),
            }),
        ] {
            assert!(p.event(&other).is_empty());
            assert!(
                matches!(p.state, State::Trying { relay: 0, .. }),
                "{other:?}"
            );
        }
        let with_own_id = format!("{R0}/p2p-circuit/p2p/12D3KooWMe");
        assert!(
            p.event(&NodeEvent::NewListenAddress(with_own_id))
                .is_empty()
        );
        assert_eq!(p.state, State::Reserved { relay: 0 });
        assert!(p.tick(TIMEOUT * 10).is_empty(), "no deadline once reserved");
        assert!(
            p.event(&circuit(R0)).is_empty(),
            "the same reservation again"
        );
        assert!(
            p.event(&dial_failed(Some(peer(R0)), None)).is_empty(),
            "a failed extra dial does not end a reservation"
        );
        assert_eq!(p.state, State::Reserved { relay: 0 });
    }

    #[test]
    fn a_late_reservation_at_an_earlier_relay_counts() {
        let mut p = trying_at(&[R0, R1], 0);
        assert_eq!(p.tick(TIMEOUT), attempt(R1));
        p.event(&circuit(R0));
        assert_eq!(p.state, State::Reserved { relay: 0 });
        p.event(&circuit(R1));
        assert_eq!(p.state, State::Reserved { relay: 0 }, "follows the first");
    }

    #[test]
    fn a_relay_that_grants_nothing_in_time_is_left_for_the_next() {
        let mut p = trying_at(&[R0, R1, R2], 1_000);
        assert!(p.tick(1_000 + TIMEOUT - 1).is_empty());
        assert_eq!(p.tick(1_000 + TIMEOUT), attempt(R1));
        assert!(p.tick(1_000 + 2 * TIMEOUT - 1).is_empty());
        assert_eq!(p.tick(1_000 + 2 * TIMEOUT), attempt(R2));
        p.event(&circuit(R2));
        assert_eq!(p.state, State::Reserved { relay: 2 });
    }

    #[test]
    fn a_deadline_set_by_an_event_starts_at_the_next_tick() {
        let mut p = plugin(Listen::Always, &[R0, R1, R2]);
        p.event(&NodeEvent::Started);
        assert!(p.tick(50_000).is_empty(), "no tick before: armed now");
        assert!(p.tick(50_000 + TIMEOUT - 1).is_empty());
        assert_eq!(p.tick(50_000 + TIMEOUT), attempt(R1));
        // A clock that goes back does not stall it for longer than the timeout.
        assert!(p.tick(1_000).is_empty());
        assert_eq!(p.tick(1_000 + TIMEOUT), attempt(R2));
    }

    #[test]
    fn a_failed_round_waits_doubling_up_to_the_cap() {
        let mut p = trying_at(&[R0, R1], 0);
        let mut t = 0;
        for expected in [1_000, 2_000, 4_000, 4_000] {
            assert_eq!(p.tick(t + TIMEOUT), attempt(R1));
            t += TIMEOUT;
            assert!(p.tick(t + TIMEOUT).is_empty(), "a full round: wait");
            t += TIMEOUT;
            assert_eq!(
                p.state,
                State::Waiting {
                    relay: 0,
                    delay_ms: expected,
                    at_ms: Some(t + expected)
                }
            );
            assert!(p.tick(t + expected - 1).is_empty());
            t += expected;
            assert_eq!(p.tick(t), attempt(R0), "the next round from the first");
        }
        // A reservation resets the wait.
        p.event(&circuit(R0));
        p.event(&NodeEvent::PeerDisconnected(peer(R0)));
        p.tick(t);
        t += 1_000;
        assert_eq!(p.tick(t), attempt(R0));
        assert_eq!(p.tick(t + TIMEOUT), attempt(R1));
        assert!(p.tick(t + 2 * TIMEOUT).is_empty());
        assert!(matches!(
            p.state,
            State::Waiting {
                delay_ms: 1_000,
                ..
            }
        ));
    }

    #[test]
    fn a_lost_reservation_is_asked_for_again_at_the_same_relay_first() {
        let mut p = trying_at(&[R0, R1], 0);
        assert_eq!(p.tick(TIMEOUT), attempt(R1));
        p.event(&circuit(R1));
        assert_eq!(p.state, State::Reserved { relay: 1 });
        assert!(
            p.event(&NodeEvent::PeerDisconnected(peer(R0))).is_empty(),
            "not the relay holding it"
        );
        assert_eq!(p.state, State::Reserved { relay: 1 });

        assert!(p.event(&NodeEvent::PeerDisconnected(peer(R1))).is_empty());
        let t = 100_000;
        assert!(p.tick(t).is_empty(), "waits retry_initial_ms first");
        assert!(p.tick(t + 999).is_empty());
        assert_eq!(p.tick(t + 1_000), attempt(R1), "the same relay first");
        let t = t + 1_000;
        assert_eq!(p.tick(t + TIMEOUT), attempt(R0), "then the others");
        assert!(p.tick(t + 2 * TIMEOUT).is_empty(), "a full round: wait");
        assert_eq!(
            p.state,
            State::Waiting {
                relay: 1,
                delay_ms: 1_000,
                at_ms: Some(t + 2 * TIMEOUT + 1_000)
            }
        );
        assert_eq!(p.tick(t + 2 * TIMEOUT + 1_000), attempt(R1));
        p.event(&circuit(R1));
        assert_eq!(p.state, State::Reserved { relay: 1 });
    }

    #[test]
    fn a_failed_dial_to_the_relay_moves_on_at_once() {
        let mut p = trying_at(&[R0, R1, R2], 0);
        let unrelated = [
            dial_failed(Some("12D3KooWSomeoneElse".into()), Some(R1)),
            dial_failed(None, Some("/ip4/203.0.113.9/tcp/1/p2p/12D3KooWX")),
            dial_failed(None, Some(&format!("{R0}/p2p-circuit/p2p/12D3KooWX"))),
            dial_failed(None, None),
        ];
        for event in &unrelated {
            assert!(p.event(event).is_empty(), "{event:?}");
        }
        assert_eq!(p.event(&dial_failed(Some(peer(R0)), Some(R0))), attempt(R1));
        assert_eq!(p.event(&dial_failed(None, Some(R1))), attempt(R2));
        assert!(
            p.event(&dial_failed(Some(peer(R2)), None)).is_empty(),
            "the third failure ends the round"
        );
        assert!(matches!(
            p.state,
            State::Waiting {
                relay: 0,
                delay_ms: 1_000,
                at_ms: None
            }
        ));
        assert!(p.tick(5_000).is_empty(), "the wait starts at the next tick");
        assert_eq!(p.tick(6_000), attempt(R0));
        // A relay that disconnects before granting one counts as failed too.
        assert_eq!(p.event(&NodeEvent::PeerDisconnected(peer(R0))), attempt(R1));
    }

    fn loss(relay: &str, reason: &str) -> NodeEvent {
        NodeEvent::ReservationLost(pigeon_plugin_sdk::ReservationLoss {
            relay: peer(relay),
            reason: reason.into(),
        })
    }

    #[test]
    fn the_relays_word_on_a_reservation_counts_as_the_listen_address_does() {
        let mut p = trying_at(&[R0, R1], 0);
        assert!(
            p.event(&NodeEvent::ReservationAccepted("12D3KooWStranger".into()))
                .is_empty()
        );
        assert!(matches!(p.state, State::Trying { relay: 0, .. }));
        assert!(
            p.event(&NodeEvent::ReservationAccepted(peer(R0)))
                .is_empty()
        );
        assert_eq!(p.state, State::Reserved { relay: 0 });
        assert!(p.tick(TIMEOUT * 10).is_empty(), "no deadline once reserved");
        assert!(p.event(&circuit(R0)).is_empty(), "its listen address next");
        assert_eq!(p.state, State::Reserved { relay: 0 });
    }

    #[test]
    fn a_reservation_the_relay_drops_while_connected_is_asked_for_again() {
        // The relay stays connected but no longer holds the reservation (refused at renewal):
        // without `reservation-lost` nothing would tell the plugin.
        let mut p = trying_at(&[R0, R1], 0);
        p.event(&NodeEvent::ReservationAccepted(peer(R0)));
        assert!(
            p.event(&loss(R1, "not ours")).is_empty(),
            "not the relay holding it"
        );
        assert_eq!(p.state, State::Reserved { relay: 0 });
        assert!(p.event(&loss(R0, "reservation refused")).is_empty());
        let t = 50_000;
        assert!(p.tick(t).is_empty(), "waits retry_initial_ms first");
        assert_eq!(p.tick(t + 1_000), attempt(R0), "the same relay first");
        // The relay refuses again while being asked: the next one at once.
        assert_eq!(p.event(&loss(R0, "reservation refused")), attempt(R1));
        // The loss and the disconnection of one lapse count once.
        p.event(&NodeEvent::ReservationAccepted(peer(R1)));
        assert!(p.event(&loss(R1, "connection closed")).is_empty());
        let waiting = p.state;
        assert!(p.event(&NodeEvent::PeerDisconnected(peer(R1))).is_empty());
        assert_eq!(p.state, waiting);
    }

    #[test]
    fn hole_punches_are_logged_and_change_nothing() {
        let mut p = trying_at(&[R0], 0);
        p.event(&NodeEvent::ReservationAccepted(peer(R0)));
        for error in [None, Some("no addresses".to_owned())] {
            let punch = NodeEvent::HolePunch(HolePunch {
                peer: "12D3KooWPeer".into(),
                direct: error.is_none(),
                error,
            });
            assert!(p.event(&punch).is_empty());
            assert_eq!(p.state, State::Reserved { relay: 0 });
        }
    }

    #[test]
    fn every_call_asks_for_one_relay_at_most() {
        let mut p = plugin(Listen::Always, &[R0, R1, R2]);
        let mut calls = vec![p.event(&NodeEvent::Started)];
        for t in (0..200_000).step_by(1_000) {
            calls.push(p.tick(t));
            calls.push(p.event(&dial_failed(None, Some(R1))));
        }
        assert!(calls.iter().all(|a| a.is_empty() || a.len() == 2));
        assert!(calls.iter().filter(|a| !a.is_empty()).count() > 10);
    }
}
