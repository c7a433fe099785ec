//! `pigeon keys passwd`, `keys rekey --resume` and `keys status`

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::{Global, count, count_bar, print_json, unexpected};
use crate::control::api::{Request, Response, Secret};
use crate::control::client::{self, Unlock};
use crate::error::Result;
use crate::keys::KeysError;
use crate::keys::keystore;
use crate::passphrase::{self, Confirm};
use crate::rekey::KeysStatus;

/// The keystore and the data keys.
#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Change the passphrase, and rekey everything at rest under a fresh data key.
    ///
    /// First the keystore is written again under the new passphrase with a fresh data key, next to
    /// the old file, read back, and only then renamed over it: a crash at any moment leaves a
    /// keystore that opens with exactly one of the two passphrases (the next run says which).
    /// Then every sealed row, attachment key and index file is sealed again under the new data
    /// key, in batches, while a running node keeps sending and receiving; the old data key is
    /// destroyed once nothing uses it. A crash or a stop in the middle is carried on by the next
    /// `node run` or by `keys rekey --resume`. Afterwards an old copy of the keystore with the old
    /// passphrase opens nothing on this disk.
    ///
    /// The current passphrase comes from --passphrase-file, PIGEON_PASSPHRASE or a prompt; the new
    /// one from --new-passphrase-file, PIGEON_NEW_PASSPHRASE or a prompt (twice).
    Passwd(PasswdArgs),
    /// Carry on a rekey that a crash or a stop interrupted.
    Rekey {
        /// Required: says that this finishes an earlier `keys passwd`.
        #[arg(long, required = true)]
        resume: bool,
        /// Print JSON progress lines and the final status.
        #[arg(long)]
        json: bool,
    },
    /// Show the keystore's format and KDF cost, the data keys with what each seals, and whether
    /// a rekey is under way.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(super) struct PasswdArgs {
    /// Read the new passphrase from FILE (first line).
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
    /// Argon2id memory for the new wrapping, MiB (8 to 1024; the keystore's own by default).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(8..=1024))]
    kdf_memory: Option<u32>,
    /// Argon2id passes for the new wrapping (1 to 16; the keystore's own by default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    kdf_passes: Option<u32>,
    /// Print JSON progress lines and the final status.
    #[arg(long)]
    json: bool,
    /// Do not ask (asks first on a terminal; refuses otherwise).
    #[arg(long, short)]
    yes: bool,
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::Passwd(args) => passwd(g, args).await,
        Command::Rekey { resume: _, json } => {
            let status = follow(g, g.call(Request::KeysRekey), json).await?;
            done(&status, json, "rekey finished")
        }
        Command::Status { json } => {
            let status = keys_status(g.call(Request::KeysStatus).await?)?;
            if json {
                return print_json(&status);
            }
            print_status(&status);
            Ok(())
        }
    }
}

async fn passwd(g: &Global, args: PasswdArgs) -> Result<()> {
    let home = g.home()?;
    home.require()?;
    if keystore::pending_path(&home.keystore()).exists() {
        eprintln!(
            "An earlier `keys passwd` stopped before its new passphrase took effect: the keystore \
             still opens with the passphrase it had before. Starting again."
        );
    }
    let question = format!(
        "Change the passphrase of {}? Afterwards the old one opens nothing here, old copies of the keystore included.",
        home.root().display()
    );
    if !super::confirm(&question, args.yes)? {
        println!("nothing changed");
        return Ok(());
    }
    let current = passphrase::obtain(g.passphrase_file.as_deref(), Confirm::Once)?;
    let new = passphrase::obtain_new(args.new_passphrase_file.as_deref())?;
    let request = Request::KeysPasswd {
        current: Secret((*current).clone()),
        new: Secret((*new).clone()),
        kdf_m_kib: args.kdf_memory.map(|m| m * 1024),
        kdf_passes: args.kdf_passes,
    };
    let call = client::call_with(&home, Unlock::Given(&current), request);
    let status = follow(g, call, args.json).await?;
    done(&status, args.json, "passphrase changed")
}

/// Waits for `call` (a passwd or rekey request) and then for the rekey it started, with a
/// progress bar on a terminal and, with `json`, a progress line on stdout now and then.
async fn follow(
    g: &Global,
    call: impl std::future::Future<Output = Result<Response>>,
    json: bool,
) -> Result<KeysStatus> {
    let bar = count_bar("rekeying");
    let show = |moved: u64, to_move: u64| {
        if let Some(bar) = &bar {
            bar.set_length(to_move);
            bar.set_position(moved.min(to_move));
        }
        if json {
            println!(r#"{{"event":"progress","moved":{moved},"to_move":{to_move}}}"#);
        }
    };
    // Without a node the work runs here and the bar follows this process; with one, the node
    // answers at once and the bar asks it how far it got.
    tokio::pin!(call);
    let mut status = loop {
        tokio::select! {
            answer = &mut call => break keys_status(answer?)?,
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some((moved, to_move)) = crate::rekey::progress_here() {
                    show(moved, to_move);
                }
            }
        }
    };
    while status.rekey_under_way {
        if let (false, Some(error)) = (status.rekey_running, &status.error) {
            return Err(KeysError::Rekey(error.clone()).into());
        }
        show(status.moved, status.to_move);
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = keys_status(g.call(Request::KeysStatus).await?)?;
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    Ok(status)
}

fn done(status: &KeysStatus, json: bool, what: &str) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(status)
            .map_err(|e| crate::error::Error::encode("the status as JSON", e))?;
        value["event"] = "done".into();
        println!("{value}");
        return Ok(());
    }
    let current = status.keys.iter().find(|k| k.current).map_or(0, |k| k.id);
    println!(
        "{what}; {} sealed again under data key {current}; the old data key is destroyed",
        count(status.moved, "item")
    );
    Ok(())
}

fn print_status(s: &KeysStatus) {
    println!("keystore: format {}", s.format);
    println!(
        "kdf: argon2id, {} MiB, {} passes, {} lane{}",
        s.kdf.m_kib / 1024,
        s.kdf.t,
        s.kdf.p,
        if s.kdf.p == 1 { "" } else { "s" }
    );
    for k in &s.keys {
        println!(
            "data key {}{}: {}, {}",
            k.id,
            if k.current { " (current)" } else { "" },
            count(k.rows, "row"),
            count(k.index_files, "index file")
        );
    }
    if s.rekey_under_way {
        println!(
            "rekey: under way{}",
            if s.rekey_running {
                format!(", {} of {} moved", s.moved, s.to_move)
            } else {
                "; `pigeon keys rekey --resume` (or a node start) carries it on".to_owned()
            }
        );
    } else {
        println!("rekey: none under way");
    }
    if let Some(e) = &s.error {
        println!("last rekey error: {e}");
    }
}

fn keys_status(response: Response) -> Result<KeysStatus> {
    match response {
        Response::Keys(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}
