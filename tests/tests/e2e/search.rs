//! `pigeon inbox search` and `inbox reindex`: a query suite over delivered messages whose words
//! the test chose, compared with the sets the test computes; no clear text in any file; the index
//! rebuilt when deleted or damaged; hostile text neutralised; malformed queries refused.

use std::collections::BTreeSet;
use std::time::Duration;

use pigeon_e2e::{Pair, TestHome, files_under, wait_for};
use serde_json::Value;

/// Words a message may hold, chosen by the bits of its number.
const WORDS: [&str; 6] = ["amber", "birch", "cedar", "delta", "ember", "fjord"];

/// What the test knows of one message it sent.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    i: usize,
    from: &'static str,
    body: String,
    subject: Option<String>,
    label: bool,
    read: bool,
    archived: bool,
    attachment: Option<&'static str>,
}

impl Sent {
    fn words(&self) -> BTreeSet<String> {
        let text = format!("{} {}", self.subject.as_deref().unwrap_or(""), self.body);
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_lowercase().replace('é', "e"))
            .collect()
    }

    fn has(&self, w: &str) -> bool {
        self.words().contains(w)
    }
}

fn body_of(i: usize) -> String {
    let mut words: Vec<String> = WORDS
        .iter()
        .enumerate()
        .filter(|(k, _)| (i >> k) & 1 == 1)
        .map(|(_, w)| w.to_string())
        .collect();
    words.push(format!("tag{i:03}"));
    match i % 10 {
        0 => words.push("Café".into()),
        1 => words.push("cafe".into()),
        _ => {}
    }
    match i % 7 {
        0 => words.push("invoices".into()),
        1 => words.push("invoice".into()),
        2 => words.push("invoiced".into()),
        _ => {}
    }
    match i % 5 {
        0 => words.push("a red apple".into()),
        1 => words.push("apple, red".into()),
        _ => {}
    }
    words.join(" ")
}

fn search_ids(home: &TestHome, query: &str) -> BTreeSet<String> {
    hits(home, query)
        .iter()
        .map(|h| h["id"].as_str().expect("id").to_owned())
        .collect()
}

fn hits(home: &TestHome, query: &str) -> Vec<Value> {
    home.json(&["inbox", "search", "--json", "--limit", "1000", query])
        .as_array()
        .unwrap_or_else(|| panic!("hits for {query}"))
        .clone()
}

fn expect(sent: &[Sent], pass: impl Fn(&Sent) -> bool) -> BTreeSet<String> {
    sent.iter()
        .filter(|m| pass(m))
        .map(|m| m.id.clone())
        .collect()
}

