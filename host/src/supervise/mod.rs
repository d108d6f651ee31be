//! Supervision: one task per service driving its state machine, started in
//! dependency order and stopped in reverse.

mod backoff;
mod events;
mod launch;
mod logs;
mod order;
mod persist;
mod probe;
mod runner;
mod running;
mod spec;
mod state;
#[cfg(test)]
mod tests;
mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

pub use backoff::{Backoff, BackoffPolicy};
pub use events::EventLog;
pub use logs::{LogBook, LogLine, LogWriter};
pub use order::dependency_order;
pub use probe::{get as probe_get, ProbeResponse};
pub use spec::{
    Command, Concurrency, Condition, ProbeOverrides, RestartMode, RestartPolicy, ServiceSpec,
};
pub use state::{unix_ms, ModelInfo, ServiceStatus, State, StateChange};
// `Routable` is defined below: what the gateway routes by.
pub use world::{Backend, Session, World};

use crate::gpu::{Conflict, GpuBroker, GpuMode, GpuRequest};
pub(crate) use crate::locks::lock;
use crate::metrics::Metrics;
use crate::plugin::PluginSession;
use crate::runtime::orphans::LaunchRecords;
use crate::runtime::{Composer, Containers, Launcher};
use runner::{Dependency, Runner, Shared};

/// How the supervisor runs its services.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    pub max_concurrent_starts: usize,
    /// Where per-launch cgroups go; `None` relies on process groups alone.
    pub cgroup_root: Option<PathBuf>,
    /// Where each running launch is recorded, for the guardian and the next
    /// daemon to sweep if this one dies without cleaning up.
    pub launch_records: Option<LaunchRecords>,
    /// Where restart counts and last failures are kept across daemon restarts.
    pub state_file: Option<PathBuf>,
    /// Where each service's output is written (`<service>.log`, rotated).
    pub log_dir: Option<PathBuf>,
    /// Bytes of recent output each service keeps in memory.
    pub log_ring_bytes: usize,
    /// The daemon's base URL; backends get `NANNY_READY_URL` under it.
    pub ready_url: Option<String>,
    /// Leases GPUs to the services that ask for them.
    pub gpus: Option<Arc<GpuBroker>>,
    /// Names this daemon's containers (`nanny.instance`); stable across restarts
    /// of the same daemon so leftovers can be found.
    pub instance: String,
    /// Reconcile this instance's containers at launch (the daemon does), rather
    /// than on the first container launch.
    pub containers_at_start: bool,
    /// Where the supervisor records what it times (probes, time to ready).
    pub metrics: Metrics,
}

impl SupervisorOptions {
    /// No cgroups, nothing on disk: for embedding nanny and for tests.
    pub fn in_memory(max_concurrent_starts: usize) -> Self {
        Self {
            max_concurrent_starts,
            cgroup_root: None,
            launch_records: None,
            state_file: None,
            log_dir: None,
            log_ring_bytes: crate::config::DEFAULT_LOG_RING_BYTES,
            ready_url: None,
            gpus: None,
            instance: format!("mem{}", std::process::id()),
            containers_at_start: false,
            metrics: Metrics::default(),
        }
    }
}

struct ServiceHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<ServiceStatus>,
    logs: Arc<LogBook>,
    /// Ends with the status channel, so a reload can hand it to the service's
    /// next runner and its dependents keep watching the same one.
    task: JoinHandle<watch::Sender<ServiceStatus>>,
    /// What the service was started from, to tell a changed one on reload.
    fingerprint: String,
    /// What the gateway needs to know of it.
    route: RouteSpec,
    /// The spec as `GET /v1/services/{name}/config` shows it (secrets hidden).
    resolved: serde_json::Value,
    /// Why the next stop happens, for its events (shared with its runner).
    stop_reason: Arc<std::sync::Mutex<Option<String>>>,
    /// Configured, or made on demand (a reload leaves those be).
    origin: Origin,
}

/// Where a service comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The configuration: a reload adds, changes and removes it.
    Configured,
    /// Made for a catalog model asked for; without `keep` it is forgotten
    /// once stopped for idleness.
    OnDemand { keep: bool },
}

