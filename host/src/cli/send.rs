//! `pigeon send`

use std::io::Read;
use std::path::PathBuf;

use clap_complete::engine::ArgValueCandidates;

use super::{Global, progress_bar, unexpected};
use crate::attachments::{self, AttachmentRef};
use crate::config::{Config, ForwardSecrecy};
use crate::control::ControlError;
use crate::control::api::{Request, Response};
use crate::error::{Error, Result, UsageError};
use crate::store::Sealing;

/// Queue a message to a contact.
///
/// Prints the message id once the message is durably queued. While the node runs, the message is on
/// the wire at once; otherwise it leaves when the node next runs. `pigeon outbox list` shows its state.
/// Attached files are sealed into the home right away, so changing or deleting them afterwards does
/// not change what is sent; the recipient pulls them in chunks and can resume after a crash.
///
/// Forward secrecy (--forward-secrecy, else the contact's own policy, else
/// delivery.forward_secrecy): "prefer" seals the message to one of the recipient's one-time keys
/// when this node holds one and says so when it does not; "require" keeps the message waiting
/// ("waiting for a one-time key" in `pigeon outbox list`) until the recipient hands one out.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The contact's name.
    #[arg(add = ArgValueCandidates::new(super::completions::contacts))]
    contact: String,
    /// The message text (or use --body-file).
    #[arg(required_unless_present = "body_file", conflicts_with = "body_file")]
    text: Option<String>,
    /// Read the text from PATH ('-' for stdin).
    #[arg(long, value_name = "PATH")]
    body_file: Option<PathBuf>,
    /// A subject line.
    #[arg(long)]
    subject: Option<String>,
    /// Attach FILE (repeatable); at most attachments.max_size bytes each.
    #[arg(long = "attach", value_name = "FILE")]
    attach: Vec<PathBuf>,
    /// Forward secrecy for this message: off, prefer or require.
    #[arg(long, value_enum, value_name = "POLICY")]
    forward_secrecy: Option<ForwardSecrecy>,
    /// Print JSON: id, state, how it was sealed, forward_secret.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let body = match (args.text, args.body_file) {
        (Some(text), _) => text,
        (None, Some(path)) => read_body(&path)?,
        (None, None) => return Err(UsageError::NoBody.into()),
    };
    let home = g.home()?;
    home.require()?;
    let staged = stage_all(home.root(), &args.attach)?;
    let request = Request::Send {
        to: args.contact.clone(),
        subject: args.subject,
        body,
        attachments: staged.clone(),
        forward_secrecy: args.forward_secrecy,
    };
    let result = g.call(request).await;
    forget_unsent(home.root(), &staged, &result);
    match result? {
        Response::Queued {
            id,
            sealing,
            forward_secrecy,
        } => {
            if args.json {
                return super::print_json(&serde_json::json!({
                    "id": id,
                    "state": if sealing == Sealing::Waiting { "waiting" } else { "queued" },
                    "sealing": sealing,
                    "forward_secrecy": forward_secrecy,
                    "forward_secret": sealing == Sealing::OneTimeKey,
                }));
            }
            println!("{id}");
            let name = crate::terminal::one_line(&args.contact);
            match (sealing, forward_secrecy) {
                (Sealing::LongTermKey, ForwardSecrecy::Prefer) => eprintln!(
                    "note: sent without forward secrecy: no one-time key of {name}'s is at hand \
                     yet (they come while {name} is connected); --forward-secrecy require waits for one"
                ),
                (Sealing::Waiting, _) => eprintln!(
                    "note: waiting for a one-time key of {name}'s (forward secrecy required); it \
                     is sealed and sent once {name} hands one out (`pigeon outbox list`)"
                ),
                _ => {}
            }
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// After a send of a message with the attachments `staged` (sealed under `root`) ended as
/// `result`: removes their sealed copies if the message surely was not queued.
pub(super) fn forget_unsent(
    root: &std::path::Path,
    staged: &[AttachmentRef],
    result: &Result<Response>,
) {
    match result {
        Err(e) if may_be_queued(e) && !staged.is_empty() => {
            // The node may have queued the message and will serve these files to the recipient:
            // removing them would leave it asking forever for a file that is gone.
            tracing::warn!(
                files = staged.len(),
                "the node did not answer; the sealed copies of the attachments are kept in case it queued the message (`pigeon outbox list` tells)"
            );
        }
        Err(_) => {
            // The message was refused or never reached a node: nothing references the copies.
            for a in staged {
                let _ = std::fs::remove_file(attachments::file_path(root, &a.id_hex()));
            }
        }
        Ok(_) => {}
    }
}

/// Whether a failed call may still have queued the message: the request went out and no answer
/// came back (a timeout, a connection dropped mid-answer, an answer this CLI cannot read).
fn may_be_queued(e: &Error) -> bool {
    matches!(
        e,
        Error::Control(
            ControlError::NoAnswer(_)
                | ControlError::Protocol(_)
                | ControlError::UnexpectedAnswer(_)
        )
    )
}

fn stage_all(root: &std::path::Path, files: &[PathBuf]) -> Result<Vec<AttachmentRef>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let max = Config::load(&root.join("config.toml"))?
        .attachments
        .max_size;
    let mut staged = Vec::new();
    for file in files {
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(len, &format!("sealing {}", file.display()));
        let result = attachments::stage(root, file, max, |done| {
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
        });
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        match result {
            Ok(a) => staged.push(a),
            Err(e) => {
                for a in &staged {
                    let _ = std::fs::remove_file(attachments::file_path(root, &a.id_hex()));
                }
                return Err(e.into());
            }
        }
    }
    Ok(staged)
}

fn read_body(path: &std::path::Path) -> Result<String> {
    let limit = crate::envelope::MAX_BODY as u64 + 1;
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchFile(path.to_owned()),
        _ => Error::io(format!("cannot read {}", path.display()))(e),
    })?;
    String::from_utf8(bytes).map_err(|_| UsageError::NotText(path.to_owned()).into())
}

#[cfg(test)]
mod tests {
    use super::read_body;
    use crate::error::{Error, UsageError};

    #[test]
    fn a_missing_body_file_is_not_found_and_one_that_is_not_text_is_usage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = read_body(&dir.path().join("missing.txt")).expect_err("missing");
        assert!(matches!(missing, Error::NoSuchFile(_)), "{missing:?}");
        assert_eq!(missing.kind().exit_code(), 4, "as a missing --attach file");
        assert!(missing.to_string().starts_with("cannot read "), "{missing}");
        let unreadable = read_body(dir.path()).expect_err("a directory");
        assert!(matches!(unreadable, Error::Io { .. }), "{unreadable:?}");
        assert_eq!(unreadable.kind().exit_code(), 1);

        let binary = dir.path().join("bin.dat");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        let refused = read_body(&binary).expect_err("not text");
        assert!(
            matches!(refused, Error::Usage(UsageError::NotText(_))),
            "{refused:?}"
        );
        assert_eq!(refused.kind().exit_code(), 2);
    }
}
