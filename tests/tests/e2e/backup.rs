//! `pigeon backup create`, `backup verify` and `restore`: a backup taken while the node receives,
//! opened with the standard `age` and `tar` tools, verified, restored into a new home that then
//! receives what was queued for it and sends what it had queued; verify's answer to every kind of
//! damage.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pigeon_e2e::{COMMAND_TIMEOUT, Pair, TestHome, output_within, wait_for};
use serde_json::Value;

/// The `age` command-line tool, installed from Debian's packages where it is missing (CI runs
/// as root on a clean machine).
fn age_cli() -> &'static str {
    static READY: std::sync::Once = std::sync::Once::new();
    READY.call_once(|| {
        let have = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if have("age") {
            return;
        }
        for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "age"][..]] {
            let out = output_within(
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                Duration::from_secs(600),
                "apt-get",
            );
            assert!(
                out.status.success(),
                "the age tool is missing and apt-get {args:?} failed (run as root, or install \
                 the `age` package): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(have("age") && have("age-keygen"), "age did not install");
    });
    "age"
}

/// Runs a standard tool to the end, which must succeed; returns its stdout.
fn tool(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = output_within(cmd, COMMAND_TIMEOUT, what);
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh age identity in `dir`: its file and its public key.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    age_cli();
    let key = dir.join(name);
    tool(Command::new("age-keygen").arg("-o").arg(&key), "age-keygen");
    let public = tool(
        Command::new("age-keygen").arg("-y").arg(&key),
        "age-keygen -y",
    );
    let public = String::from_utf8(public).expect("utf-8");
    (key, public.trim().to_owned())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `backup verify` of `file` with `identity`, as `home`'s user.
fn verify(home: &TestHome, file: &Path, identity: Option<&Path>) -> Output {
    let mut args = vec!["backup", "verify", path(file), "--json"];
    if let Some(i) = identity {
        args.extend(["--identity", path(i)]);
    }
    home.run(&args)
}

/// The entries of `backup`, decrypted with the `age` tool and listed by `tar`.
fn listed_by_age_and_tar(backup: &Path, key: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar_file = dir.path().join("backup.tar");
    decrypt_tar(backup, key, &tar_file);
    let listed = tool(Command::new("tar").arg("tf").arg(&tar_file), "tar tf");
    // The manifest, read by the standard tools, lists every other entry with its sum.
    let manifest = tool(
        Command::new("tar")
            .arg("xOf")
            .arg(&tar_file)
            .arg("pigeon-backup/MANIFEST.json"),
        "tar xO",
    );
    let manifest: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let names: Vec<String> = String::from_utf8(listed)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    let parts = manifest["parts"].as_array().expect("parts");
    assert_eq!(parts.len() + 1, names.len(), "{manifest}");
    for p in parts {
        assert_eq!(p["blake2b"].as_str().map(str::len), Some(64), "{p}");
        let name = format!("pigeon-backup/{}", p["path"].as_str().expect("path"));
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    names
}

/// `pigeon --home DIR ARGS` with the test passphrase, for a home no [`TestHome`] owns.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    output_within(
        Command::new(pigeon_e2e::pigeon_bin())
            .arg("--home")
            .arg(dir)
            .args(args)
            .env("PIGEON_PASSPHRASE", pigeon_e2e::PASSPHRASE)
            .env_remove("PIGEON_HOME")
            .stdin(Stdio::null()),
        COMMAND_TIMEOUT,
        "pigeon",
    )
}

