//! `pigeon chat CONTACT`: the conversation with one contact in a full-screen terminal view.
//!
//! [`Chat`] is the state (the messages both ways in order, the line being typed, the scroll
//! position, the contact's connection) and what a key does to it; it knows nothing of terminals or
//! sockets, so it is tested alone. `chat/view.rs` draws it with ratatui; `cli/chat.rs` runs the
//! loop: keys from the terminal, [`Said`] from the node's watch, answers to what it asked.
//!
//! Everything a peer wrote is drawn through [`crate::terminal::shown`]: its control characters
//! and escape sequences are shown as `\u{..}`, never sent to the terminal.

pub mod view;

use std::collections::HashMap;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::store::{OutboxState, PeerHealth, Said};

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its id.
    pub id: String,
    /// Sent by this node's owner.
    pub mine: bool,
    /// When it was sent (mine) or arrived (RFC 3339).
    pub at: String,
    /// Its subject, if any.
    pub subject: Option<String>,
    /// Its text (empty once redacted).
    pub body: String,
    /// Redacted: its text is gone.
    pub redacted: bool,
    /// Mine: where its delivery stands, and the last error.
    pub state: Option<(OutboxState, Option<String>)>,
    /// Its files.
    pub files: Vec<File>,
}

/// A file that came or went with a message.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    /// Its name, made safe.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Chunks here (received) or transferred (sent: all or none).
    pub done: u32,
    /// Chunks in all.
    pub total: u32,
}

impl File {
    /// Whole: arrived, or taken by the recipient.
    pub fn complete(&self) -> bool {
        self.done >= self.total
    }
}

/// The contact's connection to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not asked yet.
    Unknown,
    /// No connection now (messages wait in the outbox until there is one).
    NotConnected,
    /// Connected directly.
    Direct,
    /// Connected through a relay only.
    Relayed,
}

impl Link {
    /// As the status line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Unknown => "…",
            Link::NotConnected => "not connected",
            Link::Direct => "connected (direct)",
            Link::Relayed => "connected (relayed)",
        }
    }
}

/// What a key asks for, beyond changing the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing more.
    None,
    /// Send this text.
    Send(String),
    /// Save the files of the newest message that has complete ones into this directory (or the
    /// current one).
    Save(Option<String>),
    /// Send this file (its path as typed).
    Attach(String),
    /// Leave.
    Quit,
}

/// The conversation and everything the view shows.
#[derive(Debug)]
pub struct Chat {
    /// The contact's name.
    pub contact: String,
    /// The contact's PeerId.
    pub peer_id: String,
    entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
    /// The line being typed.
    pub editor: Editor,
    /// Lines scrolled up from the newest.
    pub scroll: usize,
    /// The contact's connection.
    pub link: Link,
    /// A line of news for the status bar (an error, a file saved).
    pub notice: Option<String>,
}

impl Chat {
    /// The conversation with `contact` (`peer_id`), `history` oldest first.
    pub fn new(contact: String, peer_id: String, history: Vec<Said>) -> Chat {
        let mut chat = Chat {
            contact,
            peer_id,
            entries: Vec::new(),
            by_id: HashMap::new(),
            editor: Editor::default(),
            scroll: 0,
            link: Link::Unknown,
            notice: None,
        };
        for said in history {
            chat.apply(said);
        }
        chat
    }

    /// The messages, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Takes in a message of this conversation, new or changed (a delivery state, progress), and
    /// returns whether it is one; messages of other conversations are left out.
    pub fn apply(&mut self, said: Said) -> bool {
        let entry = match said {
            Said::Received(m) if m.from_peer_id == self.peer_id => Entry {
                id: m.id,
                mine: false,
                at: m.received_at,
                subject: m.subject,
                redacted: m.redacted_at.is_some(),
                body: m.body,
                state: None,
                files: m
                    .attachments
                    .into_iter()
                    .map(|a| File {
                        name: a.name,
                        size: a.size,
                        done: a.chunks_held,
                        total: a.chunks_total,
                    })
                    .collect(),
            },
            Said::Sent(s) if s.item.to_peer_id == self.peer_id => Entry {
                id: s.item.id,
                mine: true,
                at: s.item.sent_at,
                subject: s.item.subject,
                redacted: s.item.redacted_at.is_some(),
                body: s.body,
                state: Some((s.item.state, s.last_error)),
                files: s
                    .files
                    .into_iter()
                    .map(|f| File {
                        name: f.name,
                        size: f.size,
                        done: u32::from(f.transferred),
                        total: 1,
                    })
                    .collect(),
            },
            _ => return false,
        };
        match self.by_id.get(&entry.id) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.by_id.insert(entry.id.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
        true
    }

    /// Records how many chunks of message `id`'s files are here, in their order.
    pub fn progress(&mut self, id: &str, held: &[u32]) {
        if let Some(&i) = self.by_id.get(id) {
            for (file, &done) in self.entries[i].files.iter_mut().zip(held) {
                file.done = done;
            }
        }
    }

    /// Received messages with files still arriving.
    pub fn arriving(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| !e.mine && e.files.iter().any(|f| !f.complete()))
            .map(|e| e.id.clone())
            .collect()
    }

