//! What a plugin's store holds: an empty WASI context (no files, environment,
//! sockets or stdin), a memory cap, and the host functions it may import.

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::types::Level;

/// Log messages longer than this are cut: a plugin must not flood the daemon's log.
const MAX_LOG_BYTES: usize = 4096;
/// Messages a plugin may log at once, and how many more each second brings.
const LOG_BURST: u32 = 50;
const LOG_PER_SECOND: u32 = 10;

/// A token bucket over one store's `log` calls: what is over budget is counted,
/// not printed, and the count comes with the next message that gets through.
#[derive(Debug)]
pub(super) struct LogBudget {
    bucket: crate::rate::TokenBucket,
    pub(super) suppressed: u64,
}

impl LogBudget {
    fn new() -> Self {
        Self {
            bucket: crate::rate::TokenBucket::new(LOG_BURST, LOG_PER_SECOND),
            suppressed: 0,
        }
    }

    /// Whether one more message may go out now.
    fn take(&mut self) -> bool {
        let allowed = self.bucket.take();
        if !allowed {
            self.suppressed += 1;
        }
        allowed
    }
}

pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryCap,
    plugin: String,
    service: String,
    /// Reported in timeout errors.
    pub(super) call_deadline: std::time::Duration,
    pub(super) log_budget: LogBudget,
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
                peak_bytes: 0,
            },
            plugin: plugin.to_string(),
            service: service.to_string(),
            call_deadline,
            log_budget: LogBudget::new(),
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
    /// The most linear memory granted so far (the conformance kit reports it).
    pub peak_bytes: usize,
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
        self.peak_bytes = self.peak_bytes.max(desired);
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

impl StoreState {
    /// The `log` import of every contract version.
    pub(super) fn log_from_plugin(&mut self, level: Level, mut message: String) {
        if !self.log_budget.take() {
            return;
        }
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        // One line per message, whatever the plugin put in it.
        let mut message = crate::plugin::one_line(&message);
        let suppressed = std::mem::take(&mut self.log_budget.suppressed);
        if suppressed > 0 {
            message.push_str(&format!(
                " ({suppressed} earlier message(s) suppressed: too many)"
            ));
        }
        let (plugin, service) = (&self.plugin, &self.service);
        match level {
            Level::Debug => tracing::debug!(plugin, service, "{message}"),
            Level::Info => tracing::info!(plugin, service, "{message}"),
            Level::Warn => tracing::warn!(plugin, service, "{message}"),
            Level::Error => tracing::error!(plugin, service, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_log_calls_is_cut_to_the_budget_and_counted() {
        let mut state = StoreState::new("p", "s", 1 << 20, std::time::Duration::from_millis(100));
        for _ in 0..10_000 {
            state.log_from_plugin(Level::Debug, "x".repeat(10_000));
        }
        // The burst went out (give or take what refilled meanwhile); the rest waits.
        assert!(
            state.log_budget.suppressed >= 9_000,
            "{}",
            state.log_budget.suppressed
        );
    }
}
