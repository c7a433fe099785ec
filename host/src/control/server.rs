//! The node's side of the control socket.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ControlError;
use super::api::{Ops, Request, Response};
use crate::error::Error;
use crate::exit::ErrorKind;

/// Largest request line: a message body of the maximum size, JSON-escaped, fits.
pub(super) const MAX_LINE: u64 = 8 * 1024 * 1024;

/// What travels back over the socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Reply {
    Ok(Response),
    Err { kind: ErrorKind, message: String },
}

/// Binds the socket at `path` (replacing a stale one: the caller holds the home lock) and serves
/// requests until `cancel`.
pub fn serve(
    path: &Path,
    ops: Ops,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, ControlError> {
    let bind = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
    }
    let path = path.to_owned();
    Ok(tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { conns.spawn(serve_one(stream, ops.clone())); }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
        let _ = std::fs::remove_file(&path);
    }))
}

async fn serve_one(stream: UnixStream, ops: Ops) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply = match BufReader::new(read.take(MAX_LINE))
        .read_line(&mut line)
        .await
    {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => match ops.handle(request).await {
                Ok(response) => Reply::Ok(response),
                Err(e) => error_reply(&e),
            },
            Err(e) => Reply::Err {
                kind: ErrorKind::Usage,
                message: format!("bad control request: {e}"),
            },
        },
        Err(e) => Reply::Err {
            kind: ErrorKind::Usage,
            message: format!("bad control request: {e}"),
        },
    };
    let Ok(mut bytes) = serde_json::to_vec(&reply) else {
        return;
    };
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
    let _ = write.shutdown().await;
}

fn error_reply(e: &Error) -> Reply {
    Reply::Err {
        kind: e.kind(),
        message: e.to_string(),
    }
}
