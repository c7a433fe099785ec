//! The sent history with real deliveries: kept readable on the sender's side with its delivery
//! state, deleted and redacted only once delivered, and never in clear on disk.

use std::time::Duration;

use pigeon_e2e::{Pair, TestHome, files_under, wait_for};
use serde_json::Value;

fn sent(home: &TestHome) -> Vec<Value> {
    home.json(&["sent", "list", "--json"])
        .as_array()
        .expect("list")
        .clone()
}

fn state_of(home: &TestHome, id: &str) -> Option<String> {
    sent(home)
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["state"].as_str().map(str::to_owned))
}

#[test]
fn what_alice_sent_stays_readable_with_its_delivery_state() {
    let mut pair = Pair::start();
    let alice_node = pair.alice_node.take().expect("alice's node");
    let (alice, bob) = (&pair.alice, &pair.bob);
    let first = alice.ok(&[
        "send",
        "bob",
        "historyword one\x1b[31m red",
        "--subject",
        "the plan",
    ]);
    let first = first.trim().to_owned();
    let second = alice.send("bob", "historyword two");
    bob.wait_arrival(&second);
    bob.wait_arrival(&first);
    wait_for("both delivered", Duration::from_secs(30), || {
        (state_of(alice, &first).as_deref() == Some("delivered")
            && state_of(alice, &second).as_deref() == Some("delivered"))
        .then_some(())
    });

    // Newest first, with who it went to.
    let list = sent(alice);
    let ids: Vec<&str> = list.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    assert_eq!(list[1]["to"], "bob");
    assert_eq!(list[1]["subject"], "the plan");
    assert!(list[1]["delivered_at"].is_string(), "{list:?}");

    // Read whole; the JSON gives the text exactly, the terminal form shows the escape.
    let m = alice.json(&["sent", "read", &first[..8], "--json"]);
    assert_eq!(m["body"], "historyword one\x1b[31m red");
    assert_eq!(m["state"], "delivered");
    let text = alice.ok(&["sent", "read", &first]);
    assert!(text.contains("to:        bob"), "{text}");
    assert!(text.contains("state:     delivered"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");
    let lines = alice.ok(&["sent", "list"]);
    assert!(!lines.contains('\x1b'), "{lines:?}");
    let row: Vec<&str> = lines.lines().next().expect("a line").split('\t').collect();
    assert_eq!(row.len(), 6, "{lines}");
    assert_eq!(
        (row[0], row[1], row[2]),
        (second.as_str(), "delivered", "bob")
    );
    assert_eq!(
        alice.run(&["sent", "read", &first, "--raw"]).stdout,
        b"historyword one\x1b[31m red"
    );

    // To one contact: carol's node is not running, so hers stays queued, and cannot be deleted
    // or redacted while on its way (exit 5, nothing changed).
    let carol = TestHome::init("carol");
    alice.add_contact("carol", &carol, &["/ip4/127.0.0.1/tcp/9".to_owned()]);
    let to_carol = alice.send("carol", "historyword for carol");
    let only = alice.json(&["sent", "list", "--to", "carol", "--json"]);
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only}");
    assert_eq!(only[0]["state"], "queued");
    for verb in ["rm", "redact"] {
        let refused = alice.run(&["sent", verb, &to_carol, "--yes"]);
        assert_eq!(refused.status.code(), Some(5), "{refused:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("outbox cancel"),
            "{refused:?}"
        );
    }
    assert_eq!(state_of(alice, &to_carol).as_deref(), Some("queued"));
    let nobody = alice.run(&["sent", "list", "--to", "nobody"]);
    assert_eq!(nobody.status.code(), Some(4), "{nobody:?}");

    // Searchable with in:sent and to:, never among what alice received.
    let search = |q: &str| -> Vec<String> {
        alice
            .json(&["inbox", "search", "--json", q])
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| {
                assert_eq!(h["kind"], "sent", "{h}");
                h["id"].as_str().expect("id").to_owned()
            })
            .collect()
    };
    // (The index takes a message in within about 250 ms.)
    wait_for(
        "the sent messages in the index",
        Duration::from_secs(30),
        || (search("historyword in:sent").len() == 3).then_some(()),
    );
    assert_eq!(
        search("historyword to:carol"),
        std::slice::from_ref(&to_carol)
    );
    assert_eq!(search("subject:plan to:bob"), std::slice::from_ref(&first));
    assert!(search("historyword").is_empty(), "received only by default");
    let text = alice.ok(&["inbox", "search", "historyword", "to:carol"]);
    assert!(
        text.starts_with(&format!("sent\t{to_carol}\tqueued\tcarol\t")),
        "{text}"
    );

    // Redacted: the record stays, the text goes; removed: gone from the history and the outbox.
    alice.ok(&["sent", "redact", &first, "--yes"]);
    let m = alice.json(&["sent", "read", &first, "--json"]);
    assert_eq!(m["body"], "");
    assert_eq!(m["state"], "delivered");
    assert!(m["redacted_at"].is_string(), "{m}");
    assert!(
        !search("historyword in:sent").contains(&first),
        "its words left the index"
    );
    assert_eq!(search("subject:plan in:sent"), Vec::<String>::new());
    alice.ok(&["sent", "rm", &second, "--yes"]);
    assert_eq!(
        search("historyword in:sent"),
        std::slice::from_ref(&to_carol)
    );
    assert!(state_of(alice, &second).is_none());
    assert!(alice.outbox().iter().all(|e| e["id"] != second.as_str()));
    let missing = alice.run(&["sent", "read", &second]);
    assert_eq!(missing.status.code(), Some(4), "{missing:?}");
    // Bob's copies are his.
    assert_eq!(bob.inbox().len(), 2);

    // Without a node, the same history from the database; and nothing of it in clear on disk.
    alice_node.stop();
    let offline = sent(alice);
    assert_eq!(offline.len(), 2, "{offline:?}");
    for file in files_under(alice.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(11).any(|w| w == b"historyword"),
            "{} holds a sent text in clear",
            file.display()
        );
    }
}
