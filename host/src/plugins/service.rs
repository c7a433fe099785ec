//! The plugin thread: owns every plugin instance of the process and runs the calls, one at a time,
//! off the async workers (a call may take up to its deadline, and wasmtime's synchronous WASI must
//! not run inside a tokio task). The rest of the node talks to it through [`Plugins`].

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::bindings::{Message, WitAction, WitDiscoveryAction};
use super::breaker::{Breaker, BreakerState};
use super::instance::{Failure, Instance};
use super::runtime::{Cache, Cached, Runtime};
use super::{
    DiscoveryAction, NodeEvent, PluginKind, PluginSpec, PluginState, PluginStatus, RuleMessage,
};
use crate::inbox::rules::{Action, Effects, validate_label};
use crate::metrics::METRICS;
use crate::store::now_ms;

/// How often discovery plugins get `on-tick`.
const TICK_EVERY: Duration = Duration::from_secs(1);

enum Job {
    Rules {
        messages: Vec<RuleMessage>,
        budget: Option<Budget>,
        reply: oneshot::Sender<Vec<Vec<Action>>>,
    },
    Event(NodeEvent),
    Status(oneshot::Sender<Vec<PluginStatus>>),
    /// Finish the jobs queued before this one, drop every instance, then stop.
    Close,
}

/// How long rule plugins may take over a batch of messages: `time`, counted from `arrived` (so
/// time spent queued behind other work counts), or from when the plugins finished loading if that
/// was later (so a node's start-up does not use it up).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// When the batch arrived.
    pub arrived: Instant,
    /// How long its plugin calls may take in all.
    pub time: Duration,
}

