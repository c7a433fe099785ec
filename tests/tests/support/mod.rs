//! Helpers shared by the plugin runtime tests.
// Each test binary that includes this uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use pigeon::plugins::instance::Instance;
use pigeon::plugins::runtime::Linked;
use pigeon::plugins::{Limits, Runtime};

pub(crate) const DEADLINE: Duration = Duration::from_millis(50);

pub(crate) fn linked(runtime: &Runtime, wasm: &str) -> Linked {
    let bytes = std::fs::read(wasm).expect("test plugin built by build.rs");
    runtime.load(&bytes, None).expect("loads").linked
}

pub(crate) fn instance(runtime: &Runtime, linked: &Linked, config: &str) -> Instance {
    Instance::new(
        runtime.engine(),
        "misbehave",
        config,
        Limits {
            deadline: DEADLINE,
            memory_bytes: 16 << 20,
        },
        linked.clone(),
    )
}

pub(crate) fn message(subject: &str, body: &str) -> pigeon::plugins::WitMessage {
    pigeon::plugins::WitMessage {
        id: "m1".into(),
        sender: "12D3KooWtest".into(),
        contact: Some("alice".into()),
        subject: subject.into(),
        body: Some(body.into()),
        size: body.len() as u64,
        sent_at_ms: 0,
        attachments: vec![],
        labels: vec![],
    }
}

pub(crate) fn labels(actions: &[pigeon::plugins::WitAction]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            pigeon::plugins::WitAction::AddLabel(l) => l.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}
