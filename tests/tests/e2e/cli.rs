//! The CLI as a user meets it: homes, passphrases, contacts, errors and exit codes.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use pigeon_e2e::{OutputBounded, TestHome, files_under, http_get, metric, system_tool, wait_for};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn init_creates_a_private_home_and_refuses_to_run_twice() {
    let home = TestHome::init("init");
    assert_eq!(mode(home.path()), 0o700);
    for file in files_under(home.path()) {
        assert_eq!(mode(&file), 0o600, "{} is not 0600", file.display());
    }
    for name in ["keystore", "config.toml", "pigeon.db"] {
        assert!(home.path().join(name).exists(), "{name} missing");
    }
    let before = std::fs::read(home.path().join("keystore")).expect("keystore");
    let out = home.run(&["init"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already a pigeon home"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(home.path().join("keystore")).expect("keystore"),
        before
    );
    let config = std::fs::read_to_string(home.path().join("config.toml")).expect("config");
    assert!(
        config.contains("# ") && config.contains("[delivery]"),
        "config has no comments:\n{config}"
    );
}

#[test]
fn wrong_or_missing_passphrase_is_a_clear_error_and_writes_nothing() {
    let home = TestHome::init("pass");
    let db = home.path().join("pigeon.db");
    let before = std::fs::read(&db).expect("db");
    let out = home
        .cmd(&["contacts", "list"])
        .env("PIGEON_PASSPHRASE", "not it")
        .output_bounded();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("wrong passphrase for"),
        "{}",
        stderr(&out)
    );
    let out = home
        .cmd(&["contacts", "list"])
        .env_remove("PIGEON_PASSPHRASE")
        .output_bounded();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("PIGEON_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&db).expect("db"),
        before,
        "a failed unlock changed the database"
    );

    // The same passphrase from a file works.
    let file = home.path().join("pass.txt");
    std::fs::write(&file, format!("{}\n", pigeon_e2e::PASSPHRASE)).expect("write");
    let out = home
        .cmd(&[
            "contacts",
            "list",
            "--passphrase-file",
            file.to_str().expect("path"),
        ])
        .env_remove("PIGEON_PASSPHRASE")
        .output_bounded();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_tampered_keystore_is_reported_as_damaged() {
    let home = TestHome::init("tamper");
    let path = home.path().join("keystore");
    // `id --verify` derives the address from the unlocked keys: the same as the header's.
    let verified = home.ok(&["id", "--verify"]);
    assert_eq!(verified, home.ok(&["id"]));
    let out = home
        .cmd(&["id", "--verify"])
        .env("PIGEON_PASSPHRASE", "not the passphrase")
        .output_bounded();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let mut bytes = std::fs::read(&path).expect("keystore");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x40;
    std::fs::write(&path, bytes).expect("write");
    // Every reader checks the checksum first: `id` (which needs no passphrase) too.
    for args in [&["contacts", "list"][..], &["id"], &["id", "--verify"]] {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    }
}

