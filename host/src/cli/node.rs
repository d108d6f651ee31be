//! What this node tells the cluster about itself, read from the supervisor,
//! the gateway and the GPU broker (the daemon's wiring, so that the cluster
//! module needs none of them).

use std::sync::{Arc, OnceLock, Weak};

use crate::cluster::{Capabilities, GpuRecord, Local, ServiceRecord};
use crate::gateway::Gateway;
use crate::supervise::Supervisor;

/// Programs that backends launch, looked for on PATH once at start.
const BACKEND_PROGRAMS: [&str; 7] = [
    "vllm",
    "llama-server",
    "infinilm",
    "python3",
    "docker",
    "podman",
    "nvidia-smi",
];

pub struct LocalNode {
    supervisor: Arc<Supervisor>,
    /// Set once the gateway exists (it needs the cluster first); weak, as the
    /// gateway holds the cluster that holds this.
    gateway: OnceLock<Weak<Gateway>>,
    capabilities: Capabilities,
}

impl LocalNode {
    /// Reads what does not change while the daemon runs (driver, programs).
    pub fn new(supervisor: Arc<Supervisor>) -> Arc<Self> {
        let (driver, cuda) = crate::gpu::inventory::driver_versions();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let programs = BACKEND_PROGRAMS
            .iter()
            .filter(|program| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
            .map(|program| program.to_string())
            .collect();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Arc::new(Self {
            supervisor,
            gateway: OnceLock::new(),
            capabilities: Capabilities {
                cpus,
                driver,
                cuda,
                programs,
            },
        })
    }

    pub fn serve_through(&self, gateway: &Arc<Gateway>) {
        let _ = self.gateway.set(Arc::downgrade(gateway));
    }
}

impl Local for LocalNode {
    fn gpus(&self) -> Vec<GpuRecord> {
        let Some(broker) = self.supervisor.gpus() else {
            return Vec::new();
        };
        broker
            .holders()
            .into_iter()
            .map(|(device, holders)| GpuRecord {
                index: device.index,
                uuid: device.uuid,
                name: device.name,
                memory_mib: device.memory_total_mib,
                holders,
            })
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    fn services(&self) -> Vec<ServiceRecord> {
        let load = self
            .gateway
            .get()
            .and_then(Weak::upgrade)
            .map(|gateway| gateway.load().0)
            .unwrap_or_default();
        self.supervisor
            .routable()
            .into_iter()
            .map(|(name, routable)| {
                let status = &routable.status;
                let models = routable.model_names();
                ServiceRecord {
                    in_flight: load
                        .iter()
                        .find(|(service, _)| *service == name)
                        .map_or(0, |(_, count)| *count),
                    backend: status.backend.clone(),
                    state: status.state.name().to_string(),
                    port: status.port,
                    models,
                    name,
                }
            })
            .collect()
    }
}
