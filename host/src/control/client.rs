//! The CLI's side: send a request to the running node, or, with none running, carry it out here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::ControlError;
use super::api::{Ops, Request, Response};
use super::server::{MAX_LINE, Reply};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::home::{Holder, Home, HomeError, Role};
use crate::inbox::search::LazySearch;
use crate::keys::keystore;
use crate::passphrase::{self, Confirm};
use crate::plugins::LazyPlugins;
use crate::rekey::Rekey;
use crate::store::Store;

/// How long to wait for whoever holds the home: a node that has not opened its socket yet, or
/// another command that works in-process (two cron jobs at once).
const BUSY_GRACE: Duration = Duration::from_secs(30);

/// Carries out `request` for `home`: through the running node if there is one, otherwise here
/// (unlocking the keystore with the passphrase from `passphrase_file`, the environment or a prompt).
pub async fn call(
    home: &Home,
    passphrase_file: Option<&Path>,
    request: Request,
) -> Result<Response> {
    call_with(home, Unlock::Obtain(passphrase_file), request).await
}

/// How a request carried out here unlocks the keystore.
pub enum Unlock<'a> {
    /// With the passphrase from this file, the environment or a prompt.
    Obtain(Option<&'a Path>),
    /// With this passphrase, which the caller has already (`keys passwd`).
    Given(&'a str),
}

/// [`call`], unlocking as `unlock` says if the request runs here.
pub async fn call_with(home: &Home, unlock: Unlock<'_>, request: Request) -> Result<Response> {
    home.require()?;
    if let Some(reply) = try_node(home, &request).await? {
        return reply;
    }
    let op = op_name(&request);
    let (mut pass, file) = match unlock {
        Unlock::Obtain(file) => (None, file),
        Unlock::Given(pass) => (Some(zeroize::Zeroizing::new(pass.to_owned())), None),
    };
    let mut deadline = tokio::time::Instant::now() + BUSY_GRACE;
    loop {
        match home.try_lock(Role::Command(&op)) {
            Ok(lock) => {
                let Some(given) = pass.as_deref() else {
                    // The home is free and the request runs here: the passphrase is asked for
                    // now (only now: while a node starts, it answers instead), with the home let
                    // go meanwhile. A prompt waits on its owner as long as they like, and would
                    // keep a node from starting and other commands from running all that time.
                    drop(lock);
                    pass = Some(passphrase::obtain(file, Confirm::Once)?);
                    deadline = tokio::time::Instant::now() + BUSY_GRACE;
                    if let Some(reply) = try_node(home, &request).await? {
                        return reply;
                    }
                    continue;
                };
                let reply = run_here(home, given, request).await;
                drop(lock);
                return reply;
            }
            Err(HomeError::Busy { holder, home: root }) => {
                // A node is starting, or its socket was just replaced; or a command is at work.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(reply) = try_node(home, &request).await? {
                    return reply;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(match holder {
                        Holder::Node { .. } => ControlError::Unresponsive(root).into(),
                        holder => HomeError::Busy { home: root, holder }.into(),
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `request` in this process, which holds the home's lock; the store and plugin threads are
/// closed and joined before it returns, so nothing runs on once the lock is let go.
async fn run_here(home: &Home, pass: &str, request: Request) -> Result<Response> {
    let keys = Arc::new(keystore::unlock(&home.keystore(), pass)?);
    let store = Store::open(&home.database(), keys.clone()).await?;
    let config = match Config::load(&home.config()) {
        Ok(config) => config,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    let policy = config.delivery.forward_secrecy;
    let (home2, keys2) = (home.clone(), keys.clone());
    let plugins =
        LazyPlugins::on_demand(move || crate::plugins::start(&home2, &config, &keys2, None));
    let search = LazySearch::new(&home.search_index(), keys.clone(), store.clone());
    let rekey = Rekey::new(
        keys.clone(),
        store.clone(),
        search.clone(),
        home.keystore(),
        home.search_index(),
    );
    if rekey.under_way() && !matches!(request, Request::KeysRekey | Request::KeysPasswd { .. }) {
        eprintln!(
            "note: a rekey after a passphrase change is unfinished; `pigeon keys rekey --resume` \
             finishes it (a node does when it starts)"
        );
    }
    let reply = Ops::new(
        keys,
        store.clone(),
        None,
        plugins.clone(),
        search.clone(),
        rekey,
    )
    .with_forward_secrecy(policy)
    .handle(request)
    .await;
    search.close().await;
    plugins.close().await;
    store.close().await;
    reply
}

/// The request's operation as the lock file records it (`outbox_list`): its name, never its
/// contents.
fn op_name(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v.get("op")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// How long a node may take to answer a request: `PIGEON_ANSWER_TIMEOUT` seconds if set (a script
/// that would rather fail fast), else 60 s, or an hour for `rules apply`, which runs every plugin
/// over the whole inbox.
fn answer_within(request: &Request) -> Duration {
    let from_env = std::env::var("PIGEON_ANSWER_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > 0);
    match (from_env, request) {
        (Some(secs), _) => Duration::from_secs(secs),
        (None, Request::RulesApply { .. }) => Duration::from_secs(3600),
        (None, _) => Duration::from_secs(60),
    }
}

/// Sends `request` to the node listening on the home's socket; `None` if no node answers there.
/// A node that takes the request but never answers is an error after [`answer_within`].
pub async fn try_node(home: &Home, request: &Request) -> Result<Option<Result<Response>>> {
    let limit = answer_within(request);
    tokio::time::timeout(limit, exchange(home, request))
        .await
        .unwrap_or_else(|_| Err(ControlError::NoAnswer(limit.as_secs()).into()))
}

/// A protocol error saying `e`.
fn protocol(e: &dyn std::fmt::Display) -> Error {
    ControlError::Protocol(e.to_string()).into()
}

/// Connects to the node's socket and sends `request`; `None` if no node listens there.
async fn send_request(
    home: &Home,
    request: &Request,
) -> Result<
    Option<(
        tokio::net::unix::OwnedReadHalf,
        tokio::net::unix::OwnedWriteHalf,
    )>,
> {
    let stream = match UnixStream::connect(home.socket()).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(protocol(&e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(&e))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| protocol(&e))?;
    Ok(Some((read, write)))
}

async fn exchange(home: &Home, request: &Request) -> Result<Option<Result<Response>>> {
    let Some((read, _write)) = send_request(home, request).await? else {
        return Ok(None);
    };
    let mut answer = String::new();
    BufReader::new(read.take(MAX_LINE * 2))
        .read_line(&mut answer)
        .await
        .map_err(|e| protocol(&e))?;
    if answer.is_empty() {
        return Err(protocol(
            &"the node closed the connection without answering",
        ));
    }
    match serde_json::from_str::<Reply>(&answer).map_err(|e| protocol(&e))? {
        Reply::Ok(response) => Ok(Some(Ok(*response))),
        Reply::Err { kind, message } => Ok(Some(Err(Error::Remote { kind, message }))),
    }
}

/// Follows the running node's inbox as `spec` says, calling `seen` for each thing seen, until
/// `seen` fails (its error is returned: a closed stdout, say) or the node goes away (an error).
/// Needs a running node: with none, [`ControlError::NoNode`].
pub async fn watch(
    home: &Home,
    spec: crate::inbox::watch::WatchSpec,
    mut seen: impl FnMut(crate::store::Said) -> Result<()>,
) -> Result<()> {
    home.require()?;
    let Some((read, _write)) = send_request(home, &Request::InboxWatch(spec)).await? else {
        return Err(ControlError::NoNode(home.root().to_owned()).into());
    };
    let mut reader = BufReader::new(read);
    let mut started = false;
    loop {
        let mut answer = String::new();
        (&mut reader)
            .take(MAX_LINE * 2)
            .read_line(&mut answer)
            .await
            .map_err(|e| protocol(&e))?;
        if answer.is_empty() {
            return Err(protocol(&"the node closed the watch (did it stop?)"));
        }
        match serde_json::from_str::<Reply>(&answer).map_err(|e| protocol(&e))? {
            Reply::Ok(response) => match (*response, started) {
                (Response::Watching, false) => started = true,
                (Response::Watched(event), true) => seen(event)?,
                (other, _) => {
                    return Err(ControlError::UnexpectedAnswer(format!("{other:?}")).into());
                }
            },
            Reply::Err { kind, message } => return Err(Error::Remote { kind, message }),
        }
    }
}
