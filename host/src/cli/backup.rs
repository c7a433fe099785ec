//! `pigeon backup create` and `backup verify`

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;

use super::{Global, count, print_json, progress_bar};
use crate::backup::{self, Contents, Opener, Seal};
use crate::error::Result;
use crate::passphrase::{self, Confirm};
use crate::terminal;

/// Backups in the age format.
#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Write a backup of the home to FILE: one age-encrypted tar.
    ///
    /// The database is copied with SQLite's online backup, so a running node keeps receiving
    /// while it is taken. With --recipient or --recipients-file the file is encrypted to those
    /// age public keys and needs no passphrase (good for a nightly job); with neither, it is
    /// encrypted under the node's passphrase (age's scrypt). It holds the keystore, the
    /// database, config.toml, the attachments (complete and partial) and the other files of the
    /// home, with a manifest of their blake2b sums; the search index and the plugin cache are
    /// rebuilt after a restore. `age -d -i KEY FILE | tar t` lists it.
    ///
    /// A backup keeps what was in the home when it was made, messages redacted later included.
    Create(CreateArgs),
    /// Read a backup through and check everything in it; writes nothing.
    ///
    /// Checks age's authentication of every byte, the blake2b of every part against the
    /// manifest, that the keystore inside opens with the node passphrase (the one the node had
    /// when the backup was made), and that every sealed row and attachment chunk opens under its
    /// key. Exit 0 when sound, 3 for a wrong passphrase or identity, 6 when damaged (naming the
    /// part).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct CreateArgs {
    /// The backup file to write (through a temp name beside it, renamed once complete).
    file: PathBuf,
    /// Encrypt to this age X25519 public key (age1..., from `age-keygen`); repeatable.
    #[arg(long, value_name = "AGE_PUBKEY")]
    recipient: Vec<String>,
    /// Encrypt to the age public keys in FILE, one per line (`#` comments allowed).
    #[arg(long, value_name = "FILE")]
    recipients_file: Option<PathBuf>,
    /// Replace FILE if it exists, without asking (asks on a terminal; refuses otherwise).
    #[arg(long, short)]
    yes: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct VerifyArgs {
    /// The backup file.
    file: PathBuf,
    /// The age identity file (from `age-keygen`) for a backup made to recipients.
    #[arg(long, value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::Create(args) => create(g, args),
        Command::Verify(args) => {
            let opener = opener(g, args.identity.as_deref())?;
            let contents = backup::verify(&args.file, &opener)?;
            if args.json {
                return print_json(&contents);
            }
            print_contents(&contents);
            println!("sound: every part matches the manifest and every sealed item opens");
            Ok(())
        }
    }
}

fn create(g: &Global, mut args: CreateArgs) -> Result<()> {
    let home = g.home()?;
    // On a terminal an existing file is asked about; off one, `backup::create` refuses it.
    if args.file.exists() && !args.yes && std::io::stdin().is_terminal() {
        if !super::confirm(&format!("Replace {}?", args.file.display()), false)? {
            println!("nothing changed");
            return Ok(());
        }
        args.yes = true;
    }
    let recipients = backup::recipients(&args.recipient, args.recipients_file.as_deref())?;
    if args.recipients_file.is_some() && recipients.is_empty() {
        return Err(backup::BackupError::Usage(
            "the recipients file names no recipient; nothing was written".into(),
        )
        .into());
    }
    let seal = if recipients.is_empty() {
        Seal::Passphrase(passphrase::obtain(
            g.passphrase_file.as_deref(),
            Confirm::Once,
        )?)
    } else {
        Seal::Recipients(recipients)
    };
    let bar = progress_bar(0, "backing up");
    let mut progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let created = backup::create(&home, &args.file, seal, args.yes, &mut progress)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if args.json {
        return print_json(&created);
    }
    let c = &created.counts;
    println!(
        "wrote {} ({} bytes, encrypted to {}): {}, {}, {} queued, {}",
        created.path.display(),
        created.bytes,
        created.sealed_with.describe(),
        count(c.contacts, "contact"),
        count(c.messages, "message"),
        c.queued,
        count(c.attachments, "attachment"),
    );
    for l in &created.left_out {
        eprintln!("left out: {}", terminal::one_line(l));
    }
    Ok(())
}

/// The node passphrase (always needed: the keystore inside opens with it) and the identities.
pub(super) fn opener(g: &Global, identity: Option<&std::path::Path>) -> Result<Opener> {
    let identities = match identity {
        Some(path) => backup::identities(path)?,
        None => Vec::new(),
    };
    let passphrase = passphrase::obtain(g.passphrase_file.as_deref(), Confirm::Once)?;
    Ok(Opener {
        passphrase,
        identities,
    })
}

pub(super) fn print_contents(c: &Contents) {
    println!(
        "backup:   {} ({} bytes, encrypted to {}), made {} by pigeon {}",
        c.file.display(),
        c.bytes,
        c.sealed_with.describe(),
        terminal::one_line(&c.created_at),
        terminal::one_line(&c.pigeon_version),
    );
    println!("peer id:  {}", terminal::one_line(&c.peer_id));
    println!("contacts: {}", c.contacts);
    println!(
        "inbox:    {} ({} redacted)",
        count(c.messages, "message"),
        c.redacted
    );
    println!("sent:     {}", count(c.sent, "message"));
    println!("outbox:   {} queued", c.queued);
    println!(
        "files:    {}, {} chunks authenticated; {} sealed values opened; {} parts",
        count(c.attachment_files, "attachment file"),
        c.chunks,
        c.sealed_values,
        c.parts.len()
    );
    for l in &c.left_out {
        println!("left out when made: {}", terminal::one_line(l));
    }
    for s in &c.skipped {
        println!("not kept: {}", terminal::one_line(s));
    }
}
