//! Forward secrecy: contacts hand each other one-time keys while connected, signed and bounded.

use std::time::Duration;

use pigeon_e2e::{TestHome, wait_for};
use serde_json::Value;

/// `name`'s entry in `home`'s `contacts list --json`.
fn contact(home: &TestHome, name: &str) -> Value {
    home.json(&["contacts", "list", "--json"])
        .as_array()
        .expect("contacts")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .expect("the contact")
}

#[test]
fn a_node_that_prefers_forward_secrecy_fetches_one_time_keys_and_seals_to_them() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.config_set("delivery.forward_secrecy", "prefer");
    let alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    let id = alice.send("bob", "hello");
    bob.wait_arrival(&id);
    let held = wait_for(
        "bob's one-time keys at alice",
        Duration::from_secs(30),
        || {
            let n = contact(&alice, "bob")["one_time_keys_held"].as_u64()?;
            (n > 0).then_some(n)
        },
    );
    assert_eq!(held, 32, "one request's worth");
    assert_eq!(contact(&bob, "alice")["one_time_keys_handed_out"], 32);
    // Bob's policy is off: he asks alice for none.
    assert_eq!(contact(&bob, "alice")["one_time_keys_held"], 0);
    assert_eq!(contact(&alice, "bob")["one_time_keys_handed_out"], 0);

    // Holding too few (20 of the 32 dropped here by hand while her node is stopped, as a restore
    // or a stale pool would; the newest, which a count alone would have bob keep), she asks
    // again at the next connection, listing the 12 she holds: bob forgets exactly the 20 others
    // and hands out 32 more. The message she sends meanwhile is sealed to one of the 12.
    let listen = alice_node.listen_addr();
    alice_node.stop();
    let db = rusqlite::Connection::open(alice.path().join("pigeon.db")).expect("alice's db");
    db.execute(
        "DELETE FROM otk_pool WHERE rowid IN (SELECT rowid FROM otk_pool ORDER BY rowid DESC LIMIT 20)",
        [],
    )
    .expect("drop 20 keys");
    drop(db);
    assert_eq!(contact(&alice, "bob")["one_time_keys_held"], 12);
    let _alice_node = alice.start_node(&listen);
    let again = alice.send("bob", "again");
    bob.wait_arrival(&again);
    wait_for("a second round of keys", Duration::from_secs(30), || {
        (contact(&alice, "bob")["one_time_keys_held"] == 43).then_some(())
    });
    // Exactly what she holds, though her list may name the key of "again", on its way while she
    // asked, which bob may have stored (and spent) before he answered: the same keys on both
    // sides.
    assert_eq!(contact(&bob, "alice")["one_time_keys_handed_out"], 43);
    let ids = |home: &TestHome, sql: &str| -> Vec<Vec<u8>> {
        let db = rusqlite::Connection::open(home.path().join("pigeon.db")).expect("db");
        let mut stmt = db.prepare(sql).expect("prepare");
        let mut ids: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("ids");
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&alice, "SELECT id FROM otk_pool"),
        ids(&bob, "SELECT id FROM otk_secrets"),
        "bob forgot exactly the keys alice lost"
    );

    // A message is now sealed to one of them: it arrives and reads back, the key is gone from
    // both sides, and bob keeps only the tombstone of its use.
    let sealed = alice.send("bob", "sealed to a one-time key");
    bob.wait_arrival(&sealed);
    let m = bob.json(&["inbox", "read", &sealed, "--json"]);
    assert_eq!(m["body"], "sealed to a one-time key");
    assert_eq!(contact(&alice, "bob")["one_time_keys_held"], 42);
    assert_eq!(contact(&bob, "alice")["one_time_keys_handed_out"], 42);
    let db = rusqlite::Connection::open(bob.path().join("pigeon.db")).expect("bob's db");
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).expect("count") };
    assert_eq!(count("SELECT COUNT(*) FROM otk_used"), 2);
    assert_eq!(count("SELECT COUNT(*) FROM otk_secrets"), 42);
    let fs = count("SELECT COUNT(*) FROM inbox WHERE forward_secret = 1");
    let plain = count("SELECT COUNT(*) FROM inbox WHERE forward_secret = 0");
    assert_eq!(
        (fs, plain),
        (2, 1),
        "the first message went before any key was at hand"
    );
}

