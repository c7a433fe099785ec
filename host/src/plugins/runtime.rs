//! The wasmtime side: one [`Runtime`] (engine, linkers, epoch ticker, compile cache) per process,
//! and [`Runtime::load`], which compiles a component (or takes it from the cache), checks the
//! contract version it was built against and links it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2b512, Blake2bMac, Digest};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, discovery, rule};
use super::nowait::{NoWait, NoWaitTable};
use super::{PluginError, PluginKind};

/// How often the epoch advances: a call stops at most one tick after its deadline.
pub const TICK: Duration = Duration::from_millis(5);
/// The `pigeon:plugin` major version this host speaks.
pub const API_MAJOR: u64 = 1;
/// The newest `pigeon:plugin` minor version this host knows.
pub const API_MINOR: u64 = 1;
/// Longest log line kept from a plugin, in bytes.
const MAX_LOG_LINE: usize = 2048;
/// Most WASI resources (streams, pollables) one instance may hold at once.
const MAX_WASI_HANDLES: usize = 256;
/// Most log lines one call may write; the rest are dropped, so a plugin cannot flood the log.
const MAX_LOG_LINES_PER_CALL: u32 = 32;

type CacheMac = Blake2bMac<blake2::digest::consts::U32>;

/// Limits for one plugin's store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per-call deadline.
    pub deadline: Duration,
    /// Most linear memory, in bytes.
    pub memory_bytes: usize,
}

/// A store's data: the empty WASI context, the limiter and what the `host` interface offers.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    plugin: Arc<str>,
    config_json: Arc<str>,
    lines_this_call: u32,
    errors_this_call: u32,
}

impl State {
    /// A fresh state for `plugin`: no preopened directory, no environment, no arguments, no
    /// sockets (the WASI builder allows none unless asked), stdio discarded.
    pub fn new(plugin: Arc<str>, config_json: Arc<str>, limits: &Limits) -> State {
        State {
            wasi: WasiCtx::builder().build(),
            table: {
                // WASI handles (streams, pollables) live in host memory, outside the limit.
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_WASI_HANDLES);
                table
            },
            limiter: Limiter {
                inner: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes)
                    .instances(16)
                    .tables(8)
                    .memories(4)
                    .table_elements(100_000)
                    .build(),
                hit_memory_limit: false,
                memory_limit: limits.memory_bytes,
                memory_total: 0,
            },
            plugin,
            config_json,
            lines_this_call: 0,
            errors_this_call: 0,
        }
    }

    /// Starts the accounting of a new call.
    pub fn new_call(&mut self) {
        self.lines_this_call = 0;
        self.errors_this_call = 0;
        self.limiter.hit_memory_limit = false;
    }

    /// Whether a memory grow was refused since the last call to this.
    pub fn take_memory_refusal(&mut self) -> bool {
        std::mem::take(&mut self.limiter.hit_memory_limit)
    }

    /// The limiter, for [`wasmtime::Store::limiter`].
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }
}

/// [`StoreLimits`] that also remembers a refused memory grow, which a guest then reports as an
/// ordinary trap (its allocator aborts), and holds all of an instance's linear memories together
/// to the limit (a composed component may have several; `StoreLimits` counts each alone).
struct Limiter {
    inner: StoreLimits,
    hit_memory_limit: bool,
    memory_limit: usize,
    memory_total: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Memories only grow, and a new one starts from 0: the sum of the growths is the total.
        let total = self.memory_total + desired.saturating_sub(current);
        let ok =
            total <= self.memory_limit && self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            self.memory_total = total;
        }
        self.hit_memory_limit |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl rule::pigeon::plugin::types::Host for State {}

impl rule::pigeon::plugin::host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        // Errors (a panic's message among them) count apart, so chatter cannot hide them.
        let count = if matches!(level, Level::Error) {
            &mut self.errors_this_call
        } else {
            &mut self.lines_this_call
        };
        *count = count.saturating_add(1);
        if *count > MAX_LOG_LINES_PER_CALL {
            if *count == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(
                    plugin = &*self.plugin,
                    "further log lines of this call dropped"
                );
            }
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut]");
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        crate::store::now_ms()
    }

    fn config(&mut self) -> String {
        self.config_json.to_string()
    }
}

/// A compiled, checked and linked component, ready to instantiate.
#[derive(Clone)]
pub enum Linked {
    /// An inbox rule.
    Rule(rule::InboxRulePre<State>),
    /// A discovery strategy, built against contract `1.minor`: it is sent the events its
    /// version knows.
    Discovery {
        /// Ready to instantiate.
        pre: discovery::DiscoveryPre<State>,
        /// Its contract's minor version.
        minor: u64,
    },
}

