//! `pigeon send`

use std::io::Read;
use std::path::PathBuf;

use super::{Global, unexpected};
use crate::control::api::{Request, Response};
use crate::error::{Error, Result};

/// Queue a message to a contact.
///
/// Prints the message id once the message is durably queued. While the node runs, the message is on
/// the wire at once; otherwise it leaves when the node next runs. `pigeon outbox list` shows its state.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The contact's name.
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
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let body = match (args.text, args.body_file) {
        (Some(text), _) => text,
        (None, Some(path)) => read_body(&path)?,
        (None, None) => return Err(Error::Invalid("give the text, or --body-file PATH".into())),
    };
    match g
        .call(Request::Send {
            to: args.contact,
            subject: args.subject,
            body,
        })
        .await?
    {
        Response::Queued { id } => {
            println!("{id}");
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

fn read_body(path: &std::path::Path) -> Result<String> {
    let limit = crate::envelope::MAX_BODY as u64 + 1;
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|_| {
        Error::Invalid(format!(
            "{} is not UTF-8 text; a message body must be text",
            path.display()
        ))
    })
}