#[test]
fn forward_secrecy_settings_are_checked() {
    let home = TestHome::init("alice");
    for (key, bad) in [
        ("delivery.forward_secrecy", "sometimes"),
        ("delivery.one_time_key_lifetime", "30m"),
        ("delivery.one_time_key_lifetime", "400d"),
        ("delivery.one_time_key_lifetime", "soon"),
    ] {
        let out = home.run(&["config", "set", key, bad]);
        assert_eq!(out.status.code(), Some(2), "{key} = {bad}");
    }
    home.config_set("delivery.forward_secrecy", "require");
    home.config_set("delivery.forward_secrecy", "prefer");
    home.config_set("delivery.one_time_key_lifetime", "7d");
    assert_eq!(
        home.ok(&["config", "get", "delivery.forward_secrecy"])
            .trim(),
        "prefer"
    );
}

/// `home`'s keys, unlocked as a thief with its passphrase would.
fn unlock(home: &TestHome) -> pigeon::keys::Keys {
    pigeon::keys::keystore::unlock(&home.path().join("keystore"), &home.passphrase())
        .expect("unlock")
}

/// `home`'s database, opened with its keys (its node stopped).
fn open_db(home: &TestHome) -> pigeon::store::Db {
    pigeon::store::Db::open(
        &home.path().join("pigeon.db"),
        std::sync::Arc::new(unlock(home)),
    )
    .expect("open the database")
}

/// The sealed envelopes of queued messages `ids`, as the next attempt puts them on the wire.
fn queued_envelopes(home: &TestHome, ids: &[&str]) -> Vec<pigeon::envelope::Envelope> {
    let db = open_db(home);
    let due = db
        .due(u64::MAX / 2, 1024, &Default::default(), &Default::default())
        .expect("due");
    ids.iter()
        .map(|id| {
            due.iter()
                .flat_map(|b| &b.messages)
                .find(|m| m.id.to_string() == *id)
                .map(|m| m.envelope.clone())
                .expect("queued")
        })
        .collect()
}

fn inbox_entry(home: &TestHome, id: &str) -> Value {
    home.json(&["inbox", "read", id, "--json"])
}

