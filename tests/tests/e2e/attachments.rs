//! Attachments between real processes: identical bytes, nothing in clear on disk, resumption after
//! a crash without refetching, corrupted chunks refused, bounded memory, size limits.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use pigeon_e2e::{OutputBounded, Pair, TestHome, files_under, http_get, metric, wait_for};

const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// A file of `len` pseudo-random bytes with `marker` written in the middle.
fn random_file(dir: &Path, name: &str, len: usize, marker: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < len {
        for b in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let n = block.len().min(len - written);
        if written <= len / 2 && len / 2 < written + n {
            let at = len / 2 - written;
            let end = (at + marker.len()).min(n);
            block[at..end].copy_from_slice(&marker[..end - at]);
        }
        file.write_all(&block[..n]).expect("write");
        written += n;
    }
    path
}

/// The first attachment of message `id`, or null while the message has not arrived.
fn attachment(home: &TestHome, id: &str) -> serde_json::Value {
    let out = home.run(&["inbox", "read", id, "--json"]);
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    let message: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    message["attachments"][0].clone()
}

fn wait_complete(home: &TestHome, id: &str) -> serde_json::Value {
    wait_for("the attachment to complete", TRANSFER_TIMEOUT, || {
        let a = attachment(home, id);
        (a["state"] == "complete").then_some(a)
    })
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open"),
        std::fs::File::open(b).expect("open"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).expect("read");
        let mut filled = 0;
        while filled < na {
            let nb = fb.read(&mut bb[filled..na]).expect("read");
            if nb == 0 {
                return false;
            }
            filled += nb;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
        if na == 0 {
            return fb.read(&mut bb).expect("read") == 0;
        }
    }
}

