//! The first-party plugins, built from `plugins/` by `build.rs` and embedded in the binary.

use super::PluginKind;

/// A plugin that ships inside pigeon.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Its name, as in `[plugins.NAME]`.
    pub name: &'static str,
    /// What it is.
    pub kind: PluginKind,
    /// What it does, for `pigeon plugins list`.
    pub summary: &'static str,
    /// The component.
    pub wasm: &'static [u8],
}

/// Every embedded plugin.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "keyword-labeler",
        kind: PluginKind::Rule,
        summary: "labels messages that mention configured words (config: word = \"label\")",
        wasm: include_bytes!(env!("PIGEON_PLUGIN_KEYWORD_LABELER")),
    },
    #[cfg(feature = "bootstrap")]
    Builtin {
        name: "bootstrap",
        kind: PluginKind::Discovery,
        summary: "dials configured peers at start and redials them (config: peers = [multiaddr])",
        wasm: include_bytes!(env!("PIGEON_PLUGIN_BOOTSTRAP")),
    },
    Builtin {
        name: "nat-traversal",
        kind: PluginKind::Discovery,
        summary: "listens through configured relays when the node is behind a NAT; the node then \
                  hole-punches to direct connections (config: relays = [multiaddr])",
        wasm: include_bytes!(env!("PIGEON_PLUGIN_NAT_TRAVERSAL")),
    },
];

/// The embedded plugin called `name`.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}
