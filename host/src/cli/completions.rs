//! `pigeon completions SHELL`, and shell completion itself: the scripts, and the candidates they
//! ask this binary for (`COMPLETE=SHELL pigeon -- WORDS...`, clap_complete's dynamic engine): contact names,
//! message ids and labels.
//!
//! Completion never prompts. It asks the running node over the control socket when there is one
//! (which knows subjects, to show beside message ids), and otherwise reads the columns the database
//! keeps in clear ([`crate::store::Peek`]): names, ids, senders, times and labels, no passphrase
//! needed. Whatever fails yields no candidates, never an error in the middle of a command line.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use clap::builder::StyledStr;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::{CompleteEnv, Shells};

use super::Cli;
use crate::control::api::{Request, Response};
use crate::control::client;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::store::{Archived, Glimpse, InboxQuery, Peek, format_time};
use crate::terminal::one_line;

/// The environment variable that turns a run into a completion request.
const VAR: &str = "COMPLETE";
/// Most message ids offered.
const MAX_IDS: u32 = 200;
/// How long completion waits for a running node.
const NODE_WAIT: Duration = Duration::from_secs(2);

/// Answers a completion request and exits, when the shell's script made this run one
/// (`COMPLETE` is set); returns otherwise. Must run before anything is printed.
pub fn complete_if_asked() {
    CompleteEnv::with_factory(Cli::command).var(VAR).complete();
}

/// Arguments of `pigeon completions`.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The shell to write the script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the script for the shell asked for.
pub(super) fn run(args: Args) -> Result<()> {
    write_script(args.shell)
}

/// The shells `pigeon completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

impl Shell {
    fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
            Shell::Elvish => "elvish",
            Shell::Powershell => "powershell",
        }
    }
}

/// Writes `shell`'s script to stdout: it registers completion for `pigeon` and calls back into
/// this binary (at the path it was started by) for every completion.
fn write_script(shell: Shell) -> Result<()> {
    let shells = Shells::builtins();
    let completer = shells.completer(shell.name()).ok_or_else(|| {
        Error::io(format!("no completion script for {}", shell.name()))(
            std::io::ErrorKind::Unsupported.into(),
        )
    })?;
    let me = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("pigeon"));
    let mut path = PathBuf::from(&me);
    // A relative path with a directory (./target/debug/pigeon) must work from anywhere.
    if path.components().count() > 1
        && path.is_relative()
        && let Ok(cwd) = std::env::current_dir()
    {
        path = cwd.join(path);
    }
    let mut out = Vec::new();
    completer
        .write_registration(VAR, "pigeon", "pigeon", &path.to_string_lossy(), &mut out)
        .map_err(Error::io("cannot write the completion script"))?;
    std::io::stdout()
        .write_all(&out)
        .map_err(Error::io("cannot write the completion script"))
}

/// The home the command line being completed names (`--home DIR`, `--home=DIR`), else
/// `PIGEON_HOME`, else the default.
fn home() -> Option<Home> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut explicit = None;
    for (i, arg) in args.iter().enumerate() {
        if arg == "--home" {
            explicit = args.get(i + 1).map(PathBuf::from);
        } else if let Some(dir) = arg.to_str().and_then(|a| a.strip_prefix("--home=")) {
            explicit = Some(PathBuf::from(dir));
        }
    }
    let explicit = explicit.or_else(|| std::env::var_os("PIGEON_HOME").map(PathBuf::from));
    Home::resolve(explicit).ok()
}

/// The running node's answer to `request`, if a node runs and answers in time.
fn ask_node(home: &Home, request: Request) -> Option<Response> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        match tokio::time::timeout(NODE_WAIT, client::try_node(home, &request)).await {
            Ok(Ok(Some(Ok(response)))) => Some(response),
            _ => None,
        }
    })
}

/// The home's database, read without the passphrase.
fn peek(home: &Home) -> Option<Peek> {
    Peek::open(&home.database()).ok()
}

fn help(text: String) -> Option<StyledStr> {
    Some(StyledStr::from(one_line(&text)))
}

/// Contact names.
pub(super) fn contacts() -> Vec<CompletionCandidate> {
    let Some(names) = home().and_then(|h| peek(&h)?.contact_names().ok()) else {
        return Vec::new();
    };
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// Received messages' ids, newest first, described by subject (from a running node) or by
/// sender and time.
pub(super) fn inbox_ids() -> Vec<CompletionCandidate> {
    let Some(home) = home() else {
        return Vec::new();
    };
    let query = InboxQuery {
        limit: Some(MAX_IDS),
        archived: Archived::Include,
        ..InboxQuery::default()
    };
    if let Some(Response::Inbox(items)) = ask_node(&home, Request::InboxList(query)) {
        return items
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let about = match m.subject {
                    Some(s) if !s.is_empty() => format!("{s} (from {})", m.from),
                    _ => format!("from {}, {}", m.from, m.received_at),
                };
                CompletionCandidate::new(m.id)
                    .help(help(about))
                    .display_order(Some(i))
            })
            .collect();
    }
    glimpses(peek(&home).and_then(|p| p.inbox(MAX_IDS).ok()), "from")
}

/// Ids of messages still to deliver (what `outbox retry` and `outbox cancel` take).
pub(super) fn outbox_ids() -> Vec<CompletionCandidate> {
    let Some(home) = home() else {
        return Vec::new();
    };
    glimpses(peek(&home).and_then(|p| p.undelivered(MAX_IDS).ok()), "to")
}

/// Ids of sent messages (what `sent read`, `sent rm` and `sent redact` take).
pub(super) fn sent_ids() -> Vec<CompletionCandidate> {
    let Some(home) = home() else {
        return Vec::new();
    };
    glimpses(peek(&home).and_then(|p| p.sent(MAX_IDS).ok()), "to")
}

fn glimpses(rows: Option<Vec<Glimpse>>, word: &str) -> Vec<CompletionCandidate> {
    rows.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let at = format_time(u64::try_from(g.at_ms).unwrap_or(0));
            CompletionCandidate::new(g.id)
                .help(help(format!("{word} {}, {at}", g.peer)))
                .display_order(Some(i))
        })
        .collect()
}

/// Labels in use.
pub(super) fn labels() -> Vec<CompletionCandidate> {
    let Some(labels) = home().and_then(|h| peek(&h)?.labels().ok()) else {
        return Vec::new();
    };
    labels.into_iter().map(CompletionCandidate::new).collect()
}

/// A search query's word: after `label:`, the labels in use.
pub(super) fn query_word(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(current) = current.to_str() else {
        return Vec::new();
    };
    let Some(prefix) = current.strip_prefix("label:") else {
        return Vec::new();
    };
    labels()
        .into_iter()
        .filter(|c| c.get_value().to_string_lossy().starts_with(prefix))
        .map(|c| c.add_prefix("label:"))
        .collect()
}
