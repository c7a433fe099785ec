//! `pigeon inbox watch`

use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter};

use super::super::Global;
use crate::control::client;
use crate::error::{Error, Result};
use crate::inbox::watch::WatchSpec;
use crate::store::{InboxItem, MessageView, Said};

/// Print each message as it is stored, until interrupted (Ctrl-C), for scripts and bots.
///
/// A line each, like `inbox list`; with --json one JSON object per line: the fields of `inbox
/// read --json` and "kind": "received". With a QUERY (the language of `inbox search`), only the
/// messages it matches. It starts from now; --since ID first prints what was stored after that
/// message, then goes on, with no gap and nothing twice. --sent also prints each message you send
/// and each change of its delivery state ("kind": "sent", the fields of `sent read --json`; as
/// text, a line of `sent list` after the word `sent`).
///
/// Follows the running node (start one with `pigeon node run`). A slow reader never holds up
/// delivery: what it has not read yet stays in the inbox, and --since catches up after a restart:
///
///   pigeon inbox watch --json 'label:alerts' | while read -r m; do ...; done
#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// Only messages this search query matches (several arguments are joined with spaces).
    #[arg(value_name = "QUERY", allow_hyphen_values = true,
          add = ArgValueCompleter::new(super::super::completions::query_word))]
    query: Vec<String>,
    /// First what was stored after this message (its id, or a unique prefix).
    #[arg(long, value_name = "ID", add = ArgValueCandidates::new(super::super::completions::inbox_ids))]
    since: Option<String>,
    /// Also what you send, and each change of its delivery state.
    #[arg(long)]
    sent: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub(in crate::cli) async fn run(g: &Global, args: Args) -> Result<()> {
    let query = args.query.join(" ");
    let spec = WatchSpec {
        query: (!query.trim().is_empty()).then_some(query),
        since: args.since,
        sent: args.sent,
    };
    let (json, sent) = (args.json, args.sent);
    client::watch(&g.home()?, spec, |event| {
        let line = if json {
            serde_json::to_string(&event).map_err(|e| Error::encode("the message as JSON", e))?
        } else {
            match &event {
                Said::Received(m) if sent => format!("received\t{}", received(m)),
                Said::Received(m) => received(m),
                Said::Sent(s) => format!("sent\t{}", super::super::sent::line(&s.item)),
            }
        };
        println!("{line}");
        Ok(())
    })
    .await
}

/// A received message as an `inbox list` line.
fn received(m: &MessageView) -> String {
    super::line(&InboxItem::from(m))
}
