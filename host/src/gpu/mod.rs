//! GPUs: what services ask for. (The inventory and the lease table come with the
//! GPU issue.)

use serde::Serialize;

/// What a service asks of the GPUs: how many or which, and how much memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuRequest {
    pub devices: GpuDevices,
    pub vram_mib: Option<u64>,
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