/// A free TCP port on 127.0.0.1 (bound and let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn a_backup_taken_while_receiving_restores_into_a_node_that_carries_on() {
    let mut pair = Pair::start();
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(work.path(), "key.txt");

    // Bob's inbox: messages with a label and read state, an attachment, and a message queued
    // for carol, whose node is not running yet.
    let mut before = Vec::new();
    for i in 0..20 {
        before.push(pair.alice.send("bob", &format!("backedup{i} text")));
    }
    let file = work.path().join("report.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &content).expect("write");
    let with_file = pair.alice.send_attached("bob", "backedup-file", &file);
    for id in before.iter().chain([&with_file]) {
        pair.bob.wait_arrival(id);
    }
    wait_for("the attachment", Duration::from_secs(60), || {
        let m = pair.bob.json(&["inbox", "read", &with_file, "--json"]);
        (m["attachments"][0]["state"] == "complete").then_some(())
    });
    pair.bob.ok(&["inbox", "label", "add", &before[3], "kept"]);
    pair.bob.ok(&["inbox", "mark", "read", &before[5]]);
    let carol = TestHome::init("carol");
    let carol_addr = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    pair.bob
        .add_contact("carol", &carol, std::slice::from_ref(&carol_addr));
    let to_carol = pair.bob.send("carol", "queued in the backup for carol");

    // The backup, while alice keeps sending.
    let backup = work.path().join("bob.age");
    let alice = &pair.alice;
    let bob = &pair.bob;
    let during: Vec<String> = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            (0..30)
                .map(|i| alice.send("bob", &format!("during{i} text")))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(300));
        let created = bob.json(&[
            "backup",
            "create",
            path(&backup),
            "--recipient",
            &public,
            "--json",
        ]);
        assert_eq!(created["sealed_with"], "recipients", "{created}");
        sender.join().expect("sender")
    });
    let names = listed_by_age_and_tar(&backup, &key);
    for want in [
        "pigeon-backup/keystore",
        "pigeon-backup/pigeon.db",
        "pigeon-backup/config.toml",
        "pigeon-backup/MANIFEST.json",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("pigeon-backup/attachments/")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("search")), "{names:?}");

    let verified = verify(&pair.bob, &backup, Some(&key));
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let contents: Value = serde_json::from_slice(&verified.stdout).expect("JSON");
    let in_backup = contents["messages"].as_u64().expect("messages") as usize;
    assert!(
        (21..=51).contains(&in_backup),
        "the snapshot holds the messages before it and some of those during it: {contents}"
    );
    assert_eq!(contents["queued"], 1, "{contents}");
    assert_eq!(contents["sent"], 1, "bob's sent history: {contents}");
    assert_eq!(contents["contacts"], 2, "{contents}");
    assert_eq!(contents["attachment_files"], 1, "{contents}");
    assert!(contents["chunks"].as_u64() >= Some(1), "{contents}");
    for id in &during {
        pair.bob.wait_arrival(id);
    }

    // Bob's machine is gone. Alice queues more for him meanwhile.
    let bob_node = pair.bob_node.take().expect("bob");
    let bob_listen = bob_node.listen_addr();
    bob_node.stop();
    let after: Vec<String> = (0..5)
        .map(|i| pair.alice.send("bob", &format!("after{i} text")))
        .collect();

    // Restore into a new, empty home elsewhere; the dry run first writes nothing.
    let restored = TestHome::empty("bob-restored");
    let target = path(restored.path()).to_owned();
    let restore = ["restore", path(&backup), "--identity", path(&key), "--json"];
    let dry = restored.json(&[&restore[..], &["--dry-run"]].concat());
    assert_eq!(dry["dry_run"], true);
    assert!(
        dry["files"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["path"] == "pigeon.db")),
        "{dry}"
    );
    assert_eq!(
        std::fs::read_dir(&target).expect("ls").count(),
        0,
        "a dry run writes nothing"
    );
    let done = restored.json(&restore);
    assert_eq!(done["dry_run"], false, "{done}");
    // The same peer.
    assert_eq!(
        restored.json(&["id", "--json"])["peer_id"],
        pair.bob.json(&["id", "--json"])["peer_id"]
    );
    let inbox = restored.inbox();
    assert_eq!(inbox.len(), in_backup, "{inbox:?}");
    let item = |id: &str| inbox.iter().find(|m| m["id"] == id).cloned();
    let labelled = item(&before[3]).expect("labelled message");
    assert!(
        labelled["labels"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l == "kept")),
        "{labelled}"
    );
    assert_eq!(item(&before[5]).expect("read")["read"], true);
    // What bob sent is in the restored history, readable.
    let sent = restored.json(&["sent", "read", &to_carol, "--json"]);
    assert_eq!(sent["body"], "queued in the backup for carol", "{sent}");
    assert_eq!(item(&before[6]).expect("unread")["read"], false);
    let saved = work.path().join("saved");
    std::fs::create_dir(&saved).expect("mkdir");
    restored.ok(&["inbox", "save", &with_file, "--out", path(&saved)]);
    assert_eq!(
        std::fs::read(saved.join("report.bin")).expect("saved"),
        content
    );

    // Started where bob was: it receives what alice queued, sends what bob had queued, and
    // search works (the index is rebuilt at first unlock).
    let _node = restored.start_node(&bob_listen);
    wait_for("alice's queued messages", Duration::from_secs(60), || {
        let ids: BTreeSet<String> = restored
            .inbox()
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        after.iter().all(|id| ids.contains(id)).then_some(())
    });
    let _carol_node = carol.start_node(&carol_addr);
    carol.add_contact("bob", &pair.bob, std::slice::from_ref(&bob_listen));
    carol.wait_arrival(&to_carol);
    wait_for("the restored index", Duration::from_secs(60), || {
        let hits = restored.json(&["inbox", "search", "--json", "backedup7"]);
        (hits.as_array()?.len() == 1).then_some(())
    });
    // A message stored is searchable shortly after (the index commits at most every 250 ms,
    // longer on a loaded machine), so this waits too; one never indexed still fails it.
    wait_for(
        "a message received after the restore in the index",
        Duration::from_secs(60),
        || {
            let hits = restored.json(&["inbox", "search", "--json", "after3"]);
            (hits.as_array()?.len() == 1).then_some(())
        },
    );
}

