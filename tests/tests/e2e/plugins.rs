//! WASM plugins in real nodes: the built-in keyword-labeler and bootstrap, user plugins that
//! misbehave, and a plugin made with `pigeon plugins new`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pigeon_e2e::{MISBEHAVE_WASM, OutputBounded, TestHome, http_get, wait_for};
use serde_json::Value;

const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

fn plugin<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .expect("plugin list")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list:#}"))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn keyword_labeler_and_a_sender_rule_label_real_deliveries() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    bob.config_set("plugins.keyword-labeler.enabled", "true");
    bob.config_set("plugins.keyword-labeler.config.invoice", "finance");
    // Marks everything read and archived on receipt, so `rules apply` has nothing left for it.
    bob.config_set("plugins.tidy.path", MISBEHAVE_WASM);
    bob.config_set("plugins.tidy.enabled", "true");
    bob.config_set("plugins.tidy.config.mode", "tidy");
    let bob_node = bob.start_node(LOOPBACK);
    let alice_node = alice.start_node(LOOPBACK);
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));
    let rule = bob.json(&[
        "inbox", "rules", "add", "--from", "alice", "--label", "friends", "--json",
    ]);
    assert!(rule["id"].as_i64().is_some_and(|id| id > 0), "{rule}");

    let invoice = alice.send("bob", "Your Invoice for November");
    let lunch = alice.send("bob", "lunch?");
    bob.wait_arrival(&invoice);
    bob.wait_arrival(&lunch);
    assert_eq!(sorted(bob.labels(&invoice)), ["finance", "friends"]);
    assert_eq!(bob.labels(&lunch), ["friends"]);

    let list = bob.json(&["plugins", "list", "--json"]);
    let kw = plugin(&list, "keyword-labeler");
    assert_eq!(kw["enabled"], true);
    assert_eq!(kw["state"], "ready");
    assert_eq!(kw["status"], "ready");
    assert_eq!(kw["kind"], "rule");
    assert_eq!(kw["api_version"], "1.1.0");
    assert!(kw["calls"].as_u64().expect("calls") >= 2, "{kw}");
    assert_eq!(plugin(&list, "bootstrap")["state"], "disabled");
    assert_eq!(plugin(&list, "bootstrap")["status"], "disabled");

    // `rules apply` runs the plugin too; --dry-run shows and changes nothing.
    bob.ok(&["inbox", "label", "rm", &invoice, "finance"]);
    let planned = bob.json(&["inbox", "rules", "apply", "--dry-run", "--json"]);
    assert_eq!(planned["dry_run"], true);
    assert_eq!(planned["changed"], 1, "{planned}");
    let planned = planned["changes"].as_array().expect("changes");
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(planned[0]["id"], invoice.as_str());
    assert_eq!(planned[0]["actions"][0]["label"], "finance");
    assert_eq!(
        bob.labels(&invoice),
        ["friends"],
        "--dry-run changed labels"
    );
    bob.ok(&["inbox", "rules", "apply"]);
    assert_eq!(sorted(bob.labels(&invoice)), ["finance", "friends"]);
    let again = bob.json(&["inbox", "rules", "apply", "--json"]);
    assert_eq!(
        again["changed"], 0,
        "a second apply changes nothing: {again}"
    );
}

/// A discovery plugin's instance is dropped when it traps; the next one is told the state the
/// first was told, which it can no longer see happen: the node is up (`started`) and where it
/// listens. Here with a plugin built against contract 1.0, which must go on loading beside 1.1
/// plugins.
#[test]
fn a_discovery_plugin_that_traps_is_replayed_what_it_was_told() {
    let home = TestHome::init("replay");
    home.config_set("plugins.old.path", pigeon_e2e::CONTRACT_1_0_WASM);
    home.config_set("plugins.old.enabled", "true");
    home.config_set("plugins.old.config.trap_at_tick", "2");
    let node = home.start_node(LOOPBACK);
    wait_for("a second instance", Duration::from_secs(30), || {
        let list = home.json(&["plugins", "list", "--json"]);
        (plugin(&list, "old")["failures"].as_u64() >= Some(1)).then_some(())
    });
    wait_for("the replay", Duration::from_secs(10), || {
        // The second instance's `started`, then its replayed listen address (the node listens
        // on one, from its start, and on no other later).
        let log = home.log();
        let second = log.match_indices("a 1.0 plugin saw started").nth(1)?.0;
        log[second..]
            .contains("a 1.0 plugin saw new-listen-address")
            .then_some(())
    });
    let list = home.json(&["plugins", "list", "--json"]);
    let old = plugin(&list, "old");
    assert_eq!(old["api_version"], "1.0.0", "{old}");
    assert!(
        old["last_failure"]
            .as_str()
            .is_some_and(|f| f.starts_with("on-tick: trapped")),
        "{old}"
    );
    assert_eq!(node.stop(), Some(0));
}

