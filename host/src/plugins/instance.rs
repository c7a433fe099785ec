//! One plugin's live instance: instantiated on first use, called under a fresh deadline every
//! time, and dropped after any failure so that the next call starts clean.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{ComponentNamedList, Lift, Lower, TypedFunc};
use wasmtime::{Engine, Store, Trap};

use super::bindings::{
    Message, NodeEventV1_0, RuleInfo, WitAction, WitDiscoveryAction, WitNodeEvent,
};
use super::lift::{Actions, BoundedList, DiscoveryActions, InitResult, MAX_ACTIONS};
use super::runtime::{Limits, Linked, Runtime, State};
use crate::metrics::METRICS;

/// Why a call did not return normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It ran past its deadline.
    Timeout,
    /// It asked for more memory than its limit.
    Memory,
    /// It trapped (a panic shows up as one, with its message in the log just before).
    Trap(String),
    /// Its `init` refused (usually its configuration).
    Init(String),
    /// Anything else the runtime reported.
    Other(String),
}

impl Failure {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Memory => "memory",
            Failure::Trap(_) => "trap",
            Failure::Init(_) => "init",
            Failure::Other(_) => "other",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "ran past its deadline"),
            Failure::Memory => write!(f, "reached its memory limit"),
            Failure::Trap(t) => write!(f, "trapped: {t}"),
            Failure::Init(e) => write!(f, "init refused: {e}"),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

/// The interfaces a plugin exports; the export of any 1.x version answers to these names (wasmtime
/// looks exports up by semver-compatible version).
const RULE_HOOKS: &str = "pigeon:plugin/rule-hooks@1.1.0";
const DISCOVERY_HOOKS: &str = "pigeon:plugin/discovery-hooks@1.1.0";

/// The hooks of a live instance. What they return is lifted with its sizes checked first (see
/// [`super::lift`]), not through the generated bindings.
enum Bound {
    Rule {
        on_message: TypedFunc<(Message,), (Actions,)>,
    },
    Discovery {
        on_event: OnEvent,
        on_tick: TypedFunc<(u64,), (DiscoveryActions,)>,
    },
}

/// A discovery plugin's `on-event`, typed for the contract version it was built against.
enum OnEvent {
    /// 1.1 and later minor versions of this host's contract.
    Current(TypedFunc<(WitNodeEvent,), (DiscoveryActions,)>),
    /// 1.0: the events before 1.1.0's.
    V1_0(TypedFunc<(NodeEventV1_0,), (DiscoveryActions,)>),
}

struct Live {
    store: Store<State>,
    bound: Bound,
}

/// A plugin that can be called; it instantiates itself when needed.
pub struct Instance {
    name: Arc<str>,
    config_json: Arc<str>,
    limits: Limits,
    linked: Linked,
    engine: Engine,
    live: Option<Live>,
    needs_body: bool,
    timers: Vec<(&'static str, prometheus::Histogram)>,
}

impl Instance {
    /// An instance of `linked`, not yet instantiated.
    pub fn new(
        engine: &Engine,
        name: &str,
        config_json: &str,
        limits: Limits,
        linked: Linked,
    ) -> Instance {
        Instance {
            name: name.into(),
            config_json: config_json.into(),
            limits,
            linked,
            engine: engine.clone(),
            live: None,
            needs_body: true,
            timers: Vec::new(),
        }
    }

