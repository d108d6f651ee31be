//! NVML, when the driver's library loads (`libnvidia-ml.so.1`, opened at run
//! time): the same facts nvidia-smi prints, without a process per question.

use std::sync::OnceLock;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use super::inventory::Device;

const MIB: u64 = 1024 * 1024;

/// The library, loaded once; `None` on machines without the driver, or with
/// `NANNY_NO_NVML` set (tests drive a fake nvidia-smi on machines that have one).
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        if std::env::var_os("NANNY_NO_NVML").is_some() {
            return None;
        }
        Nvml::init().ok()
    })
    .as_ref()
}

pub fn devices() -> Option<Vec<Device>> {
    let nvml = nvml()?;
    (0..nvml.device_count().ok()?)
        .map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let memory = device.memory_info().ok()?;
            Some(Device {
                index,
                uuid: device.uuid().ok()?,
                name: device.name().ok()?,
                memory_total_mib: memory.total / MIB,
                memory_used_mib: memory.used / MIB,
            })
        })
        .collect()
}

pub fn compute_apps() -> Option<Vec<(i32, u64)>> {
    let nvml = nvml()?;
    let mut apps = Vec::new();
    for index in 0..nvml.device_count().ok()? {
        let device = nvml.device_by_index(index).ok()?;
        for process in device.running_compute_processes().ok()? {
            let used = match process.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => bytes / MIB,
                UsedGpuMemory::Unavailable => 0,
            };
            apps.push((process.pid as i32, used));
        }
    }
    Some(apps)
}
