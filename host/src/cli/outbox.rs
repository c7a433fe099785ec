//! `pigeon outbox list|retry|cancel`

use clap_complete::engine::ArgValueCandidates;

use super::{Global, confirm, print_json, unexpected};
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
    /// Try a queued message now, whatever its backoff says; a failed one is queued again.
    Retry {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::outbox_ids))]
        id: String,
    },
    /// Cancel a message that is not delivered yet (asks first on a terminal).
    ///
    /// It becomes failed with the reason "cancelled by the user" and its sealed copy is deleted.
    /// A batch already on the wire may still arrive.
    Cancel {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::outbox_ids))]
        id: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::List { json } => list(g, json).await,
        Command::Retry { id } => match g.call(Request::OutboxRetry { id }).await? {
            Response::Updated { id } => {
                println!("{id} is due now");
                Ok(())
            }
            other => Err(unexpected(other)),
        },
        Command::Cancel { id, yes } => {
            if !confirm(&format!("Cancel message {id}?"), yes)? {
                println!("nothing changed");
                return Ok(());
            }
            match g.call(Request::OutboxCancel { id }).await? {
                Response::Updated { id } => {
                    println!("{id} cancelled");
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        }
    }
}

async fn list(g: &Global, json: bool) -> Result<()> {
    let entries = match g.call(Request::OutboxList).await? {
        Response::Outbox(entries) => entries,
        other => return Err(unexpected(other)),
    };
    if json {
        return print_json(&entries);
    }
    super::say_if_empty(&entries, "no messages");
    for e in entries {
        let next = e.next_attempt.unwrap_or_else(|| "-".into());
        let error = crate::terminal::one_line(&e.last_error.unwrap_or_default());
        println!(
            "{}\t{}\t{}\tattempts={}\tnext={next}\t{error}",
            e.id,
            crate::terminal::one_line(&e.to),
            e.state.as_str(),
            e.attempts
        );
    }
    Ok(())
}
