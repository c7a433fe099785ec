//! Every end-to-end test that runs real `pigeon` processes, in one binary with a module per area
//! (as ripgrep does): each test binary links the whole dependency tree, and on two cores one link
//! instead of seven is minutes saved. The plugin runtime's own tests keep binaries of their own:
//! `plugin_sandbox` bounds deadlines that other tests' processes would disturb, and
//! `plugin_memory` measures the whole process's RSS.

mod attachments;
mod backup;
mod chat;
mod cli;
mod delivery;
mod forward_secrecy;
mod keys;
mod messaging;
mod nat;
mod ops;
mod plugins;
mod rules;
mod sdk_agrees;
mod search;
mod sent;
mod watch;