    /// Whether an instance is up (none before the first call, nor after a trap).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Whether this rule plugin reads bodies (known after the first instantiation).
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Instantiates (and initialises) the plugin now if it is not live.
    pub fn ensure_live(&mut self) -> Result<(), Failure> {
        if self.live.is_some() {
            return Ok(());
        }
        let state = State::new(self.name.clone(), self.config_json.clone(), &self.limits);
        let mut store = Store::new(&self.engine, state);
        store.limiter(State::limiter);
        store.epoch_deadline_trap();
        let ticks = Runtime::ticks(self.limits.deadline);
        store.set_epoch_deadline(ticks);
        let (pre, interface) = match &self.linked {
            Linked::Rule(pre) => (pre.instance_pre(), RULE_HOOKS),
            Linked::Discovery { pre, .. } => (pre.instance_pre(), DISCOVERY_HOOKS),
        };
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &mut store))?;
        let init: TypedFunc<(), (InitResult,)> = hook(&mut store, &instance, interface, "init")?;
        let bound = match &self.linked {
            Linked::Rule(_) => {
                let describe: TypedFunc<(), (RuleInfo,)> =
                    hook(&mut store, &instance, interface, "describe")?;
                store.set_epoch_deadline(ticks);
                let (info,) = describe
                    .call(&mut store, ())
                    .map_err(|e| classify(e, &mut store))?;
                self.needs_body = info.needs_body;
                Bound::Rule {
                    on_message: hook(&mut store, &instance, interface, "on-message")?,
                }
            }
            Linked::Discovery { minor, .. } => Bound::Discovery {
                on_event: match minor {
                    0 => OnEvent::V1_0(hook(&mut store, &instance, interface, "on-event")?),
                    _ => OnEvent::Current(hook(&mut store, &instance, interface, "on-event")?),
                },
                on_tick: hook(&mut store, &instance, interface, "on-tick")?,
            },
        };
        store.set_epoch_deadline(ticks);
        let (init,) = init
            .call(&mut store, ())
            .map_err(|e| classify(e, &mut store))?;
        init.map_err(|e| Failure::Init(e.0))?;
        self.live = Some(Live { store, bound });
        Ok(())
    }

    fn call<R>(
        &mut self,
        hook: &'static str,
        f: impl FnOnce(&Bound, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        self.ensure_live()?;
        let Some(live) = self.live.as_mut() else {
            return Err(Failure::Other("not instantiated".into()));
        };
        // The deadline counts from now, whatever earlier calls used.
        live.store
            .set_epoch_deadline(Runtime::ticks(self.limits.deadline));
        live.store.data_mut().new_call();
        let started = Instant::now();
        let result = f(&live.bound, &mut live.store);
        let elapsed = started.elapsed().as_secs_f64();
        // The histogram handle is looked up once per hook, not on every call.
        match self.timers.iter().find(|(h, _)| *h == hook) {
            Some((_, timer)) => timer.observe(elapsed),
            None => {
                let timer = METRICS
                    .plugin_call_seconds
                    .with_label_values(&[&*self.name, hook]);
                timer.observe(elapsed);
                self.timers.push((hook, timer));
            }
        }
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let failure = classify(e, &mut live.store);
                // Whatever state the guest was in, it is not trusted again.
                self.live = None;
                Err(failure)
            }
        }
    }

    /// Calls a rule's `on-message`.
    pub fn on_message(&mut self, message: Message) -> Result<Vec<WitAction>, Failure> {
        let actions = self.call("on-message", |bound, store| match bound {
            Bound::Rule { on_message } => on_message.call(store, (message,)).map(|(a,)| a),
            Bound::Discovery { .. } => Ok(Actions::empty()),
        })?;
        Ok(self.kept(actions))
    }

    /// Calls a discovery strategy's `on-event`; an event newer than the plugin's contract is
    /// not sent (and returns no actions).
    pub fn on_event(&mut self, event: &WitNodeEvent) -> Result<Vec<WitDiscoveryAction>, Failure> {
        self.ensure_live()?;
        let older = matches!(
            &self.live,
            Some(Live {
                bound: Bound::Discovery {
                    on_event: OnEvent::V1_0(_),
                    ..
                },
                ..
            })
        );
        let older_event = if older {
            match NodeEventV1_0::from_current(event) {
                Some(e) => Some(e),
                None => return Ok(Vec::new()),
            }
        } else {
            None
        };
        let actions = self.call("on-event", |bound, store| match (bound, older_event) {
            (
                Bound::Discovery {
                    on_event: OnEvent::Current(on_event),
                    ..
                },
                _,
            ) => on_event.call(store, (event.clone(),)).map(|(a,)| a),
            (
                Bound::Discovery {
                    on_event: OnEvent::V1_0(on_event),
                    ..
                },
                Some(event),
            ) => on_event.call(store, (event,)).map(|(a,)| a),
            _ => Ok(DiscoveryActions::empty()),
        })?;
        Ok(self.kept(actions))
    }

    /// Calls a discovery strategy's `on-tick`.
    pub fn on_tick(&mut self, now_ms: u64) -> Result<Vec<WitDiscoveryAction>, Failure> {
        let actions = self.call("on-tick", |bound, store| match bound {
            Bound::Discovery { on_tick, .. } => on_tick.call(store, (now_ms,)).map(|(a,)| a),
            Bound::Rule { .. } => Ok(DiscoveryActions::empty()),
        })?;
        Ok(self.kept(actions))
    }

    /// The actions a call returned, converted, with a warning when it returned too many.
    fn kept<R, W: From<R>>(&self, actions: BoundedList<R, MAX_ACTIONS>) -> Vec<W> {
        if actions.dropped > 0 {
            tracing::warn!(
                plugin = %self.name,
                returned = actions.items.len() + actions.dropped,
                kept = MAX_ACTIONS,
                "too many actions; the rest are dropped"
            );
        }
        actions.items.into_iter().map(W::from).collect()
    }
}

/// The typed function `name` of the exported `interface`.
fn hook<P, R>(
    store: &mut Store<State>,
    instance: &wasmtime::component::Instance,
    interface: &str,
    name: &str,
) -> Result<TypedFunc<P, R>, Failure>
where
    P: ComponentNamedList + Lower,
    R: ComponentNamedList + Lift,
{
    let index = instance
        .get_export_index(&mut *store, None, interface)
        .and_then(|i| instance.get_export_index(&mut *store, Some(&i), name))
        .ok_or_else(|| Failure::Other(format!("it does not export {interface}#{name}")))?;
    instance
        .get_typed_func::<P, R>(&mut *store, &index)
        .map_err(|e| Failure::Other(format!("{interface}#{name}: {e:#}")))
}

fn classify(e: wasmtime::Error, store: &mut Store<State>) -> Failure {
    let memory = store.data_mut().take_memory_refusal();
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        _ if memory => Failure::Memory,
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Other(format!("{e:#}")),
    }
}
