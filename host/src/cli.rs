//! The `pigeon` command line: argument definitions and thin handlers, one file per command.
//!
//! A handler parses what the user typed, calls one library function and prints the result, as text
//! for people or, with `--json`, as JSON for scripts.

mod backup;
mod bench;
mod chat;
mod completions;
mod config;
mod contacts;
mod demo;
mod id;
mod inbox;
mod init;
mod keys;
mod man;
mod node;
mod ops;
mod outbox;
mod peers;
mod plugins;
mod restore;
mod send;
mod sent;
mod status;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::control::api::{Request, Response};
use crate::control::client;
use crate::error::{Error, Result, UsageError};
use crate::home::Home;
use crate::logging::LogFormat;

/// pigeon: a peer-to-peer encrypted messenger for the terminal.
///
/// A pigeon node owns its keys, talks to other nodes directly over libp2p, keeps everything it
/// stores encrypted under your passphrase, and delivers every message exactly once.
///
/// Start with `pigeon init`, share the address `pigeon id` prints, add your peers with
/// `pigeon contacts add`, run `pigeon node run`, and `pigeon send`. Try it all locally with
/// `pigeon demo local-two-peers`.
#[derive(Debug, Parser)]
#[command(
    name = "pigeon",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, clap::Args)]
struct Global {
    /// The node's home directory [default: the platform data dir, e.g. ~/.local/share/pigeon].
    #[arg(long, global = true, env = "PIGEON_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Read the passphrase from FILE (first line) instead of PIGEON_PASSPHRASE or a prompt.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log detail (-v debug, -vv trace); PIGEON_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new home: keys, encrypted database and config.toml.
    Init(init::Args),
    /// Show this node's PeerId and the address to give to contacts.
    Id(id::Args),
    /// Add, list and remove contacts.
    #[command(subcommand)]
    Contacts(contacts::Command),
    /// Run the node.
    #[command(subcommand)]
    Node(node::Command),
    // Its help is `send::Args`'s (a doc comment here would replace the long one).
    Send(send::Args),
    // Its help is `chat::Args`'s.
    Chat(chat::Args),
    /// Show outgoing messages and their delivery state; retry or cancel one.
    #[command(subcommand)]
    Outbox(outbox::Command),
    /// List and read received messages.
    #[command(subcommand)]
    Inbox(inbox::Command),
    /// What you sent, readable here, with its delivery state: list, read, delete, redact.
    #[command(subcommand)]
    Sent(sent::Command),
    /// Change the passphrase (rekeying everything at rest) and show the keys in use.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Write and verify backups (age-encrypted tar files of the home).
    #[command(subcommand)]
    Backup(backup::Command),
    /// Restore a backup into a new, empty home.
    Restore(restore::Args),
    /// Show known peers and the health of their addresses.
    Peers(peers::Args),
    /// Show whether the node runs, and the outbox and inbox counts.
    Status(status::Args),
    /// List, check and create WASM plugins (inbox rules, labelers, discovery strategies).
    #[command(subcommand)]
    Plugins(plugins::Command),
    /// Show and change config.toml.
    #[command(subcommand)]
    Config(config::Command),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Self-contained demonstrations.
    #[command(subcommand)]
    Demo(demo::Command),
    /// Check the home and say what to do about anything wrong (`ops check`).
    #[command(subcommand)]
    Ops(ops::Command),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    /// Besides commands and options it completes contact names, message ids (with their subject
    /// while a node runs) and labels, asking this binary each time; it never asks for the
    /// passphrase. Add to the shell's start-up file:
    ///
    ///   bash (~/.bashrc):    source <(pigeon completions bash)
    ///   zsh (~/.zshrc):      source <(pigeon completions zsh)
    ///   fish (config.fish):  pigeon completions fish | source
    ///   elvish (rc.elv):     eval (pigeon completions elvish | slurp)
    ///   powershell ($PROFILE): pigeon completions powershell | Out-String | Invoke-Expression
    #[command(verbatim_doc_comment)]
    Completions(completions::Args),
    /// Write a man page per command (pigeon.1, pigeon-send.1, ...) into a directory.
    Man(man::Args),
}

impl Cli {
    /// The log format asked for.
    pub fn log_format(&self) -> LogFormat {
        self.global.log_format
    }
    /// The verbosity asked for: `-v` count, plus one for `node run`, whose lifecycle (listening,
    /// shutting down) is worth telling; other commands speak only of warnings.
    pub fn verbose(&self) -> u8 {
        let node = u8::from(matches!(self.command, Command::Node(_)));
        self.global.verbose.saturating_add(node)
    }

    /// Whether the command only prints and ends, so that a closed stdout (`pigeon inbox list |
    /// head`) may simply end it, as it does `ls` or `grep`. The node, the demo and the benchmarks
    /// run network connections, where a closed peer must stay an error to handle, not a signal
    /// that kills the process.
    pub fn may_die_of_a_closed_pipe(&self) -> bool {
        !matches!(
            self.command,
            Command::Node(_) | Command::Demo(_) | Command::Bench(_)
        )
    }
}

pub use completions::complete_if_asked;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Init(args) => init::run(g, args).await,
        Command::Id(args) => id::run(g, args).await,
        Command::Contacts(cmd) => contacts::run(g, cmd).await,
        Command::Node(cmd) => node::run(g, cmd).await,
        Command::Send(args) => send::run(g, args).await,
        Command::Outbox(cmd) => outbox::run(g, cmd).await,
        Command::Sent(cmd) => sent::run(g, cmd).await,
        Command::Chat(args) => chat::run(g, args).await,
        Command::Inbox(cmd) => inbox::run(g, cmd).await,
        Command::Keys(cmd) => keys::run(g, cmd).await,
        Command::Backup(cmd) => backup::run(g, cmd).await,
        Command::Restore(args) => restore::run(g, args).await,
        Command::Peers(args) => peers::run(g, args).await,
        Command::Status(args) => status::run(g, args).await,
        Command::Plugins(cmd) => plugins::run(g, cmd).await,
        Command::Config(cmd) => config::run(g, cmd),
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Demo(cmd) => demo::run(cmd).await,
        Command::Ops(cmd) => ops::run(g, cmd).await,
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man::run(args),
    }
}