/// What [`Runtime::load`] found out about a component.
#[derive(Clone)]
pub struct Loaded {
    /// Its kind.
    pub kind: PluginKind,
    /// The `pigeon:plugin` version it was built against.
    pub api_version: String,
    /// Ready to instantiate.
    pub linked: Linked,
}

/// One engine per process, with the linkers for both worlds.
pub struct Runtime {
    engine: Engine,
    rule_linker: Linker<State>,
    discovery_linker: Linker<State>,
    stop_ticker: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
        // The ticker notices within one tick; joining it means no thread outlives the runtime.
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker.
    pub fn new() -> Result<Runtime, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let rule_linker = linker(&engine, |l| {
            rule::InboxRule::add_to_linker::<State, HasSelf<State>>(l, |s| s)
        })?;
        let discovery_linker = linker(&engine, |l| {
            discovery::Discovery::add_to_linker::<State, HasSelf<State>>(l, |s| s)
        })?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), stop_ticker.clone());
        let ticker = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Runtime {
            engine,
            rule_linker,
            discovery_linker,
            stop_ticker,
            ticker: Some(ticker),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks to allow for `deadline`: enough for all of it, plus the one already under
    /// way when the call starts (the epoch may advance a moment later). So a call is never cut
    /// short, and stops at most one tick after its deadline.
    pub fn ticks(deadline: Duration) -> u64 {
        deadline.as_micros().div_ceil(TICK.as_micros()) as u64 + 1
    }

    /// Compiles `wasm` (or takes it from the cache: see [`Cached`]), checks its contract version
    /// and links it.
    pub fn load(&self, wasm: &[u8], cache: Option<Cached<'_>>) -> Result<Loaded, PluginError> {
        check_header(wasm)?;
        let component = match cache {
            Some(Cached { cache, name }) => cache.component(&self.engine, name, wasm)?,
            None => compile(&self.engine, wasm)?,
        };
        let (kind, api_version) = check_exports(
            component
                .component_type()
                .exports(&self.engine)
                .map(|(name, _)| name.to_owned()),
        )?;
        let link_error = |e: wasmtime::Error| PluginError::Link(format!("{e:#}"));
        let linked = match kind {
            PluginKind::Rule => {
                let pre = self
                    .rule_linker
                    .instantiate_pre(&component)
                    .map_err(link_error)?;
                Linked::Rule(rule::InboxRulePre::new(pre).map_err(link_error)?)
            }
            PluginKind::Discovery => {
                let pre = self
                    .discovery_linker
                    .instantiate_pre(&component)
                    .map_err(link_error)?;
                Linked::Discovery {
                    pre: discovery::DiscoveryPre::new(pre).map_err(link_error)?,
                    minor: minor_of(&api_version),
                }
            }
        };
        Ok(Loaded {
            kind,
            api_version,
            linked,
        })
    }
}

fn linker(
    engine: &Engine,
    add: impl FnOnce(&mut Linker<State>) -> wasmtime::Result<()>,
) -> Result<Linker<State>, PluginError> {
    let mut linker = Linker::new(engine);
    // The WASI interfaces a Rust guest links against; the context behind them is empty, and
    // `wasi:io/poll` is replaced by one that never waits.
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .and_then(|()| {
            linker.allow_shadowing(true);
            wasmtime_wasi::p2::bindings::sync::io::poll::add_to_linker::<State, NoWait>(
                &mut linker,
                |state| NoWaitTable(&mut state.table),
            )?;
            linker.allow_shadowing(false);
            add(&mut linker)
        })
        .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    Ok(linker)
}

/// Tells a component from a core module or something else entirely, before the compiler's
/// messages, which are meant for toolchain authors.
fn check_header(wasm: &[u8]) -> Result<(), PluginError> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(PluginError::Invalid(
            "this is a core WebAssembly module, not a component; build the plugin with `cargo build --release --target wasm32-wasip2`".into(),
        )),
        _ => Err(PluginError::Invalid(
            "the file does not start with the WebAssembly header".into(),
        )),
    }
}

fn compile(engine: &Engine, wasm: &[u8]) -> Result<Component, PluginError> {
    Component::new(engine, wasm).map_err(|e| PluginError::Invalid(format!("{e:#}")))
}

