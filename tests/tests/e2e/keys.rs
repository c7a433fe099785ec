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
    passwd_to(home, NEW)
}

/// Runs `keys passwd --json` to `new`; returns its final status line.
fn passwd_to(home: &TestHome, new: &str) -> Value {
    let out = output_within(
        home.cmd(&["keys", "passwd", "--yes", "--json"])
            .env("PIGEON_NEW_PASSPHRASE", new),
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
    home.set_passphrase(new);
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

/// Messages in the inbox of the crash test.
const KILL_INBOX: usize = 20_000;
/// Points in time at which `keys passwd` is killed, spread over one uninterrupted run.
const KILL_POINTS: usize = 20;

/// Fills `home`'s inbox with `n` messages through pigeon's own store (sealed as received ones
/// are): body `killtest body <i>`, subject `killtest subject <i>`.
fn fill_inbox(home: &TestHome, n: usize) {
    let keys = pigeon::keys::keystore::unlock(&home.path().join("keystore"), &home.passphrase())
        .expect("unlock");
    let mut db = pigeon::store::Db::open(&home.path().join("pigeon.db"), std::sync::Arc::new(keys))
        .expect("open the database");
    let sender = pigeon::keys::Keys::generate().peer_id();
    let now = pigeon::store::now_ms();
    let ids: Vec<usize> = (0..n).collect();
    for chunk in ids.chunks(1000) {
        let batch: Vec<pigeon::store::Received> = chunk
            .iter()
            .map(|i| pigeon::store::Received {
                id: pigeon::envelope::MessageId::random(),
                sender,
                sent_at_ms: now,
                subject: Some(format!("killtest subject {i}")),
                body: format!("killtest body {i} and some more words to seal"),
                attachments: Vec::new(),
                actions: Vec::new(),
                one_time_key: None,
            })
            .collect();
        db.store_received(&batch, now).expect("store");
    }
}

/// Every message of the crash test reads back: all `n` bodies, each once.
fn all_read_back(home: &TestHome, n: usize) {
    let inbox = home.json(&["inbox", "list", "--all", "--json", "--limit", "100000"]);
    let inbox = inbox.as_array().expect("inbox");
    assert_eq!(inbox.len(), n);
    let got: BTreeSet<usize> = inbox
        .iter()
        .filter_map(|m| {
            m["preview"]
                .as_str()?
                .strip_prefix("killtest body ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(got.len(), n, "every body opens and is there once");
}

/// Which of `passphrases` opens the home; asserts that exactly one does and that the others are
/// refused as wrong (exit 3), never as damage.
fn the_one_that_opens(home: &TestHome, passphrases: &[&str]) -> (String, Value) {
    let mut opened = Vec::new();
    for p in passphrases {
        let out = run_with(home, p, &["keys", "status", "--json"]);
        match out.status.code() {
            Some(0) => opened.push((
                (*p).to_owned(),
                serde_json::from_slice::<Value>(&out.stdout).expect("status JSON"),
            )),
            Some(3) => {}
            other => panic!(
                "keys status with {p:?} exited {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    assert_eq!(
        opened.len(),
        1,
        "exactly one passphrase opens the home: {:?}",
        opened.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    opened.remove(0)
}

/// Starts `args` as `home`'s user with `current` (and `new` for a passwd), and SIGKILLs it after
/// `after` unless it ended first; returns whether it was killed.
fn kill_after(home: &TestHome, current: &str, new: &str, args: &[&str], after: Duration) -> bool {
    let mut child = home
        .cmd(args)
        .env("PIGEON_PASSPHRASE", current)
        .env("PIGEON_NEW_PASSPHRASE", new)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + after;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "{args:?} failed on its own: {status}");
            return false;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn keys_passwd_killed_at_any_point_leaves_a_home_that_opens_with_one_passphrase() {
    let home = TestHome::init("bob");
    fill_inbox(&home, KILL_INBOX);
    home.ok(&["inbox", "reindex"]);

    // One uninterrupted change, to know how long one takes here.
    let started = std::time::Instant::now();
    passwd_to(&home, "pass-0");
    let whole = started.elapsed();

    let (mut before_rename, mut mid_rekey, mut killed_resumes) = (0, 0, 0);
    for round in 1..=KILL_POINTS {
        let old = home.passphrase();
        let new = format!("pass-{round}");
        // Kill points over the whole change and a little past its end, denser at the start
        // (the re-wrap is a small part of a change when the rekey is long).
        let at = round as f64 / KILL_POINTS as f64;
        let after = whole.mul_f64(at * at * 1.1);
        kill_after(
            &home,
            &old,
            &new,
            &["keys", "passwd", "--yes", "--json"],
            after,
        );
        let (current, status) = the_one_that_opens(&home, &[&old, &new]);
        if current == old {
            before_rename += 1;
        }
        home.set_passphrase(&current);
        if status["rekey_under_way"] == true {
            mid_rekey += 1;
            // The rekey's own resume, killed too, every other time.
            if round % 2 == 0
                && kill_after(
                    &home,
                    &current,
                    "",
                    &["keys", "rekey", "--resume"],
                    after / 3,
                )
            {
                killed_resumes += 1;
                the_one_that_opens(&home, &[&old, &new]);
            }
        }
        all_read_back(&home, KILL_INBOX);
    }
    assert!(
        before_rename > 0 && mid_rekey > 0,
        "the kills fell before the rename {before_rename} times and in the rekey {mid_rekey} \
         times; both must happen for the test to mean anything"
    );
    eprintln!(
        "{KILL_POINTS} kills over {whole:?}: {before_rename} before the rename, {mid_rekey} in \
         the rekey, {killed_resumes} resumes killed"
    );

    // The rekey completes: one data key, holding every row.
    let done = output_within(
        &mut home.cmd(&["keys", "rekey", "--resume", "--json"]),
        COMMAND_TIMEOUT,
        "keys rekey --resume",
    );
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let status = status(&home);
    let uses = key_uses(&status);
    assert_eq!(uses.len(), 1, "{status}");
    assert!(uses[0].1 >= KILL_INBOX as u64 && uses[0].2 > 0, "{status}");
    all_read_back(&home, KILL_INBOX);
    assert_eq!(search_count(&home, "killtest"), 1000);
}

#[test]
fn keys_passwd_raises_the_kdf_cost_within_bounds() {
    let home = TestHome::init("alice");
    let out = output_within(
        home.cmd(&[
            "keys",
            "passwd",
            "--yes",
            "--kdf-memory",
            "96",
            "--kdf-passes",
            "4",
            "--json",
        ])
        .env("PIGEON_NEW_PASSPHRASE", NEW),
        COMMAND_TIMEOUT,
        "keys passwd",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    home.set_passphrase(NEW);
    let s = status(&home);
    assert_eq!(s["kdf"]["m_kib"], 96 * 1024, "{s}");
    assert_eq!(s["kdf"]["t"], 4, "{s}");
    // Out of bounds: refused before anything is asked or written.
    for (flag, value) in [
        ("--kdf-memory", "4"),
        ("--kdf-memory", "2048"),
        ("--kdf-passes", "0"),
        ("--kdf-passes", "17"),
    ] {
        let out = output_within(
            home.cmd(&["keys", "passwd", flag, value])
                .env("PIGEON_NEW_PASSPHRASE", "another"),
            COMMAND_TIMEOUT,
            "keys passwd",
        );
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
    }
    let s = status(&home);
    assert_eq!(s["kdf"]["m_kib"], 96 * 1024, "unchanged: {s}");
    home.ok(&["inbox", "list"]);
}

#[test]
fn bench_keys_reports_the_rekey_and_backup_rates() {
    let out = output_within(
        std::process::Command::new(pigeon_e2e::pigeon_bin()).args([
            "bench",
            "keys",
            "--messages",
            "500",
            "--json",
        ]),
        COMMAND_TIMEOUT,
        "bench keys",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(run["messages"], 500);
    assert!(
        run["rekey_items"].as_u64() > Some(500),
        "rows and index files: {run}"
    );
    for figure in [
        "rekey_items_per_second",
        "rekey_mb_per_second",
        "backup_mb_per_second",
        "verify_mb_per_second",
    ] {
        assert!(
            run[figure].as_f64().is_some_and(|f| f > 0.0),
            "{figure}: {run}"
        );
    }
    assert!(run["backup_bytes"].as_u64() > Some(100_000), "{run}");
}
