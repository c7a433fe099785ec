//! Real `pigeon node run` processes on 127.0.0.1 exchanging messages: exactly once, through
//! crashes of either side, never in clear on disk.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use pigeon_e2e::{OutputBounded, Pair, TestHome, bodies, files_under, wait_for};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until `home` holds exactly the messages `sent` (by id), and checks nothing is doubled.
fn assert_inbox_holds_exactly(home: &TestHome, sent: &BTreeSet<String>) {
    let items = wait_for("every message in the inbox", DELIVERY_TIMEOUT, || {
        let items = home.inbox();
        (items.len() >= sent.len()).then_some(items)
    });
    let ids: Vec<String> = items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "a message was stored twice");
    assert_eq!(&unique, sent, "the inbox differs from what was sent");
}

fn assert_all_delivered(home: &TestHome, count: usize) {
    wait_for("every outbox entry delivered", DELIVERY_TIMEOUT, || {
        let outbox = home.outbox();
        (outbox.len() == count && outbox.iter().all(|e| e["state"] == "delivered")).then_some(())
    });
}

#[test]
fn a_hundred_messages_arrive_exactly_once() {
    let pair = Pair::start();
    let started = Instant::now();
    let mut sent = BTreeSet::new();
    let mut texts = BTreeSet::new();
    for i in 0..100 {
        let text = format!("message number {i}");
        sent.insert(pair.alice.send("bob", &text));
        texts.insert(text);
    }
    assert_inbox_holds_exactly(&pair.bob, &sent);
    eprintln!(
        "100 messages sent through the CLI and delivered in {:?}",
        started.elapsed()
    );
    let previews: BTreeSet<String> = pair
        .bob
        .inbox()
        .iter()
        .map(|i| i["preview"].as_str().expect("preview").to_owned())
        .collect();
    assert_eq!(previews, texts);
    assert!(pair.bob.inbox().iter().all(|i| i["from"] == "alice"));
    assert_all_delivered(&pair.alice, 100);
    // And the other way.
    let back = pair.bob.send("alice", "got them all");
    assert_inbox_holds_exactly(&pair.alice, &BTreeSet::from([back]));
}

#[test]
fn receiver_killed_mid_stream_loses_nothing_and_doubles_nothing() {
    let mut pair = Pair::start();
    let bob_listen = pair.bob_node.as_ref().expect("bob node").listen_addr();
    let mut sent = BTreeSet::new();
    for i in 0..60 {
        sent.insert(pair.alice.send("bob", &format!("before the crash {i}")));
    }
    pair.bob_node.take().expect("bob node").kill();
    for i in 0..40 {
        sent.insert(pair.alice.send("bob", &format!("while bob is down {i}")));
    }
    pair.bob_node = Some(pair.bob.start_node(&bob_listen));
    for i in 0..20 {
        sent.insert(pair.alice.send("bob", &format!("after the restart {i}")));
    }
    assert_inbox_holds_exactly(&pair.bob, &sent);
    assert_all_delivered(&pair.alice, sent.len());
    // A second crash right after everything arrived changes nothing either.
    pair.bob_node.take().expect("bob node").kill();
    pair.bob_node = Some(pair.bob.start_node(&bob_listen));
    assert_inbox_holds_exactly(&pair.bob, &sent);
}

#[test]
fn sender_killed_and_restarted_still_sends_its_queue() {
    let mut pair = Pair::start();
    let alice_listen = pair.alice_node.as_ref().expect("alice node").listen_addr();
    let bob_listen = pair.bob_node.as_ref().expect("bob node").listen_addr();
    pair.bob_node.take().expect("bob node").stop();
    let mut sent = BTreeSet::new();
    for i in 0..50 {
        sent.insert(
            pair.alice
                .send("bob", &format!("queued while bob is away {i}")),
        );
    }
    // Alice dies with 50 messages queued and never gets to say goodbye.
    pair.alice_node.take().expect("alice node").kill();
    let queued = pair.alice.outbox();
    assert_eq!(queued.len(), 50);
    assert!(queued.iter().all(|e| e["state"] == "queued"), "{queued:?}");
    pair.bob_node = Some(pair.bob.start_node(&bob_listen));
    pair.alice_node = Some(pair.alice.start_node(&alice_listen));
    assert_inbox_holds_exactly(&pair.bob, &sent);
    assert_all_delivered(&pair.alice, 50);
}