/// The minor version of a version [`check_exports`] accepted (`1.1.0` gives 1).
fn minor_of(version: &str) -> u64 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Finds the `pigeon:plugin` interface a component exports and checks its version against the
/// one this host speaks. Returns the kind and the version.
pub fn check_exports(
    exports: impl Iterator<Item = String>,
) -> Result<(PluginKind, String), PluginError> {
    let exports: Vec<String> = exports.collect();
    for name in &exports {
        let Some(rest) = name.strip_prefix("pigeon:plugin/") else {
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let kind = match interface {
            "rule-hooks" => PluginKind::Rule,
            "discovery-hooks" => PluginKind::Discovery,
            _ => continue,
        };
        let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
        let (major, minor) = match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) => (major, minor),
            _ => {
                return Err(PluginError::Version {
                    found: format!("pigeon:plugin@{version}"),
                });
            }
        };
        if major != API_MAJOR || minor > API_MINOR {
            return Err(PluginError::Version {
                found: format!("pigeon:plugin@{version}"),
            });
        }
        return Ok((kind, version.to_owned()));
    }
    Err(PluginError::NotAPlugin {
        exports: if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        },
    })
}

/// Compiled components on disk, in `<home>/plugin-cache` (0700), one per plugin name, component
/// and engine. Each file carries a MAC under a key derived from the owner's data key over what it
/// is for (the plugin's name, the blake2b-512 of its wasm, the engine's compatibility hash) and the
/// compiled bytes: a file nobody with the passphrase wrote is never loaded as native code, and
/// neither is the owner's own compilation of another plugin copied under this one's name.
pub struct Cache {
    dir: PathBuf,
    mac_key: [u8; 32],
}

/// Where [`Runtime::load`] may take a compiled component from: `cache`, as plugin `name`'s.
#[derive(Clone, Copy)]
pub struct Cached<'a> {
    /// The cache.
    pub cache: &'a Cache,
    /// The plugin's name.
    pub name: &'a str,
}

/// What a cache entry is for.
struct Entry {
    name: String,
    wasm_hash: [u8; 64],
    engine_hash: u64,
}

impl Entry {
    fn new(engine: &Engine, name: &str, wasm: &[u8]) -> Entry {
        let mut hasher = Blake2b512::new();
        Digest::update(&mut hasher, wasm);
        let mut engine_hash = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut engine_hash);
        Entry {
            name: name.to_owned(),
            wasm_hash: hasher.finalize().into(),
            engine_hash: std::hash::Hasher::finish(&engine_hash),
        }
    }

    /// The file name: plugin names are `[a-z0-9_-]` (checked with the config), so they are safe
    /// in one.
    fn file_name(&self) -> String {
        format!(
            "{}-{}-{:016x}.cwasm",
            self.name,
            hex::encode(&self.wasm_hash[..20]),
            self.engine_hash
        )
    }
}

impl Cache {
    /// A cache in `dir` whose files are authenticated with `mac_key`.
    pub fn new(dir: PathBuf, mac_key: [u8; 32]) -> Cache {
        Cache { dir, mac_key }
    }

    fn path(&self, entry: &Entry) -> PathBuf {
        self.dir.join(entry.file_name())
    }

    fn mac(&self, entry: &Entry, compiled: &[u8]) -> [u8; 32] {
        let mut mac =
            <CacheMac as KeyInit>::new_from_slice(&self.mac_key).expect("32 bytes is a valid key");
        Update::update(&mut mac, b"pigeon plugin cache v2\0");
        Update::update(&mut mac, &(entry.name.len() as u64).to_be_bytes());
        Update::update(&mut mac, entry.name.as_bytes());
        Update::update(&mut mac, &entry.wasm_hash);
        Update::update(&mut mac, &entry.engine_hash.to_be_bytes());
        Update::update(&mut mac, compiled);
        mac.finalize_fixed().into()
    }

