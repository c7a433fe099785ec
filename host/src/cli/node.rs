//! `pigeon node run`

use libp2p::Multiaddr;

use super::Global;
use crate::config::Config;
use crate::error::{Result, UsageError};
use crate::keys::keystore;
use crate::node::Node;
use crate::passphrase::{self, Confirm};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Run the node in the foreground until Ctrl-C or SIGTERM.
    ///
    /// Unlocks the keystore, listens (TCP and QUIC), delivers queued messages and receives new ones.
    /// While it runs, other pigeon commands for this home go through it and need no passphrase.
    /// Prints one line `listening on MULTIADDR` per address on stdout (and `metrics on URL`).
    Run {
        /// Listen on MULTIADDR (repeatable) instead of [node] listen in config.toml.
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Serve Prometheus /metrics and /healthz on HOST:PORT (overrides [metrics] listen).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        /// Relay for others (circuit relay v2), as `[relay] serve = true` does; run it on a box
        /// with a public address. `pigeon status` shows its reservations and connections.
        #[arg(long)]
        relay: bool,
    },
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    let Command::Run {
        listen,
        metrics_addr,
        relay,
    } = cmd;
    let home = g.home()?;
    home.require()?;
    let mut config = Config::load(&home.config())?;
    config.relay.serve |= relay;
    if let Some(addr) = metrics_addr {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(UsageError::MetricsFlag(addr).into());
        }
        config.metrics.listen = addr;
    }
    let listen = if listen.is_empty() {
        config.node.listen.clone()
    } else {
        listen
    };
    let listen = listen
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>().map_err(|source| {
                UsageError::ListenAddr {
                    text: a.clone(),
                    source,
                }
                .into()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pass = passphrase::obtain(g.passphrase_file.as_deref(), Confirm::Once)?;
    let keys = keystore::unlock(&home.keystore(), &pass)?;
    drop(pass);
    // Signals are caught from before the node says it listens, so a SIGTERM right after that line
    // still shuts it down cleanly instead of killing it.
    let stop = stop_signal();
    let node = Node::start(&home, keys, &config, &listen).await?;
    // With --log-format json every line the process prints is JSON (a service manager may
    // capture stdout and stderr into one stream).
    let json = matches!(g.log_format, crate::logging::LogFormat::Json);
    for addr in node.listen_addrs().await {
        if json {
            println!(
                "{}",
                serde_json::json!({ "event": "listening", "addr": addr.to_string() })
            );
        } else {
            println!("listening on {addr}");
        }
    }
    if let Some(addr) = node.metrics_addr() {
        let url = format!("http://{addr}/metrics");
        if json {
            println!("{}", serde_json::json!({ "event": "metrics", "url": url }));
        } else {
            println!("metrics on {url}");
        }
    }
    stop.await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Resolves at Ctrl-C or SIGTERM; both are caught from the moment this is called.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
