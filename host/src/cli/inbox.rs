//! `pigeon inbox list|read|save|fetch|label|rules`

use super::terminal::{one_line, shown};
use super::{Global, count, print_json, progress_bar, unexpected};
use crate::attachments::{self, AttachmentError};
use crate::control::api::{Request, Response};
use crate::error::{Result, UsageError};
use crate::store::InboxItem;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List received messages, newest first, one tab-separated line each: id, from, received at,
    /// labels (comma-separated, or -), subject (or -), the start of the text.
    List {
        /// Show at most N messages.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only messages with this label.
        #[arg(long)]
        label: Option<String>,
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
    /// Add or remove a message's labels.
    #[command(subcommand)]
    Label(LabelCommand),
    /// Built-in rules that label messages as they arrive.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Fetch a message's attachments again: ones given up on (after attachments.give_up_after
    /// without an answer, or bad data from the sender) and ones waiting to be retried.
    ///
    /// With a node running it asks the sender at once; otherwise the node does when it next runs.
    /// `pigeon inbox read ID` shows how far each has come.
    Fetch {
        /// The message id, or a unique prefix of at least 4 characters.
        id: String,
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

/// Messages asked of the node per request: one page's answer stays far inside the control
/// answer's size limit however many messages the inbox holds.
const PAGE: u32 = 500;

/// The inbox, newest first, at most `limit` (all without one), read page by page.
async fn list(g: &Global, limit: Option<u32>, label: Option<String>) -> Result<Vec<InboxItem>> {
    let mut items: Vec<InboxItem> = Vec::new();
    loop {
        let want = limit.map_or(PAGE, |l| (l - l.min(items.len() as u32)).min(PAGE));
        if want == 0 {
            return Ok(items);
        }
        let request = Request::InboxList {
            limit: Some(want),
            label: label.clone(),
            after: items.last().map(|i| i.id.clone()),
        };
        let page = match g.call(request).await? {
            Response::Inbox(page) => page,
            other => return Err(unexpected(other)),
        };
        let last_page = (page.len() as u32) < want;
        items.extend(page);
        if last_page {
            return Ok(items);
        }
    }
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::Label(cmd) => label(g, cmd).await?,
        Command::Rules(cmd) => rules(g, cmd).await?,
        Command::List { limit, label, json } => {
            let items = list(g, limit, label).await?;
            if json {
                return print_json(&items);
            }
            // One tab-separated line per message, a column each (`cut -f` works): an empty
            // label list or subject is "-", and the text follows the subject.
            for i in items {
                let labels = if i.labels.is_empty() {
                    "-".to_owned()
                } else {
                    one_line(&i.labels.join(","))
                };
                let subject = i
                    .subject
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-");
                println!(
                    "{}\t{}\t{}\t{labels}\t{}\t{}",
                    i.id,
                    one_line(&i.from),
                    i.received_at,
                    one_line(subject),
                    one_line(&i.preview)
                );
            }
        }
        Command::Save { id, out, yes } => save(g, id, out, yes).await?,
        Command::Fetch { id } => match g.call(Request::InboxFetch { id }).await? {
            Response::Fetching { attachments: 0 } => println!("every attachment is complete"),
            Response::Fetching { attachments } => {
                println!("fetching {}", count(u64::from(attachments), "attachment"));
            }
            other => return Err(unexpected(other)),
        },
        Command::Read { id, json } => {
            let m = match g.call(Request::InboxRead { id }).await? {
                Response::Message(m) => m,
                other => return Err(unexpected(other)),
            };
            if json {
                return print_json(&m);
            }
            println!("id:       {}", m.id);
            println!("from:     {} ({})", one_line(&m.from), m.from_peer_id);
            println!("sent:     {}", m.sent_at);
            println!("received: {}", m.received_at);
            if let Some(subject) = &m.subject {
                println!("subject:  {}", one_line(subject));
            }
            if !m.labels.is_empty() {
                println!("labels:   {}", one_line(&m.labels.join(", ")));
            }
            for a in &m.attachments {
                let error = a
                    .error
                    .as_deref()
                    .map(|e| format!(" ({})", one_line(e)))
                    .unwrap_or_default();
                println!(
                    "attached: {} ({} bytes, {}, {}/{} chunks){error}",
                    one_line(&a.name),
                    a.size,
                    a.state,
                    a.chunks_held,
                    a.chunks_total
                );
            }
            println!();
            println!("{}", shown(&m.body));
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
        return Err(UsageError::NoAttachments(id).into());
    }
    let dir = out.unwrap_or_else(|| std::path::PathBuf::from("."));
    if !dir.is_dir() {
        return Err(if dir.exists() {
            UsageError::NotADir(dir)
        } else {
            UsageError::NoSuchDir(dir)
        }
        .into());
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

#[derive(Debug, clap::Subcommand)]
pub(super) enum LabelCommand {
    /// Add LABEL to message ID.
    Add {
        /// The message id, or a unique prefix of at least 4 characters.
        id: String,
        /// The label (letters, digits, '-', '_', '.', '/', ':').
        label: String,
    },
    /// Remove LABEL from message ID.
    Rm {
        /// The message id, or a unique prefix of at least 4 characters.
        id: String,
        /// The label.
        label: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum RulesCommand {
    /// Label every message from CONTACT with LABEL as it arrives.
    Add {
        /// The contact's name.
        #[arg(long)]
        from: String,
        /// The label to add.
        #[arg(long)]
        label: String,
        /// Print the new rule's id as JSON: {"id": N}.
        #[arg(long)]
        json: bool,
    },
    /// List the rules, in the order they run.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove rule ID.
    Rm {
        /// The rule id (from `rules list`).
        id: i64,
    },
    /// Run every rule over the messages already in the inbox and apply the changes.
    ///
    /// Built-in rules run first, then the enabled rule plugins in config order, as on receipt.
    /// Changes are applied a page of 256 messages at a time; only what changes something is
    /// listed (the first 1000), and the last line counts them all.
    Apply {
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON: {"dry_run": bool, "changed": N, "changes": [{"id", "from", "actions"}]}.
        #[arg(long)]
        json: bool,
    },
}

async fn label(g: &Global, cmd: LabelCommand) -> Result<()> {
    let (request, verb) = match cmd {
        LabelCommand::Add { id, label } => (
            Request::LabelAdd {
                id,
                label: label.clone(),
            },
            format!("+{label}"),
        ),
        LabelCommand::Rm { id, label } => (
            Request::LabelRm {
                id,
                label: label.clone(),
            },
            format!("-{label}"),
        ),
    };
    match g.call(request).await? {
        Response::Updated { id } => println!("{id} {verb}"),
        other => return Err(unexpected(other)),
    }
    Ok(())
}

async fn rules(g: &Global, cmd: RulesCommand) -> Result<()> {
    match cmd {
        RulesCommand::Add { from, label, json } => {
            match g.call(Request::RulesAdd { from, label }).await? {
                Response::RuleAdded { id } if json => print_json(&serde_json::json!({ "id": id }))?,
                Response::RuleAdded { id } => println!("rule {id} added"),
                other => return Err(unexpected(other)),
            }
        }
        RulesCommand::List { json } => {
            let rules = match g.call(Request::RulesList).await? {
                Response::Rules(rules) => rules,
                other => return Err(unexpected(other)),
            };
            if json {
                return print_json(&rules);
            }
            for r in rules {
                println!("{}\tfrom {}\t+{}", r.id, r.from, r.label);
            }
        }
        RulesCommand::Rm { id } => {
            g.call(Request::RulesRm { id }).await?;
            println!("rule {id} removed");
        }
        RulesCommand::Apply { dry_run, json } => {
            let applied = match g.call(Request::RulesApply { dry_run }).await? {
                Response::RuleChanges(applied) => applied,
                other => return Err(unexpected(other)),
            };
            if json {
                return print_json(&applied);
            }
            for c in &applied.changes {
                let actions: Vec<String> = c.actions.iter().map(describe).collect();
                println!("{}\t{}\t{}", c.id, c.from, actions.join(" "));
            }
            let unlisted = applied.changed - applied.changes.len() as u64;
            if unlisted > 0 {
                println!("... and {unlisted} more");
            }
            let verb = if dry_run { "would change" } else { "changed" };
            println!("{verb} {}", count(applied.changed, "message"));
        }
    }
    Ok(())
}

fn describe(action: &crate::inbox::rules::Action) -> String {
    use crate::inbox::rules::Action;
    match action {
        Action::AddLabel(l) => format!("+{l}"),
        Action::RemoveLabel(l) => format!("-{l}"),
        Action::MarkRead => "read".into(),
        Action::Archive => "archive".into(),
    }
}
