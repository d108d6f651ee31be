//! Launching one resolved plan on this machine: a process (in a cgroup of its
//! own when the machine allows one, recorded for the guardian and the next
//! daemon), or a container through the daemon's [`Containers`], which owns the
//! Docker connection, the containers an earlier run left to adopt, and the
//! periodic reconcile. Nothing here knows about services' states.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;

use super::cgroup::Cgroup;
use super::container::{self, ContainerHandle, ContainerSpec};
use super::orphans::LaunchRecords;
use super::{ports, spawn, Launched, LineSink, OutputLine, ProcessSpec, ResourceLimits, Stream};
use crate::locks::lock;

/// How often containers of this instance that nothing runs are removed.
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// Why a launch did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    /// The machine is short of something now (a port, file descriptors,
    /// processes, memory): back off and try again.
    Transient(String),
    /// Trying again cannot help.
    Fatal(String),
}

/// One launch, as the supervisor resolved it.
#[derive(Debug, Clone)]
pub struct LaunchOrder {
    pub service: String,
    /// `NANNY_LAUNCH`: unique among this daemon's launches, and across daemons.
    pub launch_id: String,
    /// The service's launch count, which names its cgroup.
    pub number: u64,
    /// Where the service listens on the host.
    pub host: String,
    pub port: u16,
    /// CPU and memory caps (`resources`), applied through the launch's cgroup.
    pub limits: ResourceLimits,
    pub what: LaunchWhat,
}

/// What a launch runs.
#[derive(Debug, Clone)]
pub enum LaunchWhat {
    Process(ProcessSpec),
    /// Name, instance and spec hash are filled in by [`Containers`].
    Container(ContainerSpec),
}

/// Launches plans; one per daemon.
pub struct Launcher {
    /// Where per-launch cgroups go; `None` relies on process groups alone.
    pub cgroup_root: Option<PathBuf>,
    /// Where running launches are recorded for the guardian and the next daemon.
    pub records: Option<LaunchRecords>,
    pub containers: Arc<Containers>,
}

impl Launcher {
    pub async fn launch(
        &self,
        order: LaunchOrder,
        lines: LineSink,
    ) -> Result<Launched, LaunchError> {
        match order.what {
            LaunchWhat::Process(spec) => {
                let name = &order.service;
                // Retried under back-off: the holder may go away.
                ports::check_free(&order.host, order.port).map_err(LaunchError::Transient)?;
                let mut cgroup = self.cgroup_root.as_ref().and_then(|root| {
                    Cgroup::create(root.join(format!("{name}-{}", order.number)))
                        .map_err(|error| {
                            tracing::warn!(service = %name, "no cgroup for this launch: {error}")
                        })
                        .ok()
                });
                if !order.limits.is_empty() {
                    let problems = match &mut cgroup {
                        Some(cgroup) => cgroup.limit(&order.limits),
                        None => vec![
                            "resources not applied: this launch has no cgroup (nanny is not root, or cgroups are off)"
                                .to_string(),
                        ],
                    };
                    // Said where the user looks: the service's own log.
                    for problem in problems {
                        tracing::warn!(service = %name, "{problem}");
                        lines.deliver(OutputLine {
                            stream: Stream::Stderr,
                            text: format!("nanny: {problem}"),
                        });
                    }
                }
                let process = spawn(&spec, cgroup, lines).map_err(|error| {
                    let reason = format!("cannot start `{}`: {error}", spec.program);
                    if is_transient(&error) {
                        LaunchError::Transient(reason)
                    } else {
                        LaunchError::Fatal(reason)
                    }
                })?;
                if let Some(records) = &self.records {
                    if let Err(error) = records.record(&order.launch_id, process.pid()) {
                        tracing::warn!(service = %name, "cannot record the launch: {error}");
                    }
                }
                Ok(Launched::Process(process))
            }
            LaunchWhat::Container(mut spec) => {
                spec.limits = order.limits;
                let image = spec.image.clone();
                self.containers
                    .launch(spec, lines)
                    .await
                    .map(Launched::Container)
                    .map_err(|error| match error {
                        LaunchError::Fatal(reason) => LaunchError::Fatal(format!(
                            "cannot start a container of `{image}`: {reason}"
                        )),
                        transient => transient,
                    })
            }
        }
    }