#[test]
fn misbehaving_plugins_are_contained_and_the_node_goes_on() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    for (key, value) in [
        ("plugins.looper.path", MISBEHAVE_WASM),
        ("plugins.looper.enabled", "true"),
        ("plugins.looper.config.mode", "loop"),
        ("plugins.panicker.path", MISBEHAVE_WASM),
        ("plugins.panicker.enabled", "true"),
        ("plugins.panicker.config.mode", "panic"),
        ("plugins.prober.path", MISBEHAVE_WASM),
        ("plugins.prober.enabled", "true"),
        ("plugins.prober.config.mode", "sandbox"),
        ("plugins.keyword-labeler.enabled", "true"),
        ("plugins.keyword-labeler.config.invoice", "finance"),
    ] {
        bob.config_set(key, value);
    }
    let bob_node = bob.start_node_with(LOOPBACK, &["--metrics-addr", "127.0.0.1:0"]);
    let alice_node = alice.start_node(LOOPBACK);
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, std::slice::from_ref(&alice_node.addr));

    let mut ids = Vec::new();
    for i in 0..4 {
        let subject = if i == 1 { "panic" } else { "hello" };
        let out = alice.ok(&["send", "bob", "--subject", subject, &format!("invoice {i}")]);
        ids.push(out.trim().to_owned());
    }
    for id in &ids {
        bob.wait_arrival(id);
        assert!(
            bob.labels(id).contains(&"finance".to_owned()),
            "the well-behaved plugin still ran for {id}"
        );
    }
    assert_eq!(bob.inbox().len(), 4, "each message exactly once");
    let panicked = &ids[1];
    assert!(!bob.labels(panicked).contains(&"survived".to_owned()));
    assert!(bob.labels(&ids[0]).contains(&"survived".to_owned()));
    assert!(
        bob.labels(&ids[2]).contains(&"survived".to_owned()),
        "the call after the panic works"
    );

    let log = std::fs::read_to_string(bob.path().join("node.log")).expect("log");
    assert!(
        log.contains("misbehave was told to panic"),
        "the panic message reaches the log"
    );
    assert!(log.contains("ran past its deadline") && log.contains("looper"));
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");

    // Three timeouts in a row trip the looper's breaker; the others stay ready.
    let list = wait_for("the breaker to open", Duration::from_secs(30), || {
        let list = bob.json(&["plugins", "list", "--json"]);
        (plugin(&list, "looper")["status"] == "paused").then_some(list)
    });
    let looper = plugin(&list, "looper");
    assert!(
        looper["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("paused by the circuit breaker")),
        "{looper}"
    );
    assert!(
        looper["paused_until_ms"].as_u64().is_some_and(|t| t > 0),
        "{looper}"
    );
    assert_eq!(plugin(&list, "panicker")["status"], "ready");
    assert_eq!(plugin(&list, "panicker")["state"], "ready");
    assert_eq!(plugin(&list, "panicker")["failures"], 1);
    assert_eq!(plugin(&list, "keyword-labeler")["failures"], 0);
    let text = bob.ok(&["plugins", "list"]);
    assert!(text.contains("looper") && text.contains("paused"), "{text}");

    let metrics = bob_node.metrics.as_deref().expect("metrics url");
    let (_, body) = http_get(metrics);
    let line = |needle: &str| {
        body.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{needle} not in metrics:\n{body}"))
    };
    assert!(line(r#"pigeon_plugin_failures_total{plugin="looper",reason="timeout"}"#) >= 3.0);
    assert_eq!(
        line(r#"pigeon_plugin_failures_total{plugin="panicker",reason="trap"}"#),
        1.0
    );
    assert_eq!(line(r#"pigeon_plugin_disabled{plugin="looper"}"#), 1.0);

    // With the looper paused, delivery goes on as before. The prober, which runs on every
    // message, tries the host's files, environment and network from inside the node and finds
    // nothing.
    let secret = bob.path().join("config.toml");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let probe_body = format!(
        "{}\n{} invoice",
        secret.display(),
        listener.local_addr().expect("addr")
    );
    let later = alice.send("bob", &probe_body);
    bob.wait_arrival(&later);
    let labels = bob.labels(&later);
    for expected in std::iter::once("finance").chain(pigeon_e2e::SANDBOX_SEALED) {
        assert!(
            labels.contains(&expected.to_owned()),
            "{expected} not in {labels:?}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "the plugin reached a socket of the host"
    );
}

/// `plugins check` gives the reason and exit code for every kind of bad file, and a node whose
/// config names bad plugins runs without them and says why in `plugins list`.
#[test]
fn bad_plugins_are_refused_with_their_reason_and_the_node_runs_without_them() {
    let bob = TestHome::init("bob");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path.display().to_string()
    };
    let component = std::fs::read(MISBEHAVE_WASM).expect("read the test plugin");
    let checks: [(String, i32, &str); 7] = [
        (
            pigeon_e2e::FUTURE_API_WASM.to_owned(),
            2,
            "built against pigeon:plugin@2.0.0, but this pigeon supports pigeon:plugin@1.1 (1.0.0 up to 1.1.x)",
        ),
        (
            file("core.wasm", b"\0asm\x01\0\0\0"),
            2,
            "a core WebAssembly module, not a component",
        ),
        (
            file("garbage.wasm", b"hello, not wasm"),
            2,
            "does not start with the WebAssembly header",
        ),
        (
            file("half.wasm", &component[..component.len() / 2]),
            2,
            "not a valid WebAssembly component",
        ),
        (
            dir.path().join("missing.wasm").display().to_string(),
            4,
            "cannot read",
        ),
        (dir.path().display().to_string(), 2, "not a regular file"),
        ("/dev/zero".to_owned(), 2, "not a regular file"),
    ];
    for (path, code, reason) in &checks {
        let out = bob.run(&["plugins", "check", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{path}: {err}");
        assert!(err.contains(reason), "{path}: {reason:?} not in {err}");
    }
    // With --json the reason is on stdout too, for scripts.
    let out = bob.run(&["plugins", "check", &checks[2].0, "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let why: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(why["exit_code"], 2);
    assert!(
        why["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not start with the WebAssembly header")),
        "{why}"
    );
    let good = bob.json(&["plugins", "check", MISBEHAVE_WASM, "--json"]);
    assert_eq!(good["kind"], "rule");
    assert_eq!(good["api_version"], "1.1.0");

    for (key, value) in [
        ("plugins.future.path", pigeon_e2e::FUTURE_API_WASM),
        ("plugins.future.enabled", "true"),
        ("plugins.gone.path", &checks[4].0),
        ("plugins.gone.enabled", "true"),
        // keyword-labeler refuses a word it could never match.
        ("plugins.keyword-labeler.enabled", "true"),
        ("plugins.keyword-labeler.config.e-mail", "mail"),
    ] {
        bob.config_set(key, value);
    }
    let node = bob.start_node(LOOPBACK);
    let list = bob.json(&["plugins", "list", "--json"]);
    for (name, error) in [
        ("future", "built against pigeon:plugin@2.0.0"),
        ("gone", "cannot read"),
        (
            "keyword-labeler",
            "it refused its configuration: \"e-mail\" is not one word",
        ),
    ] {
        let p = plugin(&list, name);
        assert_eq!(p["status"], "failed_to_load", "{p}");
        assert!(
            p["error"].as_str().is_some_and(|e| e.starts_with(error)),
            "{error:?}: {p}"
        );
        assert!(
            p["state"].as_str().is_some_and(
                |s| s == format!("failed to load: {}", p["error"].as_str().unwrap_or(""))
            ),
            "{p}"
        );
    }
    assert_eq!(node.stop(), Some(0));
}

#[test]
fn bootstrap_connects_nodes_whose_contacts_carry_no_address() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.add_contact("bob", &bob, &[]);
    bob.add_contact("alice", &alice, &[]);
    let bob_node = bob.start_node(LOOPBACK);
    alice.config_set("plugins.bootstrap.enabled", "true");
    alice.config_set(
        "plugins.bootstrap.config.peers",
        &format!(r#"["{}"]"#, bob_node.addr),
    );
    // Queued before alice's node runs: nothing but the bootstrap plugin knows where bob is.
    let to_bob = alice.send("bob", "found you through bootstrap");
    let _alice_node = alice.start_node(LOOPBACK);
    bob.wait_arrival(&to_bob);
    // Bob knows no address of alice either; the connection alice made carries his answer.
    let to_alice = bob.send("alice", "and back");
    alice.wait_arrival(&to_alice);
    let list = alice.json(&["plugins", "list", "--json"]);
    assert_eq!(plugin(&list, "bootstrap")["state"], "ready");
}

/// `pigeon plugins new` makes a crate that tests, builds for wasm32-wasip2, passes `plugins
/// check` and labels a real delivery: the README's "Write a plugin" walk-through. The discovery
/// template and the first-party plugins' unit tests run here too, sharing one target directory.
#[test]
fn a_scaffolded_plugin_builds_checks_and_runs_in_a_node() {
    let work = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let made = bob.ok(&[
        "plugins",
        "new",
        "urgent-rule",
        "--kind",
        "rule",
        "--dir",
        &work.path().display().to_string(),
    ]);
    // The next steps it prints work from inside the new crate, and end with enabling it.
    for step in [
        "cargo build --release --target wasm32-wasip2",
        "pigeon plugins check target/wasm32-wasip2/release/urgent_rule.wasm",
        "pigeon config set plugins.urgent-rule.enabled true",
    ] {
        assert!(made.contains(step), "{step:?} not in {made}");
    }
    let target = work.path().join("target");
    let dir = work.path().join("urgent-rule");
    cargo(&dir, &target, &["test"]);
    cargo(
        &dir,
        &target,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let wasm = target.join("wasm32-wasip2/release/urgent_rule.wasm");
    let wasm_text = wasm.display().to_string();
    let check = bob.ok(&["plugins", "check", &wasm_text]);
    assert!(
        check.contains("a rule plugin built against pigeon:plugin@1.1.0"),
        "{check}"
    );

    // A relative path given to `config set` is from where the user stands, not from the home.
    let set = bob
        .cmd(&[
            "config",
            "set",
            "plugins.urgent-rule.path",
            "wasm32-wasip2/release/urgent_rule.wasm",
        ])
        .current_dir(&target)
        .output_bounded();
    assert!(set.status.success(), "{set:?}");
    assert_eq!(
        bob.ok(&["config", "get", "plugins.urgent-rule.path"])
            .trim(),
        std::path::absolute(&wasm)
            .expect("absolute")
            .display()
            .to_string()
    );
    bob.config_set("plugins.urgent-rule.enabled", "true");
    // With no node running, `plugins list` reads the config and checks the file.
    let offline = bob.json(&["plugins", "list", "--json"]);
    assert_eq!(plugin(&offline, "urgent-rule")["status"], "not_running");
    assert_eq!(plugin(&offline, "urgent-rule")["api_version"], "1.1.0");
    bob.config_set("plugins.urgent-rule.config.word", "urgent");
    bob.config_set("plugins.urgent-rule.config.label", "now");
    let bob_node = bob.start_node(LOOPBACK);
    alice.add_contact("bob", &bob, std::slice::from_ref(&bob_node.addr));
    bob.add_contact("alice", &alice, &[]);
    let _alice_node = alice.start_node(LOOPBACK);
    let id = alice
        .ok(&["send", "bob", "--subject", "URGENT: call me", "soon"])
        .trim()
        .to_owned();
    bob.wait_arrival(&id);
    assert_eq!(bob.labels(&id), ["now"]);

    // The discovery template builds and checks as well.
    let made = bob.json(&[
        "plugins",
        "new",
        "finder",
        "--kind",
        "discovery",
        "--dir",
        &work.path().display().to_string(),
        "--json",
    ]);
    let dir = work.path().join("finder");
    assert_eq!(made["dir"], dir.display().to_string());
    // Without --dir it goes in the current directory, and the JSON paths are absolute still.
    let here = bob
        .cmd(&["plugins", "new", "elsewhere", "--kind", "rule", "--json"])
        .current_dir(work.path())
        .output_bounded();
    assert!(here.status.success(), "{here:?}");
    let here: Value = serde_json::from_slice(&here.stdout).expect("json");
    assert_eq!(
        here["dir"],
        work.path().join("elsewhere").display().to_string()
    );
    assert_eq!(
        made["wasm"],
        dir.join("target/wasm32-wasip2/release/finder.wasm")
            .display()
            .to_string()
    );
    cargo(&dir, &target, &["test"]);
    cargo(
        &dir,
        &target,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let wasm = target.join("wasm32-wasip2/release/finder.wasm");
    let check = bob.ok(&["plugins", "check", &wasm.display().to_string()]);
    assert!(check.contains("a discovery plugin"), "{check}");

    // The first-party plugins' own unit tests (their workspace is not this one).
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    cargo(&plugins, &target, &["test", "--locked"]);
}

/// Runs cargo in `dir` with `target` as its target directory and none of the outer build's flags.
/// Offline, and with the first-party plugins' lock file when the crate has none: it builds from the
/// crates the build of pigeon itself fetched, at the same versions, and the test reaches no network.
fn cargo(dir: &Path, target: &Path, args: &[&str]) {
    let lock = dir.join("Cargo.lock");
    if !lock.exists() {
        let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/Cargo.lock");
        std::fs::copy(ours, &lock).expect("copy the plugins' Cargo.lock");
    }
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output_bounded();
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
