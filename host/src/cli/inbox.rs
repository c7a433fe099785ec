//! `pigeon inbox list|read`

use super::{Global, print_json, unexpected};
use crate::control::api::{Request, Response};
use crate::error::Result;

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
            println!();
            println!("{}", m.body);
        }
    }
    Ok(())
}