#[test]
fn a_canary_word_is_in_no_file_of_either_home() {
    let mut pair = Pair::start();
    let nonce: u64 =
        std::process::id() as u64 * 1_000_003 + Instant::now().elapsed().as_nanos() as u64;
    let canary_body = format!("zebracanary{nonce:x}body");
    let canary_subject = format!("zebracanary{nonce:x}subject");
    let id = pair
        .alice
        .ok(&[
            "send",
            "bob",
            &format!("the word is {canary_body} ok"),
            "--subject",
            &canary_subject,
        ])
        .trim()
        .to_owned();
    assert_inbox_holds_exactly(&pair.bob, &BTreeSet::from([id.clone()]));
    assert_all_delivered(&pair.alice, 1);
    // It did arrive, whole.
    let message = pair.bob.json(&["inbox", "read", &id, "--json"]);
    assert!(
        message["body"]
            .as_str()
            .expect("body")
            .contains(&canary_body)
    );
    assert_eq!(message["subject"], canary_subject.as_str());
    assert!(bodies(&pair.bob)[0].contains(&canary_body));
    assert_eq!(
        pair.alice_node.take().expect("alice").stop(),
        Some(0),
        "clean exit on SIGTERM"
    );
    assert_eq!(
        pair.bob_node.take().expect("bob").stop(),
        Some(0),
        "clean exit on SIGTERM"
    );
    for home in [&pair.alice, &pair.bob] {
        let files = files_under(home.path());
        assert!(
            files.iter().any(|f| f.ends_with("node.log")),
            "the node log is checked too"
        );
        for file in &files {
            // node.log is the test's own redirect of the node's stderr; pigeon creates the rest.
            if !file.ends_with("node.log") {
                let mode = std::fs::metadata(file)
                    .expect("metadata")
                    .permissions()
                    .mode()
                    & 0o777;
                assert_eq!(mode, 0o600, "{} is {mode:o}, not 0600", file.display());
            }
        }
        for file in files {
            let bytes = std::fs::read(&file).expect("read");
            for canary in [&canary_body, &canary_subject] {
                assert!(
                    !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                    "{} holds {canary} in clear",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn strangers_are_refused_until_added_and_then_delivered() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let _bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
    alice.add_contact("bob", &bob, std::slice::from_ref(&_bob_node.addr));
    let id = alice.send("bob", "hello stranger");
    let entry = wait_for("the refusal in alice's outbox", DELIVERY_TIMEOUT, || {
        let outbox = alice.outbox();
        outbox.into_iter().find(|e| {
            e["last_error"]
                .as_str()
                .is_some_and(|s| s.contains("not added you"))
        })
    });
    assert_eq!(
        entry["state"], "queued",
        "a refusal by a stranger must not drop the message"
    );
    assert!(
        bob.inbox().is_empty(),
        "a stranger's message reached the inbox"
    );
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    assert_inbox_holds_exactly(&bob, &BTreeSet::from([id]));
}

#[test]
fn a_running_node_serves_the_cli_without_a_passphrase() {
    let pair = Pair::start();
    let out = pair
        .alice
        .cmd(&["send", "bob", "no passphrase needed"])
        .env_remove("PIGEON_PASSPHRASE")
        .output_bounded();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert_inbox_holds_exactly(&pair.bob, &BTreeSet::from([id]));
    let info = pair.alice.json(&["id", "--json"]);
    assert!(
        !info["listen"]
            .as_array()
            .expect("listen addrs while running")
            .is_empty()
    );
    // A second node for the same home is refused.
    let out = pair
        .alice
        .run(&["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    // It says which process holds the home.
    assert!(
        stderr.contains(&format!(
            "(pid {})",
            pair.alice_node.as_ref().expect("alice's node").pid()
        )),
        "{stderr}"
    );
}

/// A node started while `outbox list` works in-process (no node up, so the command holds
/// `node.lock` while it unlocks the keystore and reads the store) waits for the command instead of
/// refusing to start, round after round. The command is started just after the node: the node
/// takes the lock only once it has unlocked its own keystore, and the command takes it before
/// unlocking, so it usually holds the home when the node wants it; the node's log says when it did.
#[test]
fn a_node_waits_for_a_command_that_holds_the_home() {
    use std::io::BufRead;
    use std::process::Stdio;
    let home = TestHome::init("lockwait");
    let rounds = 8;
    let mut waited = 0;
    for round in 0..rounds {
        let log_path = home.path().join(format!("node-{round}.log"));
        let log = std::fs::File::create(&log_path).expect("node log");
        let mut node = home
            .cmd(&["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0", "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn node");
        let out = home.run(&["outbox", "list", "--json"]);
        assert!(
            out.status.success(),
            "round {round}: outbox list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = node.stdout.take().expect("node stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let listening = wait_for("the node to listen", Duration::from_secs(60), || {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.starts_with("listening on ") => Some(true),
                Ok(_) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(false),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            }
        });
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            listening,
            "round {round}: the node did not start; log:\n{log_text}"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(node.id() as libc::pid_t, libc::SIGTERM) };
        let status = node.wait().expect("node exit");
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: the node stops cleanly"
        );
        if std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("waiting for a pigeon command to let go")
        {
            waited += 1;
        }
    }
    assert!(
        waited > 0,
        "in none of {rounds} rounds did the command hold the home when the node wanted it"
    );
}

#[test]
fn the_demo_runs_end_to_end() {
    let out = std::process::Command::new(pigeon_e2e::pigeon_bin())
        .args(["demo", "local-two-peers"])
        .output_bounded();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bob received 3 messages"), "{stdout}");
    assert!(stdout.contains("alice received 2 messages"), "{stdout}");
    // In the order of the conversation, as a reader expects.
    let at = |text: &str| {
        stdout
            .find(text)
            .unwrap_or_else(|| panic!("{text:?} not in {stdout}"))
    };
    assert!(at("Hello Bob, this is Alice.") < at("Sealed with HPKE, stored encrypted."));
    assert!(at("Sealed with HPKE, stored encrypted.") < at("Delivered exactly once."));
    assert!(at("Hi Alice! Bob here.") < at("Got all three."));
    assert!(
        stdout.contains("all messages arrived exactly once; temporary homes removed"),
        "{stdout}"
    );
}

#[test]
fn the_demo_script_runs_two_node_processes() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo-local-two-peers.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("PIGEON_BIN", pigeon_e2e::pigeon_bin())
        .env_remove("PIGEON_HOME")
        .output_bounded();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Hello Bob, this is Alice."), "{stdout}");
    assert!(stdout.contains("Hi Alice! Both arrived."), "{stdout}");
    assert!(stdout.contains("every message arrived"), "{stdout}");
    // It stops both nodes it started: no process is left running on its homes.
    let work = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== creating two homes in "))
        .expect("the script names its directory")
        .trim()
        .to_owned();
    let left = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&work))
            .collect::<Vec<_>>()
    };
    wait_for("the demo's nodes to stop", Duration::from_secs(10), || {
        left().is_empty().then_some(())
    });
}

#[test]
fn messages_travel_over_quic_too() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let alice_node = alice.start_node("/ip4/127.0.0.1/udp/0/quic-v1");
    let bob_node = bob.start_node("/ip4/127.0.0.1/udp/0/quic-v1");
    assert!(bob_node.addr.contains("/quic-v1/"), "{}", bob_node.addr);
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    let id = alice.send("bob", "over quic");
    assert_inbox_holds_exactly(&bob, &BTreeSet::from([id]));
}