/// What the gateway routes by, as configured.
#[derive(Debug, Clone)]
struct RouteSpec {
    host: String,
    wants_gpus: bool,
    names: Vec<String>,
    idle_timeout: Option<std::time::Duration>,
    startup_timeout: std::time::Duration,
    concurrency: Concurrency,
    api_key: Option<String>,
    drain_on_disconnect: bool,
    mcp_path: Option<String>,
}

impl ServiceHandle {
    fn routable(&self) -> Routable {
        let route = &self.route;
        Routable {
            host: route.host.clone(),
            wants_gpus: route.wants_gpus,
            names: route.names.clone(),
            idle_timeout: route.idle_timeout,
            startup_timeout: route.startup_timeout,
            concurrency: route.concurrency,
            api_key: route.api_key.clone(),
            drain_on_disconnect: route.drain_on_disconnect,
            mcp_path: route.mcp_path.clone(),
            status: self.status.borrow().clone(),
        }
    }
}

/// One service as the gateway sees it.
#[derive(Debug, Clone)]
pub struct Routable {
    /// Where the backend listens (with `status.port`).
    pub host: String,
    /// Whether it takes a GPU lease: such services are swapped, not just started.
    pub wants_gpus: bool,
    /// The names clients use (`models`, else `model`); the models the backend
    /// reported when last ready route here too.
    pub names: Vec<String>,
    /// Stop it this long after its last request; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// How long a start may take to show progress.
    pub startup_timeout: std::time::Duration,
    /// Requests let in at once.
    pub concurrency: Concurrency,
    /// What the backend wants as its bearer token.
    pub api_key: Option<String>,
    /// Whether an answer whose client went away runs on (`on_disconnect = "drain"`).
    pub drain_on_disconnect: bool,
    /// Where the backend serves MCP, when it is an MCP server.
    pub mcp_path: Option<String>,
    pub status: ServiceStatus,
}

impl Routable {
    /// Every name that routes here, each once: the configured names, then what
    /// the backend reported when ready (now, or when last ready).
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let reported = self.status.models.iter().map(|model| &model.id);
        for id in self
            .names
            .iter()
            .chain(reported)
            .chain(&self.status.last_models)
        {
            if !names.contains(id) {
                names.push(id.clone());
            }
        }
        names
    }
}

/// The configured services: who they are, in what order, needing what. One
/// lock, never held across an await; a reload swaps it whole.
#[derive(Default)]
struct Topology {
    services: BTreeMap<String, ServiceHandle>,
    order: Vec<String>,
    graph: Graph,
    /// What each service asks of the GPUs.
    gpu_requests: BTreeMap<String, GpuRequest>,
}

