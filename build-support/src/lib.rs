//! Builds WASM plugin crates for `wasm32-wasip2` from a build script.
//!
//! `host/build.rs` uses it for the first-party plugins it embeds, `tests/build.rs` for the
//! test-only plugins. The inner `cargo` gets its own target directory (sharing the outer one would
//! wait on its lock forever) and none of the outer build's flags, and the outer build re-runs
//! whenever a source file the inner build read changes (taken from cargo's own dep-info files).
#![allow(clippy::unwrap_used)] // A build script has nobody to return errors to: it panics with the reason.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target plugins build for.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds `packages` of the workspace at `manifest` in release mode and returns the path of each
/// package's `.wasm`, in order.
pub fn build_plugins(manifest: &Path, packages: &[&str]) -> Vec<PathBuf> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts"));
    let target_dir = out_dir.join("wasm-target");
    ensure_target();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "--manifest-path",
    ])
    .arg(manifest)
    .arg("--target-dir")
    .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the plugins: {e}"));
    assert!(
        status.success(),
        "building the WASM plugins in {} failed (see above)",
        manifest.display()
    );
    println!("cargo:rerun-if-changed={}", manifest.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest.with_file_name("Cargo.lock").display()
    );
    packages
        .iter()
        .map(|p| {
            let wasm = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{}.wasm", p.replace('-', "_")));
            rerun_on_sources_of(&wasm);
            wasm
        })
        .collect()
}

/// Installs the wasm32-wasip2 standard library through rustup when it is missing, so that a fresh
/// clone needs no set-up step of its own.
fn ensure_target() {
    if target_present() {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (once)");
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    // Another build script (host's and the tests' run side by side) may have been installing it
    // at the same moment; what counts is that it is there now.
    let there = ok
        || (0..60).any(|_| {
            std::thread::sleep(std::time::Duration::from_secs(1));
            target_present()
        });
    assert!(
        there,
        "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it by hand"
    );
}

fn target_present() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|s| s.join("lib/rustlib").join(TARGET).is_dir())
}

/// Asks cargo to re-run the build script when any file the artifact was built from changes.
fn rerun_on_sources_of(artifact: &Path) {
    let deps = artifact.with_extension("d");
    let contents = std::fs::read_to_string(&deps)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", deps.display()));
    for line in contents.lines() {
        let Some((_, files)) = line.split_once(": ") else {
            continue;
        };
        // Paths are space-separated, with spaces inside a path escaped as "\ ".
        let mut path = String::new();
        for part in files.split(' ') {
            if let Some(stripped) = part.strip_suffix('\\') {
                path.push_str(stripped);
                path.push(' ');
                continue;
            }
            path.push_str(part);
            if !path.is_empty() {
                println!("cargo:rerun-if-changed={path}");
            }
            path.clear();
        }
    }
}
