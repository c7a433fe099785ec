//! `pigeon peers`

use super::{Global, print_json, unexpected};
use crate::control::api::{Request, Response};
use crate::control::client;
use crate::error::Result;
use crate::store::Peek;

/// Show known peers and the health of their addresses.
///
/// For each address: decaying counts of successful and failed dials, the ping round trip and a
/// score; dialing tries the best addresses first. `connected` is known only while the node runs;
/// without one, no passphrase is needed.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let home = g.home()?;
    home.require()?;
    // With no node, the clear columns say it all (nothing is connected): no passphrase needed.
    let peers = match client::try_node(&home, &Request::Peers).await? {
        Some(Ok(Response::Peers(peers))) => peers,
        Some(Ok(other)) => return Err(unexpected(other)),
        Some(Err(e)) => return Err(e),
        None => Peek::open(&home.database())?.peers_health(crate::store::now_ms())?,
    };
    if args.json {
        return print_json(&peers);
    }
    super::say_if_empty(&peers, "no peers known yet");
    for p in peers {
        let name = p.name.as_deref().unwrap_or("-");
        let state = if p.connected { "connected" } else { "" };
        println!("{name}\t{}\t{state}", p.peer_id);
        for c in &p.connections {
            let kind = if c.relayed { "relayed" } else { "direct" };
            let via = match c.via {
                crate::net::Via::Dialed => "dialed",
                crate::net::Via::Accepted => "accepted",
                crate::net::Via::HolePunch => "hole punch",
            };
            println!(
                "  now {kind} ({via}) via {}",
                crate::terminal::one_line(&c.addr)
            );
        }
        for a in p.addrs {
            let rtt = a
                .rtt_ms
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}ms"));
            println!(
                "  {}\tscore={:.2}\tok={:.1}\tfailed={:.1}\trtt={rtt}",
                crate::terminal::one_line(&a.addr),
                a.score,
                a.successes,
                a.failures
            );
        }
    }
    Ok(())
}