/// What a reload did, by service name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The running services.
pub struct Supervisor {
    topology: std::sync::RwLock<Topology>,
    shared: Shared,
    log_dir: Option<PathBuf>,
    log_ring_bytes: usize,
    /// Restart totals and last failures from the state file, for new services.
    remembered: BTreeMap<String, persist::Remembered>,
    gpus: Option<Arc<GpuBroker>>,
    instance: String,
    events: Arc<EventLog>,
    /// Subscribed before any task ran, so the first reader misses nothing.
    first_events: std::sync::Mutex<Option<broadcast::Receiver<StateChange>>>,
    /// Set once `shutdown` begins: nothing starts after that.
    shutting_down: AtomicBool,
    log_writer: Option<LogWriter>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("services depend on each other in a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("service `{service}` depends on `{missing}`, which is not configured")]
    UnknownDependency { service: String, missing: String },
    #[error("no service named `{0}`")]
    UnknownService(String),
    #[error("nanny is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    GpuConflict(Conflict),
}

/// Each service's direct dependencies.
type Graph = BTreeMap<String, Vec<String>>;

/// The dependency graph of `specs` and an order that respects it, or why there
/// is none.
fn plan_order(specs: &[ServiceSpec]) -> Result<(Graph, Vec<String>), SuperviseError> {
    let graph: Graph = specs
        .iter()
        .map(|spec| {
            (
                spec.service.name.clone(),
                spec.depends_on
                    .iter()
                    .map(|(name, _)| name.clone())
                    .collect(),
            )
        })
        .collect();
    for (service, dependencies) in &graph {
        if let Some(missing) = dependencies.iter().find(|d| !graph.contains_key(*d)) {
            return Err(SuperviseError::UnknownDependency {
                service: service.clone(),
                missing: missing.clone(),
            });
        }
    }
    let order = dependency_order(&graph).map_err(SuperviseError::Cycle)?;
    Ok((graph, order))
}

/// Everything a service is started from, as text: equal fingerprints, same
/// service (a reload leaves it alone).
fn fingerprint(spec: &ServiceSpec) -> String {
    format!(
        "{:?}|{}@{}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{:?}",
        spec.service,
        spec.plugin.name(),
        spec.plugin.info.version,
        spec.restart,
        spec.startup_timeout,
        spec.depends_on,
        spec.autostart,
        spec.probes,
        spec.gpu,
        spec.resources,
        spec.models,
        spec.idle_stop,
        spec.concurrency,
        spec.api_key,
        spec.drain_on_disconnect,
        spec.mcp_path
    )
}

impl Supervisor {
    /// Starts one task per service; those with `autostart` launch once their
    /// dependencies meet their conditions.
    pub fn launch(
        specs: Vec<ServiceSpec>,
        options: SupervisorOptions,
    ) -> Result<Self, SuperviseError> {
        let containers = Containers::new(options.instance.clone());
        let configured = specs.iter().map(|spec| spec.service.name.clone()).collect();
        let compose = Composer::new(options.instance.clone(), configured, containers.clone());
        if options.containers_at_start {
            let containers = containers.clone();
            tokio::spawn(async move { containers.engine().await });
            let compose = compose.clone();
            tokio::spawn(async move { compose.sweep().await });
        }
        let launcher = Launcher {
            cgroup_root: options.cgroup_root.clone(),
            records: options.launch_records.clone(),
            containers,
            compose,
        };
        Self::launch_in(Arc::new(launcher), specs, options)
    }

