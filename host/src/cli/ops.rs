//! `pigeon ops check`

use std::io::IsTerminal;

use super::{Global, print_json};
use crate::error::{Result, RunError};
use crate::ops::{self, Options, Status};
use crate::passphrase::{self, Confirm};

/// Operations on a home.
#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Check the home and say what to do about anything wrong: config, keys, permissions,
    /// database, attachments, plugins, the node and the clock.
    ///
    /// A line per check: ok, warning, problem or skipped, with a fix for each that is not ok.
    /// Nothing is changed. It never prompts: with a passphrase (--passphrase-file or
    /// PIGEON_PASSPHRASE) it also unlocks the keystore, and with --deep opens every sealed row and
    /// attachment chunk. Exit 0 when nothing is wrong, 7 when a check found a problem, and with
    /// --strict 1 when one found a warning.
    Check {
        /// Also authenticate every sealed row and attachment chunk (needs the passphrase).
        #[arg(long)]
        deep: bool,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
        /// Print JSON: an array of {"name", "status", "detail", "fix"}.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    let Command::Check { deep, strict, json } = cmd;
    let home = g.home()?;
    home.require()?;
    // Given, never asked for: a file, or the environment.
    let pass = match (&g.passphrase_file, std::env::var_os(passphrase::ENV)) {
        (Some(file), _) => Some(passphrase::obtain(Some(file), Confirm::Once)?),
        (None, Some(_)) => Some(passphrase::obtain(None, Confirm::Once)?),
        (None, None) => None,
    };
    let options = Options {
        deep,
        passphrase: pass.as_deref().map(String::as_str),
    };
    let checks = ops::check(&home, &options).await;
    if json {
        print_json(&checks)?;
    } else {
        let colour = std::io::stdout().is_terminal();
        for c in &checks {
            let word = c.status.as_str();
            let word = match (colour, c.status) {
                (true, Status::Ok) => format!("\x1b[32m{word:<8}\x1b[0m"),
                (true, Status::Warning) => format!("\x1b[33m{word:<8}\x1b[0m"),
                (true, Status::Problem) => format!("\x1b[31m{word:<8}\x1b[0m"),
                _ => format!("{word:<8}"),
            };
            println!(
                "{word} {:<22} {}",
                c.name,
                crate::terminal::one_line(&c.detail)
            );
            if let Some(fix) = &c.fix
                && c.status != Status::Ok
            {
                println!(
                    "{:<8} {:<22} fix: {}",
                    "",
                    "",
                    crate::terminal::one_line(fix)
                );
            }
        }
    }
    let problems = checks
        .iter()
        .filter(|c| c.status == Status::Problem)
        .count();
    let warnings = checks
        .iter()
        .filter(|c| c.status == Status::Warning)
        .count();
    if problems > 0 || (strict && warnings > 0) {
        return Err(RunError::Unhealthy { problems, warnings }.into());
    }
    Ok(())
}
