//! Host memory when a plugin keeps hitting its memory limit. In a test binary of its own: it
//! measures the whole process's RSS, which tests compiling components beside it would disturb.

use pigeon::plugins::Runtime;
use pigeon::plugins::instance::Failure;
use pigeon_e2e::MISBEHAVE_WASM;

mod support;
use support::{instance, linked, message, rss_bytes};

#[test]
fn a_memory_bomb_stops_at_its_limit_and_host_memory_stays_flat() {
    let runtime = Runtime::new().expect("runtime");
    let linked = linked(&runtime, MISBEHAVE_WASM);
    let mut bomb = instance(&runtime, &linked, r#"{"mode":"bomb"}"#);
    assert_eq!(bomb.on_message(message("hi", "")), Err(Failure::Memory));
    let after_first = rss_bytes();
    for _ in 0..20 {
        assert_eq!(bomb.on_message(message("hi", "")), Err(Failure::Memory));
    }
    let after_all = rss_bytes();
    eprintln!("RSS after 1 bomb: {after_first} B, after 21: {after_all} B");
    // 20 more bombs of 16 MiB each would be 320 MiB if instances leaked.
    assert!(
        after_all < after_first + (32 << 20),
        "host memory grew from {after_first} to {after_all} bytes"
    );
}
