//! `pigeon inbox list|search|watch|reindex|read|save|fetch|archive|mark|rm|redact|label|rules`

mod search;
mod watch;

use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter};
use std::io::IsTerminal;

use super::{Global, count, print_json, progress_bar, unexpected};
use crate::attachments::{self, AttachmentError};
use crate::control::api::{Request, Response};
use crate::error::{Result, UsageError};
use crate::store::{Archived, InboxItem, InboxQuery};
use crate::terminal::{one_line, shown};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List received messages, newest first, one tab-separated line each: id, state (unread,
    /// read or archived), from, received at, labels (comma-separated, or -), subject (or -), the
    /// start of the text. Archived messages are left out unless --archived or --all.
    List {
        /// Show at most N messages.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only messages with this label.
        #[arg(long, add = ArgValueCandidates::new(super::completions::labels))]
        label: Option<String>,
        /// Only unread messages.
        #[arg(long)]
        unread: bool,
        /// Only archived messages.
        #[arg(long, conflicts_with = "all")]
        archived: bool,
        /// Archived messages too.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search the inbox: subjects and texts, with filters. Newest first; each hit is a line like
    /// `inbox list` with a snippet after it, the matched words in [brackets].
    ///
    /// Words must all match (accents and case do not matter: `cafe` finds `Café`). `AND`, `OR`,
    /// `NOT` (or `-word`) and parentheses combine them; "an exact phrase" in quotes; `invoic*`
    /// for words that start so. Filters: from:CONTACT, to:CONTACT, label:L, subject:WORD,
    /// has:attachment, attachment:NAME, is:unread, is:read, is:archived, after:DATE, before:DATE
    /// (YYYY-MM-DD, UTC, or RFC 3339), in:inbox, in:sent, in:all. What you sent (`pigeon sent`)
    /// is searched with in:sent, in:all or to:CONTACT; otherwise only what you received. A
    /// filter alone is a query. Quote the whole query for the shell when it holds quotes or
    /// parentheses:
    ///
    ///   pigeon inbox search 'invoice (march OR april) -paid from:alice'
    ///
    ///   pigeon inbox search label:work is:unread after:2026-11-01
    Search {
        /// The query (several arguments are joined with spaces; `-word` is a word to exclude,
        /// not an option).
        #[arg(required = true, value_name = "QUERY", allow_hyphen_values = true,
              add = ArgValueCompleter::new(super::completions::query_word))]
        query: Vec<String>,
        /// Show at most N hits (1 to 10000).
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::inbox::search::MAX_HITS)))]
        limit: u32,
        /// Newest first (date) or best match first (relevance).
        #[arg(long, value_enum, default_value_t = search::SortBy::Date)]
        sort: search::SortBy,
        /// Print JSON: the fields of `inbox list --json`, with `snippet` and `score`.
        #[arg(long)]
        json: bool,
    },
    // Its help is `watch::Args`'s (a doc comment here would replace the long one).
    Watch(watch::Args),
    /// Build the search index again from the inbox (it repairs itself on start; this is for
    /// doing it by hand). The inbox is not touched.
    Reindex {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Archive a message: it leaves `inbox list` (see --archived) and stays searchable and
    /// readable.
    Archive {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
    },
    /// Bring an archived message back into `inbox list`.
    Unarchive {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
    },
    /// Mark messages read or unread (`inbox read` marks one read). Several at once are marked
    /// together: all of them, or none if one id is unknown.
    Mark {
        /// `read` or `unread`.
        state: MarkState,
        /// Message ids, or unique prefixes of at least 4 characters (at most 1000).
        #[arg(required = true, add = ArgValueCandidates::new(super::completions::inbox_ids))]
        ids: Vec<String>,
    },
    /// Delete a message entirely: its text, labels, attachments and their keys, with no older
    /// copy left in the database files (asks first on a terminal; --yes otherwise).
    Rm {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Scrub a message's text, subject and attachments (files and keys) for good, keeping its id,
    /// sender, times, size and labels; `inbox read` then shows it as redacted, with when. No older
    /// copy stays in the database files. Asks first on a terminal; --yes otherwise.
    Redact {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Write a message's attachments to files, verified against their whole-file hash.
    ///
    /// Names from the sender are made safe (no directories, no leading dot); an existing file is
    /// overwritten only when you say so (asks on a terminal; --yes otherwise).
    Save {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
        /// Directory to write into [default: the current directory].
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// Overwrite existing files without asking (asks on a terminal; refuses otherwise).
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
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
    },
    /// Show one whole message, and mark it read.
    ///
    /// Text from the sender is shown with control characters and escape sequences made visible
    /// (`\u{1b}`), so none of them can drive the terminal; --json, and --raw into a pipe, keep it
    /// exact.
    Read {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
        /// Print JSON (with `body`).
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Print only the body, exactly as it came into a pipe (on a terminal, made safe and
        /// ending in a newline).
        #[arg(long)]
        raw: bool,
    },
}

/// Messages asked of the node per request: one page's answer stays far inside the control
/// answer's size limit however many messages the inbox holds.
const PAGE: u32 = 500;

/// `inbox mark` states.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum MarkState {
    /// Read.
    Read,
    /// Unread.
    Unread,
}

/// One tab-separated line for a message, a column each (`cut -f` works): id, state, from, received
/// at, labels, subject, the start of the text; an empty label list or subject is "-". Peer text
/// goes through `one_line`.
fn line(i: &InboxItem) -> String {
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
    let state = match (i.archived, i.read) {
        (true, _) => "archived",
        (false, false) => "unread",
        (false, true) => "read",
    };
    format!(
        "{}\t{state}\t{}\t{}\t{labels}\t{}\t{}",
        i.id,
        one_line(&i.from),
        i.received_at,
        one_line(subject),
        one_line(&i.preview)
    )
}

/// The inbox, newest first, at most `query.limit` (all without one), read page by page.
async fn list(g: &Global, query: InboxQuery) -> Result<Vec<InboxItem>> {
    let mut items: Vec<InboxItem> = Vec::new();
    loop {
        let want = query
            .limit
            .map_or(PAGE, |l| (l - l.min(items.len() as u32)).min(PAGE));
        if want == 0 {
            return Ok(items);
        }
        let request = Request::InboxList(InboxQuery {
            limit: Some(want),
            after: items.last().map(|i| i.id.clone()),
            ..query.clone()
        });
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
        Command::List {
            limit,
            label,
            unread,
            archived,
            all,
            json,
        } => {
            let archived = match (archived, all) {
                (true, _) => Archived::Only,
                (false, true) => Archived::Include,
                (false, false) => Archived::Hide,
            };
            let query = InboxQuery {
                limit,
                label,
                after: None,
                unread,
                archived,
            };
            let items = list(g, query).await?;
            if json {
                return print_json(&items);
            }
            super::say_if_empty(&items, "no messages");
            for i in &items {
                println!("{}", line(i));
            }
        }
        Command::Search {
            query,
            limit,
            sort,
            json,
        } => search::search(g, query, limit, sort, json).await?,
        Command::Reindex { json } => search::reindex(g, json).await?,
        Command::Watch(args) => watch::run(g, args).await?,
        Command::Save { id, out, yes } => save(g, id, out, yes).await?,
        Command::Archive { id } => {
            update(g, Request::InboxArchive { id, archived: true }, "archived").await?
        }
        Command::Unarchive { id } => {
            update(
                g,
                Request::InboxArchive {
                    id,
                    archived: false,
                },
                "unarchived",
            )
            .await?
        }
        Command::Mark { state, mut ids } => {
            let (read, verb) = match state {
                MarkState::Read => (true, "marked read"),
                MarkState::Unread => (false, "marked unread"),
            };
            match ids.len() {
                1 => {
                    let id = ids.remove(0);
                    update(g, Request::InboxMark { id, read }, verb).await?
                }
                _ => match g.call(Request::InboxMarkMany { ids, read }).await? {
                    Response::UpdatedMany { ids } => {
                        for id in ids {
                            println!("{id} {verb}");
                        }
                    }
                    other => return Err(unexpected(other)),
                },
            }
        }
        Command::Rm { id, yes } => {
            let question = format!("Delete message {id} and its attachments for good?");
            scrub(g, Request::InboxRm { id }, &question, "deleted", yes).await?
        }
        Command::Redact { id, yes } => {
            let question = format!("Redact message {id}: its text and attachments, for good?");
            scrub(g, Request::InboxRedact { id }, &question, "redacted", yes).await?
        }
        Command::Fetch { id } => match g.call(Request::InboxFetch { id }).await? {
            Response::Fetching { attachments: 0 } => println!("every attachment is complete"),
            Response::Fetching { attachments } => {
                println!("fetching {}", count(u64::from(attachments), "attachment"));
            }
            other => return Err(unexpected(other)),
        },
        Command::Read { id, json, raw } => {
            let m = match g.call(Request::InboxRead { id }).await? {
                Response::Message(m) => m,
                other => return Err(unexpected(other)),
            };
            if raw {
                return write_raw(&m.body);
            }
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
            if let Some(when) = &m.redacted_at {
                println!("redacted: {when}");
                println!();
                println!("(its text and attachments were redacted)");
                return Ok(());
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
        let mut overwrite = yes;
        let path = loop {
            let result = attachments::save(&file, a, &dir, overwrite, |done| {
                if let Some(bar) = &bar {
                    bar.set_position(done);
                }
            });
            match result {
                // On a terminal the question; off one, the error says to pass --yes.
                Err(AttachmentError::Exists(target))
                    if !overwrite && std::io::stdin().is_terminal() =>
                {
                    if let Some(bar) = &bar {
                        bar.suspend(|| ());
                    }
                    if !super::confirm(&format!("Overwrite {}?", target.display()), false)? {
                        println!("kept {}", target.display());
                        break None;
                    }
                    overwrite = true;
                }
                other => break Some(other?),
            }
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if let Some(path) = path {
            println!("{}", path.display());
        }
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum LabelCommand {
    /// Add LABEL to message ID.
    Add {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
        /// The label (letters, digits, '-', '_', '.', '/', ':').
        #[arg(add = ArgValueCandidates::new(super::completions::labels))]
        label: String,
    },
    /// Remove LABEL from message ID.
    Rm {
        /// The message id, or a unique prefix of at least 4 characters.
        #[arg(add = ArgValueCandidates::new(super::completions::inbox_ids))]
        id: String,
        /// The label.
        #[arg(add = ArgValueCandidates::new(super::completions::labels))]
        label: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum RulesCommand {
    /// Label every message from CONTACT with LABEL as it arrives.
    Add {
        /// The contact's name.
        #[arg(long, add = ArgValueCandidates::new(super::completions::contacts))]
        from: String,
        /// The label to add.
        #[arg(long, add = ArgValueCandidates::new(super::completions::labels))]
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
    /// Remove rule ID (asks first on a terminal; --yes otherwise).
    Rm {
        /// The rule id (from `rules list`).
        id: i64,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
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
    update(g, request, &verb).await
}

/// Sends a request that changes one message and prints `<id> <verb>`.
async fn update(g: &Global, request: Request, verb: &str) -> Result<()> {
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
            super::say_if_empty(
                &rules,
                "no rules: pigeon inbox rules add --from CONTACT --label LABEL",
            );
            for r in rules {
                println!("{}\tfrom {}\t+{}", r.id, r.from, r.label);
            }
        }
        RulesCommand::Rm { id, yes } => {
            // A rule that does not exist is said so before any question.
            let rules = match g.call(Request::RulesList).await? {
                Response::Rules(rules) => rules,
                other => return Err(unexpected(other)),
            };
            let Some(rule) = rules.iter().find(|r| r.id == id) else {
                return Err(crate::store::StoreError::NotFound {
                    what: "rule",
                    name: id.to_string(),
                }
                .into());
            };
            let question = format!(
                "Remove rule {id} (messages from {} get +{})?",
                one_line(&rule.from),
                one_line(&rule.label)
            );
            if !super::confirm(&question, yes)? {
                println!("nothing changed");
                return Ok(());
            }
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

/// Deletes or redacts a message (`request`) after asking (on a terminal; `--yes` otherwise), and
/// removes its sealed attachment files.
/// Writes `body` alone to stdout: to a pipe the bytes as sent; to a terminal made safe (escape
/// sequences shown, not obeyed) and ending in a newline, so that the shell's prompt does not run
/// into the last line.
pub(super) fn write_raw(body: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let body = if out.is_terminal() {
        let mut body = shown(body);
        if !body.is_empty() && !body.ends_with('\n') {
            body.push('\n');
        }
        body
    } else {
        body.to_owned()
    };
    out.write_all(body.as_bytes())
        .and_then(|()| out.flush())
        .map_err(crate::error::Error::io("cannot write the body".to_owned()))
}

pub(super) async fn scrub(
    g: &Global,
    request: Request,
    question: &str,
    verb: &str,
    yes: bool,
) -> Result<()> {
    if !super::confirm(question, yes)? {
        println!("nothing changed");
        return Ok(());
    }
    let home = g.home()?;
    match g.call(request).await? {
        Response::Removed { id, attachments } => {
            for a in attachments {
                let path = attachments::file_path(home.root(), &a);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove an attachment file")
                    }
                }
            }
            println!("{id} {verb}");
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