impl Global {
    fn home(&self) -> Result<Home> {
        Ok(Home::resolve(self.home.clone())?)
    }

    /// Carries out a request through the running node, or in-process.
    async fn call(&self, request: Request) -> Result<Response> {
        client::call(&self.home()?, self.passphrase_file.as_deref(), request).await
    }
}

/// On a terminal, says that a list is empty (`no messages`); a pipe gets nothing, so that a script
/// counting lines counts none.
fn say_if_empty<T>(items: &[T], what: &str) {
    if items.is_empty() && std::io::stdout().is_terminal() {
        println!("{what}");
    }
}

/// `1 message`, `2 messages`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::encode("the output as JSON", e))?;
    println!("{text}");
    Ok(())
}

/// A progress bar in bytes on stderr when it is a terminal; `None` (quiet) otherwise.
fn progress_bar(len: u64, label: &str) -> Option<indicatif::ProgressBar> {
    bar(
        len,
        label,
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
}

/// A progress bar counting items on stderr when it is a terminal; `None` otherwise.
fn count_bar(label: &str) -> Option<indicatif::ProgressBar> {
    bar(0, label, "{msg} [{bar:30}] {pos}/{len} {per_sec} {eta}")
}

fn bar(len: u64, label: &str, template: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(label.to_owned());
    Some(bar)
}

/// An answer of the wrong type from the node: a version mismatch between CLI and node.
fn unexpected(response: Response) -> Error {
    response.unexpected().into()
}

/// Asks before a destructive action: yes with `--yes`, a question on a terminal, refusal otherwise.
/// Every command that removes or overwrites data asks through this (the test below holds each to
/// its `--yes`), and says `nothing changed` when the answer is no.
fn confirm(question: &str, yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(UsageError::NeedsYes(question.to_owned()).into());
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(Error::io("cannot read the answer on stdin"))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Commands that remove or overwrite data: each asks on a terminal and takes `--yes`.
    const DESTRUCTIVE: &[&str] = &[
        "backup create",
        "contacts rm",
        "inbox redact",
        "inbox rm",
        "inbox rules rm",
        "inbox save",
        "keys passwd",
        "outbox cancel",
        "sent redact",
        "sent rm",
    ];

    /// Commands that remove or overwrite nothing (or refuse to: `init`, `restore` and `plugins
    /// new` only ever write where nothing is). A command added to neither list fails the test
    /// below, so that whoever adds it decides.
    const SAFE: &[&str] = &[
        "backup verify",
        "completions",
        "man",
        "bench attachment",
        "bench delivery",
        "bench keys",
        "bench rules",
        "bench search",
        "chat",
        "config get",
        "config set",
        "config show",
        "contacts add",
        "contacts list",
        "contacts set",
        "demo local-two-peers",
        "id",
        "inbox archive",
        "inbox fetch",
        "inbox label add",
        "inbox label rm",
        "inbox list",
        "inbox mark",
        "inbox read",
        "inbox reindex",
        "inbox rules add",
        "inbox rules apply",
        "inbox rules list",
        "inbox search",
        "inbox unarchive",
        "inbox watch",
        "init",
        "keys rekey",
        "keys status",
        "node run",
        "ops check",
        "outbox list",
        "outbox retry",
        "peers",
        "plugins check",
        "plugins list",
        "plugins new",
        "restore",
        "send",
        "sent list",
        "sent read",
        "status",
    ];

    /// Every leaf command's path (`inbox rules rm`) and the command itself.
    fn leaves(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        let subs: Vec<_> = cmd.get_subcommands().collect();
        if subs.is_empty() {
            out.push((path.to_owned(), cmd.clone()));
        }
        for sub in subs {
            let name = sub.get_name();
            let path = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path} {name}")
            };
            leaves(sub, &path, out);
        }
    }

    #[test]
    fn every_destructive_command_takes_yes_and_every_command_is_classified() {
        let mut all = Vec::new();
        leaves(&Cli::command(), "", &mut all);
        let mut seen = Vec::new();
        for (path, cmd) in &all {
            let yes = cmd
                .get_arguments()
                .find(|a| a.get_id() == "yes")
                .map(|a| (a.get_long(), a.get_short()));
            match (
                DESTRUCTIVE.contains(&path.as_str()),
                SAFE.contains(&path.as_str()),
            ) {
                (true, false) => assert_eq!(
                    yes,
                    Some((Some("yes"), Some('y'))),
                    "`pigeon {path}` removes or overwrites data: it needs --yes/-y (and to ask through cli::confirm)"
                ),
                (false, true) => assert_eq!(
                    yes, None,
                    "`pigeon {path}` is listed as safe but takes --yes: move it to DESTRUCTIVE"
                ),
                _ => panic!(
                    "`pigeon {path}` is in {} of the lists: put it in DESTRUCTIVE (and give it --yes) or in SAFE",
                    if DESTRUCTIVE.contains(&path.as_str()) {
                        "both"
                    } else {
                        "neither"
                    }
                ),
            }
            seen.push(path.as_str());
        }
        for listed in DESTRUCTIVE.iter().chain(SAFE) {
            assert!(seen.contains(listed), "`pigeon {listed}` no longer exists");
        }
    }
}
