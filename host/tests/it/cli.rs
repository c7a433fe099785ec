//! The binary's argument handling, without a home.

use std::process::Command;

fn pigeon(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(args)
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
