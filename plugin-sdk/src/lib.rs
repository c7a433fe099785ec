//! Guest SDK for pigeon plugins.
//!
//! The versioned WIT contract (`pigeon:plugin`) and the guest helpers arrive with the plugin platform;
//! this crate holds its place in the workspace so that the layout does not change when they do.

/// The version of the plugin contract this SDK will target.
pub const PLUGIN_API_VERSION: &str = "1.0.0";
