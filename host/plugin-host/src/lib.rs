//! cutover-plugin-host: the host side of the WIT plugin worlds — find, verify,
//! compile, sandbox and call the five policy plugins, whichever contract version
//! (0.1.0 or 0.2.0) each targets.
//!
//! [`PluginHost`] (one per process) owns the WebAssembly engine, the linker, the
//! epoch ticker behind every deadline and the compiled-code cache. [`Plugins::load`]
//! turns the `[plugins.*]` config into ready plugins of the kinds a command calls,
//! each of which runs every call in a fresh store under its [`Limits`]. This crate
//! knows nothing of Docker, nginx, the config file as a whole or deploys (its
//! `Cargo.toml` names only `cutover-base`); it never performs a deploy's side effects and never trusts plugin output: sizes are
//! capped, text is made printable and proxy file paths are checked before anyone
//! writes them.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bindings;
pub mod builtin;
mod cache;
pub mod cli;
mod error;
pub mod json;
mod kinds;
mod limits;
pub mod rendered;
pub mod sample;
mod sandbox;
pub mod scaffold;
mod settings;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    WasmBacktraceDetails,
};

pub use bindings::{WIT, WIT_VERSION, WitVersion, types};
pub use cache::sha256_hex;
pub use error::PluginError;
pub use kinds::{
    AnalysisPlugin, GatePlugin, HealthPlugin, PluginCalls, Plugins, SelectorPlugin, TemplatePlugin,
};
pub use limits::{BOUNDS, Bound, Limits};
pub use settings::{LimitsConfig, PluginSettings, PluginSpec, PluginsConfig};

use cutover_base::{Color, events};

use cache::DiskCache;
use sandbox::{CallSlots, CallState, chain};

/// How often the epoch advances: the resolution of every deadline.
const TICK: Duration = Duration::from_millis(5);

/// Plugin calls that can run at once per host (each holds one pooled instance);
/// further calls wait for a slot. A deploy makes one call at a time.
const POOL_SLOTS: u32 = 16;

/// Bytes of a plugin's memory kept mapped between calls and reset in place (only
/// the pages a call dirtied are restored), so the next call takes no page faults.
const KEEP_RESIDENT: usize = 4 << 20;

/// The five policy kinds a plugin can implement: one WIT world and one
/// `[plugins.<kind>]` config entry each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginKind {
    /// Allow or deny a deploy.
    DeployGate,
    /// Choose the colour to deploy to.
    TargetSelector,
    /// Judge a health probe.
    HealthPolicy,
    /// Render the proxy config.
    ProxyTemplate,
    /// Judge a canary step (new in cutover:plugin@0.2.0).
    RolloutAnalysis,
}

impl PluginKind {
    /// All kinds, in the order a deploy uses them.
    pub const ALL: [PluginKind; 5] = [
        PluginKind::DeployGate,
        PluginKind::TargetSelector,
        PluginKind::HealthPolicy,
        PluginKind::ProxyTemplate,
        PluginKind::RolloutAnalysis,
    ];

    /// The name used in config (`[plugins.<name>]`) and as the WIT world name.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::DeployGate => "deploy-gate",
            PluginKind::TargetSelector => "target-selector",
            PluginKind::HealthPolicy => "health-policy",
            PluginKind::ProxyTemplate => "proxy-template",
            PluginKind::RolloutAnalysis => "rollout-analysis",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the host and every plugin it loaded share, so deadlines and the call slots
/// keep working while any plugin lives.
pub(crate) struct Shared {
    _ticker: EpochTicker,
    pub(crate) slots: CallSlots,
}

/// Advances the engine's epoch every [`TICK`] until dropped.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> std::io::Result<EpochTicker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("cutover-epoch".to_owned())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread with `Disconnected`.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where a compiled plugin came from, for the load log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Loaded from the compiled-code cache.
    Cache,
    /// Compiled now.
    Compiled,
}

/// The engine (with its instance pool), linker, epoch ticker and compiled-code cache
/// shared by every plugin of a process.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<CallState>,
    shared: Arc<Shared>,
    cache: Option<DiskCache>,
    /// Why there is no cache, when there is none (said once, in the load log).
    cache_note: Mutex<Option<String>>,
}

