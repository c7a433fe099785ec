//! `pigeon bench delivery`: how fast the delivery engine drains an outbox.
//!
//! Two nodes in this process, on 127.0.0.1, in temporary homes. The sender queues N messages for the
//! receiver while the receiver is offline; then the receiver starts, and the clock runs until the
//! sender has an ack for every message. Repeated for each batch size asked for, so batching can be
//! compared with one message per batch in the same run.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use serde::Serialize;

use crate::config::Config;
use crate::control::api::{Request, Response};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::keys::keystore;
use crate::node::Node;
use crate::store::Db;

const PASSPHRASE: &str = "bench passphrase, not a secret";
/// Longest a run may take before it is reported as failed.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRun {
    /// Messages delivered.
    pub messages: usize,
    /// Body size in bytes.
    pub size: usize,
    /// `delivery.batch_max_messages` for the run.
    pub batch_max_messages: usize,
    /// `delivery.batches_in_flight` for the run.
    pub batches_in_flight: usize,
    /// Seconds from the receiver's start to the last ack.
    pub seconds: f64,
    /// Messages per second.
    pub messages_per_second: f64,
}

/// Runs the delivery benchmark once with `batch_max_messages` and `batches_in_flight`.
pub async fn delivery(
    messages: usize,
    size: usize,
    batch_max_messages: usize,
    batches_in_flight: usize,
) -> Result<DeliveryRun> {
    let io = |e: std::io::Error| Error::Invalid(format!("bench: {e}"));
    let dir = tempfile::tempdir().map_err(io)?;
    let alice_home = new_home(dir.path(), "alice")?;
    let bob_home = new_home(dir.path(), "bob")?;
    let bob_keys = keystore::unlock(&bob_home.keystore(), PASSPHRASE)?;
    let bob_listen = free_tcp_addr()?;

    let mut config = Config::default();
    config.delivery.batch_max_messages = batch_max_messages;
    config.delivery.batches_in_flight = batches_in_flight;
    let alice_keys = keystore::unlock(&alice_home.keystore(), PASSPHRASE)?;
    let alice = Node::start(&alice_home, alice_keys, &config, &[loopback()]).await?;
    let alice_addrs: Vec<String> = alice
        .listen_addrs()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    let Response::Id(alice_id) = alice.ops().handle(Request::Id).await? else {
        return Err(Error::Invalid("bench: no id".into()));
    };
    let bob_address = bob_keys.address().to_string();
    alice
        .ops()
        .handle(Request::ContactsAdd {
            name: "bob".into(),
            address: bob_address,
            addrs: vec![bob_listen.to_string()],
        })
        .await?;
    // Bob knows Alice before he starts, as a real contact would.
    {
        let db_keys = std::sync::Arc::new(keystore::unlock(&bob_home.keystore(), PASSPHRASE)?);
        let mut db = Db::open(&bob_home.database(), db_keys)?;
        let addrs = alice_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect::<Vec<Multiaddr>>();
        db.add_contact("alice", &alice_id.address.parse()?, &addrs)?;
    }
    let body = "x".repeat(size);
    for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
        alice
            .ops()
            .queue_bulk("bob", vec![body.clone(); chunk.len()])
            .await?;
    }

    let bob = Node::start(&bob_home, bob_keys, &Config::default(), &[bob_listen]).await?;
    let started = Instant::now();
    loop {
        let Response::Status(status) = alice.ops().handle(Request::Status).await? else {
            return Err(Error::Invalid("bench: no status".into()));
        };
        if status.outbox.delivered as usize >= messages {
            break;
        }
        if started.elapsed() > RUN_LIMIT {
            return Err(Error::Invalid(format!(
                "bench: only {} of {messages} delivered after {RUN_LIMIT:?}",
                status.outbox.delivered
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(DeliveryRun {
        messages,
        size,
        batch_max_messages,
        batches_in_flight,
        seconds,
        messages_per_second: messages as f64 / seconds,
    })
}

fn new_home(dir: &std::path::Path, name: &str) -> Result<Home> {
    let home = Home::resolve(Some(dir.join(name)))?;
    crate::init::create_home(&home, PASSPHRASE)?;
    Ok(home)
}

fn loopback() -> Multiaddr {
    Multiaddr::from(std::net::Ipv4Addr::LOCALHOST).with(libp2p::multiaddr::Protocol::Tcp(0))
}

/// A TCP address on 127.0.0.1 that is free now, for a node that starts later.
fn free_tcp_addr() -> Result<Multiaddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Invalid(format!("bench: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("bench: {e}")))?
        .port();
    Ok(Multiaddr::from(std::net::Ipv4Addr::LOCALHOST).with(libp2p::multiaddr::Protocol::Tcp(port)))
}