    /// The component for plugin `name`'s `wasm`, from the cache when a valid entry is there, else
    /// compiled and stored. A cache that cannot be written only costs the next start a compile.
    pub fn component(
        &self,
        engine: &Engine,
        name: &str,
        wasm: &[u8],
    ) -> Result<Component, PluginError> {
        let entry = Entry::new(engine, name, wasm);
        if let Some(component) = self.read(engine, &entry) {
            return Ok(component);
        }
        let compiled = engine
            .precompile_component(wasm)
            .map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
        let mut file = self.mac(&entry, &compiled).to_vec();
        file.extend_from_slice(&compiled);
        let path = self.path(&entry);
        if let Err(e) = self.write(&path, &file) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache a compiled plugin");
        }
        // SAFETY: `compiled` was produced just now by this engine.
        unsafe { Component::deserialize(engine, &compiled) }
            .map_err(|e| PluginError::Invalid(format!("{e:#}")))
    }

    fn read(&self, engine: &Engine, entry: &Entry) -> Option<Component> {
        let path = self.path(entry);
        let file = std::fs::read(&path).ok()?;
        let (mac, compiled) = file.split_at_checked(32)?;
        if !constant_time_eq(mac, &self.mac(entry, compiled)) {
            tracing::warn!(path = %path.display(), "ignoring a cached plugin whose MAC is wrong");
            return None;
        }
        // SAFETY: the MAC proves this engine's own `precompile_component` output of this very
        // wasm for this plugin, stored by this owner; wasmtime checks the engine again.
        unsafe { Component::deserialize(engine, compiled) }.ok()
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        crate::home::write_atomic(path, bytes).map_err(std::io::Error::other)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(names: &[&str]) -> Result<(PluginKind, String), PluginError> {
        check_exports(names.iter().map(|s| s.to_string()))
    }

    #[test]
    fn the_cache_serves_its_own_files_and_ignores_tampered_or_foreign_ones() {
        let runtime = Runtime::new().expect("runtime");
        let engine = runtime.engine();
        let wasm = super::super::builtin::BUILTINS[0].wasm;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(dir.path().join("plugin-cache"), [7; 32]);
        let entry = Entry::new(engine, "labeler", wasm);
        assert!(cache.read(engine, &entry).is_none(), "empty at first");
        runtime
            .load(
                wasm,
                Some(Cached {
                    cache: &cache,
                    name: "labeler",
                }),
            )
            .expect("compiles and stores");
        assert!(cache.read(engine, &entry).is_some(), "served from disk now");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("plugin-cache"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        let other_owner = Cache::new(dir.path().join("plugin-cache"), [8; 32]);
        assert!(
            other_owner.read(engine, &entry).is_none(),
            "a file under another key is not loaded"
        );
        // The owner's own compilation, copied under another plugin's name or another wasm's hash,
        // is not loaded as that plugin.
        let path = cache.path(&entry);
        let other_wasm = super::super::builtin::BUILTINS[1].wasm;
        for other in [
            Entry::new(engine, "renamed", wasm),
            Entry::new(engine, "labeler", other_wasm),
        ] {
            std::fs::copy(&path, cache.path(&other)).expect("copy");
            assert!(
                cache.read(engine, &other).is_none(),
                "an entry for {} under {}",
                entry.file_name(),
                other.file_name()
            );
        }
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(
            cache.read(engine, &entry).is_none(),
            "a changed byte is caught"
        );
        runtime
            .load(
                wasm,
                Some(Cached {
                    cache: &cache,
                    name: "labeler",
                }),
            )
            .expect("a bad entry is compiled again");
        assert!(cache.read(engine, &entry).is_some(), "and replaced");
    }

    #[test]
    fn versions_of_the_same_major_and_no_newer_minor_load() {
        assert_eq!(
            check(&["pigeon:plugin/rule-hooks@1.0.0"]).expect("ok"),
            (PluginKind::Rule, "1.0.0".into())
        );
        assert_eq!(
            check(&["pigeon:plugin/discovery-hooks@1.1.0"]).expect("ok"),
            (PluginKind::Discovery, "1.1.0".into())
        );
        assert_eq!(minor_of("1.0.0"), 0);
        assert_eq!(minor_of("1.1.2"), 1);
        assert_eq!(
            check(&["x:y/z", "pigeon:plugin/discovery-hooks@1.0.3"])
                .expect("patch releases load")
                .0,
            PluginKind::Discovery
        );
    }

    #[test]
    fn other_majors_newer_minors_and_non_plugins_are_refused_with_the_reason() {
        for found in ["2.0.0", "1.2.0", "0.9.0", "x"] {
            let e = check(&[&format!("pigeon:plugin/rule-hooks@{found}")]).expect_err(found);
            let text = e.to_string();
            assert!(text.contains(found), "{text}");
            assert!(
                text.contains("1.0.0 up to 1.1.x"),
                "names the supported versions: {text}"
            );
        }
        let e = check(&["wasi:cli/run@0.2.0"]).expect_err("not a plugin");
        assert!(e.to_string().contains("wasi:cli/run@0.2.0"), "{e}");
        assert!(matches!(check(&[]), Err(PluginError::NotAPlugin { .. })));
    }
}
