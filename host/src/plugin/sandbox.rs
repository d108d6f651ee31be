//! What a plugin's store holds: an empty WASI context (no files, environment,
//! sockets or stdin), a memory cap, and the host functions it may import.

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::nanny::backend::{host, types};

/// Log messages longer than this are cut: a plugin must not flood the daemon's log.
const MAX_LOG_BYTES: usize = 4096;

pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryCap,
    plugin: String,
    service: String,
    /// Reported in timeout errors.
    pub(super) call_deadline: std::time::Duration,
}

impl StoreState {
    pub fn new(
        plugin: &str,
        service: &str,
        memory_cap: usize,
        call_deadline: std::time::Duration,
    ) -> Self {
        Self {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory: MemoryCap {
                cap_bytes: memory_cap,
                hit: false,
            },
            plugin: plugin.to_string(),
            service: service.to_string(),
            call_deadline,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses linear-memory growth past the cap, and remembers that it did so the
/// resulting trap can be reported as "memory cap" rather than a crash.
pub struct MemoryCap {
    pub cap_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            self.hit = true;
            return Err(wasmtime::Error::msg("memory cap reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: host::Level, mut message: String) {
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let (plugin, service) = (&self.plugin, &self.service);
        match level {
            host::Level::Debug => tracing::debug!(plugin, service, "{message}"),
            host::Level::Info => tracing::info!(plugin, service, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, service, "{message}"),
            host::Level::Error => tracing::error!(plugin, service, "{message}"),
        }
    }
}
