//! `pigeon init`

use super::Global;
use crate::error::Result;
use crate::passphrase::{self, Confirm};

/// Create a new home.
///
/// Generates the identity key (its PeerId names this node), the X25519 encryption key and a
/// data-encryption key, seals them in <home>/keystore under your passphrase (argon2id), creates the
/// encrypted database and a commented config.toml. The passphrase comes from --passphrase-file,
/// PIGEON_PASSPHRASE, or is asked twice on the terminal. Fails, changing nothing, if the home exists.
#[derive(Debug, clap::Args)]
pub(super) struct Args {}

pub(super) async fn run(g: &Global, _args: Args) -> Result<()> {
    let home = g.home()?;
    home.require()
        .err()
        .ok_or_else(|| crate::home::HomeError::AlreadyInitialised(home.root().to_owned()))?;
    let pass = passphrase::obtain(g.passphrase_file.as_deref(), Confirm::Twice)?;
    let address = crate::init::create_home(&home, &pass).await?;
    println!("created {}", home.root().display());
    println!("peer id: {}", address.peer_id());
    println!("address: {address}");
    Ok(())
}