#[test]
fn require_waits_prefer_says_it_fell_back_and_captured_forward_secret_envelopes_stay_shut() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_listen = bob_node.listen_addr();
    let alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    bob_node.stop();

    // Alice requires forward secrecy for bob (her config says off); bob is away, with no key of
    // his at hand yet.
    alice.ok(&["contacts", "set", "bob", "--forward-secrecy", "require"]);
    let c = contact(&alice, "bob");
    assert_eq!(
        (&c["forward_secrecy"], &c["forward_secrecy_effective"]),
        (&Value::from("require"), &Value::from("require"))
    );
    let out = alice.run(&["send", "bob", "fell back", "--forward-secrecy", "prefer"]);
    assert!(out.status.success());
    let fell_back = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sent without forward secrecy"),
        "prefer says it fell back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = alice.json(&["send", "bob", "must be forward secret", "--json"]);
    assert_eq!(
        (
            &sent["state"],
            &sent["forward_secret"],
            &sent["forward_secrecy"]
        ),
        (
            &Value::from("waiting"),
            &Value::from(false),
            &Value::from("require")
        )
    );
    let waiting = sent["id"].as_str().expect("id").to_owned();
    assert!(
        alice
            .ok(&["outbox", "list"])
            .contains("waiting for a one-time key")
    );
    let entry = |home: &TestHome, id: &str| {
        home.outbox()
            .into_iter()
            .find(|e| e["id"] == id)
            .expect("listed")
    };
    assert_eq!(entry(&alice, &fell_back)["forward_secret"], false);
    assert_eq!(entry(&alice, &fell_back)["forward_secrecy"], "prefer");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        entry(&alice, &waiting)["state"],
        "waiting",
        "no key, no send"
    );

    // Bob comes online: alice gets keys, seals the waiting message to one, and it arrives once.
    let bob_node = bob.start_node(&bob_listen);
    bob.wait_arrival(&waiting);
    bob.wait_arrival(&fell_back);
    assert_eq!(inbox_entry(&bob, &waiting)["forward_secret"], true);
    assert_eq!(
        inbox_entry(&bob, &waiting)["body"],
        "must be forward secret"
    );
    assert_eq!(inbox_entry(&bob, &fell_back)["forward_secret"], false);
    let delivered = alice.wait_outbox_state(&waiting, "delivered", Duration::from_secs(30));
    assert_eq!(delivered["forward_secret"], true);
    let listed: Vec<Value> = bob.inbox();
    assert_eq!(listed.len(), 2, "each message once");
    assert!(
        listed
            .iter()
            .any(|m| m["id"] == waiting && m["forward_secret"] == true)
    );

    // Captured envelopes. Bob away again, alice queues one message sealed to one of his keys
    // and one (--forward-secrecy off) to his long-term key; the test keeps both as they go on
    // the wire.
    bob_node.stop();
    let fs = alice.send("bob", "captured, forward secret");
    let plain = alice.ok(&["send", "bob", "captured, plain", "--forward-secrecy", "off"]);
    let plain = plain.trim().to_owned();
    let alice_listen = alice_node.listen_addr();
    alice_node.stop();
    let captured = queued_envelopes(&alice, &[&fs, &plain]);
    let (fs_env, plain_env) = (&captured[0], &captured[1]);
    let otk = pigeon::envelope::one_time_key(fs_env)
        .expect("well formed")
        .expect("sealed to a one-time key");
    assert!(
        pigeon::envelope::one_time_key(plain_env)
            .expect("ok")
            .is_none()
    );

    let alice_node = alice.start_node(&alice_listen);
    let bob_node = bob.start_node(&bob_listen);
    bob.wait_arrival(&fs);
    bob.wait_arrival(&plain);
    alice.wait_outbox_state(&fs, "delivered", Duration::from_secs(30));
    alice.wait_outbox_state(&plain, "delivered", Duration::from_secs(30));
    bob_node.stop();
    alice_node.stop();

    // Now both sides' long-term keys, unlocked with their passphrases, and bob's database:
    let (alice_keys, bob_keys) = (unlock(&alice), unlock(&bob));
    let (from, from_key) = (
        alice_keys.peer_id(),
        alice_keys.address().enc_public().clone(),
    );
    let opened = pigeon::envelope::open(&bob_keys, &from, &from_key, plain_env)
        .expect("the plain envelope opens with bob's long-term key");
    assert_eq!(opened.body, "captured, plain");
    assert!(
        pigeon::envelope::open(&bob_keys, &from, &from_key, fs_env).is_err(),
        "bob's long-term key does not open the forward-secret one"
    );
    assert!(
        pigeon::envelope::open(&alice_keys, &from, &from_key, fs_env).is_err(),
        "nor does alice's"
    );
    let bob_db = open_db(&bob);
    assert!(
        bob_db.one_time_secret(&otk, &from).expect("read").is_none(),
        "bob deleted the one-time secret once the message was stored"
    );
    assert!(bob_db.one_time_key_used(&otk).expect("read").is_some());
    drop(bob_db);

    // A replay: the captured envelope put back into alice's outbox under a new id and sent
    // again. Bob acks it as the duplicate it is; his inbox holds the message once.
    let replay = pigeon::envelope::MessageId::random();
    open_db(&alice)
        .enqueue(
            &replay,
            &bob_keys.peer_id(),
            fs_env,
            &[],
            pigeon::store::now_ms(),
        )
        .expect("put back");
    let _alice_node = alice.start_node(&alice_listen);
    let _bob_node = bob.start_node(&bob_listen);
    alice.wait_outbox_state(&replay.to_string(), "delivered", Duration::from_secs(30));
    let copies = bob
        .inbox()
        .iter()
        .filter(|m| m["preview"] == "captured, forward secret")
        .count();
    assert_eq!(copies, 1, "a replay is not stored again");
    assert_eq!(bob.inbox().len(), 4);
}

