//! One plugin call in a fresh, locked-down store: the WASI context a plugin sees, the
//! memory cap, the log sink, the deadline and fuel, and the mapping of every way a
//! call can end to a typed [`PluginError`].
//!
//! What a plugin sees: no preopened directories, no environment, no arguments, no
//! sockets or name lookups, stdin closed, stdout discarded, stderr kept (the first
//! few KiB, for crash messages only), clocks frozen at the Unix epoch, and sleeps
//! that return at once (a frozen clock never passes a deadline, and a host thread
//! blocked in a WASI sleep could not be stopped by the epoch deadline). This module
//! never lets a plugin's text reach a terminal unescaped.

use std::borrow::Cow;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::PluginKind;
use crate::bindings::gate::cutover::plugin::{host, types};
use crate::bindings::v0_1_0::gate::cutover::plugin as v0_1_0;
use crate::events::{Event, Level, Reporter};
use crate::limits::Limits;
use crate::{PluginError, TICK};

/// How much of a plugin's stderr is kept for a crash message.
const STDERR_KEEP: usize = 2048;

/// Every log call costs at least this much of the log cap, so a flood of empty
/// messages is capped too.
const LOG_CALL_COST: usize = 32;

/// Core instances, memories and tables one call may create, and the most elements a
/// table may hold: the store's limits and the pool's per-component maxima. A Rust
/// wasip2 plugin needs 3 core instances, 1 memory and 2 tables.
pub(crate) const MAX_CORE_INSTANCES: u32 = 32;
pub(crate) const MAX_MEMORIES: u32 = 2;
pub(crate) const MAX_TABLES: u32 = 16;
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Random bytes a plugin may ask for in one call (WASI's default is 64 MiB of host
/// memory, outside the plugin's memory cap).
const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Who is being called, under which limits, reporting where: what every call of
/// one plugin shares.
#[derive(Clone)]
pub(crate) struct Sandbox {
    pub(crate) engine: Engine,
    /// The epoch ticker (so deadlines fire) and the call slots of the host.
    pub(crate) shared: Arc<super::Shared>,
    pub(crate) name: Arc<str>,
    pub(crate) kind: PluginKind,
    pub(crate) limits: Limits,
    pub(crate) reporter: Arc<dyn Reporter>,
    /// What each successful call cost, for [`super::Plugins::call_stats`].
    pub(crate) calls: Arc<CallLog>,
}

/// The cost of every successful call of one plugin, kept for the host's metrics;
/// capped, so a plugin called in a loop cannot grow it without bound.
#[derive(Debug, Default)]
pub(crate) struct CallLog(Mutex<Vec<CallStats>>);

impl CallLog {
    const MAX_CALLS: usize = 10_000;

    fn push(&self, stats: CallStats) {
        let mut calls = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if calls.len() < Self::MAX_CALLS {
            calls.push(stats);
        }
    }

    /// A copy of the calls so far.
    pub(crate) fn get(&self) -> Vec<CallStats> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a successful call cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallStats {
    pub(crate) fuel_used: u64,
    pub(crate) elapsed: Duration,
    /// Linear memory the call's instance ended with, all memories together: what
    /// `memory_mib` must leave room for.
    pub(crate) memory_bytes: u64,
}

/// The store data of one call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    log: LogSink,
    stderr: StderrTail,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        self.log.write(level, &message);
    }
}

// A guest built against 0.1.0 imports the 0.1.0 interfaces; its log lines go to the
// same sink.
impl v0_1_0::types::Host for CallState {}

impl v0_1_0::host::Host for CallState {
    fn log(&mut self, level: v0_1_0::types::LogLevel, message: String) {
        self.log
            .write(crate::bindings::adapt::log_level_up(level), &message);
    }
}

/// Links everything a plugin may import: WASI p2 (synchronous), with the monotonic
/// clock replaced by a frozen one, and the `host` interface of every contract version
/// the host runs (0.1.0 and 0.2.0 are distinct imports, so both can be linked).
pub(crate) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<CallState, FrozenClock<'static>>(linker, |state| {
        FrozenClock(&mut state.table)
    })?;
    linker.allow_shadowing(false);
    crate::bindings::gate::DeployGate::add_to_linker::<
        CallState,
        wasmtime::component::HasSelf<CallState>,
    >(linker, |state| state)?;
    crate::bindings::v0_1_0::gate::DeployGate::add_to_linker::<
        CallState,
        wasmtime::component::HasSelf<CallState>,
    >(linker, |state| state)
}

