//! The delivery engine with real processes: a long drain through crashes of both sides, metrics,
//! JSON logs, peers that come back, retry and cancel, the TTL, the health cache and `config set`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pigeon_e2e::{OutputBounded, Pair, TestHome, http_get, metric, wait_for};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

fn inbox_count(home: &TestHome) -> u64 {
    home.json(&["status", "--json"])["inbox"]
        .as_u64()
        .expect("inbox count")
}

#[test]
fn two_thousand_messages_survive_crashes_of_both_sides_during_the_drain() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    // Small batches, one at a time: the drain takes long enough to crash into.
    alice.ok(&["config", "set", "delivery.batch_max_messages", "8"]);
    alice.ok(&["config", "set", "delivery.batches_in_flight", "1"]);
    let json_log = ["--log-format", "json", "--metrics-addr", "127.0.0.1:0"];
    let mut alice_node = alice.start_node_with("/ip4/127.0.0.1/tcp/0", &json_log);
    let mut bob_node = bob.start_node_with("/ip4/127.0.0.1/tcp/0", &json_log);
    let (alice_listen, bob_listen) = (alice_node.listen_addr(), bob_node.listen_addr());
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    bob_node.kill();

    let started = Instant::now();
    let mut sent = BTreeSet::new();
    for i in 0..2000 {
        sent.insert(alice.send("bob", &format!("drain message {i}")));
    }
    eprintln!(
        "queued 2000 messages through the CLI in {:?}",
        started.elapsed()
    );
    assert_eq!(alice.json(&["status", "--json"])["outbox"]["queued"], 2000);

    bob_node = bob.start_node_with(&bob_listen, &json_log);
    let mut kills = Vec::new();
    for (threshold, who) in [(300, "bob"), (800, "alice"), (1300, "bob")] {
        let seen = wait_for("the drain to pass a crash point", DRAIN_TIMEOUT, || {
            let n = inbox_count(&bob);
            (n >= threshold).then_some(n)
        });
        if who == "bob" {
            bob_node.kill();
            bob_node = bob.start_node_with(&bob_listen, &json_log);
        } else {
            alice_node.kill();
            alice_node = alice.start_node_with(&alice_listen, &json_log);
        }
        kills.push(seen);
    }
    eprintln!("crashed at inbox counts {kills:?}");
    assert!(
        kills.iter().all(|&n| n < 2000),
        "a crash came after the drain: {kills:?}"
    );

    let items = wait_for("all 2000 in bob's inbox", DRAIN_TIMEOUT, || {
        let items = bob.inbox();
        (items.len() >= 2000).then_some(items)
    });
    let ids: Vec<String> = items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 2000, "a message was stored twice");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), sent);
    wait_for("alice's outbox fully delivered", DRAIN_TIMEOUT, || {
        let status = alice.json(&["status", "--json"]);
        (status["outbox"]["delivered"] == 2000 && status["outbox"]["queued"] == 0).then_some(())
    });

    // Metrics, from the processes that ran the end of the drain.
    let alice_metrics = alice_node.metrics.clone().expect("alice metrics url");
    let bob_metrics = bob_node.metrics.clone().expect("bob metrics url");
    let health = alice_metrics.replace("/metrics", "/healthz");
    assert_eq!(http_get(&health), (200, "ok\n".to_owned()));
    let (status, text) = http_get(&alice_metrics);
    assert_eq!(status, 200);
    for name in [
        "pigeon_send_latency_seconds_count",
        "pigeon_send_retries_count",
        "pigeon_batch_messages_count",
        "pigeon_messages_sent_total",
    ] {
        let value = metric(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(value > 0.0, "{name} is {value}");
    }
    // The outbox gauges are refreshed every second.
    wait_for(
        "the outbox depth gauge to reach 0",
        Duration::from_secs(10),
        || (metric(&http_get(&alice_metrics).1, "pigeon_outbox_depth") == Some(0.0)).then_some(()),
    );
    assert!(metric(&text, "pigeon_connected_peers").is_some());
    let (_, text) = http_get(&bob_metrics);
    assert!(
        metric(&text, "pigeon_messages_received_total").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(metric(&text, "pigeon_messages_duplicate_total").is_some());
    assert!(metric(&text, "pigeon_messages_rejected_total").is_some());
    alice_node.stop();
    bob_node.stop();

    // Every log line is a JSON object; ids are fields; no message text anywhere.
    for home in [&alice, &bob] {
        let log = std::fs::read_to_string(home.path().join("node.log")).expect("log");
        let mut with_ids = 0;
        for line in log.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", home.name));
            assert!(value.is_object() && value["level"].is_string(), "{line}");
            if value["message_id"].is_string() && value["peer"].is_string() {
                with_ids += 1;
            }
        }
        assert!(
            with_ids > 0,
            "{}: no log line carries message and peer ids",
            home.name
        );
        assert!(
            !log.contains("drain message"),
            "{}: message text in the log",
            home.name
        );
    }
}

