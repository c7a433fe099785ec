//! The host's integration tests, in one binary (each test binary links the whole dependency tree).
//! Having one here also makes `cargo test --workspace` build the `pigeon` binary that the
//! end-to-end tests in `tests/` run.

mod cli;
mod hostile_contact;
mod hostile_nat;
mod hostile_otk;
mod hostile_peer;
mod rogue;
