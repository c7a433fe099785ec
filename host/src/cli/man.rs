//! `pigeon man [--out DIR]`: a man page per command, from the same definitions as `--help`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::Cli;
use crate::error::{Error, Result};

/// Arguments of `pigeon man`.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Directory to write the pages into (made if missing) [default: the current directory].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Writes `pigeon.1`, `pigeon-send.1`, `pigeon-inbox-rules-rm.1`, ... and prints each path.
pub(super) fn run(args: Args) -> Result<()> {
    let dir = args.out.unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let mut root = Cli::command();
    root.build();
    let mut written = Vec::new();
    write_pages(&root, "pigeon", &dir, &mut written)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes the page of `cmd`, named `name`, and those of its subcommands below it.
fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    // A subcommand's page is titled and cross-referenced by its full name (`pigeon-inbox-rm`).
    let page = cmd
        .clone()
        .name(name.to_owned())
        .bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .map_err(Error::io(format!("cannot render {}", path.display())))?;
    std::fs::write(&path, text).map_err(Error::io(format!("cannot write {}", path.display())))?;
    written.push(path);
    // Not clap's own `help` subcommands: `pigeon help X` is `pigeon X --help`.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
