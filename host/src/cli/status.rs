//! `pigeon status`

use super::{Global, count, print_json, unexpected};
use crate::control::api::{Request, Response, StatusInfo};
use crate::control::client;
use crate::error::Result;
use crate::keys::keystore;
use crate::store::Peek;

/// Show whether the node runs, the outbox and inbox counts and connected peers.
///
/// No passphrase is needed: without a running node the counts come from what the database keeps
/// in clear, and the PeerId from the keystore's public header.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let home = g.home()?;
    home.require()?;
    let status = match client::try_node(&home, &Request::Status).await? {
        Some(Ok(Response::Status(status))) => status,
        Some(Ok(other)) => return Err(unexpected(other)),
        Some(Err(e)) => return Err(e),
        None => {
            let peek = Peek::open(&home.database())?;
            StatusInfo {
                node_running: false,
                peer_id: keystore::read_public(&home.keystore())?
                    .peer_id()
                    .to_string(),
                outbox: peek.outbox_counts()?,
                inbox: peek.inbox_count()?,
                connected_peers: 0,
                nat: None,
            }
        }
    };
    if args.json {
        return print_json(&status);
    }
    println!(
        "node:     {}",
        if status.node_running {
            "running"
        } else {
            "not running"
        }
    );
    println!("peer id:  {}", status.peer_id);
    println!(
        "outbox:   {} queued, {} delivered, {} failed",
        status.outbox.queued, status.outbox.delivered, status.outbox.failed
    );
    println!("inbox:    {}", count(status.inbox, "message"));
    println!("peers:    {} connected", status.connected_peers);
    if let Some(nat) = &status.nat {
        let reach = match nat.nat {
            crate::net::NatStatus::Unknown => "not known yet",
            crate::net::NatStatus::Public => "reachable (AutoNAT)",
            crate::net::NatStatus::Private => "behind a NAT or firewall (AutoNAT)",
        };
        println!("network:  {reach}");
        if !nat.reserved_at.is_empty() {
            println!("relays:   reserved at {}", nat.reserved_at.join(", "));
        }
        if nat.serving {
            println!(
                "relaying: {}/{} reservations, {}/{} connections",
                nat.reservations, nat.max_reservations, nat.circuits, nat.max_circuits
            );
        }
    }
    Ok(())
}
