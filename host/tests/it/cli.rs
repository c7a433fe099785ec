//! The binary's argument handling, without a home.

use std::process::Command;

fn pigeon(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(args)
        .env_remove("PIGEON_HOME")
        .output()
        .expect("run pigeon")
}

/// Runs `pigeon --home HOME ARGS` with a passphrase in the environment.
fn in_home(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("PIGEON_PASSPHRASE", "host cli test")
        .env_remove("PIGEON_HOME")
        .output()
        .expect("run pigeon")
}

#[test]
fn help_lists_every_command() {
    let out = pigeon(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Each command is listed on a line of its own, indented, with its one-line help.
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for cmd in [
        "init", "id", "contacts", "node", "send", "outbox", "inbox", "peers", "status", "config",
        "plugins", "demo", "bench",
    ] {
        assert!(listed.contains(&cmd), "--help does not list {cmd}:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let out = pigeon(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
    let out = pigeon(&["send", "bob"]);
    assert_eq!(out.status.code(), Some(2), "send without text");
    let out = pigeon(&["--log-format", "xml", "id"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_is_printed() {
    let out = pigeon(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pigeon "));
}

/// An address whose X25519 key is a low-order point decodes, but no message can be sealed to it
/// (sending to it used to panic the node): `contacts add` refuses it as bad input.
#[test]
fn contacts_add_refuses_an_address_with_an_unusable_key() {
    use hpke::Deserializable;
    use pigeon::keys::{EncPublic, Keys, address::Address};

    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let run = |args: &[&str]| in_home(&home, args);
    assert!(run(&["init"]).status.success());
    let zero = EncPublic::from_bytes(&[0; 32]).expect("32 bytes decode");
    let evil = Address::new(Keys::generate().identity().public(), zero).to_string();
    let out = run(&["contacts", "add", "evil", &evil]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unusable encryption key"), "{stderr}");
    let list = run(&["contacts", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// Someone who can write the home but not unlock it points a contact at their own key, in the
/// database's clear columns: `send` refuses the damaged row (exit 6) instead of sealing to it.
#[test]
fn a_tampered_contact_row_is_refused_as_damaged() {
    use pigeon::keys::Keys;

    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let run = |args: &[&str]| in_home(&home, args);
    assert!(run(&["init"]).status.success());
    let bob = Keys::generate().address().to_string();
    assert!(run(&["contacts", "add", "bob", &bob]).status.success());
    assert!(run(&["send", "bob", "before"]).status.success());
    let mallory = Keys::generate().address();
    let db = rusqlite::Connection::open(home.join("pigeon.db")).expect("open the database");
    db.execute(
        "UPDATE contacts SET address = ?1, peer_id = ?2 WHERE name = 'bob'",
        rusqlite::params![mallory.to_string(), mallory.peer_id().to_string()],
    )
    .expect("tamper");
    drop(db);
    for args in [&["send", "bob", "after"][..], &["contacts", "list"]] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {stderr}");
        assert!(stderr.contains("damaged"), "{stderr}");
    }
}
