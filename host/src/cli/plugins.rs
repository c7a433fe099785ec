//! `pigeon plugins list|check|new`

use std::path::PathBuf;

use super::{Global, print_json, unexpected};
use crate::config::Config;
use crate::control::api::{Request, Response};
use crate::control::client;
use crate::error::{Error, Result};
use crate::plugins::{self, PluginKind, PluginStatus, scaffold};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List every plugin: the built-in ones and those in config.toml, in the order rules run.
    ///
    /// Columns: name, kind (rule or discovery), the pigeon:plugin version it was built against,
    /// source (builtin or its file), enabled, and state. While a node runs, the state is live:
    /// ready, failed to load (with the reason), or paused by the circuit breaker after repeated
    /// failures; calls and failures are counted since the node started.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a plugin file without enabling it: compiles it, checks the pigeon:plugin version
    /// it was built against and that it imports nothing pigeon does not offer. Runs none of it.
    ///
    /// Exits 0 and prints its kind when it would load; otherwise exits non-zero with the reason.
    Check {
        /// The component (`target/wasm32-wasip2/release/NAME.wasm`).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a plugin crate that builds as it is, with a test.
    ///
    /// Then: `cd NAME && cargo test && cargo build --release --target wasm32-wasip2`, and
    /// `pigeon plugins check target/wasm32-wasip2/release/NAME.wasm`. The crate's README says how to
    /// enable it.
    New {
        /// The plugin's name (lower-case letters, digits, '-' and '_').
        name: String,
        /// What it is: an inbox rule or labeler, or a discovery strategy.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Where to create the crate's directory.
        #[arg(long, default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// Print JSON: the crate's directory and where its build puts the component.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum Kind {
    /// An inbox rule or labeler.
    Rule,
    /// A discovery strategy.
    Discovery,
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::List { json } => list(g, json).await,
        Command::Check { file, json } => {
            let path = file.display().to_string();
            let checked = tokio::task::spawn_blocking(move || plugins::check_file(&file))
                .await
                .map_err(|source| Error::Task {
                    what: "plugins check",
                    source,
                })?;
            let report = match checked {
                Ok(report) => report,
                Err(e) => {
                    let e = Error::from(e);
                    if json {
                        // A script reads why on stdout too; the exit code and stderr are as ever.
                        print_json(&serde_json::json!({
                            "path": path,
                            "error": e.to_string(),
                            "exit_code": e.kind().exit_code(),
                        }))?;
                    }
                    return Err(e);
                }
            };
            if json {
                return print_json(&report);
            }
            println!(
                "{}: a {} plugin built against pigeon:plugin@{}; it would load",
                report.path,
                report.kind.as_str(),
                report.api_version
            );
            Ok(())
        }
        Command::New {
            name,
            kind,
            dir,
            json,
        } => {
            let kind = match kind {
                Kind::Rule => PluginKind::Rule,
                Kind::Discovery => PluginKind::Discovery,
            };
            let made = scaffold::new(&name, kind, &dir)?;
            // Absolute, for a script that runs elsewhere and for the config, which the node reads
            // from its own working directory.
            let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or(p.to_owned());
            let wasm = absolute(&made.wasm);
            if json {
                return print_json(&scaffold::Scaffolded {
                    dir: absolute(&made.dir),
                    wasm,
                });
            }
            println!("created {}", made.dir.display());
            println!("next:");
            println!("  cd {}", made.dir.display());
            println!("  cargo test");
            println!("  cargo build --release --target wasm32-wasip2");
            let built = made.wasm.strip_prefix(&made.dir).unwrap_or(&made.wasm);
            println!("  pigeon plugins check {}", built.display());
            println!("then enable it and restart the node:");
            println!("  pigeon config set plugins.{name}.path {}", wasm.display());
            println!("  pigeon config set plugins.{name}.enabled true");
            Ok(())
        }
    }
}

async fn list(g: &Global, json: bool) -> Result<()> {
    let home = g.home()?;
    home.require()?;
    // A running node knows the live state; without one, nothing needs unlocking to show config.
    let statuses = match client::try_node(&home, &Request::PluginsList).await? {
        Some(reply) => match reply? {
            Response::Plugins(list) => list,
            other => return Err(unexpected(other)),
        },
        None => {
            let config = Config::load(&home.config())?;
            let root = home.root().to_owned();
            tokio::task::spawn_blocking(move || plugins::describe_offline(&config, &root))
                .await
                .map_err(|source| Error::Task {
                    what: "plugins list",
                    source,
                })?
        }
    };
    if json {
        return print_json(&statuses);
    }
    println!("NAME\tKIND\tAPI\tSOURCE\tENABLED\tSTATE");
    for s in &statuses {
        println!("{}", line(s));
    }
    Ok(())
}

fn line(s: &PluginStatus) -> String {
    let mut state = s.state.clone();
    if s.calls > 0 {
        state.push_str(&format!(" ({} calls, {} failed)", s.calls, s.failures));
    }
    if let Some(f) = &s.last_failure {
        state.push_str(&format!("; last failure: {}", crate::terminal::one_line(f)));
    }
    format!(
        "{}\t{}\t{}\t{}\t{}\t{state}",
        s.name,
        s.kind.map_or("?", PluginKind::as_str),
        s.api_version.as_deref().unwrap_or("?"),
        s.source,
        if s.enabled { "yes" } else { "no" },
    )
}