#[test]
fn verify_refuses_every_flipped_byte_a_wrong_key_and_a_cut_file() {
    let home = TestHome::init("alice");
    let other = TestHome::init("bob");
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(work.path(), "key.txt");
    let (wrong_key, _) = keygen(work.path(), "other.txt");
    home.add_contact("bob", &other, &["/ip4/127.0.0.1/tcp/9".to_owned()]);
    for i in 0..10 {
        home.send("bob", &format!("queued {i}"));
    }
    let file = work.path().join("a.bin");
    std::fs::write(&file, vec![7u8; 150_000]).expect("write");
    home.send_attached("bob", "with a file", &file);
    // A file deeper than a backup holds is left out, and said so; the rest is still sound.
    let deep = home.path().join("plugins/a/b/c/d/e/f/g");
    std::fs::create_dir_all(&deep).expect("mkdir");
    std::fs::write(deep.join("x.wasm"), b"wasm").expect("write");
    let backup = work.path().join("a.age");
    let created = home.json(&[
        "backup",
        "create",
        path(&backup),
        "--recipient",
        &public,
        "--json",
    ]);
    assert!(
        created["left_out"].as_array().is_some_and(|l| l
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("x.wasm")))),
        "{created}"
    );
    let sound = verify(&home, &backup, Some(&key));
    assert!(
        sound.status.success(),
        "{}",
        String::from_utf8_lossy(&sound.stderr)
    );
    let bytes = std::fs::read(&backup).expect("read");

    // A flipped bit anywhere: every byte of the header (up to the payload's first bytes), and
    // positions spread over the rest.
    let header_end = bytes
        .windows(4)
        .position(|w| w == b"\n---")
        .expect("the header's end")
        + 60;
    let mut positions: Vec<usize> = (0..header_end).step_by(3).collect();
    positions.extend((0..24).map(|i| header_end + (bytes.len() - header_end - 1) * i / 23));
    let damaged = work.path().join("damaged.age");
    for &pos in &positions {
        let mut copy = bytes.clone();
        copy[pos] ^= 0x01;
        std::fs::write(&damaged, &copy).expect("write");
        let out = verify(&home, &damaged, Some(&key));
        assert_eq!(
            out.status.code(),
            Some(6),
            "a flipped bit at byte {pos} of {}: {}",
            bytes.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("damaged"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "nothing is reported sound");
    }

    // Cut short anywhere, or empty: damaged.
    for len in [0, 10, header_end, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&damaged, &bytes[..len]).expect("write");
        let out = verify(&home, &damaged, Some(&key));
        assert_eq!(out.status.code(), Some(6), "cut to {len} bytes");
    }
    std::fs::write(&damaged, b"not an age file at all\n").expect("write");
    assert_eq!(verify(&home, &damaged, Some(&key)).status.code(), Some(6));

    // Wrong keys: exit 3.
    let out = verify(&home, &backup, Some(&wrong_key));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    home.set_passphrase("not the passphrase");
    assert_eq!(verify(&home, &backup, Some(&key)).status.code(), Some(3));
    home.set_passphrase(pigeon_e2e::PASSPHRASE);
    // Without the identity a backup to recipients cannot be opened: said plainly.
    let out = verify(&home, &backup, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--identity"));

    // A backup under the passphrase: opens with it, not with another; damage is still damage.
    let by_pass = work.path().join("pass.age");
    home.ok(&["backup", "create", path(&by_pass)]);
    assert!(verify(&home, &by_pass, None).status.success());
    let mut copy = std::fs::read(&by_pass).expect("read");
    let mid = copy.len() / 2;
    copy[mid] ^= 0x80;
    std::fs::write(&damaged, &copy).expect("write");
    assert_eq!(verify(&home, &damaged, None).status.code(), Some(6));
    home.set_passphrase("not the passphrase");
    assert_eq!(verify(&home, &by_pass, None).status.code(), Some(3));
    let out = home.run(&["backup", "create", path(&work.path().join("x.age"))]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a backup under a wrong passphrase"
    );
    home.set_passphrase(pigeon_e2e::PASSPHRASE);

    // An existing file is replaced only with --yes; never inside the home.
    let out = home.run(&["backup", "create", path(&backup), "--recipient", &public]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(std::fs::read(&backup).expect("read"), bytes, "untouched");
    home.ok(&[
        "backup",
        "create",
        path(&backup),
        "--recipient",
        &public,
        "--yes",
    ]);
    let inside = home.path().join("b.age");
    let out = home.run(&["backup", "create", path(&inside), "--recipient", &public]);
    assert_eq!(out.status.code(), Some(2));
    let out = home.run(&["backup", "create", path(&backup), "--recipient", "age1nope"]);
    assert_eq!(out.status.code(), Some(2));
    // No temp file is left beside the backups.
    let stray: Vec<_> = std::fs::read_dir(work.path())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // No home: not found.
    let nowhere = work.path().join("nowhere");
    let out = run_in(
        &nowhere,
        &[
            "backup",
            "create",
            path(&work.path().join("n.age")),
            "--recipient",
            &public,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restore refuses a home that has anything in it, and changes nothing there.
    let out = home.run(&["restore", path(&backup), "--identity", path(&key)]);
    assert_eq!(out.status.code(), Some(5));
    let busy = work.path().join("busy");
    std::fs::create_dir(&busy).expect("mkdir");
    std::fs::write(busy.join("note.txt"), "mine").expect("write");
    let out = run_in(&busy, &["restore", path(&backup), "--identity", path(&key)]);
    assert_eq!(out.status.code(), Some(5));
    let left: Vec<_> = std::fs::read_dir(&busy).expect("ls").collect();
    assert_eq!(left.len(), 1);
    // A damaged backup restores nothing, and leaves nothing behind.
    let mut copy = bytes.clone();
    let last = copy.len() - 30;
    copy[last] ^= 0x04;
    std::fs::write(&damaged, &copy).expect("write");
    let fresh = work.path().join("fresh");
    let out = run_in(
        &fresh,
        &["restore", path(&damaged), "--identity", path(&key)],
    );
    assert_eq!(out.status.code(), Some(6));
    assert!(!fresh.exists());
    let stray: Vec<_> = std::fs::read_dir(work.path())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// Gives `home` a contact `nobody` that never comes online, with one message queued for it.
fn nobody(home: &TestHome) {
    let other = TestHome::init("nobody");
    home.add_contact("nobody", &other, &["/ip4/127.0.0.1/tcp/9".to_owned()]);
    home.send("nobody", "queued for nobody");
}

/// The tar inside `backup`, decrypted with the `age` tool into `tar_file`.
fn decrypt_tar(backup: &Path, key: &Path, tar_file: &Path) {
    tool(
        Command::new(age_cli())
            .arg("-d")
            .arg("-i")
            .arg(key)
            .arg("-o")
            .arg(tar_file)
            .arg(backup),
        "age -d",
    );
}

/// Runs `tar ARGS` in `dir`.
fn tar_in(dir: &Path, args: &[&str]) {
    tool(Command::new("tar").current_dir(dir).args(args), "tar");
}

#[test]
fn a_hostile_backup_is_refused_and_writes_nothing_outside() {
    let home = TestHome::init("alice");
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(work.path(), "key.txt");
    nobody(&home);
    let backup = work.path().join("real.age");
    home.ok(&["backup", "create", path(&backup), "--recipient", &public]);
    let plain = work.path().join("real.tar");
    decrypt_tar(&backup, &key, &plain);

    // Each variant: the real tar with one entry added before the manifest (the manifest moved to
    // the end again), encrypted to the same key as anyone holding the public key could.
    let stage = work.path().join("stage");
    std::fs::create_dir_all(stage.join("pigeon-backup")).expect("mkdir");
    std::fs::write(stage.join("escape"), b"outside").expect("write");
    std::fs::write(stage.join("pigeon-backup/pigeon.db-journal"), b"journal").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", stage.join("pigeon-backup/link")).expect("symlink");
    let variants: [(&str, &[&str]); 4] = [
        (
            "a path out of the backup",
            &["-P", "pigeon-backup/../escape"],
        ),
        ("a symbolic link", &["pigeon-backup/link"]),
        (
            "a journal SQLite would apply",
            &["pigeon-backup/pigeon.db-journal"],
        ),
        (
            "a second keystore",
            &["--transform=s,escape,pigeon-backup/keystore,", "escape"],
        ),
    ];
    for (what, add) in variants {
        let tar_file = stage.join("hostile.tar");
        std::fs::copy(&plain, &tar_file).expect("copy");
        tar_in(
            &stage,
            &["-xf", "hostile.tar", "pigeon-backup/MANIFEST.json"],
        );
        tar_in(
            &stage,
            &[
                "--delete",
                "-f",
                "hostile.tar",
                "pigeon-backup/MANIFEST.json",
            ],
        );
        tar_in(&stage, &[&["-rf", "hostile.tar"][..], add].concat());
        tar_in(
            &stage,
            &["-rf", "hostile.tar", "pigeon-backup/MANIFEST.json"],
        );
        let hostile = work.path().join("hostile.age");
        tool(
            Command::new(age_cli())
                .args(["-r", &public, "-o"])
                .arg(&hostile)
                .arg(&tar_file),
            "age -r",
        );
        let out = verify(&home, &hostile, Some(&key));
        assert_eq!(
            out.status.code(),
            Some(6),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target = work.path().join("restored");
        let out = run_in(
            &target,
            &["restore", path(&hostile), "--identity", path(&key)],
        );
        assert_eq!(
            out.status.code(),
            Some(6),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!target.exists(), "{what}: nothing restored");
        assert!(
            !work.path().join("escape").exists(),
            "{what}: nothing written outside"
        );
    }
    let left: Vec<_> = std::fs::read_dir(work.path())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}

#[test]
fn a_killed_backup_leaves_no_partial_file_for_long() {
    let home = TestHome::init("alice");
    let work = tempfile::tempdir().expect("tempdir");
    let (_, public) = keygen(work.path(), "key.txt");
    nobody(&home);
    let file = work.path().join("big.bin");
    std::fs::write(&file, vec![3u8; 40 << 20]).expect("write");
    home.ok(&["send", "nobody", "big", "--attach", path(&file)]);
    let backup = work.path().join("b.age");
    let partials = || {
        std::fs::read_dir(work.path())
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
            .count()
    };
    let mut child = home
        .cmd(&["backup", "create", path(&backup), "--recipient", &public])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("the partial file", Duration::from_secs(60), || {
        (partials() > 0 || backup.exists()).then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !backup.exists() || partials() == 0,
        "never a partial file under the final name"
    );
    home.ok(&[
        "backup",
        "create",
        path(&backup),
        "--recipient",
        &public,
        "--yes",
    ]);
    assert_eq!(
        partials(),
        0,
        "the next backup removes what a killed one left"
    );
    assert!(
        home.path()
            .read_dir()
            .expect("ls")
            .filter_map(Result::ok)
            .all(|e| !e.file_name().to_string_lossy().starts_with(".backup-"))
    );
}