#[test]
fn a_peer_that_connects_gets_its_messages_at_once_whatever_the_backoff() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    // A first retry up to an hour away (with full jitter, one in 70 lands inside the wait below),
    // so the message comes in time only if the peer's return wakes the send loop.
    alice.ok(&["config", "set", "delivery.backoff_max_ms", "86400000"]);
    alice.ok(&["config", "set", "delivery.backoff_initial_ms", "3600000"]);
    let alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_listen = bob_node.listen_addr();
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    bob_node.kill();
    let id = alice.send("bob", "are you back?");
    wait_for("a failed first attempt", Duration::from_secs(30), || {
        alice
            .outbox()
            .into_iter()
            .find(|e| e["attempts"].as_u64() >= Some(1))
    });
    // Bob comes back and dials Alice (she is his contact): the message comes at once.
    let back = Instant::now();
    let _bob_node = bob.start_node(&bob_listen);
    wait_for(
        "the message, long before the backoff",
        Duration::from_secs(20),
        || {
            bob.inbox()
                .iter()
                .any(|i| i["id"] == id.as_str())
                .then_some(())
        },
    );
    eprintln!("delivered {:?} after the peer came back", back.elapsed());
}

#[test]
fn outbox_retry_and_cancel() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    // Retries up to an hour away: the kept message comes in time only through `outbox retry`.
    alice.ok(&["config", "set", "delivery.backoff_max_ms", "86400000"]);
    alice.ok(&["config", "set", "delivery.backoff_initial_ms", "3600000"]);
    let _alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_listen = bob_node.listen_addr();
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob_node.stop();
    let keep = alice.send("bob", "keep me");
    let drop = alice.send("bob", "cancel me");

    let out = alice.run(&["outbox", "cancel", &drop]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "cancel without --yes off a terminal"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    alice.ok(&["outbox", "cancel", &drop[..8], "--yes"]);
    let entry = alice
        .outbox()
        .into_iter()
        .find(|e| e["id"] == drop.as_str())
        .expect("entry");
    assert_eq!(entry["state"], "failed");
    assert_eq!(entry["last_error"], "cancelled by the user");
    let out = alice.run(&["outbox", "retry", &drop]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a cancelled message cannot be retried"
    );
    let out = alice.run(&["outbox", "retry", "ffffffff"]);
    assert_eq!(out.status.code(), Some(4));

    // Bob is back, but Alice's backoff is long: retry makes the kept message go now.
    let _bob_node = bob.start_node(&bob_listen);
    bob.add_contact("alice", &alice, &[]);
    wait_for("a failed attempt", Duration::from_secs(30), || {
        alice
            .outbox()
            .into_iter()
            .find(|e| e["id"] == keep.as_str() && e["attempts"].as_u64() >= Some(1))
    });
    alice.ok(&["outbox", "retry", &keep]);
    wait_for("the retried message", Duration::from_secs(20), || {
        bob.inbox()
            .iter()
            .any(|i| i["id"] == keep.as_str())
            .then_some(())
    });
    // A positive check that the cancelled message is never sent, rather than a pause a late
    // message would pass: once the kept one is acked, a marker queued after it goes through the
    // same send loop; when the marker has arrived, every pass that could have carried the
    // cancelled message has run, and Bob holds exactly the kept message and the marker.
    alice.wait_outbox_state(&keep, "delivered", Duration::from_secs(20));
    let marker = alice.send("bob", "marker after the retry");
    bob.wait_arrival(&marker);
    let ids: std::collections::BTreeSet<String> = bob
        .inbox()
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        ids,
        std::collections::BTreeSet::from([keep.clone(), marker]),
        "the cancelled message arrived"
    );
    let dropped = alice
        .outbox()
        .into_iter()
        .find(|e| e["id"] == drop.as_str())
        .expect("the cancelled message stays listed");
    assert_eq!(dropped["state"], "failed");
    let out = alice.run(&["outbox", "cancel", &keep, "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a delivered message cannot be cancelled"
    );
}

#[test]
fn a_message_not_delivered_within_the_ttl_fails_with_the_reason() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.ok(&["config", "set", "delivery.message_ttl", "2s"]);
    alice.add_contact("bob", &bob, &["/ip4/127.0.0.1/tcp/9".to_owned()]);
    let id = alice.send("bob", "nobody home");
    let _alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let entry = alice.wait_outbox_state(&id, "failed", Duration::from_secs(30));
    assert!(
        entry["last_error"]
            .as_str()
            .expect("reason")
            .contains("TTL"),
        "{entry}"
    );
}

