//! `pigeon bench rules`: what the rules pipeline costs per incoming message.
//!
//! The same path as the receive path: built-in sender rules, then the rule plugins on the plugin
//! thread, a batch of messages per round trip. Runs with no plugin, with keyword-labeler, and with
//! three plugins (three keyword-labeler instances), and reports the time per message and per
//! plugin per message.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Result, RunError};
use crate::inbox::rules::{Pipeline, SimpleRule};
use crate::inbox::run_pipeline;
use crate::plugins::{PluginSpec, Plugins, RuleMessage, Source, builtin};

/// Messages per round trip to the plugin thread (the receive path's batch size).
const BATCH: usize = 64;
/// Passes per configuration; the fastest counts.
const ROUNDS: usize = 5;

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct RulesRun {
    /// What ran.
    pub setup: String,
    /// Rule plugins enabled.
    pub plugins: usize,
    /// Messages run through the pipeline.
    pub messages: usize,
    /// Microseconds per message, whole pipeline.
    pub micros_per_message: f64,
    /// Microseconds per plugin per message, above the run with no plugin.
    pub micros_per_plugin: Option<f64>,
}

/// Runs the pipeline over `messages` messages of about `size` bytes with 0, 1 and 3 plugins.
pub async fn rules(messages: usize, size: usize) -> Result<Vec<RulesRun>> {
    let sample = sample_messages(messages, size);
    let pipeline = Pipeline::new(
        ["alice", "bob", "carol"]
            .iter()
            .enumerate()
            .map(|(i, who)| SimpleRule {
                id: i as i64,
                from_peer: format!("peer-{who}"),
                label: format!("from-{who}"),
            })
            .collect(),
    );
    let mut runs: Vec<RulesRun> = Vec::new();
    let mut builtin_labelled = 0;
    for (setup, count) in [
        ("built-in rules only", 0),
        ("keyword-labeler", 1),
        ("three plugins", 3),
    ] {
        let plugins = start(count)?;
        // Warm up: instantiate every plugin before the clock runs.
        plugins.run_rules(sample[..1].to_vec(), None).await;
        // The best of a few rounds: what the code costs, not what other processes took.
        let mut best = f64::MAX;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let labelled = run_once(&pipeline, &plugins, &sample).await;
            best = best.min(started.elapsed().as_secs_f64());
            if count == 0 {
                builtin_labelled = labelled;
            } else if labelled <= builtin_labelled {
                return Err(RunError::PluginsIdle.into());
            }
        }
        let micros = best * 1e6 / messages as f64;
        let base = runs.first().map(|r| r.micros_per_message);
        runs.push(RulesRun {
            setup: setup.to_owned(),
            plugins: count,
            messages,
            micros_per_message: micros,
            micros_per_plugin: base
                .filter(|_| count > 0)
                .map(|b| (micros - b) / count as f64),
        });
    }
    Ok(runs)
}

/// One pass over `sample`, as the receive path does it; returns how many messages got actions.
async fn run_once(pipeline: &Pipeline, plugins: &Plugins, sample: &[RuleMessage]) -> usize {
    let mut labelled = 0;
    for chunk in sample.chunks(BATCH) {
        labelled += run_pipeline(pipeline, plugins, chunk.to_vec(), None)
            .await
            .iter()
            .filter(|a| !a.is_empty())
            .count();
    }
    labelled
}

fn start(count: usize) -> Result<Plugins> {
    let labeler =
        builtin::find("keyword-labeler").ok_or(RunError::NotBuiltIn("keyword-labeler"))?;
    let specs = (0..count)
        .map(|i| PluginSpec {
            name: format!("keyword-labeler-{}", i + 1),
            source: Source::Builtin(labeler),
            enabled: true,
            timeout_ms: None,
            memory_mib: None,
            config_json: r#"{"invoice":"finance","standup":"work","urgent":"urgent"}"#.to_owned(),
        })
        .collect();
    Ok(Plugins::start(specs, None, None))
}

fn sample_messages(n: usize, size: usize) -> Vec<RuleMessage> {
    let words = [
        "the", "invoice", "for", "last", "week", "standup", "notes", "are", "here", "please",
    ];
    (0..n)
        .map(|i| {
            let mut body = String::with_capacity(size + 16);
            let mut w = i;
            while body.len() < size {
                body.push_str(words[w % words.len()]);
                body.push(' ');
                w = w.wrapping_mul(7).wrapping_add(3);
            }
            RuleMessage {
                id: format!("{i:032x}"),
                sender: ["peer-alice", "peer-bob", "peer-dave"][i % 3].to_owned(),
                contact: Some("alice".to_owned()),
                subject: format!("message {i}"),
                body,
                sent_at_ms: 0,
                attachments: Vec::new(),
                labels: Vec::new(),
            }
        })
        .collect()
}
