//! The broker: one owner of the GPU state — the inventory it leases from, the
//! lease table and the memory that stopped services have not given back yet,
//! behind one lock that is never held across `nvidia-smi` — and a checkpoint on
//! disk.

use crate::runtime::orphans::{pids_of_launch, pids_with_env};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::locks::lock;

use super::inventory::{compute_apps, Inventory, InventorySource};
use super::lease::{Conflict, Lease, LeaseTable};
use super::{GpuMode, GpuRequest};

/// How long a stopped service's processes get to give their GPU memory back.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the broker decides from, changed only together under one lock.
#[derive(Debug, Clone)]
struct BrokerState {
    inventory: Inventory,
    table: LeaseTable,
    /// Device UUID → PIDs of stopped services still holding memory there.
    held: BTreeMap<String, BTreeSet<i32>>,
}

impl BrokerState {
    fn held_devices(&self) -> BTreeSet<String> {
        self.held.keys().cloned().collect()
    }
}

/// Which processes use GPU memory now, and how much: (pid, MiB).
pub type MemoryUsers = fn() -> Option<Vec<(i32, u64)>>;

#[derive(Debug)]
pub struct GpuBroker {
    state: Mutex<BrokerState>,
    /// NVML or `nvidia-smi` (`compute_apps`), unless told otherwise.
    memory_users: MemoryUsers,
    checkpoint: Option<PathBuf>,
    /// One checkpoint write at a time: they share the temporary file.
    saving: Mutex<()>,
    /// Counts releases, so services waiting for a device learn when to try again.
    releases: tokio::sync::watch::Sender<u64>,
}

/// What `GET /v1/gpus` shows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GpuSnapshot {
    /// `nvml`, `nvidia_smi`, `declared` or `none`.
    pub source: String,
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    pub leases: Vec<LeaseView>,
    /// PIDs of stopped services whose memory is not back yet; no lease is granted
    /// here until it is.
    pub held_by_stopped_pids: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    pub service: String,
    /// `exclusive` or `shared`.
    pub mode: String,
    pub vram_mib: u64,
}

impl GpuBroker {
    /// The broker over `inventory`. A checkpoint left by an earlier daemon is read
    /// back: what its services still run keeps their devices blocked until gone.
    pub fn new(inventory: Inventory, checkpoint: Option<PathBuf>) -> Self {
        let broker = Self {
            state: Mutex::new(BrokerState {
                inventory,
                table: LeaseTable::default(),
                held: BTreeMap::new(),
            }),
            memory_users: compute_apps,
            checkpoint,
            saving: Mutex::new(()),
            releases: tokio::sync::watch::Sender::new(0),
        };
        let earlier: Option<LeaseTable> = broker
            .checkpoint
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        for lease in earlier.iter().flat_map(LeaseTable::leases) {
            let alive = pids_of_service(&lease.service);
            if !alive.is_empty() {
                let mut state = lock(&broker.state);
                for uuid in &lease.devices {
                    state.held.entry(uuid.clone()).or_default().extend(&alive);
                }
            }
        }
        broker.save();
        broker
    }

    /// The broker, reading who uses GPU memory from `memory_users` rather than
    /// the driver: for a machine whose driver nanny cannot ask, and for tests.
    pub fn with_memory_users(mut self, memory_users: MemoryUsers) -> Self {
        self.memory_users = memory_users;
        self
    }

    /// The leased devices as the plugin sees them.
    pub fn devices_of(&self, lease: &Lease) -> Vec<crate::plugin::Gpu> {
        let state = lock(&self.state);
        lease
            .devices
            .iter()
            .filter_map(|uuid| state.inventory.devices.iter().find(|d| d.uuid == *uuid))
            .map(|device| crate::plugin::Gpu {
                index: device.index,
                uuid: device.uuid.clone(),
                memory_mib: device.memory_total_mib,
            })
            .collect()
    }

    pub fn has_devices(&self) -> bool {
        !lock(&self.state).inventory.devices.is_empty()
    }

    /// Changes with every release: subscribe before a failed `acquire`, await a
    /// change, try again.
    pub fn releases(&self) -> tokio::sync::watch::Receiver<u64> {
        self.releases.subscribe()
    }

    /// Takes a lease for `service`, or says who is in the way.
    pub fn acquire(&self, service: &str, request: &GpuRequest) -> Result<Lease, Conflict> {
        self.forget_freed_memory();
        let lease = {
            let mut state = lock(&self.state);
            let held = state.held_devices();
            let BrokerState {
                inventory, table, ..
            } = &mut *state;
            table.acquire(&inventory.devices, service, request, &held)?
        };
        self.save();
        Ok(lease)
    }

    /// Whether `acquire` would succeed now, without taking anything.
    pub fn check(&self, service: &str, request: &GpuRequest) -> Result<(), Conflict> {
        self.forget_freed_memory();
        let state = lock(&self.state);
        let mut trial = state.table.clone();
        trial
            .acquire(
                &state.inventory.devices,
                service,
                request,
                &state.held_devices(),
            )
            .map(|_| ())
    }

