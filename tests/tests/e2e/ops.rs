//! `pigeon ops check`: each check is shown to work by breaking what it checks.

use std::os::unix::fs::PermissionsExt;

use pigeon_e2e::{OutputBounded, TestHome};
use serde_json::Value;

/// Runs `ops check --json` (with `extra` arguments); returns the exit code and the checks by name.
fn check(home: &TestHome, extra: &[&str], with_passphrase: bool) -> (i32, Vec<Value>) {
    let mut args = vec!["ops", "check", "--json"];
    args.extend_from_slice(extra);
    let mut cmd = home.cmd(&args);
    if !with_passphrase {
        cmd.env_remove("PIGEON_PASSPHRASE");
    }
    let out = cmd.output_bounded();
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code().expect("exit code"),
        checks.as_array().expect("array").clone(),
    )
}

fn status<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
}

/// The checks that are not ok or skipped, by name.
fn not_ok(checks: &[Value]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c["status"] != "ok" && c["status"] != "skipped")
        .map(|c| c["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn a_healthy_home_passes_and_each_broken_part_is_named_with_a_fix() {
    let home = TestHome::init("healthy");
    let other = TestHome::init("other");
    home.add_contact("other", &other, &[]);
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 0, "{checks:#?}");
    assert!(not_ok(&checks).is_empty(), "{checks:#?}");
    assert_eq!(status(&checks, "keys.unlock")["status"], "skipped");
    let (code, checks) = check(&home, &["--deep"], true);
    assert_eq!(code, 0, "{checks:#?}");
    assert_eq!(status(&checks, "keys.unlock")["status"], "ok");
    assert_eq!(
        status(&checks, "database.sealed")["status"],
        "ok",
        "{checks:#?}"
    );
    // The human form: a line per check, and the fix under what is not ok.
    let text = home.ok(&["ops", "check"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("permissions")),
        "{text}"
    );

    // A file readable by others.
    let config = home.path().join("config.toml");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 7, "{checks:#?}");
    assert_eq!(not_ok(&checks), ["permissions"]);
    let p = status(&checks, "permissions");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("config.toml is 0644")),
        "{p}"
    );
    assert!(
        p["fix"].as_str().is_some_and(|f| f.contains("chmod")),
        "{p}"
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A file of someone else's (as root, which CI is: hand one to uid 1).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&config, Some(1), None).expect("chown");
        let (code, checks) = check(&home, &[], false);
        assert_eq!(code, 7);
        let p = status(&checks, "permissions");
        assert!(
            p["detail"]
                .as_str()
                .is_some_and(|d| d.contains("config.toml is owned by uid 1")),
            "{p}"
        );
        std::os::unix::fs::chown(&config, Some(0), None).expect("chown back");
    }

    // A bad config value, and a plugin whose file is gone (written by hand, as an editor would).
    let good = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        format!("{good}\n[plugins.gone]\nenabled = true\npath = \"/nowhere/gone.wasm\"\n"),
    )
    .expect("write");
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 7);
    assert_eq!(not_ok(&checks), ["plugins"], "{checks:#?}");
    assert!(
        status(&checks, "plugins")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("gone"))
    );
    std::fs::write(
        &config,
        good.replace("[delivery]", "[delivery]\nbatch_size = 0"),
    )
    .expect("write");
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 7);
    assert_eq!(not_ok(&checks), ["config"], "{checks:#?}");
    assert!(
        status(&checks, "config")["fix"]
            .as_str()
            .is_some_and(|f| f.contains("config set"))
    );
    std::fs::write(&config, &good).expect("write");

    // A file nothing refers to: a warning; exit 0, or 1 with --strict.
    let stray = home.path().join("attachments").join("00ff.sealed");
    let dir = stray.parent().expect("dir");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(&stray, b"left by a crash").expect("write");
    std::fs::set_permissions(&stray, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 0);
    assert_eq!(not_ok(&checks), ["attachments.files"]);
    assert_eq!(status(&checks, "attachments.files")["status"], "warning");
    let (code, _) = check(&home, &["--strict"], false);
    assert_eq!(code, 1);
    std::fs::remove_file(&stray).expect("rm");

    // A tampered row: SQLite finds nothing wrong, --deep does (and only with the passphrase).
    let db = rusqlite::Connection::open(home.path().join("pigeon.db")).expect("open");
    let mut seal: Vec<u8> = db
        .query_row("SELECT seal FROM contacts", [], |r| r.get(0))
        .expect("seal");
    seal[10] ^= 0x01;
    db.execute("UPDATE contacts SET seal = ?1", [seal])
        .expect("tamper");
    drop(db);
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 0, "{checks:#?}");
    let (code, checks) = check(&home, &["--deep"], false);
    assert_eq!(code, 0);
    assert_eq!(status(&checks, "database.sealed")["status"], "skipped");
    let (code, checks) = check(&home, &["--deep"], true);
    assert_eq!(code, 7, "{checks:#?}");
    let sealed = status(&checks, "database.sealed");
    assert_eq!(sealed["status"], "problem");
    assert!(
        sealed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("contacts")),
        "{sealed}"
    );
}