#[test]
fn the_query_language_finds_exactly_what_it_says() {
    let pair = Pair::start();
    let carol = TestHome::init("carol");
    let carol_node = carol.start_node("/ip4/127.0.0.1/tcp/0");
    let bob_addr = pair.bob_node.as_ref().expect("bob").addr.clone();
    carol.add_contact("bob", &pair.bob, std::slice::from_ref(&bob_addr));
    pair.bob
        .add_contact("carol", &carol, std::slice::from_ref(&carol_node.addr));

    let mut sent = Vec::new();
    for i in 0..200 {
        let (home, from) = if i % 4 == 3 {
            (&carol, "carol")
        } else {
            (&pair.alice, "alice")
        };
        let body = body_of(i);
        let subject = (i % 3 == 0).then(|| "Quarterly amber".to_owned());
        let mut args = vec!["send", "bob", body.as_str()];
        if let Some(s) = &subject {
            args.extend(["--subject", s.as_str()]);
        }
        let id = home.ok(&args).trim().to_owned();
        sent.push(Sent {
            id,
            i,
            from,
            body,
            subject,
            label: false,
            read: false,
            archived: false,
            attachment: None,
        });
    }
    let files = tempfile::tempdir().expect("tempdir");
    for (n, name) in ["report-q3.pdf", "holiday photo.jpg"]
        .into_iter()
        .enumerate()
    {
        let path = files.path().join(name);
        std::fs::write(&path, format!("file {n}")).expect("write");
        let body = format!("see the file tag9{n:02}");
        let id = pair.alice.send_attached("bob", &body, &path);
        sent.push(Sent {
            id,
            i: 900 + n,
            from: "alice",
            body,
            subject: None,
            label: false,
            read: false,
            archived: false,
            attachment: Some(name),
        });
    }
    let last = sent.last().expect("sent").id.clone();
    pair.bob.wait_arrival(&last);
    wait_for("every message", Duration::from_secs(60), || {
        (pair.bob.inbox().len() == sent.len()).then_some(())
    });
    // Searchable soon after it is stored (the index commits every 250 ms or so).
    wait_for("the index to catch up", Duration::from_secs(30), || {
        (search_ids(&pair.bob, "tag199").len() == 1).then_some(())
    });

    // State changes show in filters at once: no wait between the change and the search.
    for m in sent.iter_mut() {
        if m.i % 8 == 0 {
            pair.bob.ok(&["inbox", "label", "add", &m.id, "work"]);
            m.label = true;
        }
        if m.i % 6 == 0 {
            pair.bob.ok(&["inbox", "mark", "read", &m.id]);
            m.read = true;
        }
        if m.i % 9 == 0 {
            pair.bob.ok(&["inbox", "archive", &m.id]);
            m.archived = true;
        }
    }
    let unlabelled = sent
        .iter()
        .find(|m| m.i == 16)
        .expect("message 16")
        .id
        .clone();
    pair.bob.ok(&["inbox", "label", "rm", &unlabelled, "work"]);
    for m in sent.iter_mut().filter(|m| m.i == 16) {
        m.label = false;
    }

    type Check = Box<dyn Fn(&Sent) -> bool>;
    let w = |word: &'static str| move |m: &Sent| m.has(word);
    let phrase = |m: &Sent| m.body.contains("red apple");
    let cases: Vec<(&str, Check)> = vec![
        ("amber", Box::new(w("amber"))),
        (
            "amber birch",
            Box::new(|m: &Sent| m.has("amber") && m.has("birch")),
        ),
        (
            "amber AND birch",
            Box::new(|m: &Sent| m.has("amber") && m.has("birch")),
        ),
        (
            "amber OR cedar",
            Box::new(|m: &Sent| m.has("amber") || m.has("cedar")),
        ),
        (
            "amber -birch",
            Box::new(|m: &Sent| m.has("amber") && !m.has("birch")),
        ),
        (
            "amber NOT birch",
            Box::new(|m: &Sent| m.has("amber") && !m.has("birch")),
        ),
        (
            "(amber OR cedar) delta",
            Box::new(|m: &Sent| (m.has("amber") || m.has("cedar")) && m.has("delta")),
        ),
        ("NOT amber", Box::new(|m: &Sent| !m.has("amber"))),
        (
            "delta (ember OR NOT fjord)",
            Box::new(|m: &Sent| m.has("delta") && (m.has("ember") || !m.has("fjord"))),
        ),
        ("cafe", Box::new(w("cafe"))),
        ("CAFÉ", Box::new(w("cafe"))),
        (
            "invoic*",
            Box::new(|m: &Sent| m.has("invoice") || m.has("invoices") || m.has("invoiced")),
        ),
        ("invoice", Box::new(w("invoice"))),
        ("\"red apple\"", Box::new(phrase)),
        (
            "red apple",
            Box::new(|m: &Sent| m.has("red") && m.has("apple")),
        ),
        ("subject:amber", Box::new(|m: &Sent| m.subject.is_some())),
        (
            "subject:quarterly birch",
            Box::new(|m: &Sent| m.subject.is_some() && m.has("birch")),
        ),
        ("from:carol", Box::new(|m: &Sent| m.from == "carol")),
        (
            "from:alice ember",
            Box::new(|m: &Sent| m.from == "alice" && m.has("ember")),
        ),
        ("label:work", Box::new(|m: &Sent| m.label)),
        (
            "label:work amber",
            Box::new(|m: &Sent| m.label && m.has("amber")),
        ),
        (
            "label:work is:unread",
            Box::new(|m: &Sent| m.label && !m.read),
        ),
        ("is:read", Box::new(|m: &Sent| m.read)),
        ("is:unread", Box::new(|m: &Sent| !m.read)),
        ("is:archived", Box::new(|m: &Sent| m.archived)),
        (
            "-is:archived cedar",
            Box::new(|m: &Sent| !m.archived && m.has("cedar")),
        ),
        (
            "has:attachment",
            Box::new(|m: &Sent| m.attachment.is_some()),
        ),
        (
            "attachment:report",
            Box::new(|m: &Sent| m.attachment == Some("report-q3.pdf")),
        ),
        (
            "attachment:photo OR tag007",
            Box::new(|m: &Sent| m.attachment == Some("holiday photo.jpg") || m.i == 7),
        ),
        ("after:2000-01-01", Box::new(|_: &Sent| true)),
        ("after:2000-01-01T00:00:00Z amber", Box::new(w("amber"))),
        ("before:2000-01-01", Box::new(|_: &Sent| false)),
        ("after:2999-12-31", Box::new(|_: &Sent| false)),
        ("nosuchword", Box::new(|_: &Sent| false)),
    ];
    for (query, pass) in &cases {
        assert_eq!(
            search_ids(&pair.bob, query),
            expect(&sent, pass),
            "query {query:?}"
        );
    }

    // Newest first by default; by score with --sort relevance.
    let dated = hits(&pair.bob, "amber");
    let times: Vec<&str> = dated
        .iter()
        .map(|h| h["received_at"].as_str().expect("time"))
        .collect();
    assert!(times.windows(2).all(|p| p[0] >= p[1]), "{times:?}");
    let ranked = pair.bob.json(&[
        "inbox",
        "search",
        "--json",
        "--sort",
        "relevance",
        "amber OR tag005",
    ]);
    let scores: Vec<f64> = ranked
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["score"].as_f64().expect("score"))
        .collect();
    assert!(scores.windows(2).all(|p| p[0] >= p[1]), "{scores:?}");
    // --limit, and the snippet marks the match.
    let few = pair
        .bob
        .json(&["inbox", "search", "--json", "--limit", "3", "amber"]);
    assert_eq!(few.as_array().map(Vec::len), Some(3));
    let one = hits(&pair.bob, "tag010");
    assert_eq!(one.len(), 1);
    assert!(
        one[0]["snippet"]
            .as_str()
            .expect("snippet")
            .contains("[tag010]"),
        "{one:?}"
    );
    // The text output: a line like `inbox list`, then the snippet.
    let text = pair.bob.ok(&["inbox", "search", "tag010"]);
    let cols: Vec<&str> = text.trim_end().split('\t').collect();
    assert_eq!(cols.len(), 8, "{text}");
    assert_eq!(cols[0], one[0]["id"]);
    assert!(cols[7].contains("[tag010]"), "{text}");

    // The same answers without a node.
    let mut pair = pair;
    pair.bob_node.take().expect("bob's node").stop();
    for (query, pass) in cases.iter().take(6) {
        assert_eq!(
            search_ids(&pair.bob, query),
            expect(&sent, pass),
            "offline, query {query:?}"
        );
    }
    drop(carol_node);
}

