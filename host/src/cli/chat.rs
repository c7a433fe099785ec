//! `pigeon chat CONTACT`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap_complete::engine::ArgValueCandidates;
use ratatui::crossterm::event::{self, Event};
use tokio::sync::mpsc;

use super::{Global, unexpected};
use crate::attachments::{self, AttachmentRef};
use crate::chat::{Action, Chat, view};
use crate::config::Config;
use crate::control::api::{Request, Response};
use crate::control::{ControlError, client};
use crate::error::{Error, Result, UsageError};
use crate::exit::ErrorKind;
use crate::home::Home;
use crate::inbox::watch::WatchSpec;
use crate::store::Said;
use crate::terminal::one_line;

/// The conversation with one contact, full screen: both directions in order, new messages as
/// they arrive, each of yours with its delivery state as it changes.
///
/// Type and press Enter to send (Alt-Enter starts a new line); PgUp/PgDn (or Up/Down on an empty
/// line) scroll back; `/attach PATH` sends a file; `/save [DIR]` saves the files of the newest
/// message that has some; Esc or
/// Ctrl-C leaves. The status line shows whether the contact is connected, directly or through a
/// relay. What the contact wrote is shown, never obeyed: its escape sequences cannot drive your
/// terminal.
///
/// Talks to the running node (start one with `pigeon node run`); for scripts, see `pigeon send`
/// and `pigeon inbox watch`.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The contact's name.
    #[arg(add = ArgValueCandidates::new(super::completions::contacts))]
    contact: String,
    /// How many earlier messages to show.
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    history: u32,
}

/// What the loop waits on.
enum Input {
    Term(Event),
    Said(Said),
    /// The watch ended: the node went away (or the connection broke).
    Ended(Error),
    Peers(Vec<crate::store::PeerHealth>),
    Progress(String, Vec<u32>),
    /// A line for the status bar from work done aside.
    Notice(String),
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let home = g.home()?;
    home.require()?;
    let request = Request::Conversation {
        contact: args.contact.clone(),
        limit: args.history,
    };
    let (peer_id, history) = match ask(&home, request).await? {
        Response::Conversation { peer_id, said } => (peer_id, said),
        other => return Err(unexpected(other)),
    };
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(UsageError::NotATerminal("chat").into());
    }
    // Only what is unread is marked: opening a long conversation again writes nothing.
    let unread: Vec<String> = history
        .iter()
        .filter_map(|said| match said {
            Said::Received(m) if !m.read => Some(m.id.clone()),
            _ => None,
        })
        .collect();
    let mut chat = Chat::new(args.contact, peer_id, history);
    let (tx, rx) = mpsc::unbounded_channel();
    spawn_inputs(&home, &tx);
    mark_read(&home, &chat, unread);
    // Restores the terminal on a panic too (ratatui's hook); every other way out goes through
    // `restore` below.
    let mut terminal = ratatui::try_init().map_err(Error::io("cannot set up the terminal"))?;
    let result = run_loop(&home, &mut chat, &mut terminal, rx, &tx).await;
    ratatui::restore();
    result
}

/// A request to the running node; none running (or gone) is an error, never a fallback.
async fn ask(home: &Home, request: Request) -> Result<Response> {
    match client::try_node(home, &request).await? {
        Some(reply) => reply,
        None => Err(ControlError::NoNode(home.root().to_owned()).into()),
    }
}

