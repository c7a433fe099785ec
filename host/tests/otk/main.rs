//! One-time keys against a hostile contact, in a binary of its own: since DCUtR joined the swarm,
//! this test misses its deadline when another test's in-process nodes run beside it (it passes
//! alone; the cause is not found yet, see the issue note).

#[allow(dead_code)]
#[path = "../it/rogue.rs"]
mod rogue;

mod hostile_otk;