#[test]
fn a_body_from_stdin_with_a_subject_arrives_whole() {
    let pair = Pair::start();
    let body = "line one\nline two, with ünïcødé\n\n  indented line\n";
    let mut child = pair
        .alice
        .cmd(&["send", "bob", "--body-file", "-", "--subject", "from stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn send");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write body");
    let out = child.wait_with_output().expect("send");
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert_inbox_holds_exactly(&pair.bob, &BTreeSet::from([id.clone()]));
    let message = pair.bob.json(&["inbox", "read", &id, "--json"]);
    assert_eq!(message["body"], body);
    assert_eq!(message["subject"], "from stdin");
    assert_eq!(message["from"], "alice");
}

/// A message whose text carries terminal escape sequences (clear the screen, set the title, a
/// right-to-left override) is shown with them escaped: nothing of the sender's drives the terminal.
/// `--json` keeps the text exact.
#[test]
fn escape_sequences_from_a_peer_never_reach_the_terminal() {
    let pair = Pair::start();
    let body = "hello\u{1b}[2J\u{1b}]0;owned\u{7}\nsecond line \u{202e}fdp.exe";
    let id = pair
        .alice
        .ok(&["send", "bob", body, "--subject", "re\u{1b}[31m: red"])
        .trim()
        .to_owned();
    pair.bob.wait_arrival(&id);
    for args in [vec!["inbox", "read", id.as_str()], vec!["inbox", "list"]] {
        let out = pair.bob.ok(&args);
        let raw: Vec<char> = out
            .chars()
            .filter(|&c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}')
            .collect();
        assert!(raw.is_empty(), "{args:?} printed {raw:?}:\n{out}");
        assert!(out.contains("hello\\u{1b}[2J"), "{out}");
    }
    let read = pair.bob.ok(&["inbox", "read", &id]);
    assert!(read.contains("\nsecond line \\u{202e}fdp.exe"), "{read}");
    let json = pair.bob.json(&["inbox", "read", &id, "--json"]);
    assert_eq!(json["body"], body);
}

/// `inbox list` with no `--limit` lists every message even when the whole list is larger than one
/// control answer may be (16 MiB): the CLI reads it from the node page by page, in order, each
/// message once.
#[test]
fn inbox_list_works_past_the_answer_size_limit() {
    use pigeon::envelope::MessageId;
    use pigeon::keys::{Keys, keystore};
    use pigeon::store::{Received, Store};

    const MESSAGES: usize = 14_000;
    let home = TestHome::init("big-inbox");
    // Fill the inbox through the store itself (sending 14 000 messages would only be slower):
    // subjects of 1 KiB make the whole list about 19 MB.
    let keys = std::sync::Arc::new(
        keystore::unlock(&home.path().join("keystore"), pigeon_e2e::PASSPHRASE).expect("unlock"),
    );
    let sender = Keys::generate().peer_id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Store::open(&home.path().join("pigeon.db"), keys)
            .await
            .expect("open the store");
        let messages: Vec<Received> = (0..MESSAGES)
            .map(|i| Received {
                id: MessageId::random(),
                sender,
                sent_at_ms: 1,
                subject: Some(format!("{i:06} {}", "s".repeat(1000))),
                body: format!("message {i}"),
                attachments: vec![],
                actions: vec![],
                one_time_key: None,
            })
            .collect();
        store
            .call(move |db| db.store_received(&messages, 1_000).map(|_| ()))
            .await
            .expect("store");
        store.close().await;
    });
    let _node = home.start_node("/ip4/127.0.0.1/tcp/0");
    let out = home.ok(&["inbox", "list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), MESSAGES);
    // Newest first (all arrived in the same instant: the last stored first), each exactly once.
    let numbers: Vec<usize> = lines
        .iter()
        .map(|l| {
            let subject = l.split('\t').nth(5).expect("subject column");
            subject[..6].parse().expect("number")
        })
        .collect();
    assert_eq!(numbers, (0..MESSAGES).rev().collect::<Vec<_>>());
    let json = home.json(&["inbox", "list", "--json", "--limit", "1200"]);
    assert_eq!(json.as_array().map(Vec::len), Some(1200));
}

/// The states a person sorts an inbox by: `inbox read` marks a message read, `inbox list` says
/// which are unread and hides archived ones unless asked, and `inbox rm` deletes one for good,
/// leaving none of its sealed bytes in any file of the home (the WAL included).
#[test]
fn read_archive_and_delete() {
    let pair = Pair::start();
    let ids: Vec<String> = ["first", "second", "third"]
        .iter()
        .map(|body| pair.alice.send("bob", body))
        .collect();
    for id in &ids {
        pair.bob.wait_arrival(id);
    }
    let state = |id: &str, args: &[&str]| -> Option<String> {
        let mut full = vec!["inbox", "list"];
        full.extend_from_slice(args);
        pair.bob
            .ok(&full)
            .lines()
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|r| r[0] == id)
            .map(|r| r[1].to_owned())
    };
    assert_eq!(state(&ids[0], &[]).as_deref(), Some("unread"));
    pair.bob.ok(&["inbox", "read", &ids[0]]);
    assert_eq!(state(&ids[0], &[]).as_deref(), Some("read"));
    assert_eq!(state(&ids[0], &["--unread"]), None);
    assert_eq!(state(&ids[1], &["--unread"]).as_deref(), Some("unread"));
    pair.bob.ok(&["inbox", "mark", "unread", &ids[0]]);
    assert_eq!(state(&ids[0], &["--unread"]).as_deref(), Some("unread"));
    let json = pair.bob.json(&["inbox", "read", &ids[0], "--json"]);
    assert_eq!(json["read"], true);
    // Several at once: all, or none when one id is unknown (exit 4, nothing marked).
    let (a, b) = (&ids[0][..8], &ids[1][..8]);
    let out = pair.bob.run(&["inbox", "mark", "unread", a, b, "ffffffff"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(state(&ids[0], &["--unread"]), None, "none marked");
    let marked = pair.bob.ok(&["inbox", "mark", "unread", a, b]);
    assert_eq!(
        marked.lines().collect::<Vec<_>>(),
        [
            format!("{} marked unread", ids[0]),
            format!("{} marked unread", ids[1])
        ]
    );
    assert_eq!(state(&ids[0], &["--unread"]).as_deref(), Some("unread"));
    pair.bob.ok(&["inbox", "mark", "read", a]);

    // Archived: out of the default listing, in --archived and --all.
    assert!(
        pair.bob
            .ok(&["inbox", "archive", &ids[1]])
            .contains("archived")
    );
    assert_eq!(state(&ids[1], &[]), None);
    assert_eq!(state(&ids[1], &["--archived"]).as_deref(), Some("archived"));
    assert_eq!(state(&ids[0], &["--archived"]), None);
    assert_eq!(state(&ids[1], &["--all"]).as_deref(), Some("archived"));
    pair.bob.ok(&["inbox", "unarchive", &ids[1]]);
    assert!(state(&ids[1], &[]).is_some());

    // Deleted: asked first (refused off a terminal without --yes), then gone for good.
    let sealed = {
        let db = rusqlite::Connection::open(pair.bob.path().join("pigeon.db")).expect("open");
        let body: Vec<u8> = db
            .query_row("SELECT body FROM inbox WHERE id = ?1", [&ids[2]], |r| {
                r.get(0)
            })
            .expect("the sealed body");
        body
    };
    let out = pair.bob.run(&["inbox", "rm", &ids[2]]);
    assert_eq!(out.status.code(), Some(2), "off a terminal without --yes");
    assert!(
        state(&ids[2], &[]).is_some(),
        "nothing deleted without --yes"
    );
    assert!(
        pair.bob
            .ok(&["inbox", "rm", &ids[2], "--yes"])
            .contains("deleted")
    );
    assert_eq!(
        pair.bob.run(&["inbox", "read", &ids[2]]).status.code(),
        Some(4)
    );
    assert_eq!(state(&ids[2], &["--all"]), None);
    let needle = &sealed[sealed.len() - 32..];
    for file in files_under(pair.bob.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} still holds the deleted message's sealed bytes",
            file.display()
        );
    }
    // The others are untouched.
    assert_eq!(pair.bob.inbox().len(), 2);
}
