//! GPUs: what services ask for (`GpuRequest`), what the machine has
//! (`inventory`), who holds what (`lease`), and the broker the supervisor asks
//! before every launch (`broker`).

pub mod broker;
pub mod inventory;
pub mod lease;
mod nvml;

use serde::{Deserialize, Serialize};

pub use broker::{GpuBroker, GpuSnapshot, MemoryUsers, RELEASE_TIMEOUT};
pub use inventory::{DeclaredGpu, Device, Inventory, InventorySource};
pub use lease::{Conflict, Lease, LeaseTable};

/// What a service asks of the GPUs: how many or which, how much memory, and
/// whether it shares them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuRequest {
    pub devices: GpuDevices,
    pub vram_mib: Option<u64>,
    pub mode: GpuMode,
}

impl GpuRequest {
    pub fn wants_gpus(&self) -> bool {
        self.devices != GpuDevices::None
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuDevices {
    #[default]
    None,
    /// Any this many devices.
    Count(u32),
    /// These devices, by index or UUID.
    Named(Vec<String>),
}

/// `exclusive` (the default): nobody else on the device. `shared`: others too,
/// within the device's memory, counted by each lease's `vram`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuMode {
    #[default]
    Exclusive,
    Shared,
}

impl GpuMode {
    pub fn word(self) -> &'static str {
        match self {
            GpuMode::Exclusive => "exclusively",
            GpuMode::Shared => "shared",
        }
    }
}
