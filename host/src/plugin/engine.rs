//! The one wasmtime engine: configuration, the epoch ticker behind call deadlines,
//! the linker every plugin is instantiated with, and the compiled-component cache.

use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use super::cache::ComponentCache;
use super::sandbox::StoreState;

/// How often the epoch advances; a call's deadline is a whole number of ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The sandbox's bounds for every plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock time one call may run.
    pub call_deadline: Duration,
    /// Text one call may return (a reason, a model list, a plan).
    pub reply_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_deadline: Duration::from_millis(100),
            reply_bytes: 1 << 20,
        }
    }
}

impl Limits {
    pub(super) fn deadline_ticks(&self) -> u64 {
        (self.call_deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// Shared by every plugin and session of a daemon.
pub struct PluginEngine {
    pub(super) engine: Engine,
    pub(super) linker: Linker<StoreState>,
    pub(super) cache: ComponentCache,
    pub(super) limits: Limits,
    /// Where each plugin call's duration goes.
    pub(super) metrics: Metrics,
}

impl PluginEngine {
    /// An engine with `limits`, caching compiled components in `cache_dir`.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> wasmtime::Result<Arc<Self>> {
        Self::with_metrics(limits, cache_dir, Metrics::default())
    }

    /// `new`, timing every plugin call into `metrics`.
    pub fn with_metrics(
        limits: Limits,
        cache_dir: Option<PathBuf>,
        metrics: Metrics,
    ) -> wasmtime::Result<Arc<Self>> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        super::bindings::add_to_linker(&mut linker)?;
        spawn_epoch_ticker(&engine);
        Ok(Arc::new(Self {
            engine,
            linker,
            cache: ComponentCache::new(cache_dir),
            limits,
            metrics,
        }))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// Advances the epoch every tick for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("nanny-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawn the epoch ticker thread");
}
