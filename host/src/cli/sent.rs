//! `pigeon sent list|read|rm|redact`

use clap_complete::engine::ArgValueCandidates;

use super::{Global, print_json, unexpected};
use crate::control::api::{Request, Response};
use crate::error::Result;
use crate::store::SentItem;
use crate::terminal::{one_line, shown};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List what you sent, newest first, one tab-separated line each: id, state (queued, waiting
    /// for a one-time key, delivered or failed), to, sent at, subject (or -), the start of the
    /// text.
    ///
    /// Everything `pigeon send` queued is kept here, sealed at rest like the inbox, until you
    /// delete or redact it; `pigeon outbox list` shows the delivery side (attempts, errors).
    List {
        /// Show at most N messages.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only messages to this contact.
        #[arg(long, value_name = "CONTACT",
              add = ArgValueCandidates::new(super::completions::contacts))]
        to: Option<String>,
        /// Print JSON: id, to, to_peer_id, sent_at, subject, preview, state, delivered_at,
        /// forward_secret, attachments, redacted_at.
        #[arg(long)]
        json: bool,
    },
    /// Show one sent message whole: its text, files and delivery state.
    Read {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::sent_ids))]
        id: String,
        /// Print JSON: the fields of `sent list --json`, with body, last_error, attempts and files.
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Print only the text, as written.
        #[arg(long)]
        raw: bool,
    },
    /// Delete a sent message from the history, with its delivery record and its files' keys, with
    /// no older copy left in the database files (asks first on a terminal; --yes otherwise).
    /// Refused while it is on its way: cancel it first (`pigeon outbox cancel`).
    Rm {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::sent_ids))]
        id: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Scrub a sent message's text, subject and files' names and keys for good, keeping its id,
    /// recipient, times and delivery state (asks first on a terminal; --yes otherwise). Refused
    /// while it is on its way. The recipient's copy is theirs: this does not reach it.
    Redact {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::sent_ids))]
        id: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::List { limit, to, json } => {
            let items = match g.call(Request::SentList { limit, to }).await? {
                Response::Sent(items) => items,
                other => return Err(unexpected(other)),
            };
            if json {
                return print_json(&items);
            }
            super::say_if_empty(&items, "nothing sent");
            for i in &items {
                println!("{}", line(i));
            }
            Ok(())
        }
        Command::Read { id, json, raw } => read(g, id, json, raw).await,
        Command::Rm { id, yes } => {
            let question = format!("Delete sent message {id} from the history for good?");
            let request = Request::SentRm { id };
            super::inbox::scrub(g, request, &question, "deleted", yes).await
        }
        Command::Redact { id, yes } => {
            let question = format!("Redact sent message {id}: its text and files, for good?");
            let request = Request::SentRedact { id };
            super::inbox::scrub(g, request, &question, "redacted", yes).await
        }
    }
}

/// One `sent list` line.
pub(super) fn line(i: &SentItem) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        i.id,
        i.state.as_str(),
        one_line(&i.to),
        i.sent_at,
        i.subject
            .as_deref()
            .map_or_else(|| "-".to_owned(), one_line),
        one_line(&i.preview)
    )
}

async fn read(g: &Global, id: String, json: bool, raw: bool) -> Result<()> {
    let m = match g.call(Request::SentRead { id }).await? {
        Response::SentMessage(m) => m,
        other => return Err(unexpected(other)),
    };
    if raw {
        return super::inbox::write_raw(&m.body);
    }
    if json {
        return print_json(&m);
    }
    let i = &m.item;
    println!("id:        {}", i.id);
    println!("to:        {} ({})", one_line(&i.to), i.to_peer_id);
    println!("sent:      {}", i.sent_at);
    let state = match (&i.delivered_at, &m.last_error) {
        (Some(when), _) => format!("delivered {when}"),
        (None, Some(error)) => format!("{} ({})", i.state.as_str(), one_line(error)),
        (None, None) => i.state.as_str().to_owned(),
    };
    println!("state:     {state}");
    if i.forward_secret {
        println!("sealed:    to a one-time key (forward secret)");
    }
    if let Some(subject) = &i.subject {
        println!("subject:   {}", one_line(subject));
    }
    for f in &m.files {
        let how = if f.transferred {
            "transferred"
        } else {
            "not transferred yet"
        };
        println!("attached:  {} ({} bytes, {how})", one_line(&f.name), f.size);
    }
    if let Some(when) = &i.redacted_at {
        println!("redacted:  {when}");
        println!();
        println!("(its text and files were redacted)");
        return Ok(());
    }
    println!();
    println!("{}", shown(&m.body));
    Ok(())
}
