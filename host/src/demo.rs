//! `pigeon demo local-two-peers`: two nodes in one process, in temporary homes on 127.0.0.1,
//! exchange messages both ways through the same code paths the CLI uses.

use std::io::Write;
use std::time::Duration;

use libp2p::Multiaddr;

use crate::config::Config;
use crate::control::api::{Ops, Request, Response};
use crate::error::{Error, Result, RunError};
use crate::home::Home;
use crate::keys::keystore;
use crate::node::Node;
use crate::store::InboxQuery;

pub(crate) const PASSPHRASE: &str = "demo passphrase, not a secret";
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the demo, reporting to `out`; `Ok` only if every message arrived exactly once.
pub async fn local_two_peers(out: &mut dyn Write) -> Result<()> {
    let dir = tempfile::tempdir().map_err(io)?;
    let (alice, alice_home) = start(dir.path(), "alice").await?;
    let (bob, bob_home) = start(dir.path(), "bob").await?;
    writeln!(out, "alice and bob run in {}", dir.path().display()).map_err(io)?;
    introduce(&alice, &bob, "bob").await?;
    introduce(&bob, &alice, "alice").await?;

    let to_bob = [
        "Hello Bob, this is Alice.",
        "Sealed with HPKE, stored encrypted.",
        "Delivered exactly once.",
    ];
    let to_alice = ["Hi Alice! Bob here.", "Got all three."];
    for text in to_bob {
        send(alice.ops(), "bob", text).await?;
    }
    for text in to_alice {
        send(bob.ops(), "alice", text).await?;
    }

    let bob_got = wait_for(bob.ops(), to_bob.len()).await?;
    let alice_got = wait_for(alice.ops(), to_alice.len()).await?;
    writeln!(out, "bob received {} messages:", bob_got.len()).map_err(io)?;
    for text in &bob_got {
        writeln!(out, "  from alice: {text}").map_err(io)?;
    }
    writeln!(out, "alice received {} messages:", alice_got.len()).map_err(io)?;
    for text in &alice_got {
        writeln!(out, "  from bob: {text}").map_err(io)?;
    }
    alice.shutdown().await;
    bob.shutdown().await;
    drop((alice_home, bob_home));

    let sorted = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let (mut b, mut a) = (bob_got, alice_got);
    b.sort();
    a.sort();
    if b != sorted(&to_bob) || a != sorted(&to_alice) {
        return Err(RunError::DemoMismatch.into());
    }
    writeln!(
        out,
        "all messages arrived exactly once; temporary homes removed"
    )
    .map_err(io)?;
    Ok(())
}

/// An I/O failure of the demo's own temporary directory or report.
fn io(source: std::io::Error) -> Error {
    Error::Io {
        what: "demo".into(),
        source,
    }
}

async fn start(dir: &std::path::Path, name: &str) -> Result<(Node, Home)> {
    let home = new_home(dir, name).await?;
    let node = start_node(&home, &Config::default()).await?;
    Ok((node, home))
}

/// A new home `dir/name` under the demo passphrase (the benchmarks use it too).
pub(crate) async fn new_home(dir: &std::path::Path, name: &str) -> Result<Home> {
    let home = Home::resolve(Some(dir.join(name)))?;
    crate::init::create_home(&home, PASSPHRASE).await?;
    Ok(home)
}

/// Starts the node of a home made by [`new_home`] on a free TCP port of 127.0.0.1.
pub(crate) async fn start_node(home: &Home, config: &Config) -> Result<Node> {
    let keys = keystore::unlock(&home.keystore(), PASSPHRASE)?;
    Node::start(home, keys, config, &[loopback(0)]).await
}

/// `/ip4/127.0.0.1/tcp/PORT`.
pub(crate) fn loopback(port: u16) -> Multiaddr {
    Multiaddr::from(std::net::Ipv4Addr::LOCALHOST).with(libp2p::multiaddr::Protocol::Tcp(port))
}

/// Adds `whom` as a contact of `who`, under `name`, with its listen addresses.
pub(crate) async fn introduce(who: &Node, whom: &Node, name: &str) -> Result<()> {
    let info = match whom.ops().handle(Request::Id).await? {
        Response::Id(info) => info,
        other => return Err(other.unexpected().into()),
    };
    let request = Request::ContactsAdd {
        name: name.into(),
        address: info.address,
        addrs: info.listen,
    };
    who.ops().handle(request).await?;
    Ok(())
}

async fn send(ops: &Ops, to: &str, body: &str) -> Result<()> {
    ops.handle(Request::Send {
        to: to.into(),
        subject: None,
        body: body.into(),
        attachments: vec![],
        forward_secrecy: None,
    })
    .await?;
    Ok(())
}

async fn wait_for(ops: &Ops, count: usize) -> Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let request = Request::InboxList(InboxQuery::default());
        let items = match ops.handle(request).await? {
            Response::Inbox(items) => items,
            other => return Err(other.unexpected().into()),
        };
        if items.len() >= count || tokio::time::Instant::now() > deadline {
            // In the order of the conversation: the list is newest first; sent times break ties
            // between messages that arrived in one batch.
            let mut messages = Vec::new();
            for item in items.into_iter().rev() {
                if let Response::Message(m) = ops.handle(Request::InboxRead { id: item.id }).await?
                {
                    messages.push((m.sent_at, m.body));
                }
            }
            messages.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(messages.into_iter().map(|(_, body)| body).collect());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
