//! `pigeon outbox list`

use super::{Global, print_json, unexpected};
use crate::control::api::{Request, Response};
use crate::error::Result;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List outgoing messages: id, recipient, state (queued, delivered, failed), attempts, next
    /// attempt and last error.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    let Command::List { json } = cmd;
    let entries = match g.call(Request::OutboxList).await? {
        Response::Outbox(entries) => entries,
        other => return Err(unexpected(other)),
    };
    if json {
        return print_json(&entries);
    }
    for e in entries {
        let next = e.next_attempt.unwrap_or_else(|| "-".into());
        let error = e.last_error.unwrap_or_default();
        println!(
            "{}\t{}\t{}\tattempts={}\tnext={next}\t{error}",
            e.id,
            e.to,
            e.state.as_str(),
            e.attempts
        );
    }
    Ok(())
}
