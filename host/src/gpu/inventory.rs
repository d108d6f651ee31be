//! What GPUs this machine has and who uses their memory: NVML when the driver's
//! library loads, else `nvidia-smi` when it answers, else the `[[gpus]]` declared
//! in nanny.toml, else none.

use std::process::Command;

use serde::{Deserialize, Serialize};

/// One device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
}

/// Where the device list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InventorySource {
    Nvml,
    NvidiaSmi,
    Declared,
    None,
}

/// A GPU declared in nanny.toml, for machines nanny cannot query.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredGpu {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub memory_mib: u64,
}

/// The devices, read once at start-up; memory figures are refreshed on demand.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub source: InventorySource,
    pub devices: Vec<Device>,
}

impl Inventory {
    /// NVML first; then `nvidia-smi`; then the declared GPUs; then none.
    pub fn discover(declared: &[DeclaredGpu]) -> Self {
        if let Some(devices) = super::nvml::devices() {
            return Self {
                source: InventorySource::Nvml,
                devices,
            };
        }
        if let Some(devices) = query_devices() {
            return Self {
                source: InventorySource::NvidiaSmi,
                devices,
            };
        }
        if !declared.is_empty() {
            let devices = declared
                .iter()
                .map(|gpu| Device {
                    index: gpu.index,
                    uuid: gpu
                        .uuid
                        .clone()
                        .unwrap_or_else(|| format!("declared-{}", gpu.index)),
                    name: gpu.name.clone().unwrap_or_else(|| "declared GPU".into()),
                    memory_total_mib: gpu.memory_mib,
                    memory_used_mib: 0,
                })
                .collect();
            return Self {
                source: InventorySource::Declared,
                devices,
            };
        }
        Self {
            source: InventorySource::None,
            devices: Vec::new(),
        }
    }

    /// Fresh memory figures, where the source can give them.
    pub fn refresh(&mut self) {
        let fresh = match self.source {
            InventorySource::Nvml => super::nvml::devices(),
            InventorySource::NvidiaSmi => query_devices(),
            InventorySource::Declared | InventorySource::None => None,
        };
        if let Some(devices) = fresh {
            for fresh in devices {
                if let Some(device) = self.devices.iter_mut().find(|d| d.uuid == fresh.uuid) {
                    device.memory_used_mib = fresh.memory_used_mib;
                }
            }
        }
    }
}

fn nvidia_smi(args: &[&str]) -> Option<String> {
    let output = Command::new("nvidia-smi").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn query_devices() -> Option<Vec<Device>> {
    let csv = nvidia_smi(&[
        "--query-gpu=index,uuid,name,memory.total,memory.used",
        "--format=csv,noheader,nounits",
    ])?;
    parse_devices(&csv).ok()
}

/// The NVIDIA driver's version and the CUDA version it supports, as
/// `nvidia-smi` says; `None` for what it cannot tell.
pub fn driver_versions() -> (Option<String>, Option<String>) {
    let driver = nvidia_smi(&["--query-gpu=driver_version", "--format=csv,noheader"])
        .and_then(|csv| csv.lines().next().map(|line| line.trim().to_string()))
        .filter(|version| !version.is_empty());
    let cuda = nvidia_smi(&[]).and_then(|banner| cuda_version(&banner));
    (driver, cuda)
}

/// `12.4` from the banner's `CUDA Version: 12.4`.
fn cuda_version(banner: &str) -> Option<String> {
    let after = banner.split("CUDA Version:").nth(1)?;
    let version: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

/// Which processes hold GPU memory, and how much (MiB); `None` when neither NVML
/// nor nvidia-smi can say.
pub fn compute_apps() -> Option<Vec<(i32, u64)>> {
    if let Some(apps) = super::nvml::compute_apps() {
        return Some(apps);
    }
    let csv = nvidia_smi(&[
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ])?;
    Some(parse_apps(&csv))
}

/// `0, GPU-8f…, NVIDIA H100 80GB HBM3, 81559, 3`, one line per device.
pub fn parse_devices(csv: &str) -> Result<Vec<Device>, String> {
    csv.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, uuid, name, total, used] = fields[..] else {
                return Err(format!("expected 5 fields: {line}"));
            };
            let number = |text: &str| {
                text.parse::<u64>()
                    .map_err(|_| format!("`{text}` is not a number: {line}"))
            };
            Ok(Device {
                index: number(index)? as u32,
                uuid: uuid.to_string(),
                name: name.to_string(),
                memory_total_mib: number(total)?,
                memory_used_mib: number(used)?,
            })
        })
        .collect()
}

/// `12345, 20480`, one line per process; lines that do not parse are skipped.
pub fn parse_apps(csv: &str) -> Vec<(i32, u64)> {
    csv.lines()
        .filter_map(|line| {
            let (pid, used) = line.split_once(',')?;
            Some((pid.trim().parse().ok()?, used.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_version_is_read_from_the_banner() {
        let banner =
            "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |";
        assert_eq!(cuda_version(banner).as_deref(), Some("12.4"));
        assert_eq!(cuda_version("no such thing"), None);
        assert_eq!(cuda_version("CUDA Version: N/A"), None);
    }

    #[test]
    fn reads_nvidia_smi_csv() {
        let csv = "0, GPU-aaaa, NVIDIA H100 80GB HBM3, 81559, 3\n1, GPU-bbbb, NVIDIA H100 80GB HBM3, 81559, 20480\n";
        let devices = parse_devices(csv).unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].uuid, "GPU-bbbb");
        assert_eq!(devices[1].memory_used_mib, 20480);
        assert!(parse_devices("0, GPU-a, x, [N/A], 0").is_err());
        assert_eq!(
            parse_apps("123, 400\n\n456, 7\nNo running processes found\n"),
            [(123, 400), (456, 7)]
        );
    }
}