/// A handle on the plugin thread; cheap to clone. The thread ends at [`Plugins::close`], or when
/// the last handle goes.
#[derive(Clone)]
pub struct Plugins {
    tx: mpsc::Sender<Job>,
    has_rules: bool,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Plugins {
    /// Starts the plugin thread, which loads `specs` (the enabled ones) first. Discovery plugins'
    /// actions go to `actions`.
    pub fn start(
        specs: Vec<PluginSpec>,
        cache: Option<Cache>,
        actions: Option<tokio_mpsc::UnboundedSender<DiscoveryAction>>,
    ) -> Plugins {
        let has_rules = specs
            .iter()
            .any(|s| s.enabled && s.builtin_kind() != Some(PluginKind::Discovery));
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("plugins".into())
            .spawn(move || Thread::new(specs, cache, actions).run(rx));
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the plugin thread; plugins are off");
                None
            }
        };
        Plugins {
            tx,
            has_rules,
            thread: Arc::new(Mutex::new(thread)),
        }
    }

    /// Plugins that run no plugin at all, without a thread.
    pub fn none() -> Plugins {
        let (tx, _) = mpsc::channel();
        Plugins {
            tx,
            has_rules: false,
            thread: Arc::new(Mutex::new(None)),
        }
    }

    /// Lets the jobs already queued finish, drops every instance and waits for the thread to end
    /// (at most one plugin call's deadline). Later calls, from any handle, run no plugin.
    pub async fn close(&self) {
        let _ = self.tx.send(Job::Close);
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the plugin thread ended abnormally");
            }
        }
    }

    /// Whether any rule plugin may be enabled (so messages need to go through the thread).
    pub fn has_rules(&self) -> bool {
        self.has_rules
    }

    /// Runs the enabled rule plugins, in order, over `messages`; returns each message's actions.
    /// Plugins fail open: when one fails, or the thread is gone, the message goes on without
    /// that plugin's actions. No plugin call starts once `budget` is spent: the plugins left get
    /// no say over the messages left.
    pub async fn run_rules(
        &self,
        messages: Vec<RuleMessage>,
        budget: Option<Budget>,
    ) -> Vec<Vec<Action>> {
        let n = messages.len();
        let (reply, rx) = oneshot::channel();
        let job = Job::Rules {
            messages,
            budget,
            reply,
        };
        if self.tx.send(job).is_err() {
            return vec![Vec::new(); n];
        }
        rx.await.unwrap_or_else(|_| vec![Vec::new(); n])
    }

    /// Hands a node event to the discovery plugins.
    pub fn event(&self, event: NodeEvent) {
        let _ = self.tx.send(Job::Event(event));
    }

    /// Every configured and built-in plugin with its state.
    pub async fn status(&self) -> Vec<PluginStatus> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Status(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Slot {
    spec: PluginSpec,
    kind: Option<PluginKind>,
    api_version: Option<String>,
    instance: Option<Instance>,
    load_error: Option<String>,
    breaker: Breaker,
    calls: u64,
    failures: u64,
    last_failure: Option<String>,
}

impl Slot {
    /// Records the outcome of a call; a failure is logged, counted and fed to the breaker.
    fn record<R>(&mut self, hook: &str, result: Result<R, Failure>) -> Option<R> {
        self.calls += 1;
        let name = self.spec.name.as_str();
        match result {
            Ok(r) => {
                if !matches!(self.breaker.state(now_ms()), BreakerState::Closed) {
                    tracing::info!(plugin = name, "plugin works again; re-enabled");
                    METRICS.plugin_disabled.with_label_values(&[name]).set(0);
                }
                self.breaker.success();
                Some(r)
            }
            Err(failure) => {
                self.failures += 1;
                METRICS
                    .plugin_failures
                    .with_label_values(&[name, failure.label()])
                    .inc();
                tracing::warn!(plugin = name, hook, reason = %failure, "plugin call failed; going on without it");
                self.last_failure = Some(format!("{hook}: {failure}"));
                let now = now_ms();
                if self.breaker.failure(now) {
                    if let BreakerState::Open { until_ms } = self.breaker.state(now) {
                        tracing::warn!(
                            plugin = name,
                            paused_s = (until_ms - now) / 1000,
                            "plugin keeps failing; circuit breaker disables it for a while"
                        );
                    }
                    METRICS.plugin_disabled.with_label_values(&[name]).set(1);
                }
                None
            }
        }
    }

    fn callable(&mut self, kind: PluginKind) -> Option<&mut Instance> {
        if self.kind != Some(kind) || !self.breaker.allows(now_ms()) {
            return None;
        }
        self.instance.as_mut()
    }

    fn status(&self) -> PluginStatus {
        let now = now_ms();
        let (status, state, paused_until_ms) = if !self.spec.enabled {
            (PluginState::Disabled, "disabled".to_owned(), None)
        } else if let Some(e) = &self.load_error {
            (
                PluginState::FailedToLoad,
                format!("failed to load: {e}"),
                None,
            )
        } else {
            match self.breaker.state(now) {
                BreakerState::Closed => (PluginState::Ready, "ready".to_owned(), None),
                BreakerState::HalfOpen => (
                    PluginState::Trial,
                    "on trial after failures".to_owned(),
                    None,
                ),
                BreakerState::Open { until_ms } => (
                    PluginState::Paused,
                    format!(
                        "paused by the circuit breaker for {}s",
                        until_ms.saturating_sub(now).div_ceil(1000)
                    ),
                    Some(until_ms),
                ),
            }
        };
        PluginStatus {
            name: self.spec.name.clone(),
            kind: self.kind.or(self.spec.builtin_kind()),
            api_version: self
                .api_version
                .clone()
                .or_else(|| self.spec.builtin_api_version()),
            source: self.spec.source_text(),
            enabled: self.spec.enabled,
            status,
            paused_until_ms,
            error: self.load_error.clone(),
            state,
            calls: self.calls,
            failures: self.failures,
            last_failure: self.last_failure.clone(),
        }
    }
}

struct Thread {
    slots: Vec<Slot>,
    actions: Option<tokio_mpsc::UnboundedSender<DiscoveryAction>>,
    /// The node's state as discovery plugins learnt it: a fresh instance, after a trap, is
    /// told it before anything else.
    replay: super::replay::Replay,
    /// Kept alive for as long as the instances: it drives their deadlines.
    _runtime: Option<Runtime>,
    /// When every plugin had loaded.
    ready_at: Instant,
}

impl Thread {
    fn new(
        specs: Vec<PluginSpec>,
        cache: Option<Cache>,
        actions: Option<tokio_mpsc::UnboundedSender<DiscoveryAction>>,
    ) -> Thread {
        let runtime = if specs.iter().any(|s| s.enabled) {
            match Runtime::new() {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the WASM runtime; plugins are off");
                    None
                }
            }
        } else {
            None
        };
        let slots = specs
            .into_iter()
            .map(|spec| {
                let mut slot = Slot {
                    kind: spec.builtin_kind(),
                    api_version: None,
                    instance: None,
                    load_error: None,
                    breaker: Breaker::new(),
                    calls: 0,
                    failures: 0,
                    last_failure: None,
                    spec,
                };
                if let (true, Some(runtime)) = (slot.spec.enabled, &runtime) {
                    load(&mut slot, runtime, cache.as_ref());
                }
                slot
            })
            .collect();
        Thread {
            ready_at: Instant::now(),
            slots,
            actions,
            replay: Default::default(),
            _runtime: runtime,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let ticking = self
            .slots
            .iter()
            .any(|s| s.instance.is_some() && s.kind == Some(PluginKind::Discovery));
        let mut next_tick = Instant::now() + TICK_EVERY;
        loop {
            let job = if ticking {
                match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                }
            };
            match job {
                Some(Job::Rules {
                    messages,
                    budget,
                    reply,
                }) => {
                    let out = self.rules_within(&messages, budget);
                    let _ = reply.send(out);
                }
                Some(Job::Event(event)) => self.event(&event),
                Some(Job::Status(reply)) => {
                    let _ = reply.send(self.slots.iter().map(Slot::status).collect());
                }
                Some(Job::Close) => break,
                None => {}
            }
            if ticking && Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + TICK_EVERY;
            }
        }
    }

    fn rules_within(
        &mut self,
        messages: &[RuleMessage],
        budget: Option<Budget>,
    ) -> Vec<Vec<Action>> {
        let end = budget.map(|b| b.arrived.max(self.ready_at) + b.time);
        let mut skipped = 0;
        let out = messages
            .iter()
            .map(|m| {
                let (actions, complete) = self.rules(m, end);
                skipped += usize::from(!complete);
                actions
            })
            .collect();
        if skipped > 0 {
            METRICS.plugin_rules_skipped.inc_by(skipped as u64);
            tracing::warn!(
                skipped,
                of = messages.len(),
                "rule plugins ran out of time for this batch; those messages are stored without some plugins' labels (run `pigeon inbox rules apply` to label them)"
            );
        }
        out
    }

    /// Runs the rule plugins over `message`, starting none after `end`. Returns the actions, and
    /// whether every plugin had its say.
    fn rules(&mut self, message: &RuleMessage, end: Option<Instant>) -> (Vec<Action>, bool) {
        let mut effects = Effects::new(&message.labels);
        let mut complete = true;
        for slot in &mut self.slots {
            let Some(instance) = slot.callable(PluginKind::Rule) else {
                continue;
            };
            if end.is_some_and(|end| Instant::now() >= end) {
                complete = false;
                break;
            }
            let result = instance.ensure_live().and_then(|()| {
                let wit = message.to_wit(&effects, instance.needs_body());
                instance.on_message(wit)
            });
            let Some(actions) = slot.record("on-message", result) else {
                continue;
            };
            for action in actions {
                match convert_action(action) {
                    Ok(action) => {
                        effects.apply(action);
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %slot.spec.name, error = %e, "ignored an action")
                    }
                }
            }
        }
        (effects.into_actions(), complete)
    }

    fn event(&mut self, event: &NodeEvent) {
        let wit = event.to_wit();
        self.discovery("on-event", |i| i.on_event(&wit));
        self.replay.note(event);
    }

    fn tick(&mut self) {
        let now = now_ms();
        self.discovery("on-tick", |i| i.on_tick(now));
    }

    fn discovery(
        &mut self,
        hook: &str,
        mut call: impl FnMut(&mut Instance) -> Result<Vec<WitDiscoveryAction>, Failure>,
    ) {
        for slot in &mut self.slots {
            let Some(instance) = slot.callable(PluginKind::Discovery) else {
                continue;
            };
            let fresh = !instance.is_live();
            let mut actions = Vec::new();
            if fresh {
                for past in &self.replay.events() {
                    let Some(instance) = slot.callable(PluginKind::Discovery) else {
                        break;
                    };
                    let result = instance.on_event(&past.to_wit());
                    let Some(more) = slot.record("on-event", result) else {
                        break;
                    };
                    actions.extend(more);
                }
            }
            if let Some(instance) = slot.callable(PluginKind::Discovery) {
                let result = call(instance);
                if let Some(more) = slot.record(hook, result) {
                    actions.extend(more);
                }
            }
            for action in actions {
                match DiscoveryAction::from_wit(action) {
                    Ok(action) => {
                        tracing::debug!(plugin = %slot.spec.name, ?action, "discovery action");
                        if let Some(tx) = &self.actions {
                            let _ = tx.send(action);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %slot.spec.name, error = %e, "ignored an action")
                    }
                }
            }
        }
    }
}

