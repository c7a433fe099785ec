//! `inbox watch` against real nodes: each message once, in order, as it is stored; a query
//! filters; `--since` catches up with no gap or repeat; `--sent` follows delivery states; a reader
//! that does not read holds up nothing; and the end of the node ends the watch with an error.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use pigeon_e2e::{Pair, TestHome, wait_for};
use serde_json::Value;

/// A running `pigeon inbox watch --json ...`, its lines read on a thread once `reading`.
struct Watch {
    child: Child,
    lines: Receiver<String>,
}

impl Watch {
    /// Starts `inbox watch --json EXTRA` for `home`; its lines are read only after `resume` if
    /// `paused` (the pipe fills meanwhile, as with a stuck reader).
    fn start(
        home: &TestHome,
        extra: &[&str],
        paused: bool,
    ) -> (Watch, Option<std::sync::mpsc::Sender<()>>) {
        let mut args = vec!["inbox", "watch", "--json"];
        args.extend_from_slice(extra);
        let mut child = home
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pigeon inbox watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if paused {
                let _ = wait.recv();
            }
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Watch { child, lines }, paused.then_some(go))
    }

    /// The next `n` lines as JSON, within `timeout` in all.
    fn take(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = self
                    .lines
                    .recv_timeout(left)
                    .unwrap_or_else(|e| panic!("line {} of {n} did not come: {e:?}", i + 1));
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
            })
            .collect()
    }

    /// No further line within `wait`.
    fn nothing_more(&self, wait: Duration) {
        match self.lines.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            other => panic!("an unexpected line: {other:?}"),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Waits until the node whose metrics are at `url` has `n` watchers connected (so that what is
/// sent next comes after their start), as its control connections gauge says.
fn watchers_connected(url: &str, n: f64) {
    wait_for("the watchers to connect", Duration::from_secs(30), || {
        let (_, text) = pigeon_e2e::http_get(url);
        (pigeon_e2e::metric(&text, "pigeon_control_connections") >= Some(n)).then_some(())
    });
}

/// [`Pair::start`], with each node serving its metrics.
fn pair() -> Pair {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let extra = ["--metrics-addr", "127.0.0.1:0"];
    let alice_node = alice.start_node_with("/ip4/127.0.0.1/tcp/0", &extra);
    let bob_node = bob.start_node_with("/ip4/127.0.0.1/tcp/0", &extra);
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    Pair {
        alice_node: Some(alice_node),
        bob_node: Some(bob_node),
        alice,
        bob,
    }
}

fn metrics(node: &Option<pigeon_e2e::NodeProc>) -> String {
    node.as_ref()
        .and_then(|n| n.metrics.clone())
        .expect("a metrics url")
}

#[test]
fn watch_prints_each_message_once_in_order_filtered_and_caught_up() {
    let pair = pair();
    let (alice, bob) = (&pair.alice, &pair.bob);
    let (all, _) = Watch::start(bob, &[], false);
    let (urgent, _) = Watch::start(bob, &["urgent", "OR", "subject:pager"], false);
    watchers_connected(&metrics(&pair.bob_node), 2.0);

    let sent: Vec<String> = [
        "urgent: the disk is full",
        "lunch at noon?",
        "all fine again",
    ]
    .iter()
    .map(|b| alice.send("bob", b))
    .collect();
    let seen = all.take(3, Duration::from_secs(60));
    assert_eq!(ids(&seen), sent, "each once, in the order stored");
    assert!(
        seen.iter()
            .all(|e| e["kind"] == "received" && e["from"] == "alice")
    );
    assert_eq!(seen[1]["body"], "lunch at noon?");
    let matched = urgent.take(1, Duration::from_secs(60));
    assert_eq!(ids(&matched), std::slice::from_ref(&sent[0]));
    let paged = alice.ok(&["send", "bob", "see the graphs", "--subject", "pager"]);
    let paged = paged.trim().to_owned();
    assert_eq!(
        ids(&urgent.take(1, Duration::from_secs(60))),
        std::slice::from_ref(&paged)
    );
    assert_eq!(
        ids(&all.take(1, Duration::from_secs(60))),
        std::slice::from_ref(&paged)
    );
    urgent.nothing_more(Duration::from_millis(500));
    all.nothing_more(Duration::from_millis(500));

    // --since: what came after that message first, then what comes next; nothing twice.
    let (since, _) = Watch::start(bob, &["--since", &sent[0][..8]], false);
    let caught_up = since.take(3, Duration::from_secs(60));
    assert_eq!(ids(&caught_up), [sent[1].clone(), sent[2].clone(), paged]);
    let next = alice.send("bob", "one more");
    assert_eq!(
        ids(&since.take(1, Duration::from_secs(60))),
        std::slice::from_ref(&next)
    );
    since.nothing_more(Duration::from_millis(500));

    // Mistakes: a query that does not parse (exit 2), an unknown message (exit 4); a home
    // with no node says so (exit 1).
    let bad = bob.run(&["inbox", "watch", "(unclosed"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let unknown = bob.run(&["inbox", "watch", "--since", "abcdabcd"]);
    assert_eq!(unknown.status.code(), Some(4), "{unknown:?}");
    let idle = TestHome::init("idle");
    let none = idle.run(&["inbox", "watch"]);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no node runs"),
        "{none:?}"
    );
}

#[test]
fn a_reader_that_does_not_read_holds_up_nothing_and_misses_nothing() {
    let mut pair = pair();
    let (mut stuck, go) = Watch::start(&pair.bob, &[], true);
    let (sent_watch, _) = Watch::start(&pair.alice, &["--sent"], false);
    watchers_connected(&metrics(&pair.bob_node), 1.0);
    watchers_connected(&metrics(&pair.alice_node), 1.0);

    // Far more than a pipe holds (64 KiB): 200 messages of 2 KB.
    let body = "x".repeat(2000);
    let sent: Vec<String> = (0..200)
        .map(|i| pair.alice.send("bob", &format!("{i:03} {body}")))
        .collect();
    // Delivery went on while the watcher's pipe was full.
    wait_for("all 200 stored", Duration::from_secs(120), || {
        (pair.bob.json(&["status", "--json"])["inbox"] == 200).then_some(())
    });
    // Then the reader reads: every message once, in order.
    go.expect("paused").send(()).expect("resume");
    let seen = stuck.take(200, Duration::from_secs(120));
    assert_eq!(ids(&seen), sent);
    stuck.nothing_more(Duration::from_millis(500));

    // Alice's side: each message as queued (or delivered already), then its delivery, once.
    let mut states: std::collections::HashMap<String, Vec<String>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while states.len() < sent.len()
        || states
            .values()
            .any(|s| s.last().map(String::as_str) != Some("delivered"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = &sent_watch.take(1, left)[0];
        assert_eq!(
            (&e["kind"], &e["to"]),
            (&Value::from("sent"), &Value::from("bob")),
            "{e}"
        );
        states
            .entry(e["id"].as_str().expect("id").to_owned())
            .or_default()
            .push(e["state"].as_str().expect("state").to_owned());
    }
    for id in &sent {
        let s = &states[id];
        assert!(
            s == &["queued", "delivered"] || s == &["delivered"],
            "{id}: {s:?}"
        );
    }
    sent_watch.nothing_more(Duration::from_millis(500));

    // The node stops: the watch ends with an error, not silence.
    pair.bob_node.take().expect("bob").stop();
    let status = wait_for("the watch to end", Duration::from_secs(30), || {
        stuck.child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(1));
}
