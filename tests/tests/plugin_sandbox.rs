//! The plugin runtime against real components that misbehave on purpose (built from
//! `tests/plugins` by this crate's build script): deadlines, memory limits, panics, the sandbox
//! and the version check.

use std::io::Read;
use std::time::{Duration, Instant};

use pigeon::plugins::instance::Failure;
use pigeon::plugins::runtime::TICK;
use pigeon::plugins::{PluginError, Runtime};
use pigeon_e2e::{FUTURE_API_WASM, MISBEHAVE_WASM};

/// What a loaded 2-core machine may add to a bound by descheduling the threads involved.
const SCHEDULING_SLACK: Duration = Duration::from_millis(250);

mod support;
use support::{DEADLINE, instance, labels, linked, message};

#[test]
fn an_infinite_loop_stops_at_its_deadline_and_a_fresh_instance_follows() {
    let runtime = Runtime::new().expect("runtime");
    let linked = linked(&runtime, MISBEHAVE_WASM);
    let mut looping = instance(&runtime, &linked, r#"{"mode":"loop"}"#);
    looping.ensure_live().expect("instantiates");
    for _ in 0..3 {
        let started = Instant::now();
        let result = looping.on_message(message("hi", ""));
        let took = started.elapsed();
        assert_eq!(result, Err(Failure::Timeout));
        eprintln!("loop stopped after {took:?} (deadline {DEADLINE:?}, tick {TICK:?})");
        assert!(took >= DEADLINE, "stopped early: {took:?}");
        assert!(
            took <= DEADLINE + TICK + SCHEDULING_SLACK,
            "stopped late: {took:?}"
        );
    }
    // The same component in another mode works at once: the engine is not poisoned.
    let mut fine = instance(&runtime, &linked, r#"{"mode":"label","label":"ok"}"#);
    assert_eq!(
        labels(&fine.on_message(message("hi", "")).expect("works")),
        ["ok"]
    );
}

#[test]
fn the_deadline_counts_per_call_not_per_instance() {
    let runtime = Runtime::new().expect("runtime");
    let linked = linked(&runtime, MISBEHAVE_WASM);
    // 20 ms of work per call under a 50 ms deadline: ten calls take 200 ms in all, and each
    // passes only if the deadline is set afresh for it.
    let mut spin = instance(&runtime, &linked, r#"{"mode":"spin","spin_ms":20}"#);
    let started = Instant::now();
    for i in 0..10 {
        let result = spin.on_message(message("hi", ""));
        assert_eq!(
            labels(&result.unwrap_or_else(|e| panic!("call {i}: {e}"))),
            ["spun"]
        );
    }
    assert!(started.elapsed() > DEADLINE * 2);
}

#[test]
fn a_panic_fails_only_its_call() {
    let runtime = Runtime::new().expect("runtime");
    let linked = linked(&runtime, MISBEHAVE_WASM);
    let mut p = instance(&runtime, &linked, r#"{"mode":"panic"}"#);
    assert_eq!(
        labels(&p.on_message(message("hello", "")).expect("ok")),
        ["survived"]
    );
    match p.on_message(message("panic", "")) {
        Err(Failure::Trap(t)) => assert!(t.contains("unreachable"), "{t}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(
        labels(
            &p.on_message(message("hello", ""))
                .expect("the next call works")
        ),
        ["survived"]
    );
}

#[test]
fn a_plugin_finds_no_files_environment_or_sockets() {
    let runtime = Runtime::new().expect("runtime");
    let linked = linked(&runtime, MISBEHAVE_WASM);
    let secret = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(secret.path(), "host secret").expect("write");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let body = format!(
        "{}\n{}",
        secret.path().display(),
        listener.local_addr().expect("addr")
    );
    let mut probe = instance(&runtime, &linked, r#"{"mode":"sandbox"}"#);
    let found = labels(&probe.on_message(message("probe", &body)).expect("runs"));
    assert_eq!(found, pigeon_e2e::SANDBOX_SEALED);
    let mut buf = [0u8; 1];
    match listener.accept() {
        Ok((mut s, _)) => panic!("the plugin connected: read {:?}", s.read(&mut buf)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}

#[test]
fn a_plugin_built_against_another_major_is_refused_with_the_supported_versions() {
    let runtime = Runtime::new().expect("runtime");
    let bytes = std::fs::read(FUTURE_API_WASM).expect("built by build.rs");
    match runtime.load(&bytes, None) {
        Err(e @ PluginError::Version { .. }) => {
            let text = e.to_string();
            assert!(text.contains("pigeon:plugin@2.0.0"), "{text}");
            assert!(text.contains("supports pigeon:plugin@1.1"), "{text}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a 2.0.0 plugin loaded"),
    }
}

#[test]
fn a_plugin_that_sleeps_fails_at_once_instead_of_holding_the_host() {
    let runtime = Runtime::new().expect("runtime");
    let linked = linked(&runtime, MISBEHAVE_WASM);
    let mut sleeper = instance(&runtime, &linked, r#"{"mode":"sleep"}"#);
    let started = Instant::now();
    // The epoch deadline does not reach a wait inside the host; the host refuses the wait.
    match sleeper.on_message(message("sleep", "")) {
        Err(Failure::Other(e)) => assert!(e.contains("may not wait"), "{e}"),
        other => panic!("expected a refused wait, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the sleep held the host for {:?}",
        started.elapsed()
    );
    assert_eq!(
        labels(&sleeper.on_message(message("hi", "")).expect("next call")),
        ["awake"]
    );
}

#[test]
fn oversized_results_are_cut_or_refused_before_the_host_copies_them() {
    let runtime = Runtime::new().expect("runtime");
    let linked = linked(&runtime, MISBEHAVE_WASM);
    // 100 actions: the first 64 are kept, the rest never read.
    let mut many = instance(&runtime, &linked, r#"{"mode":"many"}"#);
    let kept = labels(&many.on_message(message("hi", "")).expect("cut, not failed"));
    let first: Vec<String> = (0..64).map(|i| format!("l{i}")).collect();
    assert_eq!(kept, first);
    let mut huge = instance(&runtime, &linked, r#"{"mode":"huge"}"#);
    match huge.on_message(message("hi", "")) {
        Err(Failure::Other(e)) => {
            assert!(e.contains("a string of 4194304, more than the 1024"), "{e}")
        }
        other => panic!("expected a 4 MiB label refused, got {other:?}"),
    }
}

/// The receive path gives rule plugins a time budget per batch: a slow plugin labels what it can,
/// and the rest of the batch goes on with no plugin actions instead of outliving the sender's
/// request timeout.
#[test]
fn a_batch_stops_calling_plugins_when_its_budget_runs_out() {
    use pigeon::plugins::{Budget, PluginSpec, Plugins, RuleMessage, Source};
    let spec = PluginSpec {
        name: "slow".into(),
        source: Source::Path(MISBEHAVE_WASM.into()),
        enabled: true,
        timeout_ms: Some(200),
        memory_mib: None,
        config_json: r#"{"mode":"spin","spin_ms":40}"#.into(),
    };
    let plugins = Plugins::start(vec![spec], None, None);
    let messages: Vec<RuleMessage> = (0..20)
        .map(|i| RuleMessage {
            id: format!("m{i}"),
            sender: "12D3KooWtest".into(),
            contact: None,
            subject: "hi".into(),
            body: String::new(),
            sent_at_ms: 0,
            attachments: vec![],
            labels: vec![],
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    // Loads (and compiles) the plugin first, outside the budget.
    runtime.block_on(plugins.run_rules(messages[..1].to_vec(), None));
    let before = pigeon::metrics::METRICS.plugin_rules_skipped.get();
    let budget = Budget {
        arrived: Instant::now(),
        time: Duration::from_millis(300),
    };
    let out = runtime.block_on(plugins.run_rules(messages, Some(budget)));
    assert_eq!(out.len(), 20);
    let labelled = out.iter().filter(|a| !a.is_empty()).count();
    // 40 ms a message under a 300 ms budget: some, and not all.
    assert!((1..20).contains(&labelled), "{labelled} of 20 labelled");
    assert!(
        out[labelled..].iter().all(Vec::is_empty),
        "the labelled ones come first"
    );
    assert_eq!(
        pigeon::metrics::METRICS.plugin_rules_skipped.get() - before,
        (20 - labelled) as u64
    );
}
