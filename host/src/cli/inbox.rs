//! `pigeon inbox list|read`

use super::{Global, print_json, progress_bar, unexpected};
use crate::attachments::{self, AttachmentError};
use crate::control::api::{Request, Response};
use crate::error::{Error, Result};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List received messages, newest first: id, from, received at, labels, preview.
    List {
        /// Show at most N messages.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a message's attachments to files, verified against their whole-file hash.
    ///
    /// Names from the sender are made safe (no directories, no leading dot); an existing file is
    /// not overwritten unless --yes is given.
    Save {
        /// The message id, or a unique prefix of at least 4 characters.
        id: String,
        /// Directory to write into [default: the current directory].
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// Overwrite existing files.
        #[arg(long, short)]
        yes: bool,
    },
    /// Show one whole message.
    Read {
        /// The message id, or a unique prefix of at least 4 characters.
        id: String,
        /// Print JSON (with `body`).
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::List { limit, json } => {
            let items = match g.call(Request::InboxList { limit }).await? {
                Response::Inbox(items) => items,
                other => return Err(unexpected(other)),
            };
            if json {
                return print_json(&items);
            }
            for i in items {
                let labels = if i.labels.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", i.labels.join(","))
                };
                println!(
                    "{}\t{}\t{}{labels}\t{}",
                    i.id, i.from, i.received_at, i.preview
                );
            }
        }
        Command::Save { id, out, yes } => save(g, id, out, yes).await?,
        Command::Read { id, json } => {
            let m = match g.call(Request::InboxRead { id }).await? {
                Response::Message(m) => m,
                other => return Err(unexpected(other)),
            };
            if json {
                return print_json(&m);
            }
            println!("id:       {}", m.id);
            println!("from:     {} ({})", m.from, m.from_peer_id);
            println!("sent:     {}", m.sent_at);
            println!("received: {}", m.received_at);
            if let Some(subject) = &m.subject {
                println!("subject:  {subject}");
            }
            if !m.labels.is_empty() {
                println!("labels:   {}", m.labels.join(", "));
            }
            for a in &m.attachments {
                let error = a
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                println!(
                    "attached: {} ({} bytes, {}, {}/{} chunks){error}",
                    a.name, a.size, a.state, a.chunks_held, a.chunks_total
                );
            }
            println!();
            println!("{}", m.body);
        }
    }
    Ok(())
}

async fn save(g: &Global, id: String, out: Option<std::path::PathBuf>, yes: bool) -> Result<()> {
    let list = match g.call(Request::InboxAttachments { id: id.clone() }).await? {
        Response::Attachments(list) => list,
        other => return Err(unexpected(other)),
    };
    if list.is_empty() {
        return Err(Error::Invalid(format!("message {id} has no attachments")));
    }
    let dir = out.unwrap_or_else(|| std::path::PathBuf::from("."));
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let home = g.home()?;
    for info in list {
        let a = &info.attachment;
        if info.chunks_held < a.chunk_count() {
            let e = AttachmentError::Incomplete {
                name: a.name.clone(),
                held: info.chunks_held,
                total: a.chunk_count(),
            };
            return Err(e.into());
        }
        let bar = progress_bar(a.size, &format!("saving {}", a.name));
        let file = attachments::file_path(home.root(), &a.id_hex());
        let result = attachments::save(&file, a, &dir, yes, |done| {
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
        });
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let path = result?;
        println!("{}", path.display());
    }
    Ok(())
}