/// The entry for contact `name` in `pigeon peers --json`.
fn peer_named(home: &TestHome, name: &str) -> serde_json::Value {
    let peers = home.json(&["peers", "--json"]);
    let list = peers.as_array().expect("peers");
    list.iter()
        .find(|p| p["name"] == name)
        .expect("the contact in peers")
        .clone()
}

#[test]
fn peers_shows_address_health_and_keeps_it_across_restarts() {
    let mut pair = Pair::start();
    let id = pair.alice.send("bob", "hello");
    wait_for("delivery", Duration::from_secs(30), || {
        pair.bob
            .inbox()
            .iter()
            .any(|i| i["id"] == id.as_str())
            .then_some(())
    });
    let bob = peer_named(&pair.alice, "bob");
    assert_eq!(bob["connected"], true);
    let addr = &bob["addrs"][0];
    assert!(addr["successes"].as_f64() > Some(0.0), "{bob}");
    assert!(addr["score"].as_f64() > Some(0.5), "{bob}");
    pair.alice_node.take().expect("alice").stop();
    // The node is down: the CLI reads the same record from the store.
    let bob = peer_named(&pair.alice, "bob");
    assert_eq!(bob["connected"], false);
    assert!(bob["addrs"][0]["successes"].as_f64() > Some(0.0), "{bob}");
}

#[test]
fn config_set_checks_keys_and_types_and_keeps_the_file_otherwise() {
    let home = TestHome::init("config");
    let path = home.path().join("config.toml");
    let before = std::fs::read_to_string(&path).expect("config");
    for (key, value) in [
        ("delivery.lingr_ms", "5"),
        ("delivery.linger_ms", "soon"),
        ("metrics.listen", "nowhere"),
    ] {
        let out = home.run(&["config", "set", key, value]);
        assert_eq!(out.status.code(), Some(2), "{key}={value}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(key),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&path).expect("config"),
            before,
            "{key} changed the file"
        );
    }
    home.ok(&["config", "set", "delivery.linger_ms", "12"]);
    home.ok(&[
        "config",
        "set",
        "node.listen",
        r#"["/ip4/127.0.0.1/tcp/7800"]"#,
    ]);
    assert_eq!(
        home.ok(&["config", "get", "delivery.linger_ms"]).trim(),
        "12"
    );
    assert_eq!(
        home.json(&["config", "get", "node.listen", "--json"])[0],
        "/ip4/127.0.0.1/tcp/7800"
    );
    assert_eq!(
        home.json(&["config", "show", "--json"])["delivery"]["linger_ms"],
        12
    );
    let after = std::fs::read_to_string(&path).expect("config");
    assert!(
        after.contains("# A batch to one peer closes"),
        "comments lost:\n{after}"
    );
}

#[test]
fn the_bench_command_reports_figures() {
    let out = std::process::Command::new(pigeon_e2e::pigeon_bin())
        .args([
            "bench",
            "delivery",
            "--messages",
            "300",
            "--batch",
            "64",
            "--batch",
            "1",
            "--forward-secrecy",
            "--json",
        ])
        .output_bounded();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runs = runs.as_array().expect("runs");
    assert_eq!(runs.len(), 4, "each batch size plain, then forward secret");
    let fs: Vec<bool> = runs
        .iter()
        .map(|r| r["forward_secret"].as_bool().expect("forward_secret"))
        .collect();
    assert_eq!(fs, [false, true, false, true]);
    for run in runs {
        // Linux says how much memory the drain took at its peak.
        assert!(run["peak_rss_bytes"].as_u64() > Some(1 << 20), "{run}");
        assert_eq!(run["messages"], 300);
        assert!(run["messages_per_second"].as_f64() > Some(0.0), "{run}");
        // The single-core HPKE open rate, measured in the same run, and the drain against it.
        let open = run["open_per_second_one_core"].as_f64().expect("open rate");
        let ratio = run["drain_vs_one_core_open"].as_f64().expect("ratio");
        assert!(open > 0.0 && ratio > 0.0, "{run}");
        let drain = run["messages_per_second"].as_f64().expect("drain");
        assert!(
            (drain / open - ratio).abs() < 1e-6 * ratio.max(1.0),
            "{run}"
        );
        // Where the CPU went: opening and the stores are parts of what the process used, and
        // every message was opened, so the opens took CPU.
        let cpu = &run["cpu"];
        let share = |k: &str| cpu[k].as_f64().expect(k);
        assert!(share("seconds") > 0.0 && share("cores_busy") > 0.0, "{run}");
        assert!(share("opening_share") > 0.0, "{run}");
        assert!(share("stores_share") > 0.0, "{run}");
        assert!(
            share("opening_share") + share("stores_share") <= 1.05,
            "{run}"
        );
        assert!(share("opens_alone_per_second") > 0.0, "{run}");
    }
}