#[test]
fn ten_megabytes_arrive_identical_and_never_in_clear() {
    let mut pair = Pair::start();
    let work = tempfile::tempdir().expect("tempdir");
    let marker = format!("attachmentcanary{}", std::process::id());
    let source = random_file(work.path(), "photo.raw", 10_000_000, marker.as_bytes());
    let id = pair
        .alice
        .ok(&[
            "send",
            "bob",
            "a photo",
            "--attach",
            source.to_str().expect("path"),
        ])
        .trim()
        .to_owned();
    let a = wait_complete(&pair.bob, &id);
    assert_eq!(a["name"], "photo.raw");
    assert_eq!(a["size"], 10_000_000);
    assert_eq!(a["chunks_held"], a["chunks_total"]);

    // Saved where asked, identical; not overwritten without --yes.
    let out = work.path().join("saved");
    let missing = pair
        .bob
        .run(&["inbox", "save", &id, "--out", out.to_str().expect("path")]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    std::fs::create_dir(&out).expect("mkdir");
    let printed = pair
        .bob
        .ok(&["inbox", "save", &id, "--out", out.to_str().expect("path")]);
    let saved = out.join("photo.raw");
    assert_eq!(printed.trim(), saved.to_str().expect("path"));
    assert!(same_bytes(&source, &saved), "the saved file differs");
    let again = pair
        .bob
        .run(&["inbox", "save", &id, "--out", out.to_str().expect("path")]);
    assert_eq!(
        again.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    pair.bob.ok(&[
        "inbox",
        "save",
        &id,
        "--out",
        out.to_str().expect("path"),
        "--yes",
    ]);

    // Once the recipient holds every chunk it says so, and the sender drops its sealed copy;
    // the recipient records that nothing more is owed.
    let sent_copy = pair.alice.path().join("attachments").join(format!(
        "{}.sealed",
        a["id"].as_str().expect("attachment id")
    ));
    wait_for("the sender to drop its copy", TRANSFER_TIMEOUT, || {
        (!sent_copy.exists()).then_some(())
    });
    wait_for("the release to be recorded", TRANSFER_TIMEOUT, || {
        let db = rusqlite::Connection::open(pair.bob.path().join("pigeon.db")).ok()?;
        let released: i64 = db
            .query_row("SELECT released FROM attachments", [], |r| r.get(0))
            .ok()?;
        (released == 1).then_some(())
    });
    // The recipient still has all of it.
    std::fs::remove_file(&saved).expect("rm");
    pair.bob
        .ok(&["inbox", "save", &id, "--out", out.to_str().expect("path")]);
    assert!(same_bytes(&source, &saved), "the saved file differs");

    // The sender's copy was sealed at send time: deleting the original changes nothing.
    std::fs::remove_file(&source).expect("rm");
    pair.alice_node.take().expect("alice").stop();
    pair.bob_node.take().expect("bob").stop();
    for home in [&pair.alice, &pair.bob] {
        for file in files_under(home.path()) {
            let bytes = std::fs::read(&file).expect("read");
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds the attachment's bytes in clear",
                file.display()
            );
        }
    }
}

#[test]
fn two_hundred_megabytes_resume_after_a_crash_with_bounded_memory() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let alice_node =
        alice.start_node_with("/ip4/127.0.0.1/tcp/0", &["--metrics-addr", "127.0.0.1:0"]);
    let mut bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_listen = bob_node.listen_addr();
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    let work = tempfile::tempdir().expect("tempdir");
    let source = random_file(work.path(), "disk.img", 200 * 1024 * 1024, b"");
    let id = alice
        .ok(&[
            "send",
            "bob",
            "an image",
            "--attach",
            source.to_str().expect("path"),
        ])
        .trim()
        .to_owned();

    let held_at_crash = wait_for("part of the transfer", TRANSFER_TIMEOUT, || {
        let a = attachment(&bob, &id);
        let held = a["chunks_held"].as_u64().unwrap_or(0);
        (held >= 40).then_some(held)
    });
    bob_node.kill();
    bob_node = bob.start_node(&bob_listen);
    let a = wait_complete(&bob, &id);
    let total = a["chunks_total"].as_u64().expect("total");
    assert!(held_at_crash < total, "the crash came after the transfer");
    // Only chunks not yet recorded at the crash were fetched again: at most the window in flight
    // (8) and the fetched chunks not yet landed, one group landing and one waiting (16 MiB of
    // 1 MiB chunks each).
    let metrics = http_get(alice_node.metrics.as_deref().expect("metrics")).1;
    let served = metric(&metrics, "pigeon_attachment_chunks_served_total").expect("served");
    assert!(
        served as u64 <= total + 8 + 2 * 16,
        "served {served} chunks for {total}: verified chunks were fetched again"
    );
    let (alice_rss, bob_rss) = (alice_node.peak_rss(), bob_node.peak_rss());
    eprintln!(
        "peak RSS: sender {} MiB, receiver {} MiB",
        alice_rss >> 20,
        bob_rss >> 20
    );
    assert!(alice_rss < 100 << 20, "sender peak RSS {alice_rss}");
    assert!(bob_rss < 100 << 20, "receiver peak RSS {bob_rss}");
    let out = work.path().join("saved");
    std::fs::create_dir(&out).expect("mkdir");
    bob.ok(&["inbox", "save", &id, "--out", out.to_str().expect("path")]);
    assert!(
        same_bytes(&source, &out.join("disk.img")),
        "the saved file differs"
    );
}

#[test]
fn a_corrupted_chunk_is_refused_and_the_sender_reported() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let _alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_node = bob.start_node_with("/ip4/127.0.0.1/tcp/0", &["--metrics-addr", "127.0.0.1:0"]);
    let bob_listen = bob_node.listen_addr();
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, &[]);
    bob_node.stop();
    let work = tempfile::tempdir().expect("tempdir");
    let source = random_file(work.path(), "notes.bin", 3 * 1024 * 1024 + 10, b"");
    let id = alice
        .ok(&[
            "send",
            "bob",
            "notes",
            "--attach",
            source.to_str().expect("path"),
        ])
        .trim()
        .to_owned();
    // Damage chunk 1 of the sender's sealed copy.
    let dir = alice.path().join("attachments");
    let sealed = std::fs::read_dir(&dir)
        .expect("ls")
        .next()
        .expect("one file")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&sealed).expect("read");
    bytes[1024 * 1024 + 16 + 100] ^= 0xff;
    std::fs::write(&sealed, bytes).expect("write");

    let bob_node = bob.start_node_with(&bob_listen, &["--metrics-addr", "127.0.0.1:0"]);
    let a = wait_for("the sender reported", TRANSFER_TIMEOUT, || {
        let a = attachment(&bob, &id);
        a["error"]
            .as_str()
            .is_some_and(|e| e.contains("bad data"))
            .then_some(a)
    });
    assert_eq!(a["state"], "partial");
    assert!(
        a["chunks_held"].as_u64() < a["chunks_total"].as_u64(),
        "{a}"
    );
    let metrics = http_get(bob_node.metrics.as_deref().expect("metrics")).1;
    assert!(
        metric(&metrics, "pigeon_attachment_chunk_failures_total") >= Some(3.0),
        "{metrics}"
    );
    let out = work.path().join("saved");
    std::fs::create_dir(&out).expect("mkdir");
    let save = bob.run(&["inbox", "save", &id, "--out", out.to_str().expect("path")]);
    assert_ne!(save.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&save.stderr).contains("incomplete"));
    assert_eq!(
        std::fs::read_dir(&out).expect("ls").count(),
        0,
        "a partial file was written"
    );
}

