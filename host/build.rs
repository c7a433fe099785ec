//! Builds the first-party plugins in `plugins/` for wasm32-wasip2; `src/plugins/builtin.rs`
//! embeds them.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // `nat-traversal` is always embedded: like every built-in plugin it is off until enabled.
    let mut packages = vec!["keyword-labeler", "nat-traversal"];
    if std::env::var_os("CARGO_FEATURE_BOOTSTRAP").is_some() {
        packages.push("bootstrap");
    }
    let built = pigeon_build_support::build_plugins(&root.join("plugins/Cargo.toml"), &packages);
    for (name, wasm) in packages.iter().zip(built) {
        let var = format!("PIGEON_PLUGIN_{}", name.replace('-', "_").to_uppercase());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
    println!("cargo:rerun-if-changed=../plugin-sdk/wit");
}