/// Either side killed (SIGKILL) at points spread over handing out keys, sealing to them and
/// storing what was sealed (which deletes the secret): in the end every message arrives once,
/// forward secret, each key used by exactly one message, and no secret of a used key is left.
#[test]
fn killing_either_side_around_one_time_keys_loses_nothing_and_uses_no_key_twice() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.config_set("delivery.forward_secrecy", "require");
    let mut bob_node = Some(bob.start_node("/ip4/127.0.0.1/tcp/0"));
    let bob_listen = bob_node.as_ref().expect("bob").listen_addr();
    let mut alice_node = Some(alice.start_node("/ip4/127.0.0.1/tcp/0"));
    let alice_listen = alice_node.as_ref().expect("alice").listen_addr();
    alice.add_contact("bob", &bob, &[bob_node.as_ref().expect("bob").addr.clone()]);
    bob.add_contact(
        "alice",
        &alice,
        &[alice_node.as_ref().expect("alice").addr.clone()],
    );

    let mut sent = Vec::new();
    // Delays after a start at which a node is killed: while it dials, asks for or hands out
    // keys, seals, sends or stores (on these machines a round's messages are all delivered some
    // 15 to 30 ms after the start, hence the density there).
    let delays = [0u64, 8, 12, 16, 20, 24, 28, 35, 45, 70, 14, 22];
    let mut seen = Vec::new();
    for (round, delay) in delays.iter().enumerate() {
        // Alternately kill the recipient (while it hands out keys and stores messages) and the
        // sender (while it asks for keys, seals waiting messages and sends). The messages are
        // queued while that side is down, so that the work happens in the window before the kill.
        let (victim, listen, home) = if round % 2 == 0 {
            (&mut bob_node, &bob_listen, &bob)
        } else {
            (&mut alice_node, &alice_listen, &alice)
        };
        if let Some(node) = victim.take() {
            node.kill();
        }
        let first = sent.len();
        for i in 0..6 {
            sent.push(alice.send("bob", &format!("round {round} message {i}")));
        }
        let node = home.start_node(listen);
        std::thread::sleep(Duration::from_millis(*delay));
        node.kill();
        let delivered = alice
            .outbox()
            .iter()
            .filter(|e| e["state"] == "delivered")
            .filter(|e| sent[first..].iter().any(|id| e["id"] == id.as_str()))
            .count();
        seen.push((
            home.path().file_name().map(|n| n.to_owned()),
            delay,
            delivered,
        ));
        *victim = Some(home.start_node(listen));
    }
    eprintln!("kills (home, ms after start, this round's messages delivered by then): {seen:?}");
    for id in &sent {
        alice.wait_outbox_state(id, "delivered", Duration::from_secs(60));
    }
    let inbox = bob.inbox();
    for id in &sent {
        let copies: Vec<&Value> = inbox.iter().filter(|m| m["id"] == id.as_str()).collect();
        assert_eq!(copies.len(), 1, "message {id} arrived once");
        assert_eq!(copies[0]["forward_secret"], true, "message {id}");
    }
    assert_eq!(inbox.len(), sent.len());
    for e in alice.outbox() {
        assert_eq!(e["forward_secret"], true, "{e}");
        assert_eq!(e["state"], "delivered", "{e}");
    }
    drop(alice_node);
    drop(bob_node);
    // One tombstone per message: each key opened exactly one message, and its secret is gone.
    let db = rusqlite::Connection::open(bob.path().join("pigeon.db")).expect("bob's db");
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).expect("count") };
    assert_eq!(count("SELECT COUNT(*) FROM otk_used"), sent.len() as i64);
    assert_eq!(
        count("SELECT COUNT(*) FROM otk_secrets s JOIN otk_used u ON u.id = s.id"),
        0
    );
}