/// Starts what feeds the loop: the terminal's events (a thread: reading them blocks), the node's
/// watch, the contact's connection every 2 s, and the progress of files arriving.
fn spawn_inputs(home: &Home, tx: &mpsc::UnboundedSender<Input>) {
    let keys = tx.clone();
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if keys.send(Input::Term(ev)).is_err() {
                break;
            }
        }
    });
    let (said, h) = (tx.clone(), home.clone());
    tokio::spawn(async move {
        let spec = WatchSpec {
            query: None,
            since: None,
            sent: true,
        };
        let end = client::watch(&h, spec, |s| {
            said.send(Input::Said(s))
                .map_err(|_| Error::from(ControlError::Protocol("the chat ended".into())))
        })
        .await;
        let error = end.err().unwrap_or_else(|| {
            ControlError::Protocol("the node closed the watch (did it stop?)".into()).into()
        });
        let _ = said.send(Input::Ended(error));
    });
    let (peers, h) = (tx.clone(), home.clone());
    tokio::spawn(async move {
        loop {
            if let Ok(Response::Peers(list)) = ask(&h, Request::Peers).await
                && peers.send(Input::Peers(list)).is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

async fn run_loop(
    home: &Home,
    chat: &mut Chat,
    terminal: &mut ratatui::DefaultTerminal,
    mut rx: mpsc::UnboundedReceiver<Input>,
    tx: &mpsc::UnboundedSender<Input>,
) -> Result<()> {
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    loop {
        terminal
            .draw(|frame| view::render(frame, chat))
            .map_err(Error::io("cannot draw on the terminal"))?;
        let input = tokio::select! {
            input = rx.recv() => input,
            _ = progress.tick() => {
                poll_progress(home, chat, tx);
                continue;
            }
        };
        let Some(input) = input else {
            return Ok(());
        };
        match input {
            Input::Term(Event::Key(key)) => {
                let page = terminal
                    .size()
                    .map(|s| view::page(ratatui::layout::Rect::new(0, 0, s.width, s.height)))
                    .unwrap_or(10);
                match chat.key(key, page) {
                    Action::None => {}
                    Action::Quit => return Ok(()),
                    Action::Send(text) => send(home, chat, text).await,
                    Action::Save(dir) => save(home, chat, dir).await,
                    Action::Attach(path) => {
                        chat.notice = Some(format!("sealing {}…", one_line(&path)));
                        attach(home, chat.contact.clone(), path, tx.clone());
                    }
                }
            }
            // A resize, a paste, focus: the next draw fits the new size.
            Input::Term(_) => {}
            Input::Said(said) => {
                let id = match &said {
                    Said::Received(m) => Some(m.id.clone()),
                    Said::Sent(_) => None,
                };
                if chat.apply(said)
                    && let Some(id) = id
                {
                    mark_read(home, chat, vec![id]);
                }
            }
            Input::Ended(error) => return Err(error),
            Input::Peers(peers) => chat.set_link(&peers),
            Input::Progress(id, held) => chat.progress(&id, &held),
            Input::Notice(notice) => chat.notice = Some(notice),
        }
    }
}

async fn send(home: &Home, chat: &mut Chat, body: String) {
    let request = Request::Send {
        to: chat.contact.clone(),
        subject: None,
        body,
        attachments: Vec::new(),
        forward_secrecy: None,
    };
    chat.notice = match ask(home, request).await {
        // The watch brings it into the conversation, queued, and then its delivery.
        Ok(Response::Queued { .. }) => None,
        Ok(other) => Some(format!("unexpected answer: {}", unexpected(other))),
        Err(e) => Some(format!("not sent: {e}")),
    };
}

/// `/attach PATH`: seals the file into the home and sends it to `contact`, aside from the loop (a
/// large file takes a while); the status line says how it went.
fn attach(home: &Home, contact: String, path: String, tx: mpsc::UnboundedSender<Input>) {
    let home = home.clone();
    tokio::spawn(async move {
        let (root, file) = (home.root().to_owned(), PathBuf::from(&path));
        let config = home.config();
        let staged = tokio::task::spawn_blocking(move || -> Result<AttachmentRef> {
            let max = Config::load(&config)?.attachments.max_size;
            Ok(attachments::stage(&root, &file, max, |_| {})?)
        })
        .await
        .unwrap_or_else(|_| Err(ControlError::Protocol("sealing the file failed".into()).into()));
        let notice = match staged {
            Err(e) => format!("not sent: {e}"),
            Ok(staged) => {
                let name = one_line(&staged.name);
                let request = Request::Send {
                    to: contact,
                    subject: None,
                    body: String::new(),
                    attachments: vec![staged.clone()],
                    forward_secrecy: None,
                };
                let result = ask(&home, request).await;
                super::send::forget_unsent(home.root(), std::slice::from_ref(&staged), &result);
                match result {
                    Ok(Response::Queued { .. }) => format!("sending {name}"),
                    Ok(other) => format!("unexpected answer: {}", unexpected(other)),
                    Err(e) => format!("not sent: {e}"),
                }
            }
        };
        let _ = tx.send(Input::Notice(notice));
    });
}

/// Marks the conversation's received messages `ids` read, in the background.
fn mark_read(home: &Home, chat: &Chat, ids: Vec<String>) {
    let unread: Vec<String> = ids
        .into_iter()
        .filter(|id| chat.entries().iter().any(|e| &e.id == id && !e.mine))
        .collect();
    if unread.is_empty() {
        return;
    }
    let home = home.clone();
    tokio::spawn(async move {
        // One request and one transaction, however many (the history shows at most 500); if
        // that fails (one was deleted meanwhile), each on its own.
        for ids in unread.chunks(crate::control::api::MAX_MARKED) {
            let request = Request::InboxMarkMany {
                ids: ids.to_vec(),
                read: true,
            };
            // Only an unknown id is worth a retry one by one (a node gone or stuck is not).
            if let Err(Error::Remote {
                kind: ErrorKind::NotFound,
                ..
            }) = ask(&home, request).await
            {
                for id in ids {
                    let request = Request::InboxMark {
                        id: id.clone(),
                        read: true,
                    };
                    let _ = ask(&home, request).await;
                }
            }
        }
    });
}

/// Asks how far the files still arriving have got.
fn poll_progress(home: &Home, chat: &Chat, tx: &mpsc::UnboundedSender<Input>) {
    for id in chat.arriving() {
        let (home, tx) = (home.clone(), tx.clone());
        tokio::spawn(async move {
            if let Ok(Response::Attachments(list)) =
                ask(&home, Request::InboxAttachments { id: id.clone() }).await
            {
                let held = list.iter().map(|a| a.chunks_held).collect();
                let _ = tx.send(Input::Progress(id, held));
            }
        });
    }
}

/// `/save [DIR]`: the complete files of the newest message that has files, into DIR (or the
/// current directory); a file that exists there is kept, and the status line says so.
async fn save(home: &Home, chat: &mut Chat, dir: Option<String>) {
    let Some(entry) = chat.newest_with_files() else {
        chat.notice = Some("no message here has files".into());
        return;
    };
    let id = entry.id.clone();
    let dir = PathBuf::from(dir.unwrap_or_else(|| ".".into()));
    let list = match ask(home, Request::InboxAttachments { id }).await {
        Ok(Response::Attachments(list)) => list,
        Ok(other) => {
            chat.notice = Some(unexpected(other).to_string());
            return;
        }
        Err(e) => {
            chat.notice = Some(e.to_string());
            return;
        }
    };
    let mut said = Vec::new();
    for info in list {
        let a = &info.attachment;
        let name = crate::terminal::one_line(&a.name);
        if info.chunks_held < a.chunk_count() {
            said.push(format!("{name}: still arriving"));
            continue;
        }
        let file = attachments::file_path(home.root(), &a.id_hex());
        said.push(match attachments::save(&file, a, &dir, false, |_| {}) {
            Ok(path) => format!(
                "saved {}",
                crate::terminal::one_line(&path.display().to_string())
            ),
            Err(e) => format!("{name}: {e}"),
        });
    }
    chat.notice = Some(said.join("; "));
}