    /// `launch`, acting on `world` rather than on this machine.
    pub(crate) fn launch_in(
        world: Arc<dyn World>,
        specs: Vec<ServiceSpec>,
        options: SupervisorOptions,
    ) -> Result<Self, SuperviseError> {
        let (graph, order) = plan_order(&specs)?;
        let events = Arc::new(EventLog::default());
        let first_events = events.subscribe();
        let saver_events = events.subscribe();
        let remembered = options
            .state_file
            .as_deref()
            .map(persist::load)
            .unwrap_or_default();
        let shared = Shared {
            world,
            starts: Arc::new(Semaphore::new(options.max_concurrent_starts.max(1))),
            queued_starts: Arc::default(),
            events: events.clone(),
            ready_url: options.ready_url,
            gpus: options.gpus.clone(),
            metrics: options.metrics,
        };
        let log_writer = match options.log_dir {
            Some(_) => match LogWriter::start() {
                Ok(writer) => Some(writer),
                Err(error) => {
                    tracing::warn!("no log files (cannot start their writer): {error}");
                    None
                }
            },
            None => None,
        };
        let supervisor = Self {
            topology: std::sync::RwLock::default(),
            shared,
            log_dir: options.log_dir,
            log_ring_bytes: options.log_ring_bytes,
            remembered,
            gpus: options.gpus,
            instance: options.instance,
            events,
            first_events: std::sync::Mutex::new(Some(first_events)),
            shutting_down: AtomicBool::new(false),
            log_writer,
            reloading: tokio::sync::Mutex::new(()),
        };
        {
            let mut topology = supervisor.write();
            topology.graph = graph;
            topology.order = order;
            supervisor.add_services(&mut topology, specs, BTreeMap::new());
        }
        if let Some(path) = options.state_file {
            let statuses = supervisor
                .read()
                .services
                .values()
                .map(|handle| handle.status.clone())
                .collect();
            tokio::spawn(persist::keep_saving(path, saver_events, statuses));
        }
        Ok(supervisor)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Topology> {
        crate::locks::read(&self.topology)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Topology> {
        crate::locks::write(&self.topology)
    }

    /// One task per spec, wired to its dependencies' status channels: those of
    /// services already running, or of the ones added now (in any name order).
    /// `reused` hands a changed service its old status channel and log.
    fn add_services(
        &self,
        topology: &mut Topology,
        specs: Vec<ServiceSpec>,
        mut reused: BTreeMap<String, (watch::Sender<ServiceStatus>, Arc<LogBook>)>,
    ) {
        // Fingerprinted as configured, before the plugin's estimate fills in
        // VRAM: a reload compares it with a spec that has no estimate either.
        let specs: Vec<(String, ServiceSpec)> = specs
            .into_iter()
            .map(|mut spec| {
                let fingerprint = fingerprint(&spec);
                fill_vram_estimate(&mut spec);
                (fingerprint, spec)
            })
            .collect();
        let mut channels: BTreeMap<String, (watch::Sender<ServiceStatus>, Option<Arc<LogBook>>)> =
            specs
                .iter()
                .map(|(_, spec)| {
                    let name = spec.service.name.clone();
                    if let Some((sender, logs)) = reused.remove(&name) {
                        return (name, (sender, Some(logs)));
                    }
                    let mut status = ServiceStatus::new(
                        &name,
                        spec.plugin.name(),
                        &spec.plugin.info.version,
                        spec.service.port,
                    );
                    if let Some(earlier) = self.remembered.get(&name) {
                        status.restarts = earlier.restarts;
                        status.last_failure = earlier.last_failure.clone();
                        status.last_models.clone_from(&earlier.models);
                    }
                    (name, (watch::channel(status).0, None))
                })
                .collect();
        // Every dependency's receiver is taken before any sender moves into its
        // task: names in any order, dependencies before or after their dependents.
        let wiring: Vec<_> = specs
            .into_iter()
            .map(|(fingerprint, spec)| {
                let dependencies: Vec<Dependency> = spec
                    .depends_on
                    .iter()
                    .filter_map(|(name, condition)| {
                        let status = match channels.get(name) {
                            Some((sender, _)) => sender.subscribe(),
                            None => topology.services.get(name)?.status.clone(),
                        };
                        Some(Dependency {
                            name: name.clone(),
                            condition: *condition,
                            status,
                        })
                    })
                    .collect();
                (fingerprint, spec, dependencies)
            })
            .collect();
        for (fingerprint, spec, dependencies) in wiring {
            let name = spec.service.name.clone();
            let Some((status, logs)) = channels.remove(&name) else {
                continue;
            };
            status.send_modify(|status| {
                status.backend = spec.plugin.name().to_string();
                status.plugin_version.clone_from(&spec.plugin.info.version);
                status.port = spec.service.port;
            });
            let receiver = status.subscribe();
            let (commands, inbox) = mpsc::channel(16);
            let logs = logs.unwrap_or_else(|| {
                let file = self.log_dir.as_deref().zip(self.log_writer.as_ref());
                Arc::new(LogBook::new(&name, self.log_ring_bytes, file))
            });
            topology.gpu_requests.insert(name.clone(), spec.gpu.clone());
            let route = RouteSpec {
                host: spec.service.host.clone(),
                wants_gpus: self.gpus.is_some() && spec.gpu.wants_gpus(),
                names: spec.routed_names(),
                idle_timeout: spec.idle_stop,
                startup_timeout: spec.startup_timeout,
                concurrency: spec.concurrency,
                api_key: spec.api_key.clone(),
                drain_on_disconnect: spec.drain_on_disconnect,
                mcp_path: spec.mcp_path.clone(),
            };
            let resolved = spec.resolved(true);
            let stop_reason = Arc::new(std::sync::Mutex::new(None));
            let runner = Runner::new(
                spec,
                self.shared.clone(),
                status,
                inbox,
                dependencies,
                logs.clone(),
                stop_reason.clone(),
            );
            let task = tokio::spawn(runner.run());
            topology.services.insert(
                name,
                ServiceHandle {
                    commands,
                    status: receiver,
                    logs,
                    task,
                    fingerprint,
                    route,
                    resolved,
                    stop_reason,
                    origin: Origin::Configured,
                },
            );
        }
    }

    /// Replaces the configured services with `specs`, as `systemctl daemon-reload`
    /// and a restart of what changed would: new services are added (and start if
    /// `autostart`), removed ones are stopped, changed ones are stopped and run
    /// from their new spec (started again if they were up); the rest are left
    /// alone. A set that cannot run (a cycle, a missing dependency) is refused
    /// whole and nothing changes.
    pub async fn reload(&self, specs: Vec<ServiceSpec>) -> Result<ReloadReport, SuperviseError> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.is_shutting_down() {
            return Err(SuperviseError::ShuttingDown);
        }
        let (mut graph, mut order) = plan_order(&specs)?;
        // Services made on demand are not the configuration's to remove.
        let kept: Vec<String> = self
            .read()
            .services
            .iter()
            .filter(|(name, handle)| {
                handle.origin != Origin::Configured
                    && !specs.iter().any(|spec| spec.service.name == **name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &kept {
            graph.insert(name.clone(), Vec::new());
            order.push(name.clone());
        }
        let mut report = ReloadReport::default();
        let (old_order, was_up) = {
            let topology = self.read();
            let names: Vec<&String> = specs.iter().map(|spec| &spec.service.name).collect();
            for spec in &specs {
                let name = &spec.service.name;
                match topology.services.get(name) {
                    None => report.added.push(name.clone()),
                    Some(handle) if handle.fingerprint != fingerprint(spec) => {
                        report.changed.push(name.clone())
                    }
                    Some(_) => report.unchanged.push(name.clone()),
                }
            }
            report.removed = topology
                .services
                .keys()
                .filter(|name| !names.contains(name) && !kept.contains(name))
                .cloned()
                .collect();
            let was_up: Vec<String> = report
                .changed
                .iter()
                .filter(|name| {
                    let state = &topology.services[*name].status.borrow().state;
                    !matches!(state, State::Stopped | State::Failed { .. })
                })
                .cloned()
                .collect();
            (topology.order.clone(), was_up)
        };
        let going: Vec<String> = old_order
            .iter()
            .rev()
            .filter(|name| report.removed.contains(name) || report.changed.contains(name))
            .cloned()
            .collect();
        for name in &going {
            self.stop_one(name).await?;
        }
        let handles: Vec<(String, ServiceHandle)> = {
            let mut topology = self.write();
            going
                .iter()
                .filter_map(|name| Some((name.clone(), topology.services.remove(name)?)))
                .collect()
        };
        let mut reused = BTreeMap::new();
        for (name, handle) in handles {
            // With its inbox closed, the stopped runner ends and gives its channel back.
            drop(handle.commands);
            if let Ok(sender) = handle.task.await {
                if report.changed.contains(&name) {
                    reused.insert(name, (sender, handle.logs));
                }
            }
        }
        let fresh: Vec<ServiceSpec> = specs
            .into_iter()
            .filter(|spec| !report.unchanged.contains(&spec.service.name))
            .collect();
        {
            let mut topology = self.write();
            for name in &report.removed {
                topology.gpu_requests.remove(name);
            }
            topology.graph = graph;
            topology.order = order;
            self.add_services(&mut topology, fresh, reused);
        }
        for name in &was_up {
            self.send(name, Command::Start).await?;
        }
        tracing::info!(
            "reloaded: {} added, {} removed, {} changed, {} unchanged",
            report.added.len(),
            report.removed.len(),
            report.changed.len(),
            report.unchanged.len()
        );
        Ok(report)
    }

    /// Adds a service made on demand (a catalog model asked for), stopped;
    /// `false` when one of that name is there already. Without `keep`, it is
    /// [`forget`](Self::forget)table.
    pub async fn adopt(&self, spec: ServiceSpec, keep: bool) -> Result<bool, SuperviseError> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.is_shutting_down() {
            return Err(SuperviseError::ShuttingDown);
        }
        let name = spec.service.name.clone();
        let mut topology = self.write();
        if topology.services.contains_key(&name) {
            return Ok(false);
        }
        topology.graph.insert(name.clone(), Vec::new());
        topology.order.push(name.clone());
        self.add_services(&mut topology, vec![spec], BTreeMap::new());
        if let Some(handle) = topology.services.get_mut(&name) {
            handle.origin = Origin::OnDemand { keep };
        }
        Ok(true)
    }

    /// Removes a service made on demand without `keep` (its status and logs
    /// go with it); others stay. `true` when it went.
    pub async fn forget(&self, name: &str) -> Result<bool, SuperviseError> {
        let _one_at_a_time = self.reloading.lock().await;
        let forgettable = self
            .read()
            .services
            .get(name)
            .is_some_and(|handle| handle.origin == Origin::OnDemand { keep: false });
        if !forgettable {
            return Ok(false);
        }
        self.stop_one(name).await?;
        let handle = {
            let mut topology = self.write();
            topology.graph.remove(name);
            topology.order.retain(|other| other != name);
            topology.gpu_requests.remove(name);
            topology.services.remove(name)
        };
        if let Some(handle) = handle {
            drop(handle.commands);
            let _ = handle.task.await;
        }
        Ok(true)
    }

    /// Every service's status, in dependency order.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        let topology = self.read();
        topology
            .order
            .iter()
            .filter_map(|name| Some(topology.services.get(name)?.status.borrow().clone()))
            .collect()
    }

    /// Every state change of every service, in order: since launch for the first
    /// caller, from now on for later ones.
    pub fn events(&self) -> broadcast::Receiver<StateChange> {
        let first = lock(&self.first_events).take();
        first.unwrap_or_else(|| self.events.subscribe())
    }

    /// Every state change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.events.subscribe()
    }

    /// The last state changes the daemon remembers (up to 1000), oldest first, and
    /// every one after them.
    pub fn replay_events(&self) -> (Vec<StateChange>, broadcast::Receiver<StateChange>) {
        self.events.replay()
    }

    /// One service's output: its recent lines and a live feed.
    pub fn logs(&self, name: &str) -> Result<Arc<LogBook>, SuperviseError> {
        self.with_handle(name, |handle| handle.logs.clone())
    }

    /// A live view of one service's status.
    pub fn watch(&self, name: &str) -> Result<watch::Receiver<ServiceStatus>, SuperviseError> {
        self.with_handle(name, |handle| handle.status.clone())
    }

    /// Where to send `name` commands (a clone: no lock is held while sending).
    fn inbox(&self, name: &str) -> Result<mpsc::Sender<Command>, SuperviseError> {
        self.with_handle(name, |handle| handle.commands.clone())
    }

    fn with_handle<T>(
        &self,
        name: &str,
        take: impl FnOnce(&ServiceHandle) -> T,
    ) -> Result<T, SuperviseError> {
        self.read()
            .services
            .get(name)
            .map(take)
            .ok_or_else(|| SuperviseError::UnknownService(name.to_string()))
    }

    /// Starts `name` and, first, everything it depends on (as `systemctl start`
    /// does with `Requires=`); starting a running service changes nothing.
    /// A service that needs GPUs nobody can give it now fails with `GpuConflict`,
    /// naming the holders.
    pub async fn start(&self, name: &str) -> Result<(), SuperviseError> {
        self.check_gpus(name)?;
        self.start_with_dependencies(name, Command::Start).await
    }

    /// `start`, stopping first the services whose GPU leases stand in the way
    /// (least recently changed first); returns once their leases are released.
    pub async fn start_evicting(&self, name: &str) -> Result<Vec<String>, SuperviseError> {
        let mut evicted = Vec::new();
        while let Err(SuperviseError::GpuConflict(conflict)) = self.check_gpus(name) {
            let mut holders: Vec<ServiceStatus> = conflict
                .holders
                .iter()
                .filter_map(|holder| self.watch(holder).ok())
                .map(|status| status.borrow().clone())
                .collect();
            holders.sort_by_key(|status| status.since_unix_ms);
            let Some(victim) = holders.first() else {
                // Nobody to evict (too few devices, memory still held): say so.
                return Err(SuperviseError::GpuConflict(conflict));
            };
            tracing::info!(service = %name, "evicting `{}` for its GPU", victim.name);
            self.stop(&victim.name).await?;
            evicted.push(victim.name.clone());
        }
        self.start_with_dependencies(name, Command::Start).await?;
        Ok(evicted)
    }

    /// The services holding the GPUs `name` needs, which it could only start
    /// after they stop; empty when it runs already or fits beside them.
    pub fn gpu_blockers(&self, name: &str) -> Vec<String> {
        match self.check_gpus(name) {
            Err(SuperviseError::GpuConflict(conflict)) => conflict.holders,
            _ => Vec::new(),
        }
    }

    fn check_gpus(&self, name: &str) -> Result<(), SuperviseError> {
        let status = self.watch(name)?;
        let request = self.read().gpu_requests.get(name).cloned();
        let (Some(broker), Some(request)) = (&self.gpus, request) else {
            return Ok(());
        };
        if !request.wants_gpus() || status.borrow().state.is_started() {
            return Ok(());
        }
        broker
            .check(name, &request)
            .map_err(SuperviseError::GpuConflict)
    }

    /// Every service as the gateway routes to it, by name.
    pub fn routable(&self) -> BTreeMap<String, Routable> {
        self.read()
            .services
            .iter()
            .map(|(name, handle)| (name.clone(), handle.routable()))
            .collect()
    }

    /// The service that serves `model`, as the gateway routes to it: the one
    /// that names it in its configuration, else the one whose backend reported
    /// it (now, or when last ready). Only that one is copied out.
    pub fn routable_for(&self, model: &str) -> Option<(String, Routable)> {
        let topology = self.read();
        let configured = topology
            .services
            .iter()
            .find(|(_, handle)| handle.route.names.iter().any(|name| name == model));
        let reported = || {
            topology.services.iter().find(|(_, handle)| {
                let status = handle.status.borrow();
                status.models.iter().any(|reported| reported.id == model)
                    || status.last_models.iter().any(|id| id == model)
            })
        };
        configured
            .or_else(reported)
            .map(|(name, handle)| (name.clone(), handle.routable()))
    }

    /// How a service was configured, resolved (secrets hidden).
    pub fn resolved_config(&self, name: &str) -> Result<serde_json::Value, SuperviseError> {
        self.with_handle(name, |handle| handle.resolved.clone())
    }

    /// Whether `name` is an MCP server (`mcp = { path }`).
    pub fn offers_mcp(&self, name: &str) -> bool {
        self.read()
            .services
            .get(name)
            .is_some_and(|handle| handle.route.mcp_path.is_some())
    }

    /// One service, as the gateway routes to it.
    pub fn routable_named(&self, name: &str) -> Option<Routable> {
        self.read().services.get(name).map(ServiceHandle::routable)
    }

    /// Where this supervisor's figures go, for `/metrics` to render.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The `nanny.instance` label of this supervisor's containers.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The GPUs, their leases and their memory, when the supervisor leases GPUs.
    pub fn gpus(&self) -> Option<&Arc<GpuBroker>> {
        self.gpus.as_ref()
    }

    /// Restarts `name`, starting first whatever it depends on that is down.
    pub async fn restart(&self, name: &str) -> Result<(), SuperviseError> {
        self.start_with_dependencies(name, Command::Restart).await
    }

    /// Everything `name` depends on, directly or through others.
    pub fn requirements(&self, name: &str) -> Vec<String> {
        self.closure(name, |service| {
            self.read().graph.get(service).cloned().unwrap_or_default()
        })
    }

    /// Everything that depends on `name`, directly or through others.
    pub fn dependents(&self, name: &str) -> Vec<String> {
        self.closure(name, |service| {
            self.read()
                .graph
                .iter()
                .filter(|(_, dependencies)| dependencies.iter().any(|d| d == service))
                .map(|(dependent, _)| dependent.clone())
                .collect()
        })
    }

    /// The services reachable from `name` through `next`, without `name` itself.
    fn closure(&self, name: &str, next: impl Fn(&str) -> Vec<String>) -> Vec<String> {
        let mut reached = vec![name.to_string()];
        let mut index = 0;
        while let Some(service) = reached.get(index).cloned() {
            for neighbour in next(&service) {
                if !reached.contains(&neighbour) {
                    reached.push(neighbour);
                }
            }
            index += 1;
        }
        reached.remove(0);
        reached
    }

    /// Sends `Start` to each dependency of `name` in dependency order, then `command` to `name`.
    async fn start_with_dependencies(
        &self,
        name: &str,
        command: Command,
    ) -> Result<(), SuperviseError> {
        self.inbox(name)?;
        let needed = self.requirements(name);
        let order = self.read().order.clone();
        for service in order.iter().filter(|s| needed.contains(s)) {
            self.send(service, Command::Start).await?;
        }
        self.send(name, command).await
    }

    async fn send(&self, name: &str, command: Command) -> Result<(), SuperviseError> {
        let inbox = self.inbox(name)?;
        if self.is_shutting_down() {
            return Err(SuperviseError::ShuttingDown);
        }
        let _ = inbox.send(command).await;
        Ok(())
    }

    /// A backend's ready callback: marks the service ready at once when `token` is
    /// its current launch's; `Ok(false)` for any other token.
    pub async fn mark_ready(&self, name: &str, token: &str) -> Result<bool, SuperviseError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::MarkReady {
            token: token.to_string(),
            reply,
        };
        self.send(name, command).await?;
        Ok(answer.await.unwrap_or(false))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops `name` and, first, every service that requires it (as systemd does
    /// with `Requires=`), dependents before what they depend on; returns once
    /// every process is gone, with the dependents that were up and are now stopped.
    pub async fn stop(&self, name: &str) -> Result<Vec<String>, SuperviseError> {
        self.inbox(name)?;
        let dependents = self.dependents(name);
        let mut stopped = Vec::new();
        let order = self.read().order.clone();
        for dependent in order.iter().rev().filter(|s| dependents.contains(s)) {
            let state = self.watch(dependent)?.borrow().state.clone();
            if matches!(state, State::Stopped | State::Failed { .. }) {
                continue;
            }
            tracing::info!(service = %dependent, "stopping `{dependent}` first: it requires `{name}`");
            self.stop_one(dependent).await?;
            stopped.push(dependent.clone());
        }
        self.stop_one(name).await?;
        Ok(stopped)
    }

    /// `stop`, saying why: the `stopping` and `stopped` events carry `reason`.
    pub async fn stop_because(
        &self,
        name: &str,
        reason: String,
    ) -> Result<Vec<String>, SuperviseError> {
        if let Some(handle) = self.read().services.get(name) {
            *lock(&handle.stop_reason) = Some(reason);
        }
        self.stop(name).await
    }

    /// Stops one service alone; returns once its processes are gone.
    async fn stop_one(&self, name: &str) -> Result<(), SuperviseError> {
        let (reply, stopped) = oneshot::channel();
        if self.inbox(name)?.send(Command::Stop(reply)).await.is_ok() {
            let _ = stopped.await;
        }
        Ok(())
    }

    /// Stops every service, dependents before what they depend on, and ends the tasks.
    /// Later calls to `start` and `restart` fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // A reload in progress finishes first; none starts after this.
        let _no_reload = self.reloading.lock().await;
        let order = self.read().order.clone();
        for name in order.iter().rev() {
            let _ = self.stop_one(name).await;
        }
        for handle in self.read().services.values() {
            // Every service is stopped; what is left of each task is its idle loop.
            handle.task.abort();
        }
        if let Some(writer) = self.log_writer.clone() {
            // The backends' last lines reach their files before the daemon ends.
            let _ = tokio::task::spawn_blocking(move || writer.flush()).await;
        }
    }
}

/// A shared GPU lease counts VRAM; where the user gave none, the plugin's plan
/// may estimate it (from the model, the context size, …).
fn fill_vram_estimate(spec: &mut ServiceSpec) {
    if spec.gpu.mode != GpuMode::Shared || spec.gpu.vram_mib.is_some() || !spec.gpu.wants_gpus() {
        return;
    }
    let mut session = PluginSession::new(spec.plugin.clone(), spec.service.clone());
    if let Ok(Ok(plan)) = session.plan() {
        spec.gpu.vram_mib = plan.vram_mib;
    }
}