fn load(slot: &mut Slot, runtime: &Runtime, cache: Option<&Cache>) {
    let name = slot.spec.name.clone();
    let started = Instant::now();
    let loaded = slot
        .spec
        .wasm()
        .and_then(|wasm| runtime.load(&wasm, cache.map(|cache| Cached { cache, name: &name })));
    match loaded {
        Ok(loaded) => {
            let limits = slot.spec.limits(loaded.kind);
            tracing::info!(
                plugin = %name,
                kind = loaded.kind.as_str(),
                api = %loaded.api_version,
                deadline_ms = limits.deadline.as_millis() as u64,
                memory_mib = limits.memory_bytes >> 20,
                load_ms = started.elapsed().as_millis() as u64,
                "plugin loaded"
            );
            slot.kind = Some(loaded.kind);
            slot.api_version = Some(loaded.api_version);
            // Present from the start, so a dashboard sees 0 rather than nothing.
            METRICS.plugin_disabled.with_label_values(&[&name]).set(0);
            let mut instance = Instance::new(
                runtime.engine(),
                &name,
                &slot.spec.config_json,
                limits,
                loaded.linked,
            );
            // Instantiate now, so that a configuration the plugin refuses is reported at start
            // rather than at the first message.
            match instance.ensure_live() {
                Ok(()) => slot.instance = Some(instance),
                Err(Failure::Init(e)) => {
                    tracing::error!(plugin = %name, error = %e, "plugin refused its configuration; the node goes on without it");
                    slot.load_error = Some(format!("it refused its configuration: {e}"));
                }
                Err(failure) => {
                    slot.instance = Some(instance);
                    slot.record("init", Err::<(), _>(failure));
                }
            }
        }
        Err(e) => {
            tracing::error!(plugin = %name, error = %e, "plugin not loaded; the node goes on without it");
            slot.load_error = Some(e.to_string());
        }
    }
}

fn convert_action(action: WitAction) -> Result<Action, String> {
    Ok(match action {
        WitAction::AddLabel(l) => {
            validate_label(&l)?;
            Action::AddLabel(l)
        }
        WitAction::RemoveLabel(l) => {
            validate_label(&l)?;
            Action::RemoveLabel(l)
        }
        WitAction::MarkRead => Action::MarkRead,
        WitAction::Archive => Action::Archive,
    })
}

impl RuleMessage {
    fn to_wit(&self, effects: &Effects, with_body: bool) -> Message {
        Message {
            id: self.id.clone(),
            sender: self.sender.clone(),
            contact: self.contact.clone(),
            subject: self.subject.clone(),
            body: with_body.then(|| self.body.clone()),
            size: self.body.len() as u64,
            sent_at_ms: self.sent_at_ms,
            attachments: self.attachments.clone(),
            labels: effects.labels().to_vec(),
        }
    }
}
