//! `pigeon config show|get|set`

use super::{Global, print_json};
use crate::config::{Config, edit};
use crate::error::{Error, Result};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Print the effective configuration (the file's values over the defaults).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one value, e.g. `pigeon config get delivery.linger_ms`.
    Get {
        /// A dotted key.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set one value in config.toml, keeping its comments.
    ///
    /// VALUE is read as TOML: `1`, `true`, `["a", "b"]`, `"text"`; a bare word is a string. An
    /// unknown key or a wrong type is an error and leaves the file as it was. A running node reads
    /// the configuration when it starts.
    Set {
        /// A dotted key, e.g. delivery.batch_max_messages.
        key: String,
        /// The new value.
        value: String,
    },
}

pub(super) fn run(g: &Global, cmd: Command) -> Result<()> {
    let home = g.home()?;
    home.require()?;
    let path = home.config();
    match cmd {
        Command::Show { json } => {
            let config = Config::load(&path)?;
            if json {
                return print_json(&config);
            }
            print!(
                "{}",
                toml::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?
            );
        }
        Command::Get { key, json } => {
            let value = edit::get(&Config::load(&path)?, &key, &path)?;
            match (&value, json) {
                (_, true) => return print_json(&value),
                (toml::Value::String(s), false) => println!("{s}"),
                (other, false) => println!("{other}"),
            }
        }
        Command::Set { key, value } => {
            edit::set(&path, &key, &value)?;
            println!(
                "{key} set in {} (a running node uses it from its next start)",
                path.display()
            );
        }
    }
    Ok(())
}