#[test]
fn size_limits_hold_on_both_sides() {
    let pair = Pair::start();
    let work = tempfile::tempdir().expect("tempdir");
    let source = random_file(work.path(), "big.bin", 3 * 1024 * 1024, b"");
    // The sender refuses to stage a file over its own limit.
    pair.alice
        .ok(&["config", "set", "attachments.max_size", "1048576"]);
    let out = pair.alice.run(&[
        "send",
        "bob",
        "too big",
        "--attach",
        source.to_str().expect("path"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most"));
    assert!(pair.alice.outbox().is_empty());
    assert_eq!(
        std::fs::read_dir(pair.alice.path().join("attachments"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    // The receiver refuses a message whose attachment is over its limit, and says why.
    pair.alice
        .ok(&["config", "set", "attachments.max_size", "1073741824"]);
    pair.bob
        .ok(&["config", "set", "attachments.max_size", "1048576"]);
    let mut pair = pair;
    let bob_listen = pair.bob_node.as_ref().expect("bob").listen_addr();
    pair.bob_node.take().expect("bob").stop();
    pair.bob_node = Some(pair.bob.start_node(&bob_listen));
    let id = pair
        .alice
        .ok(&[
            "send",
            "bob",
            "too big for bob",
            "--attach",
            source.to_str().expect("path"),
        ])
        .trim()
        .to_owned();
    let entry = pair
        .alice
        .wait_outbox_state(&id, "failed", TRANSFER_TIMEOUT);
    assert!(
        entry["last_error"]
            .as_str()
            .expect("error")
            .contains("size limit"),
        "{entry}"
    );
    assert!(pair.bob.inbox().is_empty());
}

#[test]
fn a_transfer_survives_the_sender_crashing_mid_way() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let mut alice_node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_node = bob.start_node("/ip4/127.0.0.1/tcp/0");
    let alice_listen = alice_node.listen_addr();
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    let work = tempfile::tempdir().expect("tempdir");
    let source = random_file(work.path(), "video.mp4", 120 * 1024 * 1024, b"");
    let id = alice
        .ok(&[
            "send",
            "bob",
            "a video",
            "--attach",
            source.to_str().expect("path"),
        ])
        .trim()
        .to_owned();
    let held_at_crash = wait_for("part of the transfer", TRANSFER_TIMEOUT, || {
        let held = attachment(&bob, &id)["chunks_held"].as_u64().unwrap_or(0);
        (held >= 20).then_some(held)
    });
    alice_node.kill();
    alice_node = alice.start_node(&alice_listen);
    let a = wait_complete(&bob, &id);
    assert!(
        held_at_crash < a["chunks_total"].as_u64().expect("total"),
        "the crash came after the transfer"
    );
    let out = work.path().join("saved");
    std::fs::create_dir(&out).expect("mkdir");
    bob.ok(&["inbox", "save", &id, "--out", out.to_str().expect("path")]);
    assert!(
        same_bytes(&source, &out.join("video.mp4")),
        "the saved file differs"
    );
    drop(alice_node);
}

/// A `send` that gives up waiting on the node (a timeout, not a refusal) keeps the sealed copies of
/// its attachments: the node may have queued the message and must be able to serve them.
#[test]
fn a_send_that_times_out_keeps_its_attachments() {
    let alice = TestHome::init("alice");
    let bob = TestHome::init("bob");
    alice.add_contact("bob", &bob, &[]);
    let node = alice.start_node("/ip4/127.0.0.1/tcp/0");
    let work = tempfile::tempdir().expect("tempdir");
    let source = random_file(work.path(), "kept.bin", 64 * 1024, b"");
    let pid = node.pid() as libc::pid_t;
    // SAFETY: signals to the child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = alice
        .cmd(&[
            "send",
            "bob",
            "slow node",
            "--attach",
            source.to_str().expect("path"),
        ])
        .env("PIGEON_ANSWER_TIMEOUT", "2")
        .output_bounded();
    let staged = files_under(&alice.path().join("attachments"));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer"), "{err}");
    assert_eq!(staged.len(), 1, "the sealed copy was removed: {staged:?}");
    // The node, let go on, takes the request it had been sent: the message it queued has its file.
    let queued = wait_for(
        "the node to queue the message",
        Duration::from_secs(30),
        || alice.outbox().into_iter().next(),
    );
    assert_eq!(queued["to"], "bob", "{queued}");
    assert!(staged[0].exists(), "the queued message's file is gone");
}

/// A sender that cannot serve an attachment (here: its sealed copy is gone) makes the receiver try
/// again with growing delays and give up after `attachments.give_up_after`, saying why in
/// `inbox read`; once the sender can serve it again, `pigeon inbox fetch` resumes it by hand.
#[test]
fn an_attachment_that_cannot_be_fetched_is_given_up_and_resumed_by_hand() {
    let mut pair = Pair::start();
    let bob_listen = pair.bob_node.as_ref().expect("bob").listen_addr();
    pair.bob_node.take().expect("bob").stop();
    pair.bob.config_set("attachments.give_up_after", "\"3s\"");
    pair.bob_node = Some(pair.bob.start_node(&bob_listen));
    // Queue the message with the sender's node down, and take its sealed copy away.
    let alice_listen = pair.alice_node.as_ref().expect("alice").listen_addr();
    pair.alice_node.take().expect("alice").stop();
    let work = tempfile::tempdir().expect("tempdir");
    let source = random_file(work.path(), "lost.bin", 3 * 1024 * 1024, b"");
    let id = pair
        .alice
        .ok(&[
            "send",
            "bob",
            "see attached",
            "--attach",
            source.to_str().expect("path"),
        ])
        .trim()
        .to_owned();
    let sealed = files_under(&pair.alice.path().join("attachments"));
    assert_eq!(sealed.len(), 1);
    let aside = work.path().join("aside.sealed");
    std::fs::rename(&sealed[0], &aside).expect("move the sealed copy away");
    pair.alice_node = Some(pair.alice.start_node(&alice_listen));

    // Bob gets the message, cannot get its chunks, and gives up after 3 s of failing.
    let given_up = wait_for("the attachment to be given up", TRANSFER_TIMEOUT, || {
        let a = attachment(&pair.bob, &id);
        a["error"]
            .as_str()
            .is_some_and(|e| e.contains("given up"))
            .then_some(a)
    });
    assert_eq!(given_up["state"], "partial", "{given_up}");
    assert!(
        given_up["error"]
            .as_str()
            .expect("error")
            .contains("pigeon inbox fetch"),
        "{given_up}"
    );

    // The sender can serve it again; resuming by hand completes it.
    std::fs::rename(&aside, &sealed[0]).expect("put the sealed copy back");
    let out = pair.bob.ok(&["inbox", "fetch", &id]);
    assert_eq!(out.trim(), "fetching 1 attachment");
    let done = wait_complete(&pair.bob, &id);
    assert!(done["error"].is_null(), "{done}");
    let saved = work.path().join("saved");
    std::fs::create_dir(&saved).expect("mkdir");
    pair.bob
        .ok(&["inbox", "save", &id, "--out", saved.to_str().expect("path")]);
    assert!(same_bytes(&source, &saved.join("lost.bin")));
    assert_eq!(
        pair.bob.ok(&["inbox", "fetch", &id]).trim(),
        "every attachment is complete"
    );
}

/// `inbox redact` scrubs a message's text, subject and attachments, wherever they lived: none of
/// their sealed bytes (row blobs, chunk file) is in any file of the home afterwards, WAL included,
/// while the id, sender, times and labels stay and the node goes on.
#[test]
fn redaction_leaves_nothing_of_the_message_behind() {
    let pair = Pair::start();
    let work = tempfile::tempdir().expect("tempdir");
    let source = random_file(work.path(), "secret.bin", 300 * 1024, b"");
    let id = pair
        .alice
        .ok(&[
            "send",
            "bob",
            "the secret text",
            "--subject",
            "secret subject",
            "--attach",
            source.to_str().expect("path"),
        ])
        .trim()
        .to_owned();
    pair.bob.wait_arrival(&id);
    wait_complete(&pair.bob, &id);
    pair.bob.ok(&["inbox", "label", "add", &id, "keep"]);
    // What an attacker with the disk would look for: the sealed bytes as stored.
    let mut needles: Vec<Vec<u8>> = Vec::new();
    {
        let db = rusqlite::Connection::open(pair.bob.path().join("pigeon.db")).expect("open");
        let (body, subject): (Vec<u8>, Vec<u8>) = db
            .query_row(
                "SELECT body, subject FROM inbox WHERE id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the sealed row");
        let reference: Vec<u8> = db
            .query_row(
                "SELECT ref FROM attachments WHERE message_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .expect("the sealed attachment reference");
        for blob in [body, subject, reference] {
            needles.push(blob[blob.len() - 32..].to_vec());
        }
    }
    let chunk_file = files_under(&pair.bob.path().join("attachments"));
    assert_eq!(chunk_file.len(), 1, "{chunk_file:?}");
    let chunks = std::fs::read(&chunk_file[0]).expect("chunks");
    needles.push(chunks[1000..1032].to_vec());

    let out = pair.bob.run(&["inbox", "redact", &id]);
    assert_eq!(out.status.code(), Some(2), "off a terminal without --yes");
    assert!(
        pair.bob
            .ok(&["inbox", "redact", &id, "--yes"])
            .contains("redacted")
    );
    for file in files_under(pair.bob.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == &needle[..]),
                "{} still holds sealed bytes of the redacted message",
                file.display()
            );
        }
    }
    let view = pair.bob.json(&["inbox", "read", &id, "--json"]);
    assert!(view["redacted_at"].is_string(), "{view}");
    assert_eq!(view["body"], "");
    assert!(view["subject"].is_null(), "{view}");
    assert_eq!(view["attachments"].as_array().map(Vec::len), Some(0));
    assert_eq!(view["labels"][0], "keep");
    assert_eq!(view["from"], "alice");
    let text = pair.bob.ok(&["inbox", "read", &id]);
    assert!(
        text.contains("redacted:") && !text.contains("secret"),
        "{text}"
    );
    // The node goes on.
    let next = pair.alice.send("bob", "after the redaction");
    pair.bob.wait_arrival(&next);
}

/// Sealed files a crash left in `attachments/` (a `redact` or `rm` killed after its commit and
/// before it removed them, a `send --attach` killed after staging): a node removes the old ones
/// when it starts, and keeps a young one, which a send may be staging right now, and the file
/// of a real attachment however old.
#[test]
fn a_starting_node_removes_the_sealed_files_a_crash_left() {
    use std::os::unix::fs::PermissionsExt;
    let (home, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    home.add_contact("bob", &bob, &[]);
    let plan = home.path().join("plan.txt");
    std::fs::write(&plan, b"a file for bob, who is offline").expect("write");
    home.send_attached("bob", "the plan", &plan);
    let dir = home.path().join("attachments");
    let queued = files_under(&dir);
    assert_eq!(queued.len(), 1, "{queued:?}");
    let age = |path: &Path, age: Duration| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(std::time::SystemTime::now() - age)
            .expect("mtime");
    };
    let leave = |name: &str, old: Duration| {
        let path = dir.join(name);
        std::fs::write(&path, b"sealed bytes nothing refers to").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        age(&path, old);
        path
    };
    let old = leave("00ff.sealed", Duration::from_secs(25 * 3600));
    let young = leave("11ee.sealed", Duration::from_secs(60));
    age(&queued[0], Duration::from_secs(25 * 3600));
    let _node = home.start_node("/ip4/127.0.0.1/tcp/0");
    assert!(!old.exists(), "an old leftover is removed");
    assert!(young.exists(), "a young one may be a send staging");
    assert!(
        queued[0].exists(),
        "a queued message's file stays, however old"
    );
}