/// Caps linear memory and remembers that the cap was hit, so the resulting trap is
/// reported as "memory limit", not as a crash.
struct MemoryCap {
    max: u64,
    hit: bool,
    /// Bytes granted so far, every memory of the instance together (memories only
    /// grow, so this is also the peak).
    granted: u64,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if u64::try_from(desired).unwrap_or(u64::MAX) > self.max {
            self.hit = true;
            return Ok(false);
        }
        self.granted = self
            .granted
            .saturating_add(u64::try_from(desired.saturating_sub(current)).unwrap_or(u64::MAX));
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES as usize
    }
}

/// Turns plugin `log` calls into events, up to the log cap.
struct LogSink {
    reporter: Arc<dyn Reporter>,
    source: Arc<str>,
    remaining: usize,
    dropped: usize,
}

impl LogSink {
    fn write(&mut self, level: types::LogLevel, message: &str) {
        let cost = message.len() + LOG_CALL_COST;
        if cost > self.remaining {
            self.dropped += message.len();
            self.remaining = 0;
            return;
        }
        self.remaining -= cost;
        let level = match level {
            types::LogLevel::Debug => Level::Debug,
            types::LogLevel::Info => Level::Info,
            types::LogLevel::Warn => Level::Warn,
            types::LogLevel::Error => Level::Error,
        };
        self.reporter.emit(&Event::Log {
            level,
            source: self.source.to_string(),
            message: printable(message).into_owned(),
        });
    }

    /// Says once, after the call, how much was dropped.
    fn finish(&mut self, kind: PluginKind) {
        if self.dropped > 0 {
            self.reporter.emit(&Event::Log {
                level: Level::Warn,
                source: self.source.to_string(),
                message: format!(
                    "{} bytes of log output over the cap were dropped (raise `log_kib` in [plugins.{kind}.limits] to see them)",
                    self.dropped
                ),
            });
        }
    }
}

/// Keeps the first [`STDERR_KEEP`] bytes a plugin writes to stderr and discards the
/// rest without failing the write (a chatty plugin is not a broken one).
#[derive(Clone, Default)]
struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        printable(String::from_utf8_lossy(&bytes).trim()).into_owned()
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this; cutover links WASIp2.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for StderrTail {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = STDERR_KEEP.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

/// `wasi:clocks/monotonic-clock` with time standing still: `now` is 0 and every
/// subscription is ready at once.
struct FrozenClock<'a>(&'a mut ResourceTable);

impl HasData for FrozenClock<'static> {
    type Data<'a> = FrozenClock<'a>;
}

/// A pollable that is always ready.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

impl monotonic_clock::Host for FrozenClock<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(0)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        _when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.0.push(Ready)?;
        wasmtime_wasi::p2::subscribe(self.0, ready)
    }

    fn subscribe_duration(
        &mut self,
        _duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.0.push(Ready)?;
        wasmtime_wasi::p2::subscribe(self.0, ready)
    }
}

struct FrozenWallClock;

impl wasmtime_wasi::HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

struct FrozenMonotonicClock;

