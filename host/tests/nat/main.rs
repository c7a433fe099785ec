//! NAT traversal against hostile peers, with in-process nodes: a binary of its own, because its
//! nodes (a relay among them) running beside the `it` binary's hostile-peer tests made the
//! one-time key test there miss its deadline (not understood yet; see the issue note).

#[allow(dead_code)]
#[path = "../it/rogue.rs"]
mod rogue;

mod hostile_nat;