    /// Gives the lease back once the launch's processes are gone. Its PIDs that
    /// still hold memory on its devices keep those devices from new leases.
    /// Blocking (it may ask `nvidia-smi`): call it off the async workers.
    pub fn release(&self, lease: &Lease, main_pid: Option<i32>, launch: &str) {
        let mut ours = pids_of_launch(launch);
        ours.extend(main_pid);
        let lingering: BTreeSet<i32> = (self.memory_users)()
            .unwrap_or_default()
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| ours.contains(pid))
            .collect();
        {
            // The lease goes and what lingers is held, in one step: no acquire
            // sees the devices free in between.
            let mut state = lock(&self.state);
            state.table.release(&lease.service);
            if !lingering.is_empty() {
                for uuid in &lease.devices {
                    state
                        .held
                        .entry(uuid.clone())
                        .or_default()
                        .extend(&lingering);
                }
            }
        }
        self.save();
        self.releases.send_modify(|count| *count += 1);
    }

    /// After a release: waits for the launch's memory to come back, killing what
    /// is left of that launch (and nothing of any other); `Some(report)` when it
    /// did not come back in time. `nvidia-smi` and `/proc` are read off the async
    /// workers.
    pub async fn await_release(self: &Arc<Self>, service: &str, launch: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
        let mut killed = false;
        loop {
            let broker = self.clone();
            let lingering = tokio::task::spawn_blocking(move || broker.forget_freed_memory())
                .await
                .unwrap_or_default();
            if lingering.is_empty() {
                return None;
            }
            if !killed {
                // Only processes that are provably this launch's: its NANNY_LAUNCH.
                let launch = launch.to_string();
                let pids = tokio::task::spawn_blocking(move || pids_of_launch(&launch))
                    .await
                    .unwrap_or_default();
                for pid in pids {
                    // SAFETY: kill(2) on a process of the launch that just ended.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                killed = true;
            }
            if tokio::time::Instant::now() >= deadline {
                return Some(format!(
                    "GPU memory of `{service}` still held by pid(s) {lingering:?} {}s after it stopped; those GPUs take no new lease until it is freed",
                    RELEASE_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Drops held PIDs that no longer hold memory; returns those that still do.
    /// `nvidia-smi` is asked with no lock held, so a slow one blocks only its caller.
    fn forget_freed_memory(&self) -> BTreeSet<i32> {
        if lock(&self.state).held.is_empty() {
            return BTreeSet::new();
        }
        let using: BTreeSet<i32> = (self.memory_users)()
            .unwrap_or_default()
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        let mut state = lock(&self.state);
        for pids in state.held.values_mut() {
            pids.retain(|pid| using.contains(pid));
        }
        state.held.retain(|_, pids| !pids.is_empty());
        state.held.values().flatten().copied().collect()
    }

    pub fn snapshot(&self) -> GpuSnapshot {
        self.forget_freed_memory();
        // Refreshed outside the lock (it asks the driver), then stored back.
        let mut inventory = lock(&self.state).inventory.clone();
        inventory.refresh();
        let BrokerState { table, held, .. } = {
            let mut state = lock(&self.state);
            for fresh in &inventory.devices {
                if let Some(device) = state
                    .inventory
                    .devices
                    .iter_mut()
                    .find(|device| device.uuid == fresh.uuid)
                {
                    device.memory_used_mib = fresh.memory_used_mib;
                }
            }
            state.clone()
        };
        let source = match inventory.source {
            InventorySource::Nvml => "nvml",
            InventorySource::NvidiaSmi => "nvidia_smi",
            InventorySource::Declared => "declared",
            InventorySource::None => "none",
        };
        GpuSnapshot {
            source: source.into(),
            devices: inventory
                .devices
                .iter()
                .map(|device| DeviceView {
                    index: device.index,
                    uuid: device.uuid.clone(),
                    name: device.name.clone(),
                    memory_total_mib: device.memory_total_mib,
                    memory_used_mib: device.memory_used_mib,
                    leases: table
                        .leases()
                        .filter(|lease| lease.devices.contains(&device.uuid))
                        .map(|lease| LeaseView {
                            service: lease.service.clone(),
                            mode: match lease.mode {
                                GpuMode::Exclusive => "exclusive".into(),
                                GpuMode::Shared => "shared".into(),
                            },
                            vram_mib: lease.vram_mib,
                        })
                        .collect(),
                    held_by_stopped_pids: held
                        .get(&device.uuid)
                        .map(|pids| pids.iter().copied().collect())
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Each device and the services leasing it, as last known: no driver call,
    /// so a caller may ask often (the cluster registry does, on every change).
    pub fn holders(&self) -> Vec<(crate::gpu::inventory::Device, Vec<String>)> {
        let state = lock(&self.state);
        state
            .inventory
            .devices
            .iter()
            .map(|device| {
                let holders = state
                    .table
                    .leases()
                    .filter(|lease| lease.devices.contains(&device.uuid))
                    .map(|lease| lease.service.clone())
                    .collect();
                (device.clone(), holders)
            })
            .collect()
    }

    /// The lease table, written atomically.
    fn save(&self) {
        let Some(path) = &self.checkpoint else {
            return;
        };
        let _one_at_a_time = lock(&self.saving);
        let table = lock(&self.state).table.clone();
        let Ok(bytes) = serde_json::to_vec_pretty(&table) else {
            return;
        };
        if let Err(error) = crate::files::write_atomically(path, &bytes) {
            tracing::warn!(
                "cannot checkpoint the GPU leases to {}: {error}",
                path.display()
            );
        }
    }
}

/// Every live process launched for `service` (by any launch, this daemon's or an
/// earlier one's): each carries `NANNY_SERVICE=<service>` in its environment,
/// however far it double-forked.
pub fn pids_of_service(service: &str) -> Vec<i32> {
    pids_with_env(&format!("NANNY_SERVICE={service}"))
}
