//! NAT traversal on loopback: a relay node (`node run --relay`), a node that listens through it
//! (the `nat-traversal` plugin), and a contact that reaches that node only by its relayed address.
//! The test sees both halves: delivery through the relay, and the direct connection that
//! replaces it (on one machine a punch or a plain dial). The netns lab (`scripts/nat-lab.sh`) measures
//! real NAT kinds.

use std::time::Duration;

use pigeon_e2e::{TestHome, wait_for};
use serde_json::Value;

const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

/// `who`'s connections to the peer `peer` in `pigeon peers --json`.
fn connections(who: &TestHome, peer: &str) -> Vec<Value> {
    let peers = who.json(&["peers", "--json"]);
    peers
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer_id"] == peer)
        .and_then(|p| p["connections"].as_array().cloned())
        .unwrap_or_default()
}

/// `Some(())` once `home`'s node holds a reservation at the relay `relay` (a PeerId).
fn reserved_at(home: &TestHome, relay: &str) -> Option<()> {
    let status = home.json(&["status", "--json"]);
    status["nat"]["reserved_at"]
        .as_array()
        .is_some_and(|r| r.iter().any(|p| *p == relay))
        .then_some(())
}

/// Enables nat-traversal in `home` with these relays, listening through them whatever AutoNAT
/// says (on loopback it finds the node reachable).
fn behind_relays(home: &TestHome, relays: &[&str]) {
    let list: Vec<String> = relays.iter().map(|r| format!("\"{r}\"")).collect();
    home.config_set("plugins.nat-traversal.enabled", "true");
    home.config_set(
        "plugins.nat-traversal.config.relays",
        &format!("[{}]", list.join(", ")),
    );
    home.config_set("plugins.nat-traversal.config.listen", r#""always""#);
}

fn peer_id(addr: &str) -> String {
    addr.rsplit("/p2p/").next().expect("/p2p/").to_owned()
}

#[test]
fn a_node_behind_a_relay_is_reached_through_it_and_then_directly() {
    let relay = TestHome::init("relay");
    let relay_node = relay.start_node_with(LOOPBACK, &["--relay"]);
    let relay_id = peer_id(&relay_node.addr);

    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    behind_relays(&bob, &[relay_node.addr.as_str()]);
    // Beside it, a discovery plugin built against contract 1.0, which knows none of 1.1's events.
    bob.config_set("plugins.old.path", pigeon_e2e::CONTRACT_1_0_WASM);
    bob.config_set("plugins.old.enabled", "true");
    let bob_node = bob.start_node(LOOPBACK);
    let bob_id = peer_id(&bob_node.addr);

    // Bob holds a reservation at the relay, and the relay counts it.
    wait_for("bob's reservation", Duration::from_secs(30), || {
        reserved_at(&bob, &relay_id)
    });
    let served = relay.json(&["status", "--json"]);
    assert_eq!(served["nat"]["serving"], true, "{served}");
    assert!(
        served["nat"]["reservations"].as_u64() >= Some(1),
        "{served}"
    );
    assert_eq!(served["nat"]["max_reservations"], 128, "{served}");
    let human = relay.ok(&["status"]);
    assert!(human.contains("relaying: 1/128 reservations"), "{human}");
    // The plugin heard of it from the relay's acceptance (contract 1.1's `reservation-accepted`).
    wait_for("the plugin's word on it", Duration::from_secs(10), || {
        bob.log()
            .contains(&format!(
                "reserved at relay {}: the relay accepted the request",
                relay_node.addr
            ))
            .then_some(())
    });

    // Alice knows bob only by his address through the relay.
    let through_relay = format!("{}/p2p-circuit", relay_node.addr);
    let alice_node = alice.start_node(LOOPBACK);
    alice.add_contact("bob", &bob, std::slice::from_ref(&through_relay));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    let id = alice.send("bob", "through the relay");
    bob.wait_arrival(&id);
    alice.wait_outbox_state(&id, "delivered", Duration::from_secs(30));
    let bodies: Vec<Value> = bob.inbox();
    assert_eq!(bodies.len(), 1, "delivered once: {bodies:?}");

    // A direct connection replaces the relayed one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = connections(&alice, &bob_id);
        // On one machine bob's own address is reachable too (identify tells alice of it), so
        // the direct connection may be a punch or a plain dial; the lab tells them apart.
        let direct = now.iter().any(|c| c["relayed"] == false);
        let relayed = now.iter().any(|c| c["relayed"] == true);
        if direct && !relayed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no direct connection within 30 s: {}\nalice's log:\n{}",
            alice.ok(&["peers"]),
            std::fs::read_to_string(alice.path().join("node.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let human = alice.ok(&["peers"]);
    assert!(human.contains("now direct ("), "{human}");
    // A message after the punch goes over the direct connection.
    let again = alice.send("bob", "and now directly");
    bob.wait_arrival(&again);

    // The 1.0 plugin loaded, was sent the events it knows, and none it does not (the node sent
    // 1.1's events to nat-traversal meanwhile): not one of its calls failed.
    let list = bob.json(&["plugins", "list", "--json"]);
    let old = list
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == "old"))
        .unwrap_or_else(|| panic!("no old plugin in {list}"));
    assert_eq!(old["api_version"], "1.0.0", "{old}");
    assert_eq!(old["status"], "ready", "{old}");
    assert_eq!(old["failures"], 0, "{old}");
    let log = bob.log();
    for seen in ["started", "new-listen-address", "peer-connected"] {
        assert!(
            log.contains(&format!("a 1.0 plugin saw {seen}")),
            "{seen} not in bob's log:\n{log}"
        );
    }
}

#[test]
fn relay_settings_are_checked() {
    let home = TestHome::init("relay-config");
    for (key, value) in [
        ("relay.max_circuits", "0"),
        ("relay.max_circuit_duration", r#""forever""#),
        ("relay.external_addresses", r#"["nowhere"]"#),
    ] {
        let out = home.run(&["config", "set", key, value]);
        assert_eq!(out.status.code(), Some(2), "{key} = {value}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key.trim_start_matches("relay.")), "{err}");
    }
    home.config_set("relay.max_circuits", "32");
    let shown = home.ok(&["config", "get", "relay.max_circuits"]);
    assert_eq!(shown.trim(), "32");
}

/// A node that refuses to relay (it does not serve the relay protocol) stays connected, so only
/// its refusal (contract 1.1's `reservation-lost`) tells the plugin to move on: it does so at
/// once, not after `reservation_timeout_ms`, and the node reserves at the next relay.
#[test]
fn a_relay_that_refuses_the_reservation_is_left_at_once() {
    let refuser = TestHome::init("refuser");
    let refuser_node = refuser.start_node(LOOPBACK);
    let relay = TestHome::init("relay");
    let relay_node = relay.start_node_with(LOOPBACK, &["--relay"]);
    let bob = TestHome::init("bob");
    behind_relays(
        &bob,
        &[refuser_node.addr.as_str(), relay_node.addr.as_str()],
    );
    // Far longer than the test waits: a move to the next relay is the refusal's doing.
    bob.config_set(
        "plugins.nat-traversal.config.reservation_timeout_ms",
        "600000",
    );
    let _bob_node = bob.start_node(LOOPBACK);
    let relay_id = peer_id(&relay_node.addr);
    wait_for(
        "a reservation at the relay after the refusal",
        Duration::from_secs(30),
        || reserved_at(&bob, &relay_id),
    );
    let log = bob.log();
    assert!(
        log.contains(&format!("no reservation at relay {}: ", refuser_node.addr))
            && log.contains("before granting one"),
        "the refusal is not in bob's log:\n{log}"
    );
    // The refusing node is still connected: only its refusal moved the plugin on.
    let refuser_id = peer_id(&refuser_node.addr);
    let peers = bob.json(&["peers", "--json"]);
    assert!(
        peers
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["peer_id"] == refuser_id.as_str())),
        "{peers}"
    );
}

/// A relay that goes away takes its reservation along: the plugin asks the next relay, and
/// contacts reach the node through that one.
#[test]
fn when_the_relay_goes_away_the_node_reserves_at_the_next_one() {
    let (first, second) = (TestHome::init("relay1"), TestHome::init("relay2"));
    let first_node = first.start_node_with(LOOPBACK, &["--relay"]);
    let second_node = second.start_node_with(LOOPBACK, &["--relay"]);
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    behind_relays(&bob, &[first_node.addr.as_str(), second_node.addr.as_str()]);
    bob.config_set(
        "plugins.nat-traversal.config.reservation_timeout_ms",
        "3000",
    );
    bob.config_set("plugins.nat-traversal.config.retry_initial_ms", "500");
    let _bob_node = bob.start_node(LOOPBACK);
    let (first_id, second_id) = (peer_id(&first_node.addr), peer_id(&second_node.addr));
    wait_for(
        "a reservation at the first relay",
        Duration::from_secs(30),
        || reserved_at(&bob, &first_id),
    );
    first_node.kill();
    wait_for(
        "a reservation at the second relay",
        Duration::from_secs(60),
        || reserved_at(&bob, &second_id),
    );
    let status = bob.json(&["status", "--json"]);
    let held = status["nat"]["reserved_at"]
        .as_array()
        .expect("reserved_at");
    assert!(!held.iter().any(|p| *p == first_id.as_str()), "{status}");

    let alice_node = alice.start_node(LOOPBACK);
    let through = format!("{}/p2p-circuit", second_node.addr);
    alice.add_contact("bob", &bob, std::slice::from_ref(&through));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    let id = alice.send("bob", "through the second relay");
    bob.wait_arrival(&id);
}