    /// Nothing of `launch_id` is left.
    pub fn ended(&self, launch_id: &str, container_id: Option<&str>) {
        if let Some(records) = &self.records {
            records.forget(launch_id);
        }
        if let Some(id) = container_id {
            self.containers.ended(id);
        }
    }
}

/// Spawn errors that a later try may not meet: the daemon or the machine is out
/// of file descriptors, processes or memory for the moment.
fn is_transient(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// This daemon's containers: the engine, what an earlier run left running to be
/// adopted, and what runs now.
pub struct Containers {
    /// Names this daemon's containers apart from other daemons'.
    instance: String,
    /// Connected (and swept of this instance's leftovers) at start-up when the
    /// engine answers, else on the first container launch.
    docker: tokio::sync::OnceCell<Docker>,
    /// Running containers an earlier run of this daemon left, by service: (id, spec hash).
    adoptable: Mutex<HashMap<String, (String, String)>>,
    /// The containers of the launches running now.
    live: Mutex<Vec<String>>,
}

impl Containers {
    pub fn new(instance: String) -> Arc<Self> {
        Arc::new(Self {
            instance,
            docker: tokio::sync::OnceCell::new(),
            adoptable: Mutex::default(),
            live: Mutex::default(),
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The engine; the first connection sweeps this instance's leftovers and
    /// starts the reconcile loop.
    pub async fn engine(self: &Arc<Self>) -> Result<Docker, String> {
        // An engine that is not there now may be later: failures are not kept.
        self.docker
            .get_or_try_init(|| async {
                let docker = container::connect()
                    .await
                    .map_err(|error| error.to_string())?;
                let running = container::leftovers(&docker, &self.instance).await;
                *lock(&self.adoptable) = running;
                tokio::spawn(reconcile(Arc::downgrade(self), docker.clone()));
                Ok::<_, String>(docker)
            })
            .await
            .cloned()
    }

    /// Adopts the container an earlier run left for this service when it was
    /// made from the same spec; else removes it and runs a new one.
    async fn launch(
        self: &Arc<Self>,
        mut spec: ContainerSpec,
        lines: LineSink,
    ) -> Result<ContainerHandle, LaunchError> {
        let docker = self.engine().await.map_err(LaunchError::Fatal)?;
        let suffix = crate::secrets::random_token()
            .map_err(|error| LaunchError::Transient(format!("no random name: {error}")))?;
        spec.instance.clone_from(&self.instance);
        spec.name = format!("nanny-{}-{}-{}", self.instance, spec.service, &suffix[..8]);
        spec.spec_hash = container::spec_hash(&spec);
        let earlier = lock(&self.adoptable).remove(&spec.service);
        let handle = match earlier {
            Some((id, hash)) if hash == spec.spec_hash => {
                tracing::info!(service = %spec.service, "adopting container {id}, left running by an earlier nanny");
                Ok(container::adopt(&docker, id, lines))
            }
            Some((id, _)) => {
                // Made from another spec: the configuration changed since.
                container::remove(&docker, &id).await;
                container::run(&docker, &spec, lines).await
            }
            None => {
                ports::check_free(&spec.host, spec.host_port).map_err(LaunchError::Transient)?;
                container::run(&docker, &spec, lines).await
            }
        };
        let handle = handle.map_err(|error| LaunchError::Fatal(error.to_string()))?;
        lock(&self.live).push(handle.id.clone());
        Ok(handle)
    }

    fn ended(&self, id: &str) {
        lock(&self.live).retain(|live| live != id);
    }
}

/// Every five minutes: this instance's containers that no launch runs and nobody
/// is about to adopt are removed. Ends with the daemon's `Containers`.
async fn reconcile(containers: std::sync::Weak<Containers>, docker: Docker) {
    loop {
        tokio::time::sleep(RECONCILE_EVERY).await;
        let Some(containers) = containers.upgrade() else {
            return;
        };
        let mut keep = lock(&containers.live).clone();
        keep.extend(
            lock(&containers.adoptable)
                .values()
                .map(|(id, _)| id.clone()),
        );
        let removed = container::remove_unknown(&docker, &containers.instance, &keep).await;
        if removed > 0 {
            tracing::info!("removed {removed} container(s) nothing runs");
        }
    }
}
