//! The lease table: which service holds which device, exclusively or within a
//! VRAM budget. Pure bookkeeping, so its invariants can be checked exhaustively.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::inventory::Device;
use super::{GpuDevices, GpuMode, GpuRequest};

/// One service's hold on its devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub service: String,
    /// Device UUIDs.
    pub devices: Vec<String>,
    pub mode: GpuMode,
    /// Per device; counted against the budget of shared devices.
    pub vram_mib: u64,
}

/// Why a request cannot be granted now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Conflict {
    pub message: String,
    /// Services whose leases stand in the way (eviction candidates).
    pub holders: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LeaseTable {
    leases: BTreeMap<String, Lease>,
}

impl LeaseTable {
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    pub fn get(&self, service: &str) -> Option<&Lease> {
        self.leases.get(service)
    }

    fn on(&self, uuid: &str) -> impl Iterator<Item = &Lease> + '_ {
        let uuid = uuid.to_string();
        self.leases
            .values()
            .filter(move |lease| lease.devices.contains(&uuid))
    }

    /// Why `device` cannot take this lease, naming who is in the way; `None` if it can.
    fn obstacle(
        &self,
        device: &Device,
        service: &str,
        mode: GpuMode,
        vram_mib: u64,
        held: &BTreeSet<String>,
    ) -> Option<(String, Vec<String>)> {
        let label = format!("GPU {} ({})", device.index, device.uuid);
        if held.contains(&device.uuid) {
            return Some((
                format!("{label} still holds memory of a stopped service"),
                Vec::new(),
            ));
        }
        let others: Vec<&Lease> = self
            .on(&device.uuid)
            .filter(|l| l.service != service)
            .collect();
        let names =
            |leases: &[&Lease]| leases.iter().map(|l| l.service.clone()).collect::<Vec<_>>();
        match mode {
            GpuMode::Exclusive if !others.is_empty() => {
                let holders = names(&others);
                Some((format!("{label} is held by {}", quoted(&holders)), holders))
            }
            GpuMode::Exclusive => None,
            GpuMode::Shared => {
                let exclusive: Vec<&Lease> = others
                    .iter()
                    .copied()
                    .filter(|l| l.mode == GpuMode::Exclusive)
                    .collect();
                if !exclusive.is_empty() {
                    let holders = names(&exclusive);
                    return Some((
                        format!("{label} is held exclusively by {}", quoted(&holders)),
                        holders,
                    ));
                }
                let budgeted: u64 = others.iter().map(|l| l.vram_mib).sum();
                (budgeted + vram_mib > device.memory_total_mib).then(|| {
                    let holders = names(&others);
                    (
                        format!(
                            "{label} has {} MiB of {} MiB left (leased to {}), {vram_mib} MiB needed",
                            device.memory_total_mib.saturating_sub(budgeted),
                            device.memory_total_mib,
                            quoted(&holders)
                        ),
                        holders,
                    )
                })
            }
        }
    }

    /// Leases devices to `service` as `request` asks, or says what is in the way.
    /// `held`: devices whose memory a stopped service has not yet given back.
    pub fn acquire(
        &mut self,
        devices: &[Device],
        service: &str,
        request: &GpuRequest,
        held: &BTreeSet<String>,
    ) -> Result<Lease, Conflict> {
        let mode = request.mode;
        let vram_mib = match (mode, request.vram_mib) {
            (_, Some(vram)) => vram,
            (GpuMode::Exclusive, None) => 0,
            (GpuMode::Shared, None) => {
                return Err(Conflict {
                    message: "a shared GPU lease needs `vram` (or the plugin's estimate)".into(),
                    holders: Vec::new(),
                })
            }
        };
        let mut problems = Vec::new();
        let mut holders = BTreeSet::new();
        let mut fits = |device: &Device| match self.obstacle(device, service, mode, vram_mib, held)
        {
            None => true,
            Some((problem, in_the_way)) => {
                problems.push(problem);
                holders.extend(in_the_way);
                false
            }
        };
        let chosen: Vec<String> = match &request.devices {
            GpuDevices::None => Vec::new(),
            GpuDevices::Count(count) => {
                let free: Vec<String> = devices
                    .iter()
                    .filter(|device| fits(device))
                    .map(|device| device.uuid.clone())
                    .take(*count as usize)
                    .collect();
                if free.len() < *count as usize {
                    let missing = *count as usize - free.len();
                    let why = if devices.len() < *count as usize {
                        format!("this machine has {} GPU(s)", devices.len())
                    } else {
                        problems.join("; ")
                    };
                    return Err(Conflict {
                        message: format!(
                            "`{service}` needs {count} GPU(s) {}, {missing} short: {why}",
                            mode.word()
                        ),
                        holders: holders.into_iter().collect(),
                    });
                }
                free
            }
            GpuDevices::Named(wanted) => {
                let mut chosen = Vec::new();
                for id in wanted {
                    let Some(device) = devices
                        .iter()
                        .find(|d| d.uuid == *id || d.index.to_string() == *id)
                    else {
                        return Err(Conflict {
                            message: format!(
                                "`{service}` asks for GPU `{id}`, which this machine does not have"
                            ),
                            holders: Vec::new(),
                        });
                    };
                    if fits(device) {
                        chosen.push(device.uuid.clone());
                    }
                }
                if chosen.len() < wanted.len() {
                    return Err(Conflict {
                        message: format!(
                            "`{service}` cannot have its GPUs {}: {}",
                            mode.word(),
                            problems.join("; ")
                        ),
                        holders: holders.into_iter().collect(),
                    });
                }
                chosen
            }
        };
        let lease = Lease {
            service: service.to_string(),
            devices: chosen,
            mode,
            vram_mib,
        };
        self.leases.insert(service.to_string(), lease.clone());
        Ok(lease)
    }

    pub fn release(&mut self, service: &str) -> Option<Lease> {
        self.leases.remove(service)
    }

    /// The invariants: no device in two leases where one is exclusive, and no
    /// shared device leased beyond its memory.
    pub fn check(&self, devices: &[Device]) -> Result<(), String> {
        for device in devices {
            let on: Vec<&Lease> = self.on(&device.uuid).collect();
            if on.len() > 1 && on.iter().any(|l| l.mode == GpuMode::Exclusive) {
                return Err(format!(
                    "GPU {} is in {} leases, one exclusive",
                    device.index,
                    on.len()
                ));
            }
            let budget: u64 = on.iter().map(|l| l.vram_mib).sum();
            if on.iter().all(|l| l.mode == GpuMode::Shared) && budget > device.memory_total_mib {
                return Err(format!(
                    "GPU {} is leased {budget} MiB of {}",
                    device.index, device.memory_total_mib
                ));
            }
        }
        Ok(())
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn devices() -> Vec<Device> {
        (0..3)
            .map(|index| Device {
                index,
                uuid: format!("GPU-{index}"),
                name: "test".into(),
                memory_total_mib: 24_576,
                memory_used_mib: 0,
            })
            .collect()
    }

    fn request(devices: GpuDevices, mode: GpuMode, vram_mib: Option<u64>) -> GpuRequest {
        GpuRequest {
            devices,
            vram_mib,
            mode,
        }
    }

    #[test]
    fn a_held_device_is_refused_naming_its_holder() {
        let mut table = LeaseTable::default();
        let one = request(
            GpuDevices::Named(vec!["0".into()]),
            GpuMode::Exclusive,
            None,
        );
        table
            .acquire(&devices(), "chat", &one, &BTreeSet::new())
            .unwrap();
        let conflict = table
            .acquire(&devices(), "embed", &one, &BTreeSet::new())
            .unwrap_err();
        assert_eq!(conflict.holders, ["chat"]);
        assert!(
            conflict.message.contains("GPU 0 (GPU-0) is held by `chat`"),
            "{}",
            conflict.message
        );
        // Any free GPU will do for a count.
        let any = request(GpuDevices::Count(1), GpuMode::Exclusive, None);
        let lease = table
            .acquire(&devices(), "embed", &any, &BTreeSet::new())
            .unwrap();
        assert_eq!(lease.devices, ["GPU-1"]);
        // Memory still held blocks a lease until it is freed.
        let held = BTreeSet::from(["GPU-2".to_string()]);
        let conflict = table.acquire(&devices(), "third", &any, &held).unwrap_err();
        assert!(
            conflict.message.contains("still holds memory"),
            "{}",
            conflict.message
        );
    }

    #[test]
    fn shared_devices_keep_to_their_budget() {
        let mut table = LeaseTable::default();
        let shared = |vram| {
            request(
                GpuDevices::Named(vec!["0".into()]),
                GpuMode::Shared,
                Some(vram),
            )
        };
        table
            .acquire(&devices(), "a", &shared(16_384), &BTreeSet::new())
            .unwrap();
        table
            .acquire(&devices(), "b", &shared(8_192), &BTreeSet::new())
            .unwrap();
        let conflict = table
            .acquire(&devices(), "c", &shared(1), &BTreeSet::new())
            .unwrap_err();
        assert_eq!(conflict.holders, ["a", "b"]);
        assert!(
            conflict.message.contains("0 MiB of 24576 MiB left"),
            "{}",
            conflict.message
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Acquire {
            service: u8,
            count: u32,
            shared: bool,
            vram: u64,
        },
        Release {
            service: u8,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, 1u32..3, any::<bool>(), 1u64..20_000).prop_map(
                |(service, count, shared, vram)| Step::Acquire {
                    service,
                    count,
                    shared,
                    vram
                }
            ),
            (0u8..6).prop_map(|service| Step::Release { service }),
        ]
    }

    proptest! {
        /// Crashes and restarts are releases and acquisitions in some order.
        #[test]
        fn no_sequence_breaks_the_invariants(steps in prop::collection::vec(step(), 1..60)) {
            let devices = devices();
            let mut table = LeaseTable::default();
            for step in steps {
                match step {
                    Step::Acquire { service, count, shared, vram } => {
                        let name = format!("s{service}");
                        table.release(&name);
                        let mode = if shared { GpuMode::Shared } else { GpuMode::Exclusive };
                        let ask = request(GpuDevices::Count(count), mode, Some(vram));
                        let _ = table.acquire(&devices, &name, &ask, &BTreeSet::new());
                    }
                    Step::Release { service } => {
                        table.release(&format!("s{service}"));
                    }
                }
                prop_assert_eq!(table.check(&devices), Ok(()));
            }
        }
    }
}