#[test]
fn id_needs_no_passphrase_and_contacts_round_trip() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    let id = alice
        .cmd(&["id", "--json"])
        .env_remove("PIGEON_PASSPHRASE")
        .output_bounded();
    assert!(id.status.success(), "{}", stderr(&id));
    let id: serde_json::Value = serde_json::from_slice(&id.stdout).expect("json");
    assert!(
        id["peer_id"]
            .as_str()
            .expect("peer_id")
            .starts_with("12D3KooW")
    );
    assert!(
        id["address"]
            .as_str()
            .expect("address")
            .starts_with("pigeon1")
    );

    let bob_id = bob.json(&["id", "--json"]);
    let bob_peer = bob_id["peer_id"].as_str().expect("peer id");
    let bob_addr = bob_id["address"].as_str().expect("address");
    let with_p2p = format!("/ip4/127.0.0.1/tcp/7717/p2p/{bob_peer}");
    alice.ok(&[
        "contacts",
        "add",
        "bob",
        bob_addr,
        "--addr",
        &with_p2p,
        "--addr",
        "/ip4/127.0.0.1/udp/7717/quic-v1",
    ]);
    let list = alice.json(&["contacts", "list", "--json"]);
    assert_eq!(list[0]["name"], "bob");
    assert_eq!(list[0]["peer_id"], bob_peer);
    assert_eq!(list[0]["addrs"].as_array().expect("addrs").len(), 2);

    // A typo in the address, a duplicate name, someone else's /p2p suffix.
    let mut typo = bob_addr.to_owned();
    let last = typo.pop().expect("char");
    typo.push(if last == 'q' { 'p' } else { 'q' });
    let out = alice.run(&["contacts", "add", "bobby", &typo]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a valid pigeon address"),
        "{}",
        stderr(&out)
    );
    let out = alice.run(&["contacts", "add", "bob", &alice.address()]);
    assert_eq!(out.status.code(), Some(2), "own address: {}", stderr(&out));
    let out = alice.run(&["contacts", "add", "bob", bob_addr]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    let carol = TestHome::init("carol").address();
    let out = alice.run(&["contacts", "add", "carol", &carol, "--addr", &with_p2p]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not to this contact"),
        "{}",
        stderr(&out)
    );
    // The PeerId where the address belongs, and an ip:port where a multiaddr belongs, are
    // answered with what to give instead.
    let out = alice.run(&["contacts", "add", "carol", bob_peer]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("this is a PeerId"),
        "{}",
        stderr(&out)
    );
    let out = alice.run(&[
        "contacts",
        "add",
        "carol",
        &carol,
        "--addr",
        "127.0.0.1:7717",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("write it like /ip4/"),
        "{}",
        stderr(&out)
    );

    // Removing asks first; without a terminal it needs --yes.
    let out = alice.run(&["contacts", "rm", "bob"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(
        alice
            .json(&["contacts", "list", "--json"])
            .as_array()
            .expect("list")
            .len(),
        1
    );
    alice.ok(&["contacts", "rm", "bob", "--yes"]);
    assert!(
        alice
            .json(&["contacts", "list", "--json"])
            .as_array()
            .expect("list")
            .is_empty()
    );
    let out = alice.run(&["contacts", "rm", "bob", "--yes"]);
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn missing_home_unknown_contact_and_unknown_message_exit_4() {
    let empty = TestHome::empty("none");
    let out = empty.run(&["inbox", "list"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("pigeon init"), "{}", stderr(&out));
    let home = TestHome::init("lonely");
    let out = home.run(&["send", "nobody", "hello"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("no contact \"nobody\""),
        "{}",
        stderr(&out)
    );
    let out = home.run(&["inbox", "read", "abcdef"]);
    assert_eq!(out.status.code(), Some(4));
    // Too short, or not hex: a usage error that says what an id looks like.
    for bad in ["73c", "hello"] {
        let out = home.run(&["inbox", "read", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("at least its first 4 characters"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_config_and_bad_listen_addresses_are_refused_with_the_key() {
    let home = TestHome::init("config");
    std::fs::write(
        home.path().join("config.toml"),
        "[delivery]\nbackof_max_ms = 5\n",
    )
    .expect("write");
    let out = home.run(&["node", "run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("config.toml") && stderr(&out).contains("backof_max_ms"),
        "{}",
        stderr(&out)
    );
    std::fs::write(home.path().join("config.toml"), "").expect("write");
    let out = home.run(&["node", "run", "--listen", "not-a-multiaddr"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--listen"), "{}", stderr(&out));
}

#[test]
fn a_body_too_large_or_not_text_is_refused() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.add_contact("bob", &bob, &[]);
    let big = alice.path().join("big.txt");
    std::fs::write(&big, vec![b'a'; 2 * 1024 * 1024]).expect("write");
    let out = alice.run(&["send", "bob", "--body-file", big.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let binary = alice.path().join("bin.dat");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
    let out = alice.run(&["send", "bob", "--body-file", binary.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not UTF-8"), "{}", stderr(&out));
    // A file that is not there is "not found", whether it is the body or an attachment.
    let gone = alice.path().join("gone.txt");
    let gone = gone.to_str().expect("path");
    for args in [
        &["send", "bob", "--body-file", gone][..],
        &["send", "bob", "hello", "--attach", gone],
    ] {
        let out = alice.run(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("gone.txt"), "{}", stderr(&out));
    }
    assert!(alice.outbox().is_empty());
}

#[test]
fn errors_are_json_too_with_json_logs() {
    let home = TestHome::init("jsonerr");
    let out = home.run(&["--log-format", "json", "inbox", "read", "abcdef"]);
    assert_eq!(out.status.code(), Some(4));
    let line = stderr(&out);
    let value: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(value["level"], "ERROR");
    assert_eq!(value["exit_code"], 4);
    assert!(
        value["message"]
            .as_str()
            .expect("message")
            .contains("abcdef")
    );
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let home = TestHome::init("port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = home.run(&[
        "node",
        "run",
        "--listen",
        &format!("/ip4/127.0.0.1/tcp/{port}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot listen on"),
        "{}",
        stderr(&out)
    );

    // Another node's port too, though libp2p's listeners allow sharing it (SO_REUSEPORT).
    let first = TestHome::init("first");
    let node = first.start_node("/ip4/127.0.0.1/tcp/0");
    let addr = node.listen_addr();
    let out = pigeon_e2e::output_within(
        &mut home.cmd(&["node", "run", "--listen", &addr]),
        std::time::Duration::from_secs(30),
        "a second node on a taken port",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is in use"), "{}", stderr(&out));
}

/// `pigeon config show | head -1`: when the reader goes away, the command ends quietly (by
/// SIGPIPE, like any Unix filter) instead of panicking with a backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let home = TestHome::init("pipe");
    let mut child = home
        .cmd(&["config", "show"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pigeon");
    // The reader is gone before the command writes a byte.
    drop(child.stdout.take());
    let status = pigeon_e2e::wait_for(
        "the command to end",
        std::time::Duration::from_secs(30),
        || child.try_wait().expect("wait"),
    );
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}: {err}");
}

/// A node that takes a request and never answers (here: stopped with SIGSTOP) is an error with
/// exit 1 once the answer time is up, not a command that hangs.
#[test]
fn a_node_that_does_not_answer_is_exit_1() {
    let home = TestHome::init("stuck");
    let node = home.start_node("/ip4/127.0.0.1/tcp/0");
    home.ok(&["status"]);
    let pid = node.pid() as libc::pid_t;
    // SAFETY: signals to the child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = home
        .cmd(&["status"])
        .env("PIGEON_ANSWER_TIMEOUT", "2")
        .output_bounded();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer within 2 s"), "{err}");
}

/// A pigeon process holds unlocked keys: an abort must not leave them in a core file, and the
/// limit cannot be raised again from inside (the hard limit is 0 too). That it is not dumpable is
/// checked in-process (`home::tests`): no /proc file shows it for another process.
#[test]
fn a_node_forbids_core_files() {
    let home = TestHome::init("nocore");
    let node = home.start_node("/ip4/127.0.0.1/tcp/0");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid())).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    assert_eq!(node.stop(), Some(0));
}

/// Clients that connect to the control socket and say nothing are disconnected after 10 s, and
/// at most 64 are served at once (more wait in the backlog): a stuck script cannot use up the
/// node, and a real command still gets its answer.
#[test]
fn idle_control_clients_are_capped_and_timed_out() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    let home = TestHome::init("control");
    let node = home.start_node_with("/ip4/127.0.0.1/tcp/0", &["--metrics-addr", "127.0.0.1:0"]);
    let url = node.metrics.clone().expect("metrics url");
    let gauge = || metric(&http_get(&url).1, "pigeon_control_connections").unwrap_or(-1.0);
    let mut idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(home.path().join("pigeon.sock")).expect("connect"))
        .collect();
    wait_for("64 idle clients served", Duration::from_secs(30), || {
        (gauge() == 64.0).then_some(())
    });
    for _ in 0..10 {
        let served = gauge();
        assert!(
            served <= 64.0,
            "{served} control connections served at once"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A real command waits behind them, and is answered.
    home.ok(&["status"]);
    // Every idle client is disconnected (EOF), within a bound.
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        assert_eq!(
            stream.read(&mut buf).expect("disconnected, not timed out"),
            0
        );
    }
    let refused = metric(&http_get(&url).1, "pigeon_control_refused_total").unwrap_or(0.0);
    assert!(refused >= 100.0, "{refused}");
    assert_eq!(node.stop(), Some(0));
}

/// A client of another user is refused even when the home's permissions let it reach the socket
/// (`SO_PEERCRED`). Running a client as another user takes root; as any other user the test cannot
/// set that up and says so on stderr.
#[test]
fn another_users_control_client_is_refused() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run a client as another user; the uid check is not exercised");
        return;
    }
    let home = TestHome::init("peercred");
    let _node = home.start_node("/ip4/127.0.0.1/tcp/0");
    // Open the home as a careless user might, so that only the uid check stands in the way, and
    // give the other user a copy of the binary it can run.
    let chmod = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(home.path(), 0o755);
    chmod(&home.path().join("pigeon.sock"), 0o777);
    let bin = home.path().join("pigeon-copy");
    std::fs::copy(pigeon_e2e::pigeon_bin(), &bin).expect("copy the binary");
    chmod(&bin, 0o755);
    let out = std::process::Command::new(&bin)
        .arg("--home")
        .arg(home.path())
        .arg("status")
        .env_remove("PIGEON_HOME")
        .env("PIGEON_ANSWER_TIMEOUT", "5")
        .uid(65534)
        .gid(65534)
        .output_bounded();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("serves only the user who runs the node"),
        "another user was not refused: {err}"
    );
    // The owner still does.
    home.ok(&["status"]);
}

/// The question before a destructive command, on a real terminal: "no" changes nothing, "yes"
/// does it; off a terminal, without --yes, the command refuses and says how to confirm.
#[test]
fn destructive_commands_ask_on_a_terminal() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.add_contact("bob", &bob, &[]);
    let names = |home: &TestHome| -> Vec<String> {
        home.json(&["contacts", "list", "--json"])
            .as_array()
            .expect("contacts")
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };

    let (shown, out) = alice.answer_on_terminal(&["contacts", "rm", "bob"], "n");
    assert!(
        shown.contains("Remove contact \"bob\"? [y/N] "),
        "{shown:?}"
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing changed"
    );
    assert_eq!(names(&alice), ["bob"], "kept after no");
    let (_, out) = alice.answer_on_terminal(&["contacts", "rm", "bob"], "y");
    assert!(out.status.success(), "{out:?}");
    assert!(names(&alice).is_empty(), "removed after yes");

    // A rule: before, `inbox rules rm` removed without asking.
    alice.add_contact("bob", &bob, &[]);
    let rule = alice.json(&[
        "inbox", "rules", "add", "--from", "bob", "--label", "b", "--json",
    ]);
    let id = rule["id"].to_string();
    let rules = |home: &TestHome| home.json(&["inbox", "rules", "list", "--json"]);
    let refused = alice.run(&["inbox", "rules", "rm", &id]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        stderr(&refused).contains("Remove rule") && stderr(&refused).contains("pass --yes"),
        "{}",
        stderr(&refused)
    );
    let (shown, _) = alice.answer_on_terminal(&["inbox", "rules", "rm", &id], "no");
    assert!(
        shown.contains(&format!(
            "Remove rule {id} (messages from bob get +b)? [y/N] "
        )),
        "{shown:?}"
    );
    assert_eq!(rules(&alice).as_array().map(Vec::len), Some(1), "kept");
    let (_, out) = alice.answer_on_terminal(&["inbox", "rules", "rm", &id], "yes");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rules(&alice).as_array().map(Vec::len), Some(0), "removed");

    // A backup over an existing file: "no" leaves the file as it was, "yes" replaces it.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("home.age");
    std::fs::write(&file, b"an older file").expect("write");
    let target = file.to_str().expect("path");
    let (shown, out) = alice.answer_on_terminal(&["backup", "create", target], "n");
    assert!(
        shown.contains(&format!("Replace {target}? [y/N] ")),
        "{shown:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing changed"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"an older file");
    let (_, out) = alice.answer_on_terminal(&["backup", "create", target], "y");
    assert!(out.status.success(), "{out:?}");
    assert!(alice.ok(&["backup", "verify", target]).contains("sound"));

    // The passphrase: asked before any passphrase prompt; "no" leaves the old one working.
    let (shown, out) = alice.answer_on_terminal(&["keys", "passwd"], "n");
    assert!(shown.contains("Change the passphrase of"), "{shown:?}");
    assert!(!shown.contains("New passphrase"), "{shown:?}");
    assert!(out.status.success(), "{out:?}");
    alice.ok(&["contacts", "list"]);
}

/// Completion in real shells: bash completes commands, contact names, undelivered message ids
/// and labels through the script `pigeon completions bash` prints, reading the home without the
/// passphrase; zsh and fish load their scripts, and fish completes a contact too.
#[test]
fn shells_complete_commands_contacts_ids_and_labels() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.add_contact("bob", &bob, &[]);
    alice.add_contact("carol", &TestHome::init("carol"), &[]);
    let queued = alice.send("bob", "never delivered: bob is offline");
    alice.ok(&["inbox", "rules", "add", "--from", "bob", "--label", "work"]);
    let home = alice.path().to_str().expect("path").to_owned();
    let script = alice.ok(&["completions", "bash"]);
    assert!(script.contains("complete -o nospace"), "{script}");
    let dir = tempfile::tempdir().expect("tempdir");
    let script_file = dir.path().join("pigeon.bash");
    std::fs::write(&script_file, &script).expect("write");

    // Each case: the words typed so far (the last one being completed) and what must be offered.
    let bash = |words: &[&str]| -> Vec<String> {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            r#"source '{}'
COMP_WORDS=({})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_TYPE=9
_clap_complete_pigeon pigeon "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
            script_file.display(),
            quoted.join(" ")
        );
        let out = Command::new(system_tool("bash"))
            .arg("--norc")
            .arg("-c")
            .arg(program)
            // Completion must never need the passphrase.
            .env_remove("PIGEON_PASSPHRASE")
            .stdin(std::process::Stdio::null())
            .output_bounded();
        assert!(out.status.success(), "bash: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    };
    assert_eq!(bash(&["pigeon", "se"]), ["send", "sent"]);
    let contacts = bash(&["pigeon", "--home", &home, "send", ""]);
    assert!(
        contacts.starts_with(&["bob".to_owned(), "carol".to_owned()]),
        "{contacts:?}"
    );
    assert_eq!(
        bash(&["pigeon", "--home", &home, "contacts", "rm", "c"]),
        ["carol"]
    );
    let ids = bash(&["pigeon", "--home", &home, "outbox", "cancel", ""]);
    assert!(ids.contains(&queued), "{queued} not in {ids:?}");
    let ids = bash(&["pigeon", "--home", &home, "sent", "read", ""]);
    assert!(ids.contains(&queued), "{queued} not in {ids:?}");
    assert_eq!(
        bash(&["pigeon", "--home", &home, "inbox", "search", "label:w"]),
        ["label:work"]
    );
    assert_eq!(
        bash(&[
            "pigeon", "--home", &home, "inbox", "rules", "add", "--from", "b"
        ]),
        ["bob"]
    );

    // zsh: the script loads under compinit without a word on stderr.
    let zsh_script = alice.ok(&["completions", "zsh"]);
    let zsh_file = dir.path().join("pigeon.zsh");
    std::fs::write(&zsh_file, zsh_script).expect("write");
    let out = Command::new(system_tool("zsh"))
        .arg("-f")
        .arg("-c")
        .arg(format!(
            "autoload -Uz compinit && compinit -u -d '{}/zcompdump' && source '{}'",
            dir.path().display(),
            zsh_file.display()
        ))
        .stdin(std::process::Stdio::null())
        .output_bounded();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "zsh: {}",
        stderr(&out)
    );

    // fish: loads, and completes a contact name through it.
    let fish_script = alice.ok(&["completions", "fish"]);
    let fish_file = dir.path().join("pigeon.fish");
    std::fs::write(&fish_file, fish_script).expect("write");
    let out = Command::new(system_tool("fish"))
        .arg("--no-config")
        .arg("-c")
        .arg(format!(
            "source '{}'; complete -C 'pigeon --home {home} send ca'",
            fish_file.display()
        ))
        .env_remove("PIGEON_PASSPHRASE")
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .output_bounded();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "fish: {}",
        stderr(&out)
    );
    let offered = String::from_utf8_lossy(&out.stdout);
    assert_eq!(offered.trim(), "carol", "{offered}");
}

/// `pigeon man` writes a page per command that man can read.
#[test]
fn man_writes_a_page_per_command() {
    let home = TestHome::init("man");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = home.ok(&["man", "--out", dir.path().to_str().expect("path")]);
    let written: Vec<&str> = out.lines().collect();
    for page in [
        "pigeon.1",
        "pigeon-send.1",
        "pigeon-inbox-rules-rm.1",
        "pigeon-completions.1",
    ] {
        let path = dir.path().join(page);
        assert!(
            written.contains(&path.to_str().expect("path")),
            "{page} not in {out}"
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    assert!(
        !written.iter().any(|p| p.contains("-help")),
        "no pages for clap's help subcommands: {out}"
    );
    let rm = std::fs::read_to_string(dir.path().join("pigeon-inbox-rules-rm.1")).expect("read");
    assert!(
        rm.contains("pigeon\\-inbox\\-rules\\-rm") && rm.contains("yes"),
        "{rm}"
    );
}

/// With a node running, a message id is offered with its subject beside it (fish shows it), the
/// subject cleaned of anything that could drive the terminal; without one, with its sender.
#[test]
fn message_ids_complete_with_their_subject_while_a_node_runs() {
    let pair = pigeon_e2e::Pair::start();
    let id = pair
        .alice
        .ok(&[
            "send",
            "bob",
            "the body",
            "--subject",
            "plan \u{1b}[2Jfor friday",
        ])
        .trim()
        .to_owned();
    pair.bob.wait_arrival(&id);
    let script = pair.bob.ok(&["completions", "fish"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pigeon.fish");
    std::fs::write(&file, script).expect("write");
    let home = pair.bob.path().to_str().expect("path").to_owned();
    let offered = |what: &str| {
        let out = Command::new(system_tool("fish"))
            .arg("--no-config")
            .arg("-c")
            .arg(format!(
                "source '{}'; complete -C 'pigeon --home {home} inbox read '",
                file.display()
            ))
            .env_remove("PIGEON_PASSPHRASE")
            .env("HOME", dir.path())
            .stdin(std::process::Stdio::null())
            .output_bounded();
        assert!(out.status.success(), "fish {what}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let running = offered("with the node");
    let line = running
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not offered: {running:?}"));
    assert!(
        line.contains("plan") && line.contains("for friday"),
        "{line:?}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "a raw escape reached the shell: {line:?}"
    );
    drop(pair.bob_node);
    let stopped = offered("without the node");
    let line = stopped
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not offered: {stopped:?}"));
    assert!(
        line.contains("from alice") || line.contains("from 12D3"),
        "{line:?}"
    );
}

/// What a new user ran into: a raw body without a final newline ran into the prompt (and showed
/// the sender's escapes raw); empty lists printed nothing on a terminal; `status` wanted the
/// passphrase with no node running.
#[test]
fn rough_edges_a_new_user_met_are_gone() {
    let pair = pigeon_e2e::Pair::start();
    let body = "no newline at the end \u{1b}[2J";
    let id = pair.alice.ok(&["send", "bob", body]).trim().to_owned();
    pair.bob.wait_arrival(&id);
    let (shown, status) = pair.bob.show_on_terminal(&["inbox", "read", &id, "--raw"]);
    assert!(status.success(), "{shown:?}");
    assert!(shown.ends_with("at the end \\u{1b}[2J\r\n"), "{shown:?}");
    let piped = pair.bob.run(&["inbox", "read", &id, "--raw"]);
    assert_eq!(
        piped.stdout,
        body.as_bytes(),
        "a pipe gets the bytes as sent"
    );

    let (shown, _) = pair.bob.show_on_terminal(&["outbox", "list"]);
    assert_eq!(shown.trim(), "no messages");
    assert!(
        pair.bob.run(&["outbox", "list"]).stdout.is_empty(),
        "nothing when piped"
    );
    let (shown, _) = pair
        .bob
        .show_on_terminal(&["inbox", "search", "nothing-like-this"]);
    assert_eq!(shown.trim(), "no messages match");

    // No node, no passphrase: status still answers, from what is in clear.
    let lonely = TestHome::init("lonely");
    lonely.add_contact("bob", &pair.bob, &[]);
    lonely.send("bob", "queued: no node runs here");
    let out = lonely
        .cmd(&["status", "--json"])
        .env_remove("PIGEON_PASSPHRASE")
        .output_bounded();
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["node_running"], false, "{status}");
    assert_eq!(status["outbox"]["queued"], 1, "{status}");
    assert_eq!(status["peer_id"], lonely.json(&["id", "--json"])["peer_id"]);
    // And peers: the contact, nothing connected.
    let out = lonely
        .cmd(&["peers", "--json"])
        .env_remove("PIGEON_PASSPHRASE")
        .output_bounded();
    assert!(out.status.success(), "{}", stderr(&out));
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(peers[0]["name"], "bob", "{peers}");
    assert_eq!(peers[0]["connected"], false, "{peers}");
}

/// With `--log-format json`, every line `node run` prints is JSON, stdout included.
#[test]
fn a_node_with_json_logs_prints_only_json() {
    use std::io::BufRead;
    let home = TestHome::init("jsonlogs");
    let mut child = home
        .cmd(&[
            "--log-format",
            "json",
            "node",
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("\"metrics\"")) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no metrics line within 30 s: {lines:?}");
            }
        }
    }
    // SAFETY: kill(2) on the child's own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    for line in lines.iter().chain(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .iter(),
    ) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v.is_object(), "{line}");
    }
    let listening: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(listening["event"], "listening", "{listening}");
    assert!(
        listening["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
    );
}

/// A command waiting at the passphrase prompt holds nothing: another command runs meanwhile
/// (before, the prompt held the home's lock, and others waited 30 s for it and then failed as
/// "busy"). Once answered, the prompt's command does its work.
#[test]
fn a_passphrase_prompt_keeps_no_one_else_waiting() {
    let (alice, bob) = (TestHome::init("alice"), TestHome::init("bob"));
    alice.add_contact("bob", &bob, &[]);
    let queued = alice.send("bob", "bob is offline");
    let tmux = pigeon_e2e::tmux::Tmux::start(&[]);
    tmux.type_text(&format!(
        "{} --home {} outbox list",
        pigeon_e2e::pigeon_bin().display(),
        alice.path().display()
    ));
    tmux.press("Enter");
    tmux.wait_shown("pigeon passphrase:");
    let listed = alice.ok(&["outbox", "list"]);
    assert!(listed.contains(&queued), "{listed}");
    tmux.type_text(pigeon_e2e::PASSPHRASE);
    tmux.press("Enter");
    let pane = tmux.wait_shown(&queued);
    assert!(!pane.contains("busy"), "{pane}");
}
