//! `pigeon restore`

use std::path::PathBuf;

use super::backup::{opener, print_contents};
use super::{Global, print_json};
use crate::backup;
use crate::error::Result;
use crate::terminal;

/// Restore a backup into a new home (--home DIR): the same node, with everything it held.
///
/// The home must not exist or be an empty directory: restore never merges. The restored node is
/// the same peer (same identity and keys, same contacts, inbox with labels and read state,
/// rules, plugin configuration, outbox and attachments); queued messages go out at the next
/// `node run`, and the search index is rebuilt at its first unlock. Do not run the old and the
/// restored node both: they are one peer. Everything is checked as `backup verify` does, and
/// written beside the home, then renamed into place: a failed restore leaves nothing behind.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The backup file.
    file: PathBuf,
    /// The age identity file (from `age-keygen`) for a backup made to recipients.
    #[arg(long, value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    /// Verify, and list what would be written; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let home = g.home()?;
    let opener = opener(g, args.identity.as_deref())?;
    let restored = backup::restore(&args.file, home.root(), &opener, args.dry_run)?;
    if args.json {
        return print_json(&restored);
    }
    print_contents(&restored.contents);
    let verb = if restored.dry_run {
        "would write"
    } else {
        "wrote"
    };
    for f in &restored.files {
        println!(
            "{verb} {}/{} ({} bytes)",
            home.root().display(),
            terminal::one_line(&f.path),
            f.size
        );
    }
    if restored.dry_run {
        println!("dry run: nothing was written");
    } else {
        println!(
            "restored into {}; start it with `pigeon --home {} node run` (and stop the old node for good: they are one peer)",
            home.root().display(),
            home.root().display()
        );
    }
    Ok(())
}
