//! `pigeon keys passwd`, `keys status` and `keys rekey`: the passphrase change and the rekey of
//! everything at rest, with and without a running node; an old keystore with the old passphrase
//! opens nothing afterwards.

use std::collections::BTreeSet;
use std::time::Duration;

use pigeon_e2e::{COMMAND_TIMEOUT, Pair, TestHome, output_within, wait_for};
use serde_json::Value;

const NEW: &str = "a brand new passphrase";

/// `keys status --json`.
fn status(home: &TestHome) -> Value {
    home.json(&["keys", "status", "--json"])
}

/// The ids of the data keys `status` lists, and the rows and index files under each.
fn key_uses(status: &Value) -> Vec<(u64, u64, u64)> {
    status["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["id"].as_u64().expect("id"),
                k["rows"].as_u64().expect("rows"),
                k["index_files"].as_u64().expect("index files"),
            )
        })
        .collect()
}

/// Runs `keys passwd --json` to `NEW`; returns its final status line.
fn passwd(home: &TestHome) -> Value {
    let out = output_within(
        home.cmd(&["keys", "passwd", "--json"])
            .env("PIGEON_NEW_PASSPHRASE", NEW),
        COMMAND_TIMEOUT,
        "keys passwd",
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keys passwd failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a final line");
    let done: Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(done["event"], "done", "{stdout}");
    home.set_passphrase(NEW);
    done
}

/// `args` run with passphrase `pass` instead of the home's.
fn run_with(home: &TestHome, pass: &str, args: &[&str]) -> std::process::Output {
    output_within(
        home.cmd(args).env("PIGEON_PASSPHRASE", pass),
        COMMAND_TIMEOUT,
        "pigeon",
    )
}

fn search_count(home: &TestHome, query: &str) -> usize {
    home.json(&["inbox", "search", "--json", "--limit", "1000", query])
        .as_array()
        .expect("hits")
        .len()
}

#[test]
fn a_passphrase_change_rekeys_everything_and_the_old_keystore_opens_nothing() {
    let mut pair = Pair::start();
    let work = tempfile::tempdir().expect("tempdir");
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(pair.alice.send("bob", &format!("rekeyword{i} sealed text")));
    }
    let file = work.path().join("doc.bin");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).expect("write");
    let with_file = pair.alice.send_attached("bob", "rekeyword-file", &file);
    // Something waiting in bob's outbox too: a message to a contact that never comes online.
    let carol = TestHome::init("carol");
    pair.bob.add_contact("carol", &carol, &[]);
    let queued = pair.bob.send("carol", "queued through the rekey");
    for id in ids.iter().chain([&with_file]) {
        pair.bob.wait_arrival(id);
    }
    wait_for("the attachment", Duration::from_secs(60), || {
        let m = pair.bob.json(&["inbox", "read", &with_file, "--json"]);
        (m["attachments"][0]["state"] == "complete").then_some(())
    });
    wait_for("the index", Duration::from_secs(30), || {
        (search_count(&pair.bob, "sealed") == 30).then_some(())
    });
    let bob_node = pair.bob_node.take().expect("bob");
    let listen = bob_node.listen_addr();
    bob_node.stop();

    let before = status(&pair.bob);
    let uses = key_uses(&before);
    assert_eq!(uses.len(), 1, "{before}");
    let (old_id, rows, files) = uses[0];
    assert!(rows >= 33 && files > 0, "{before}");
    assert_eq!(before["rekey_under_way"], false);
    let old_keystore = std::fs::read(pair.bob.path().join("keystore")).expect("keystore");

    let done = passwd(&pair.bob);
    assert_eq!(done["rekey_under_way"], false, "{done}");
    assert!(done["moved"].as_u64().expect("moved") >= rows, "{done}");

    // One data key, a new one, holding every row and index file.
    let after = status(&pair.bob);
    let uses = key_uses(&after);
    assert_eq!(uses.len(), 1, "{after}");
    assert_ne!(uses[0].0, old_id, "{after}");
    assert!(uses[0].1 >= rows && uses[0].2 > 0, "{after}");

    // The old passphrase is refused; the new one reads everything back.
    let refused = run_with(&pair.bob, pigeon_e2e::PASSPHRASE, &["inbox", "list"]);
    assert_eq!(refused.status.code(), Some(3));
    for (i, id) in ids.iter().enumerate() {
        let m = pair.bob.json(&["inbox", "read", id, "--json"]);
        assert_eq!(m["body"], format!("rekeyword{i} sealed text"));
    }
    assert_eq!(search_count(&pair.bob, "rekeyword7"), 1);
    assert_eq!(search_count(&pair.bob, "sealed"), 30);
    let out = work.path().join("saved");
    std::fs::create_dir(&out).expect("mkdir");
    pair.bob.ok(&[
        "inbox",
        "save",
        &with_file,
        "--out",
        out.to_str().expect("path"),
    ]);
    assert_eq!(
        std::fs::read(out.join("doc.bin")).expect("saved"),
        content,
        "the attachment reads back the same"
    );
    let outbox = pair.bob.outbox();
    assert!(
        outbox
            .iter()
            .any(|e| e["id"] == queued.as_str() && e["state"] == "queued"),
        "{outbox:?}"
    );

    // A copy of the home with the keystore as it was and the old passphrase: the keystore opens,
    // but nothing on the disk is sealed under what it holds.
    let copy = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", pair.bob.path().display()))
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(status.success());
    std::fs::write(copy.path().join("keystore"), &old_keystore).expect("old keystore");
    let thief = |args: &[&str]| {
        output_within(
            std::process::Command::new(pigeon_e2e::pigeon_bin())
                .arg("--home")
                .arg(copy.path())
                .args(args)
                .env("PIGEON_PASSPHRASE", pigeon_e2e::PASSPHRASE)
                .env_remove("PIGEON_HOME")
                .stdin(std::process::Stdio::null()),
            COMMAND_TIMEOUT,
            "pigeon on the copy",
        )
    };
    for args in [
        vec!["inbox", "read", ids[3].as_str(), "--json"],
        vec!["inbox", "list", "--json"],
        vec!["inbox", "search", "--json", "rekeyword3"],
    ] {
        let out = thief(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches!(out.status.code(), Some(3 | 6)),
            "{args:?} exited {:?}: {text} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("rekeyword"), "{text}");
    }
    // The outbox lists metadata only (no key needed), never the text.
    let out = thief(&["outbox", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("queued through"));

    // The node starts with the new passphrase, and delivery goes on.
    let refused = run_with(
        &pair.bob,
        pigeon_e2e::PASSPHRASE,
        &["node", "run", "--listen", &listen],
    );
    assert_eq!(refused.status.code(), Some(3));
    let _node = pair.bob.start_node(&listen);
    let next = pair.alice.send("bob", "after the rekey");
    pair.bob.wait_arrival(&next);
}

#[test]
fn a_passphrase_change_while_the_node_runs_and_a_peer_keeps_sending() {
    let mut pair = Pair::start();
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(pair.alice.send("bob", &format!("before {i}")));
    }
    for id in &sent {
        pair.bob.wait_arrival(id);
    }
    let alice = &pair.alice;
    let during: Vec<String> = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            (0..30)
                .map(|i| alice.send("bob", &format!("during {i}")))
                .collect::<Vec<_>>()
        });
        let done = passwd(&pair.bob);
        assert_eq!(done["rekey_under_way"], false, "{done}");
        sender.join().expect("sender")
    });
    sent.extend(during);
    for id in &sent {
        pair.bob.wait_arrival(id);
    }
    // Every message exactly once.
    let inbox = pair.bob.inbox();
    assert_eq!(inbox.len(), sent.len(), "{inbox:?}");
    let got: BTreeSet<&str> = inbox.iter().filter_map(|m| m["id"].as_str()).collect();
    let want: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    assert_eq!(got, want);
    // Whatever arrived during the rekey is under the new key like the rest.
    let uses = key_uses(&status(&pair.bob));
    assert_eq!(uses.len(), 1, "{uses:?}");
    assert!(uses[0].1 as usize > sent.len(), "{uses:?}");
    for id in &sent {
        let m = pair.bob.json(&["inbox", "read", id, "--json"]);
        assert!(m["body"].as_str().is_some_and(|b| !b.is_empty()), "{m}");
    }
    // Stopped, the home opens with the new passphrase only.
    pair.bob_node.take().expect("bob").stop();
    let refused = run_with(&pair.bob, pigeon_e2e::PASSPHRASE, &["inbox", "list"]);
    assert_eq!(refused.status.code(), Some(3));
    assert_eq!(pair.bob.inbox().len(), sent.len());
}
