//! `pigeon chat` driven for real: under tmux (on its own socket), against two real nodes, keys
//! sent and the pane read back, as a user at a terminal would see it.

use std::path::Path;
use std::time::Duration;

use pigeon_e2e::tmux::Tmux;
use pigeon_e2e::{Pair, pigeon_bin, wait_for};

fn chat_command(home: &Path, contact: &str) -> String {
    format!(
        "{} --home {} chat {contact}",
        pigeon_bin().display(),
        home.display()
    )
}

#[test]
fn a_conversation_under_tmux_sends_receives_and_restores_the_terminal() {
    let mut pair = Pair::start();
    let earlier = pair.bob.send("alice", "an earlier word from bob");
    pair.alice.wait_arrival(&earlier);
    let tmux = Tmux::start(&[]);
    tmux.type_text(&chat_command(pair.alice.path(), "bob"));
    tmux.press("Enter");

    // The history, and the contact's connection in the status line.
    tmux.wait_shown("an earlier word from bob");
    assert!(tmux.alternate(), "a full-screen view");
    tmux.wait_shown("connected (direct)");
    assert_eq!(
        pair.alice.json(&["inbox", "read", &earlier, "--json"])["read"],
        true,
        "what the chat showed is read"
    );

    // Typed and sent: it shows, then shows delivered; bob has it.
    tmux.type_text("hello bob, from the chat view");
    tmux.press("Enter");
    let pane = tmux.wait_shown("you · delivered");
    assert!(pane.contains("hello bob, from the chat view"), "{pane}");
    let got = wait_for("bob to have it", Duration::from_secs(30), || {
        pair.bob
            .inbox()
            .into_iter()
            .find(|m| m["preview"] == "hello bob, from the chat view")
    });
    assert_eq!(got["from"], "alice");

    // Two lines in one message (Alt-Enter), sent as one.
    tmux.type_text("first line");
    tmux.press("M-Enter");
    tmux.type_text("second line");
    tmux.press("Enter");
    tmux.wait_shown("second line");
    wait_for(
        "the two-line message at bob",
        Duration::from_secs(30),
        || {
            pair.bob
                .inbox()
                .into_iter()
                .find(|m| m["preview"] == "first line second line")
        },
    );

    // A file each way: /attach sends one; one from bob shows complete and /save keeps it.
    let files = tempfile::tempdir().expect("tempdir");
    let outgoing = files.path().join("plan for bob.txt");
    std::fs::write(&outgoing, b"the plan, in a file").expect("write");
    tmux.type_text(&format!("/attach {}", outgoing.display()));
    tmux.press("Enter");
    tmux.wait_shown("[file] plan for bob.txt (19 bytes)");
    let with_file = wait_for("bob to have the file", Duration::from_secs(30), || {
        pair.bob.inbox().into_iter().find(|m| {
            let id = m["id"].as_str().unwrap_or_default();
            let read = pair.bob.json(&["inbox", "read", id, "--json"]);
            (read["attachments"][0]["name"] == "plan for bob.txt"
                && read["attachments"][0]["state"] == "complete")
                .then_some(())
                .is_some()
        })
    });
    assert_eq!(with_file["from"], "alice");
    let incoming = files.path().join("report.bin");
    let content: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&incoming, &content).expect("write");
    pair.bob.send_attached("alice", "the report", &incoming);
    tmux.wait_shown("complete: /save to keep it");
    let saved = files.path().join("saved");
    std::fs::create_dir(&saved).expect("mkdir");
    tmux.type_text(&format!("/save {}", saved.display()));
    tmux.press("Enter");
    tmux.wait_shown("saved ");
    assert_eq!(
        std::fs::read(saved.join("report.bin")).expect("saved"),
        content
    );

    // Bob's reply appears as it arrives; his escape sequences are shown, not obeyed.
    pair.bob
        .send("alice", "a reply \x1b[2J\x1b]0;owned\x07 with escapes");
    let pane = tmux.wait_shown("a reply");
    assert!(pane.contains(r"\u{1b}[2J"), "{pane}");
    let title = tmux.run(&["display", "-p", "#{pane_title}"]);
    assert!(!title.contains("owned"), "the title was set: {title}");

    // A smaller terminal: drawn again to fit, the status line at the new bottom (a key first:
    // the notice of /save gives the status line back to the connection).
    tmux.press("BSpace");
    tmux.run(&["resize-window", "-x", "60", "-y", "12"]);
    wait_for("the view to fit 60x12", Duration::from_secs(30), || {
        let pane = tmux.pane();
        let lines: Vec<&str> = pane.lines().collect();
        (lines.len() <= 12 && lines.last().is_some_and(|l| l.starts_with("bob ·"))).then_some(())
    });
    tmux.run(&["resize-window", "-x", "100", "-y", "24"]);

    // A command it does not know says so; Esc leaves and the terminal is as before.
    tmux.type_text("/nonsense");
    tmux.press("Enter");
    tmux.wait_shown("no command /nonsense");
    tmux.press("Escape");
    wait_for("the chat to end", Duration::from_secs(30), || {
        (!tmux.alternate()).then_some(())
    });

    // Again, and this time the node goes away: the chat ends, says why, and restores the
    // terminal; the shell gets its prompt back and the exit status is 1.
    tmux.type_text(&chat_command(pair.alice.path(), "bob"));
    tmux.press("Enter");
    tmux.wait_shown("with escapes");
    pair.alice_node.take().expect("alice").stop();
    wait_for(
        "the chat to end with the node",
        Duration::from_secs(30),
        || (!tmux.alternate()).then_some(()),
    );
    tmux.type_text("echo status=$?");
    tmux.press("Enter");
    let pane = tmux.wait_shown("status=1");
    assert!(pane.contains("node"), "{pane}");
}

#[test]
fn chat_needs_a_node_and_a_terminal() {
    let pair = Pair::start();
    // Off a terminal: a clear refusal (exit 2), nothing drawn.
    let off = pair.alice.run(&["chat", "bob"]);
    assert_eq!(off.status.code(), Some(2), "{off:?}");
    assert!(
        String::from_utf8_lossy(&off.stderr).contains("needs a terminal"),
        "{off:?}"
    );
    // An unknown contact: exit 4.
    let unknown = pair.alice.run(&["chat", "nobody"]);
    assert_eq!(unknown.status.code(), Some(4), "{unknown:?}");
    // No node: says so (exit 1), on a terminal too.
    let idle = pigeon_e2e::TestHome::init("idle");
    let none = idle.run(&["chat", "bob"]);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no node runs"),
        "{none:?}"
    );
}
