//! `pigeon demo local-two-peers`

use crate::error::Result;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Two nodes in temporary homes on 127.0.0.1 exchange messages both ways; prints what each
    /// received, cleans up, and exits 0 only if everything arrived.
    LocalTwoPeers,
}

pub(super) async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::LocalTwoPeers => crate::demo::local_two_peers(&mut std::io::stdout()).await,
    }
}
