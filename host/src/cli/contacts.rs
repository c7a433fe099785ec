//! `pigeon contacts add|list|set|rm`

use clap_complete::engine::ArgValueCandidates;

use super::{Global, confirm, print_json, unexpected};
use crate::config::ForwardSecrecy;
use crate::control::api::{Request, Response};
use crate::error::Result;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Add a contact from the address it gave you (`pigeon id` on its side).
    ///
    /// Example: pigeon contacts add bob pigeon1q... --addr /ip4/192.0.2.7/tcp/7717
    Add {
        /// A local name for the contact (letters, digits, '-', '_', '.', '@').
        name: String,
        /// The contact's pigeon address (starts with pigeon1).
        address: String,
        /// Where to reach it, as a multiaddr (with or without /p2p/<id>); repeatable.
        #[arg(long = "addr", value_name = "MULTIADDR")]
        addrs: Vec<String>,
    },
    /// List contacts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a contact's settings.
    ///
    /// Example: pigeon contacts set bob --forward-secrecy require
    Set {
        /// The contact's name.
        #[arg(add = ArgValueCandidates::new(super::completions::contacts))]
        name: String,
        /// Forward secrecy for messages to this contact: off, prefer, require, or default
        /// (delivery.forward_secrecy). `pigeon send --forward-secrecy` still wins for one message.
        #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
        forward_secrecy: Policy,
    },
    /// Remove a contact (asks first on a terminal).
    Rm {
        /// The contact's name.
        #[arg(add = ArgValueCandidates::new(super::completions::contacts))]
        name: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
}

pub(super) async fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::Add {
            name,
            address,
            addrs,
        } => {
            g.call(Request::ContactsAdd {
                name: name.clone(),
                address,
                addrs,
            })
            .await?;
            println!("added {name}");
        }
        Command::List { json } => {
            let contacts = match g.call(Request::ContactsList).await? {
                Response::Contacts(c) => c,
                other => return Err(unexpected(other)),
            };
            if json {
                return print_json(&contacts);
            }
            super::say_if_empty(
                &contacts,
                "no contacts yet: pigeon contacts add NAME ADDRESS",
            );
            for c in contacts {
                println!(
                    "{}\t{}\tforward-secrecy={}\t{}",
                    c.name,
                    c.peer_id,
                    c.forward_secrecy_effective.as_str(),
                    c.addrs.join(" ")
                );
            }
        }
        Command::Set {
            name,
            forward_secrecy: Policy(policy),
        } => {
            g.call(Request::ContactsSetForwardSecrecy {
                name: name.clone(),
                policy,
            })
            .await?;
            match policy {
                Some(p) => println!("{name}: forward secrecy {}", p.as_str()),
                None => println!("{name}: forward secrecy as delivery.forward_secrecy says"),
            }
        }
        Command::Rm { name, yes } => {
            if !confirm(&format!("Remove contact {name:?}?"), yes)? {
                println!("nothing changed");
                return Ok(());
            }
            g.call(Request::ContactsRm { name: name.clone() }).await?;
            println!("removed {name}");
        }
    }
    Ok(())
}

/// A `--forward-secrecy` value for a contact: a policy, or `None` for the config's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy(Option<ForwardSecrecy>);

fn parse_policy(s: &str) -> std::result::Result<Policy, String> {
    if s == "default" {
        return Ok(Policy(None));
    }
    ForwardSecrecy::parse(s)
        .map(|p| Policy(Some(p)))
        .ok_or_else(|| format!("{s:?} is not one of off, prefer, require, default"))
}