    /// The newest received message with files.
    pub fn newest_with_files(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| !e.mine && !e.files.is_empty())
    }

    /// Sets the contact's connection from the node's peers.
    pub fn set_link(&mut self, peers: &[PeerHealth]) {
        self.link = match peers.iter().find(|p| p.peer_id == self.peer_id) {
            Some(p) if p.connections.iter().any(|c| !c.relayed) => Link::Direct,
            Some(p) if !p.connections.is_empty() => Link::Relayed,
            Some(p) if p.connected => Link::Direct,
            _ => Link::NotConnected,
        };
    }

    /// What `key` does: edits the line, scrolls (`page` lines for a page), or asks for an
    /// [`Action`].
    pub fn key(&mut self, key: KeyEvent, page: usize) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        // A notice stays until the next key; the status line then shows the connection again.
        self.notice = None;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Char('c') | KeyCode::Char('d') if ctrl => return Action::Quit,
            KeyCode::Esc => return Action::Quit,
            // A new line in the message: Alt-Enter (Shift-Enter where the terminal tells it apart).
            KeyCode::Enter if alt || key.modifiers.contains(KeyModifiers::SHIFT) => {
                self.editor.insert('\n')
            }
            KeyCode::Enter => return self.enter(),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(page.max(1)),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(page.max(1)),
            KeyCode::Up if ctrl || self.editor.is_empty() => {
                self.scroll = self.scroll.saturating_add(1)
            }
            KeyCode::Down if ctrl || self.editor.is_empty() => {
                self.scroll = self.scroll.saturating_sub(1)
            }
            KeyCode::Char('u') if ctrl => self.editor = Editor::default(),
            KeyCode::Char(c) if !ctrl => self.editor.insert(c),
            KeyCode::Backspace => self.editor.backspace(),
            KeyCode::Delete => self.editor.delete(),
            KeyCode::Left => self.editor.left(),
            KeyCode::Right => self.editor.right(),
            KeyCode::Home => self.editor.home(),
            KeyCode::End => self.editor.end(),
            _ => {}
        }
        Action::None
    }

    /// Enter: the line as a message, or a command (`/attach PATH`, `/save [DIR]`, `/quit`,
    /// `/help`).
    fn enter(&mut self) -> Action {
        let text = self.editor.text.clone();
        if text.trim().is_empty() {
            return Action::None;
        }
        if let Some(command) = text.strip_prefix('/').filter(|c| !c.starts_with('/')) {
            let mut words = command.split_whitespace();
            let verb = words.next();
            // The rest of the line, spaces kept: a path may hold them.
            let rest = command
                .trim_start()
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim().to_owned())
                .filter(|r| !r.is_empty());
            let action = match (verb, rest) {
                (Some("save"), dir) => Action::Save(dir),
                (Some("attach"), Some(path)) => Action::Attach(path),
                (Some("attach"), None) => {
                    self.notice = Some("/attach takes a file's path".to_owned());
                    Action::None
                }
                (Some("quit" | "q"), _) => Action::Quit,
                (Some("help"), _) | (None, _) => {
                    self.notice = Some(HELP.to_owned());
                    Action::None
                }
                (Some(other), _) => {
                    self.notice = Some(format!("no command /{other}; {HELP}"));
                    Action::None
                }
            };
            self.editor = Editor::default();
            return action;
        }
        self.editor = Editor::default();
        self.scroll = 0;
        // `//text` sends `/text`.
        let text = text.strip_prefix('/').map_or(text.clone(), str::to_owned);
        Action::Send(text)
    }
}

/// What `/help` says.
pub const HELP: &str = "Enter sends · Alt-Enter new line · PgUp/PgDn scroll · /attach PATH sends a file · /save [DIR] keeps the newest files · //text sends /text · Esc quits";

/// The line being typed: its text and the cursor (a char index).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Editor {
    /// The text.
    pub text: String,
    /// Where the cursor is, in chars.
    pub cursor: usize,
}

impl Editor {
    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    fn byte(&self, char_index: usize) -> usize {
        self.text
            .char_indices()
            .nth(char_index)
            .map_or(self.text.len(), |(b, _)| b)
    }

    fn insert(&mut self, c: char) {
        let at = self.byte(self.cursor);
        self.text.insert(at, c);
        self.cursor += 1;
    }

    fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            let at = self.byte(self.cursor);
            self.text.remove(at);
        }
    }

    fn delete(&mut self) {
        if self.cursor < self.text.chars().count() {
            let at = self.byte(self.cursor);
            self.text.remove(at);
        }
    }

    fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.chars().count());
    }

    fn home(&mut self) {
        self.cursor = 0;
    }

    fn end(&mut self) {
        self.cursor = self.text.chars().count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use serde_json::json;

    const BOB: &str = "12D3KooWbob";

    fn received(id: &str, from: &str, body: &str) -> Said {
        serde_json::from_value(json!({
            "kind": "received", "id": id, "from": "bob", "from_peer_id": from,
            "sent_at": "2026-12-06T10:00:00.000Z", "received_at": "2026-12-06T10:00:01.000Z",
            "subject": null, "labels": [], "body": body,
            "attachments": [{"id": "a1", "name": "r.pdf", "size": 10, "state": "partial",
                             "chunks_held": 1, "chunks_total": 3, "error": null}],
        }))
        .expect("a received message")
    }

    fn sent(id: &str, state: &str) -> Said {
        serde_json::from_value(json!({
            "kind": "sent", "id": id, "to": "bob", "to_peer_id": BOB,
            "sent_at": "2026-12-06T10:00:02.000Z", "subject": null, "preview": "hi",
            "state": state, "delivered_at": null, "forward_secret": false, "attachments": 0,
            "redacted_at": null, "body": "hi", "last_error": null, "attempts": 0, "files": [],
        }))
        .expect("a sent message")
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(chat: &mut Chat, text: &str) {
        for c in text.chars() {
            assert_eq!(chat.key(key(KeyCode::Char(c)), 10), Action::None);
        }
    }

    #[test]
    fn the_conversation_keeps_one_entry_per_message_and_only_this_contact() {
        let mut chat = Chat::new("bob".into(), BOB.into(), vec![received("m1", BOB, "hello")]);
        assert!(!chat.apply(received("m2", "12D3KooWcarol", "not for this view")));
        assert!(chat.apply(sent("s1", "queued")));
        assert!(chat.apply(sent("s1", "delivered")));
        let ids: Vec<&str> = chat.entries().iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["m1", "s1"]);
        assert_eq!(
            chat.entries()[1].state,
            Some((OutboxState::Delivered, None)),
            "the new state replaced the old"
        );
        assert_eq!(chat.arriving(), ["m1"]);
        chat.progress("m1", &[3]);
        assert!(chat.arriving().is_empty());
        assert_eq!(chat.newest_with_files().map(|e| e.id.as_str()), Some("m1"));
    }

    #[test]
    fn keys_edit_send_scroll_and_run_commands() {
        let mut chat = Chat::new("bob".into(), BOB.into(), Vec::new());
        // Nothing to send on an empty line.
        assert_eq!(chat.key(key(KeyCode::Enter), 10), Action::None);
        typed(&mut chat, "helo");
        chat.key(key(KeyCode::Left), 10);
        typed(&mut chat, "l");
        chat.key(key(KeyCode::End), 10);
        chat.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT), 10);
        typed(&mut chat, "two");
        assert_eq!(
            chat.key(key(KeyCode::Enter), 10),
            Action::Send("hello\ntwo".into())
        );
        assert!(chat.editor.text.is_empty(), "the line is cleared");

        // Scrolling on an empty line; never below the newest.
        chat.key(key(KeyCode::PageUp), 10);
        chat.key(key(KeyCode::Up), 10);
        assert_eq!(chat.scroll, 11);
        chat.key(key(KeyCode::PageDown), 10);
        chat.key(key(KeyCode::PageDown), 10);
        assert_eq!(chat.scroll, 0);

        typed(&mut chat, "/save /tmp/x");
        assert_eq!(
            chat.key(key(KeyCode::Enter), 10),
            Action::Save(Some("/tmp/x".into()))
        );
        typed(&mut chat, "/attach /tmp/a file.txt");
        assert_eq!(
            chat.key(key(KeyCode::Enter), 10),
            Action::Attach("/tmp/a file.txt".into()),
            "the rest of the line, spaces kept"
        );
        typed(&mut chat, "/attach");
        assert_eq!(chat.key(key(KeyCode::Enter), 10), Action::None);
        assert!(chat.notice.as_deref().is_some_and(|n| n.contains("path")));
        typed(&mut chat, "//etc is a path");
        assert_eq!(
            chat.key(key(KeyCode::Enter), 10),
            Action::Send("/etc is a path".into())
        );
        typed(&mut chat, "/bogus");
        assert_eq!(chat.key(key(KeyCode::Enter), 10), Action::None);
        assert!(chat.notice.as_deref().is_some_and(|n| n.contains("/bogus")));
        typed(&mut chat, "x");
        chat.key(key(KeyCode::Backspace), 10);
        assert!(chat.editor.text.is_empty());
        assert_eq!(
            chat.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), 10),
            Action::Quit
        );
        assert_eq!(chat.key(key(KeyCode::Esc), 10), Action::Quit);
    }
}
