//! `pigeon id`

use super::{Global, print_json, unexpected};
use crate::control::api::{IdInfo, Request, Response};
use crate::control::client;
use crate::error::Result;
use crate::keys::keystore;
use crate::passphrase::{self, Confirm};

/// Show this node's PeerId and address.
///
/// The address is what contacts need (`pigeon contacts add NAME ADDRESS`): it carries the PeerId and
/// the encryption key, with a checksum that catches typos. No passphrase is needed: without a
/// running node the address comes from the keystore's public header (checksummed, so damage is
/// caught, but anyone who can write the file could change it); --verify unlocks the keystore and
/// derives the address from the secrets instead. While the node runs, the address is the node's
/// own and its listen addresses are shown too.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Print JSON: {"peer_id", "address", "listen"}.
    #[arg(long)]
    json: bool,
    /// Derive the address from the unlocked keys (asks for the passphrase when no node runs), and
    /// refuse a keystore whose public header disagrees with them (exit 6).
    #[arg(long)]
    verify: bool,
}

pub(super) async fn run(g: &Global, args: Args) -> Result<()> {
    let home = g.home()?;
    home.require()?;
    let info = match client::try_node(&home, &Request::Id).await? {
        Some(Ok(Response::Id(info))) => info,
        Some(Ok(other)) => return Err(unexpected(other)),
        Some(Err(e)) => return Err(e),
        None => {
            let address = if args.verify {
                let pass = passphrase::obtain(g.passphrase_file.as_deref(), Confirm::Once)?;
                keystore::unlock(&home.keystore(), &pass)?.address()
            } else {
                keystore::read_public(&home.keystore())?
            };
            IdInfo {
                peer_id: address.peer_id().to_string(),
                address: address.to_string(),
                listen: vec![],
            }
        }
    };
    if args.json {
        return print_json(&info);
    }
    println!("peer id: {}", info.peer_id);
    println!("address: {}", info.address);
    for addr in &info.listen {
        println!("listening: {addr}");
    }
    Ok(())
}
