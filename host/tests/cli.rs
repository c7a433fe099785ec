//! The binary's argument handling, without a home. (Having an integration test here also makes
//! `cargo test --workspace` build the `pigeon` binary that the end-to-end tests in `tests/` run.)

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
    for cmd in [
        "init", "id", "contacts", "node", "send", "outbox", "inbox", "demo",
    ] {
        assert!(text.contains(cmd), "--help does not mention {cmd}:\n{text}");
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