impl wasmtime_wasi::HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Replaces control characters (terminal escapes, carriage returns, newlines that
/// would forge log lines) with their escaped form.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<String>()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

impl Sandbox {
    fn new_store(&self) -> wasmtime::Result<Store<CallState>> {
        let stderr = StderrTail::default();
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(FrozenWallClock)
            .monotonic_clock(FrozenMonotonicClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                max: self.limits.memory_bytes,
                hit: false,
                granted: 0,
            },
            log: LogSink {
                reporter: Arc::clone(&self.reporter),
                source: Arc::clone(&self.name),
                remaining: self.limits.log_bytes,
                dropped: 0,
            },
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_fuel(self.limits.fuel)?;
        // The ticker advances the epoch every TICK; one extra tick makes the deadline
        // a lower bound (the trap comes between `deadline` and `deadline + TICK`).
        let ticks = self.limits.deadline.as_nanos().div_ceil(TICK.as_nanos()) + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        Ok(store)
    }

    /// Runs `f` (instantiate and call) in a fresh store under this plugin's limits.
    ///
    /// wasmtime-wasi's synchronous bindings drive their host futures with tokio's
    /// `Handle::block_on`, which panics on a thread that is running async tasks (a
    /// plugin writing to stderr would crash the deploy). Inside a multi-thread runtime
    /// the call therefore runs in `block_in_place`, inside a current-thread runtime on
    /// a short-lived thread of its own; outside tokio it runs right here.
    ///
    /// # Errors
    /// The [`PluginError`] for a trap, timeout, exhausted fuel or memory cap.
    pub(crate) fn call<R: Send>(
        &self,
        f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R> + Send,
    ) -> Result<(R, CallStats), PluginError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => self.call_here(f),
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.call_here(f)),
            Ok(_) => std::thread::scope(|scope| {
                let worker = std::thread::Builder::new()
                    .name("cutover-plugin".to_owned())
                    .spawn_scoped(scope, || self.call_here(f))
                    .map_err(|e| self.trap(format!("cannot start a thread for the call: {e}")))?;
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }),
        }
    }

    fn call_here<R>(
        &self,
        f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<(R, CallStats), PluginError> {
        let started = Instant::now();
        // Declared before the store, so the slot is given back after the store (and
        // its pooled instance) is dropped.
        let _slot = self.shared.slots.acquire();
        let mut store = self
            .new_store()
            .map_err(|e| self.trap(format!("cannot create a store: {}", chain(&e))))?;
        let result = f(&mut store);
        store.data_mut().log.finish(self.kind);
        match result {
            Ok(value) => {
                let left = store.get_fuel().unwrap_or(0);
                let stats = CallStats {
                    fuel_used: self.limits.fuel.saturating_sub(left),
                    elapsed: started.elapsed(),
                    memory_bytes: store.data().memory.granted,
                };
                self.calls.push(stats);
                Ok((value, stats))
            }
            Err(error) => Err(self.classify(&error, store.data())),
        }
    }

    fn trap(&self, detail: String) -> PluginError {
        PluginError::Trap {
            plugin: self.name.to_string(),
            kind: self.kind,
            detail,
        }
    }

    /// Names the way a call failed; the memory flag wins because hitting the cap
    /// surfaces as whatever the guest does next (usually an abort).
    fn classify(&self, error: &wasmtime::Error, state: &CallState) -> PluginError {
        let plugin = self.name.to_string();
        let kind = self.kind;
        if state.memory.hit {
            return PluginError::MemoryLimit {
                plugin,
                kind,
                limit_mib: self.limits.memory_mib(),
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout {
                plugin,
                kind,
                deadline_ms: self.limits.deadline_ms(),
            },
            Some(Trap::OutOfFuel) => PluginError::OutOfFuel {
                plugin,
                kind,
                fuel: self.limits.fuel,
            },
            _ => {
                let mut detail = chain(error);
                let stderr = state.stderr.text();
                if !stderr.is_empty() {
                    detail.push_str(&format!(" (its stderr: {stderr})"));
                }
                self.trap(detail)
            }
        }
    }
}

/// A counting semaphore over the instance pool's slots: a call waits for a free slot
/// instead of failing when more calls run at once than the pool holds.
pub(crate) struct CallSlots {
    free: Mutex<u32>,
    freed: Condvar,
}

/// A held call slot, given back on drop.
pub(crate) struct Slot<'a>(&'a CallSlots);

impl CallSlots {
    pub(crate) fn new(slots: u32) -> CallSlots {
        CallSlots {
            free: Mutex::new(slots),
            freed: Condvar::new(),
        }
    }

    pub(crate) fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(error: &wasmtime::Error) -> String {
    let parts: Vec<String> = error
        .chain()
        .map(|e| printable(&e.to_string()).into_owned())
        .collect();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_slots_make_the_extra_caller_wait() {
        let slots = Arc::new(CallSlots::new(1));
        let held = slots.acquire();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let slots = Arc::clone(&slots);
            std::thread::spawn(move || {
                let _slot = slots.acquire();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "no slot was free"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the slot was handed over");
        waiter.join().unwrap();
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\x1b[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }
}
