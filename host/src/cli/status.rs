//! `pigeon status`

use super::{Global, count, print_json, unexpected};
use crate::control::api::{Request, Response};
use crate::error::Result;

/// Show whether the node runs, the outbox and inbox counts and connected peers.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let status = match g.call(Request::Status).await? {
        Response::Status(status) => status,
        other => return Err(unexpected(other)),
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