impl PluginHost {
    /// A host whose compiled-code cache lives in `cache_dir`, or when `None` in the
    /// default directory (`$CUTOVER_CACHE_DIR`, else `$XDG_CACHE_HOME/cutover`, else
    /// `~/.cache/cutover`). An unusable cache directory is not an error: plugins are
    /// then compiled on every run, and the first load says why.
    ///
    /// # Errors
    /// [`PluginError::Engine`] when the engine, the linker or the ticker thread cannot
    /// be set up.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<PluginHost, PluginError> {
        let mut host = PluginHost::uncached()?;
        let note = match cache_dir.or_else(cache::default_dir) {
            None => "no cache directory: set CUTOVER_CACHE_DIR or HOME".to_owned(),
            Some(dir) => match DiskCache::open(&dir, &host.engine) {
                Ok(cache) => {
                    host.cache = Some(cache);
                    return Ok(host);
                }
                Err(why) => why,
            },
        };
        host.cache_note = Mutex::new(Some(format!(
            "compiled-code cache disabled ({note}); plugins are compiled on every run"
        )));
        Ok(host)
    }

    /// A host without a compiled-code cache: every load compiles.
    ///
    /// # Errors
    /// As [`PluginHost::new`].
    pub fn uncached() -> Result<PluginHost, PluginError> {
        let engine_error = |what: &str, e: &wasmtime::Error| PluginError::Engine {
            detail: format!("{what}: {}", chain(e)),
        };
        // A fresh instance per call is the sandbox's cost; the pooling allocator
        // makes it cheap (measured: ~60 us -> ~9 us per decision) by reusing mapped
        // slots and resetting only the pages a call dirtied (PAGEMAP_SCAN on Linux
        // 6.7+, else a memset of the kept-resident prefix).
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS * sandbox::MAX_CORE_INSTANCES)
            .total_memories(POOL_SLOTS * sandbox::MAX_MEMORIES)
            .total_tables(POOL_SLOTS * sandbox::MAX_TABLES)
            .max_core_instances_per_component(sandbox::MAX_CORE_INSTANCES)
            .max_memories_per_component(sandbox::MAX_MEMORIES)
            .max_tables_per_component(sandbox::MAX_TABLES)
            .table_elements(sandbox::MAX_TABLE_ELEMENTS)
            .max_memory_size(limits::MAX_MEMORY_BYTES)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = wasmtime::Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(true)
            .epoch_interruption(true)
            .wasm_component_model(true)
            .cranelift_opt_level(OptLevel::Speed)
            // Fixed rather than read from WASMTIME_BACKTRACE_DETAILS: it changes the
            // compiled code and so the cache key.
            .wasm_backtrace_details(WasmBacktraceDetails::Disable);
        let engine = Engine::new(&config).map_err(|e| engine_error("engine", &e))?;
        let mut linker = Linker::new(&engine);
        sandbox::add_to_linker(&mut linker).map_err(|e| engine_error("linker", &e))?;
        let ticker = EpochTicker::start(&engine).map_err(|e| PluginError::Engine {
            detail: format!("cannot start the epoch thread: {e}"),
        })?;
        Ok(PluginHost {
            engine,
            linker,
            shared: Arc::new(Shared {
                _ticker: ticker,
                slots: CallSlots::new(POOL_SLOTS),
            }),
            cache: None,
            cache_note: Mutex::new(None),
        })
    }

    /// The compiled-code cache directory in use, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(DiskCache::dir)
    }

    /// The note about a missing cache, the first time it is asked for.
    fn take_cache_note(&self) -> Option<String> {
        self.cache_note
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The compiled component for wasm with digest `sha256`, from the cache.
    fn cached(&self, sha256: &str) -> Option<Component> {
        self.cache.as_ref()?.load(&self.engine, sha256)
    }

    /// Compiles `wasm` (whose sha256 is `sha256`) and stores the result in the cache.
    fn compile(
        &self,
        plugin: &str,
        kind: Option<PluginKind>,
        wasm: &[u8],
        sha256: &str,
    ) -> Result<Component, PluginError> {
        let compile_error = |detail: String| PluginError::Compile {
            plugin: plugin.to_owned(),
            kind,
            detail,
        };
        match wasm.get(..8) {
            Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => {}
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(compile_error(
                    "it is a core WebAssembly module, not a component (was it built for \
                     wasm32-unknown-unknown or wasm32-wasip1 instead of wasm32-wasip2?)"
                        .to_owned(),
                ));
            }
            _ => {
                return Err(compile_error(
                    "it is not a WebAssembly file (it does not start with the `\\0asm` \
                     component header)"
                        .to_owned(),
                ));
            }
        }
        let component = Component::new(&self.engine, wasm).map_err(|e| compile_error(chain(&e)))?;
        if let Some(cache) = &self.cache {
            // A failed store only costs the next run a compile.
            let _ = cache.store(sha256, &component);
        }
        Ok(component)
    }

    /// The component for `wasm`: from the cache, else compiled now.
    fn component(
        &self,
        plugin: &str,
        kind: Option<PluginKind>,
        wasm: &[u8],
        sha256: &str,
    ) -> Result<Compiled, PluginError> {
        let started = Instant::now();
        let (component, origin) = match self.cached(sha256) {
            Some(component) => (component, Origin::Cache),
            None => (self.compile(plugin, kind, wasm, sha256)?, Origin::Compiled),
        };
        Ok(Compiled {
            component,
            origin,
            took: started.elapsed(),
        })
    }
}

/// A compiled component, where it came from and how long that took.
#[derive(Clone)]
struct Compiled {
    component: Component,
    origin: Origin,
    took: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn plugins_can_cross_await_points() {
        assert_send_sync::<PluginHost>();
        assert_send_sync::<GatePlugin>();
        assert_send_sync::<SelectorPlugin>();
        assert_send_sync::<HealthPlugin>();
        assert_send_sync::<TemplatePlugin>();
        assert_send_sync::<AnalysisPlugin>();
        assert_send_sync::<Plugins>();
    }

    #[test]
    fn the_embedded_wit_is_the_released_file() {
        assert!(WIT.contains(&format!("package cutover:plugin@{WIT_VERSION};")));
    }
}
