//! `pigeon config show|get|set`

use super::{Global, print_json};
use crate::config::{Config, edit};
use crate::error::{Error, Result, UsageError};
use std::path::PathBuf;

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
    /// the configuration when it starts. A relative `plugins.NAME.path` given here is taken from
    /// the current directory and stored absolute (in the file itself, relative paths are from the
    /// home).
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
                toml::to_string_pretty(&config)
                    .map_err(|e| Error::encode("the configuration as TOML", e))?
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
        Command::Set { key, mut value } => {
            let text = match edit::value_of(&value) {
                toml_edit::Value::String(s) => s.value().clone(),
                _ => value.clone(),
            };
            if is_plugin_path(&key) {
                let mut file = PathBuf::from(&text);
                if file.is_relative() {
                    file = absolute(&key, &text, &file)?;
                    // Quoted, so that no path reads as another TOML type.
                    value = toml_edit::Value::from(file.display().to_string()).to_string();
                }
                if !file.is_file() {
                    eprintln!("note: there is no file at {} yet", file.display());
                }
            }
            edit::set(&path, &key, &value)?;
            println!(
                "{key} set in {} (a running node uses it from its next start)",
                path.display()
            );
        }
    }
    Ok(())
}

/// `file`, relative to the current directory, made absolute: an empty path is the user's mistake,
/// an unreadable current directory is not.
fn absolute(key: &str, text: &str, file: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(file).map_err(|source| {
        if source.kind() == std::io::ErrorKind::InvalidInput {
            UsageError::PluginPath {
                key: key.to_owned(),
                text: text.to_owned(),
                source,
            }
            .into()
        } else {
            Error::io(format!("{key}: {text}"))(source)
        }
    })
}

/// `plugins.NAME.path`, the one key whose value is a file on this machine.
fn is_plugin_path(key: &str) -> bool {
    key.strip_prefix("plugins.")
        .and_then(|rest| rest.strip_suffix(".path"))
        .is_some_and(|name| !name.is_empty() && !name.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::{absolute, is_plugin_path};
    use crate::error::{Error, UsageError};

    #[test]
    fn an_empty_plugin_path_is_a_usage_refusal() {
        let e = absolute("plugins.x.path", "", std::path::Path::new("")).expect_err("empty");
        assert!(
            matches!(e, Error::Usage(UsageError::PluginPath { .. })),
            "{e:?}"
        );
        assert_eq!(e.kind().exit_code(), 2);
    }

    #[test]
    fn only_a_plugins_own_path_is_a_file() {
        assert!(is_plugin_path("plugins.my-rule.path"));
        assert!(!is_plugin_path("plugins.my-rule.config.path"));
        assert!(!is_plugin_path("plugins..path"));
        assert!(!is_plugin_path("store.path"));
    }
}
