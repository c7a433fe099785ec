//! The node's side of the control socket.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ControlError;
use super::api::{Ops, Request, Response};
use crate::error::Error;
use crate::exit::ErrorKind;
use crate::metrics::METRICS;

/// Largest request line: a message body of the maximum size, JSON-escaped, fits.
pub(super) const MAX_LINE: u64 = 8 * 1024 * 1024;

/// Connections served at once; more wait in the socket's backlog until one ends.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request line before it is disconnected.
pub const REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// What travels back over the socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Reply {
    // Boxed: a response is much larger than an error.
    Ok(Box<Response>),
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
                // At the cap, clients wait in the backlog (their own answer timeout bounds it).
                accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => match accepted {
                    Ok((stream, _)) => {
                        if same_user(&stream) {
                            conns.spawn(serve_counted(stream, ops.clone()));
                        } else {
                            METRICS.control_refused.inc();
                            conns.spawn(refuse(stream));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        // Out of descriptors, say: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
        let _ = std::fs::remove_file(&path);
    }))
}

/// Whether the client runs as this process's user (`SO_PEERCRED`). The socket is 0600 inside a
/// 0700 home, so another user reaching it means the permissions were changed: refuse anyway.
fn same_user(stream: &UnixStream) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    let own = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == own => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "refused a control connection from another user"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "refused a control connection whose user is unknown");
            false
        }
    }
}

/// Tells another user's client why it gets nothing (its request is never read), within bounds.
async fn refuse(stream: UnixStream) {
    let reply = Reply::Err {
        kind: ErrorKind::Other,
        message: "this node's control socket serves only the user who runs the node".to_owned(),
    };
    let (read, mut write) = stream.into_split();
    let answer = async {
        // Its request is taken off the socket unread (closing on unread bytes would reset the
        // connection before the client reads why).
        let mut request = Vec::new();
        let _ = BufReader::new(read.take(MAX_LINE))
            .read_until(b'\n', &mut request)
            .await;
        drop(request);
        send(&mut write, &reply).await;
    };
    let _ = tokio::time::timeout(REQUEST_WITHIN, answer).await;
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) {
    let Ok(mut bytes) = serde_json::to_vec(reply) else {
        return;
    };
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
    let _ = write.shutdown().await;
}

async fn serve_counted(stream: UnixStream, ops: Ops) {
    /// Counts the connection for as long as it lives, aborted at shutdown included.
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            METRICS.control_connections.dec();
        }
    }
    METRICS.control_connections.inc();
    let _counted = Counted;
    serve_one(stream, ops).await;
}

async fn serve_one(stream: UnixStream, ops: Ops) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    let Ok(read) = tokio::time::timeout(REQUEST_WITHIN, reader.read_line(&mut line)).await else {
        METRICS.control_refused.inc();
        tracing::debug!("closed a control connection that sent no request in time");
        return;
    };
    let reply = match read {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::InboxWatch(spec)) => {
                return watch(&ops, spec, reader, write).await;
            }
            Ok(request) => match ops.handle(request).await {
                Ok(response) => Reply::Ok(Box::new(response)),
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
    send(&mut write, &reply).await;
}

/// Serves `inbox watch`: [`Response::Watching`], then a line for each thing seen, until the
/// client closes its end (or sends anything more), a write fails, or the node stops. A slow
/// client slows only this task: the watcher reads from the store what it has not told yet.
async fn watch(
    ops: &Ops,
    spec: crate::inbox::watch::WatchSpec,
    mut reader: BufReader<tokio::io::Take<tokio::net::unix::OwnedReadHalf>>,
    mut write: tokio::net::unix::OwnedWriteHalf,
) {
    let mut watcher = match ops.watcher(spec).await {
        Ok(w) => w,
        Err(e) => return send(&mut write, &error_reply(&e)).await,
    };
    if write_line(&mut write, &Reply::Ok(Box::new(Response::Watching)))
        .await
        .is_err()
    {
        return;
    }
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            seen = watcher.next() => match seen {
                Ok(events) => {
                    for event in events {
                        let reply = Reply::Ok(Box::new(Response::Watched(event)));
                        if write_line(&mut write, &reply).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => return send(&mut write, &error_reply(&e)).await,
            },
            // The client sends nothing after its request: EOF (or anything) means it is gone.
            _ = reader.read(&mut byte) => return,
        }
    }
}

async fn write_line(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

fn error_reply(e: &Error) -> Reply {
    Reply::Err {
        kind: e.kind(),
        message: e.to_string(),
    }
}