#[test]
fn malformed_queries_are_refused_with_where_they_broke() {
    let home = TestHome::init("badq");
    for (query, want) in [
        ("a (b", "unbalanced ( at 3"),
        ("a ) b", "unbalanced ) at 3"),
        ("\"open", "at 1"),
        ("from:", "from: needs a contact at 1"),
        ("is:maybe", "at 1"),
        ("after:yesterday", "at 1"),
        ("nosuch:thing", "unknown filter"),
        ("a AND", "at"),
        ("", "empty query"),
    ] {
        let out = home.run(&["inbox", "search", query]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{query:?}: {err}");
        assert!(err.contains(want), "{query:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // An empty inbox answers nothing, and that is no error.
    let out = home.run(&["inbox", "search", "anything"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert_eq!(
        home.json(&["inbox", "search", "--json", "x"]),
        Value::Array(vec![])
    );
    // A limit out of range is refused by the argument parser, before anything opens.
    for limit in ["0", "10001", "-3", "many"] {
        let out = home.run(&["inbox", "search", "--limit", limit, "x"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--limit {limit}: {err}");
        assert!(err.contains("--limit"), "--limit {limit}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // from: a name that is no contact.
    let out = home.run(&["inbox", "search", "from:nobody"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no contact \"nobody\""));
}

#[test]
fn no_word_of_a_message_reaches_a_file_and_hostile_text_stays_inert() {
    let mut pair = Pair::start();
    let canary = "zqxcanaryword";
    let id = pair
        .alice
        .ok(&[
            "send",
            "bob",
            &format!("the {canary} sings \u{1b}]52;c;aGk=\u{7} \u{1b}[2J hostileword"),
            "--subject",
            &format!("\u{1b}[3A\u{1b}[2Kfrom: mallory {canary}subject"),
        ])
        .trim()
        .to_owned();
    // A body of a whole megabyte, its word at the end.
    let work = tempfile::tempdir().expect("tempdir");
    let big = work.path().join("big.txt");
    let mut text = "filler words repeat ".repeat(1024 * 1024 / 20 - 1);
    text.push_str(" needlemb");
    text.truncate(1024 * 1024);
    std::fs::write(&big, &text).expect("write");
    let big_id = pair
        .alice
        .ok(&["send", "bob", "--body-file", big.to_str().expect("path")])
        .trim()
        .to_owned();
    pair.bob.wait_arrival(&big_id);
    pair.bob.wait_arrival(&id);
    wait_for("the index", Duration::from_secs(30), || {
        (search_ids(&pair.bob, canary).len() == 1 && search_ids(&pair.bob, "needlemb").len() == 1)
            .then_some(())
    });
    assert_eq!(search_ids(&pair.bob, &format!("{canary}subject")).len(), 1);
    assert_eq!(
        search_ids(&pair.bob, "needlemb"),
        BTreeSet::from([big_id.clone()])
    );

    // Text output neutralises every escape; JSON keeps the text exact.
    let out = pair.bob.run(&["inbox", "search", "hostileword"]);
    assert!(out.status.success());
    assert!(
        !out.stdout.contains(&0x1b),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\\u{1b}"));
    let exact = hits(&pair.bob, "hostileword");
    assert!(
        exact[0]["snippet"]
            .as_str()
            .expect("snippet")
            .contains('\u{1b}')
    );
    assert!(
        exact[0]["subject"]
            .as_str()
            .expect("subject")
            .starts_with('\u{1b}')
    );

    // No file of the home holds a word of it in clear: database, WAL, index, attachments.
    let bob_home = pair.bob.path().to_owned();
    let scan = |what: &str| {
        for file in files_under(&bob_home) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            for needle in [canary, "hostileword", "needlemb", "filler words"] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{what}: {} holds {needle:?} in clear",
                    file.display()
                );
            }
        }
    };
    scan("running");
    pair.bob_node.take().expect("bob").stop();
    scan("stopped");
}

#[test]
fn a_deleted_or_damaged_index_is_rebuilt_on_start_and_answers_the_same() {
    let mut pair = Pair::start();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            pair.alice
                .send("bob", &format!("rebuild test {} number{i}", WORDS[i % 6])),
        );
    }
    pair.bob.wait_arrival(ids.last().expect("ids"));
    wait_for("the index", Duration::from_secs(30), || {
        (search_ids(&pair.bob, "number29").len() == 1).then_some(())
    });
    let queries = [
        "rebuild",
        "amber OR cedar",
        "number1*",
        "\"rebuild test\" -delta",
    ];
    let before: Vec<_> = queries.iter().map(|q| search_ids(&pair.bob, q)).collect();
    assert_eq!(before[0].len(), 30);
    let index = pair.bob.path().join("search");

    // Deleted while the node is stopped.
    let bob_node = pair.bob_node.take().expect("bob");
    let listen = bob_node.listen_addr();
    bob_node.stop();
    std::fs::remove_dir_all(&index).expect("remove the index");
    let node = pair.bob.start_node(&listen);
    let after: Vec<_> = queries.iter().map(|q| search_ids(&pair.bob, q)).collect();
    assert_eq!(after, before, "after deleting the index");
    assert!(index.join("meta.json").exists());
    node.stop();

    // Damaged: a byte flipped in the middle of the biggest file.
    let biggest = files_under(&index)
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .expect("index files");
    let mut bytes = std::fs::read(&biggest).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&biggest, &bytes).expect("write");
    let node = pair.bob.start_node(&listen);
    let after: Vec<_> = queries.iter().map(|q| search_ids(&pair.bob, q)).collect();
    assert_eq!(after, before, "after damaging {}", biggest.display());
    let log = std::fs::read_to_string(pair.bob.path().join("node.log")).unwrap_or_default();
    assert!(log.contains("building it again"), "the repair is logged");
    node.stop();

    // Garbage in meta.json, and `inbox reindex` by hand without a node.
    std::fs::write(index.join("meta.json"), b"garbage").expect("write");
    // A reindex killed at any moment (documents added and not committed, a commit half done)
    // leaves an index that the next command repairs on its own.
    for delay_ms in [100, 300, 600, 1000] {
        let mut child = pair
            .bob
            .cmd(&["inbox", "reindex"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let after: Vec<_> = queries.iter().map(|q| search_ids(&pair.bob, q)).collect();
        assert_eq!(after, before, "after a reindex killed at {delay_ms} ms");
        std::fs::write(index.join("meta.json"), b"garbage").expect("write");
    }
    let out = pair.bob.ok(&["inbox", "reindex"]);
    assert!(out.contains("indexed 30 messages"), "{out}");
    let after: Vec<_> = queries.iter().map(|q| search_ids(&pair.bob, q)).collect();
    assert_eq!(after, before, "after reindex");
    // And with a node: it starts the work and the command follows it to the end.
    let _node = pair.bob.start_node(&listen);
    let status = pair.bob.json(&["inbox", "reindex", "--json"]);
    assert_eq!(status["indexed"], 30, "{status}");
    assert_eq!(status["rebuilding"], false, "{status}");
    let after: Vec<_> = queries.iter().map(|q| search_ids(&pair.bob, q)).collect();
    assert_eq!(after, before, "after reindex with a node");
}

#[test]
fn deleted_and_redacted_messages_leave_the_index_at_once() {
    let pair = Pair::start();
    let keep = pair.alice.send("bob", "purgetest kept alpha");
    let gone = pair.alice.send("bob", "purgetest deleted bravo");
    let scrubbed = pair.alice.send("bob", "purgetest redacted charlie");
    pair.bob.wait_arrival(&scrubbed);
    pair.bob.wait_arrival(&gone);
    pair.bob.wait_arrival(&keep);
    pair.bob
        .ok(&["inbox", "label", "add", &scrubbed, "kept-label"]);
    wait_for("the index", Duration::from_secs(30), || {
        (search_ids(&pair.bob, "purgetest").len() == 3).then_some(())
    });
    pair.bob.ok(&["inbox", "rm", "--yes", &gone]);
    pair.bob.ok(&["inbox", "redact", "--yes", &scrubbed]);
    // No wait: gone from results when the command returns.
    assert_eq!(
        search_ids(&pair.bob, "purgetest"),
        BTreeSet::from([keep.clone()])
    );
    assert!(search_ids(&pair.bob, "bravo").is_empty());
    assert!(search_ids(&pair.bob, "charlie").is_empty());
    // The redacted one keeps its metadata, so filters still find it.
    assert_eq!(
        search_ids(&pair.bob, "label:kept-label"),
        BTreeSet::from([scrubbed.clone()])
    );
    // The node goes on.
    let next = pair.alice.send("bob", "purgetest after");
    pair.bob.wait_arrival(&next);
    wait_for("the next message indexed", Duration::from_secs(30), || {
        (search_ids(&pair.bob, "purgetest").len() == 2).then_some(())
    });
}

#[test]
fn a_kill_during_redaction_leaves_the_whole_message_or_the_redacted_one() {
    let mut pair = Pair::start();
    let work = tempfile::tempdir().expect("tempdir");
    let mut sent = Vec::new();
    for k in 0..5 {
        let file = work.path().join(format!("file{k}.bin"));
        std::fs::write(&file, vec![k as u8; 200 * 1024]).expect("write");
        let body = format!("killtest word{k}");
        let id = pair.alice.send_attached("bob", &body, &file);
        sent.push((id, body));
    }
    for (id, _) in &sent {
        pair.bob.wait_arrival(id);
        wait_for("the attachment", Duration::from_secs(60), || {
            let m = pair.bob.json(&["inbox", "read", id, "--json"]);
            (m["attachments"][0]["state"] == "complete").then_some(())
        });
    }
    pair.bob_node.take().expect("bob").stop();
    // Without a node the command does the work itself: killed at different moments of it.
    for (k, (id, _)) in sent.iter().enumerate() {
        let mut child = pair
            .bob
            .cmd(&["inbox", "redact", "--yes", id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(150 + 250 * k as u64));
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut redacted = 0;
    for (k, (id, body)) in sent.iter().enumerate() {
        let m = pair.bob.json(&["inbox", "read", id, "--json"]);
        let attachments = m["attachments"].as_array().expect("attachments").len();
        if m["redacted_at"].is_string() {
            redacted += 1;
            assert_eq!(m["body"], "", "{m}");
            assert_eq!(attachments, 0, "{m}");
            assert!(search_ids(&pair.bob, &format!("word{k}")).is_empty());
        } else {
            assert_eq!(m["body"].as_str(), Some(body.as_str()), "{m}");
            assert_eq!(attachments, 1, "{m}");
            assert_eq!(m["attachments"][0]["state"], "complete", "{m}");
            assert_eq!(search_ids(&pair.bob, &format!("word{k}")).len(), 1);
        }
    }
    // Finishing the job afterwards works whatever state each was left in.
    for (id, _) in &sent {
        pair.bob.ok(&["inbox", "redact", "--yes", id]);
    }
    assert!(search_ids(&pair.bob, "killtest").is_empty());
    eprintln!(
        "{redacted} of {} redactions had committed when killed",
        sent.len()
    );
}
