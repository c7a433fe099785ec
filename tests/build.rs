//! Builds the test-only plugins in `plugins/` for wasm32-wasip2; `src/lib.rs` names the files.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/Cargo.toml");
    let packages = ["misbehave", "future-api", "contract-1-0"];
    let built = pigeon_build_support::build_plugins(&manifest, &packages);
    for (name, wasm) in packages.iter().zip(built) {
        let var = format!(
            "PIGEON_TEST_PLUGIN_{}",
            name.replace('-', "_").to_uppercase()
        );
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
}