#[test]
fn a_corrupted_page_is_found() {
    let home = TestHome::init("corrupt");
    // Enough rows for several pages, then garbage over one in the middle.
    for i in 0..60 {
        let peer = TestHome::init(&format!("p{i}"));
        home.add_contact(&format!("contact-{i:02}"), &peer, &[]);
    }
    let path = home.path().join("pigeon.db");
    let mut bytes = std::fs::read(&path).expect("read");
    let pages = bytes.len() / 4096;
    assert!(pages >= 4, "{pages} pages");
    let page = pages / 2;
    for b in &mut bytes[page * 4096..page * 4096 + 512] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).expect("write");
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 7, "{checks:#?}");
    let integrity = status(&checks, "database.integrity");
    assert_eq!(integrity["status"], "problem", "{checks:#?}");
    assert!(
        integrity["fix"]
            .as_str()
            .is_some_and(|f| f.contains("restore")),
        "{integrity}"
    );
}

#[test]
fn a_running_node_is_seen_and_holds_its_own_ports() {
    let home = TestHome::init("running");
    let node = home.start_node("/ip4/127.0.0.1/tcp/0");
    let (code, checks) = check(&home, &[], false);
    assert_eq!(code, 0, "{checks:#?}");
    let n = status(&checks, "node");
    assert!(
        n["detail"]
            .as_str()
            .is_some_and(|d| d.contains("a node runs")),
        "{n}"
    );
    assert!(not_ok(&checks).is_empty(), "{checks:#?}");
    let (code, checks) = check(&home, &["--deep"], true);
    assert_eq!(code, 0, "{checks:#?}");
    let index = status(&checks, "search.index");
    assert_eq!(index["status"], "ok", "{index}");
    assert!(
        index["detail"]
            .as_str()
            .is_some_and(|d| d.contains("all 0 messages")),
        "{index}"
    );
    drop(node);
}

#[test]
fn a_tampered_attachment_chunk_is_found_under_deep() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.add_contact("bob", &bob, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, vec![b'x'; 300_000]).expect("write");
    alice.send_attached("bob", "with a file", &file);
    let (code, checks) = check(&alice, &["--deep"], true);
    assert_eq!(code, 0, "{checks:#?}");
    let sealed = status(&checks, "database.sealed");
    assert!(
        sealed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1 attachment chunks")),
        "{sealed}"
    );
    let stored = std::fs::read_dir(alice.path().join("attachments"))
        .expect("attachments")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sealed"))
        .expect("a sealed file");
    let mut bytes = std::fs::read(&stored).expect("read");
    bytes[100] ^= 0x01;
    std::fs::write(&stored, bytes).expect("write");
    let (code, checks) = check(&alice, &[], true);
    assert_eq!(code, 0, "only --deep reads the chunks: {checks:#?}");
    let (code, checks) = check(&alice, &["--deep"], true);
    assert_eq!(code, 7, "{checks:#?}");
    let sealed = status(&checks, "database.sealed");
    assert!(
        sealed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("chunk 0 of")),
        "{sealed}"
    );
}
