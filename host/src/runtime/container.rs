//! Backends in Docker containers, through bollard: created with nanny's labels,
//! the service port mapped, `init` on and no Docker restart policy (nanny owns
//! restarts); output fed into the same line pipeline as a process's; stopped with
//! the grace period, then removed. [`Containers`] owns the daemon's Docker
//! connection, the containers an earlier run left to adopt, and the periodic
//! reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountTypeEnum, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::process::{Exit, OutputLine, Stream};
use super::{ports, LaunchError, LineSink};
use crate::locks::lock;

/// Labels every container nanny creates carries.
pub const LABEL_SERVICE: &str = "nanny.service";
pub const LABEL_INSTANCE: &str = "nanny.instance";
pub const LABEL_SPEC: &str = "nanny.spec";
pub const LABEL_GPUS: &str = "nanny.gpus";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no Docker engine answers ({0}); container services cannot run")]
    NoEngine(String),
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// What to run, resolved by the host from the plugin's plan.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub service: String,
    pub instance: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub host: String,
    pub host_port: u16,
    pub container_port: u16,
    /// (source, target, read-only)
    pub mounts: Vec<(String, String, bool)>,
    pub shm_size_mib: Option<u64>,
    /// Leased GPU UUIDs.
    pub gpus: Vec<String>,
    /// Docker's `nano_cpus` and `memory`.
    pub limits: super::ResourceLimits,
    /// A hash of everything above, to recognise a container made from this spec.
    pub spec_hash: String,
}

/// The engine, version-negotiated.
pub async fn connect() -> Result<Docker, ContainerError> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| ContainerError::NoEngine(e.to_string()))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| ContainerError::NoEngine(e.to_string()))
}

/// A running container.
pub struct ContainerHandle {
    docker: Docker,
    pub id: String,
    exit: watch::Receiver<Option<Exit>>,
}

/// Creates and starts the container; its output lines go to `lines`.
pub async fn run(
    docker: &Docker,
    spec: &ContainerSpec,
    lines: LineSink,
) -> Result<ContainerHandle, ContainerError> {
    let port_key = format!("{}/tcp", spec.container_port);
    let labels = HashMap::from([
        (LABEL_SERVICE.to_string(), spec.service.clone()),
        (LABEL_INSTANCE.to_string(), spec.instance.clone()),
        (LABEL_SPEC.to_string(), spec.spec_hash.clone()),
        (LABEL_GPUS.to_string(), spec.gpus.join(",")),
    ]);
    let host_config = HostConfig {
        init: Some(true),
        port_bindings: Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(spec.host.clone()),
                host_port: Some(spec.host_port.to_string()),
            }]),
        )])),
        mounts: Some(
            spec.mounts
                .iter()
                .map(|(source, target, read_only)| Mount {
                    source: Some(source.clone()),
                    target: Some(target.clone()),
                    read_only: Some(*read_only),
                    typ: Some(MountTypeEnum::BIND),
                    ..Mount::default()
                })
                .collect(),
        ),
        shm_size: spec.shm_size_mib.map(|mib| (mib * 1024 * 1024) as i64),
        nano_cpus: spec.limits.cpus.map(|cpus| (cpus * 1e9).round() as i64),
        memory: spec.limits.memory_bytes.map(|bytes| bytes as i64),
        device_requests: (!spec.gpus.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(spec.gpus.clone()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..DeviceRequest::default()
            }]
        }),
        ..HostConfig::default()
    };
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        exposed_ports: Some(HashMap::from([(port_key, HashMap::new())])),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    };
    let options = CreateContainerOptionsBuilder::new()
        .name(&spec.name)
        .build();
    let created = retry(|| docker.create_container(Some(options.clone()), body.clone())).await?;
    let started = retry(|| {
        docker.start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
    })
    .await;
    if let Err(error) = started {
        remove(docker, &created.id).await;
        return Err(error.into());
    }
    Ok(attach(docker, created.id, lines, "all", String::new()))
}

/// Takes over a running container another run of this daemon started: its
/// recent output (so a plugin that waits for a ready line sees it) and what
/// comes next go to `lines`, its exit is watched. Nothing is restarted.
pub fn adopt(docker: &Docker, id: String, lines: LineSink) -> ContainerHandle {
    attach(docker, id, lines, ADOPTION_REPLAY_LINES, String::new())
}

/// Lines of an adopted container's past output read again on adoption.
const ADOPTION_REPLAY_LINES: &str = "500";

/// Follows the container's output into `lines` (each line after `prefix`,
/// from `tail` lines back) and watches its exit.
pub(super) fn attach(
    docker: &Docker,
    id: String,
    lines: LineSink,
    tail: &str,
    prefix: String,
) -> ContainerHandle {
    let (exit_in, exit) = watch::channel(None);
    follow(docker, id.clone(), lines, Replay::Tail(tail), prefix);
    tokio::spawn(wait_for_exit(docker.clone(), id.clone(), exit_in));
    ContainerHandle {
        docker: docker.clone(),
        id,
        exit,
    }
}

/// Docker calls get three tries, 500 ms apart and doubling (at most 30 s):
/// an engine busy or restarting is not yet a failed service.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, bollard::errors::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, bollard::errors::Error>>,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            // A request Docker understood and refused will be refused again.
            Err(error @ bollard::errors::Error::DockerResponseServerError { status_code, .. })
                if status_code < 500 =>
            {
                return Err(error)
            }
            Err(error) if attempt == 3 => return Err(error),
            Err(error) => {
                tracing::warn!("Docker call failed (try {attempt} of 3): {error}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
        }
    }
}

/// This instance's running containers by service (to adopt), after removing every
/// other one (created but never started, exited, duplicates).
pub async fn leftovers(docker: &Docker, instance: &str) -> HashMap<String, (String, String)> {
    let mut running = HashMap::new();
    for container in list_instance(docker, instance).await {
        let Some(id) = container.id else { continue };
        let labels = container.labels.unwrap_or_default();
        let service = labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        let spec = labels.get(LABEL_SPEC).cloned().unwrap_or_default();
        let is_running =
            container.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
        if is_running && !running.contains_key(&service) {
            running.insert(service, (id, spec));
        } else {
            remove(docker, &id).await;
        }
    }
    running
}

async fn list_instance(docker: &Docker, instance: &str) -> Vec<bollard::models::ContainerSummary> {
    list_labelled(docker, &format!("{LABEL_INSTANCE}={instance}"))
        .await
        .unwrap_or_default()
}

/// Every container, running or not, that carries `label` (`key=value`).
pub(super) async fn list_labelled(
    docker: &Docker,
    label: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
    let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker.list_containers(Some(options)).await
}

/// Removes this instance's containers that are not in `keep`; how many went.
pub async fn remove_unknown(docker: &Docker, instance: &str, keep: &[String]) -> usize {
    let mut removed = 0;
    for container in list_instance(docker, instance).await {
        if let Some(id) = container.id.filter(|id| !keep.contains(id)) {
            remove(docker, &id).await;
            removed += 1;
        }
    }
    removed
}

/// Which past lines of a container to read before following it.
pub(super) enum Replay<'a> {
    /// The last lines (`"all"`, or a count).
    Tail(&'a str),
    /// Those since a time (Unix seconds): a container that started again.
    Since(i64),
}

/// Follows the container's output into `lines`, each line after `prefix`,
/// until the container stops.
pub(super) fn follow(
    docker: &Docker,
    id: String,
    lines: LineSink,
    replay: Replay<'_>,
    prefix: String,
) -> tokio::task::JoinHandle<()> {
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true);
    let options = match replay {
        Replay::Tail(tail) => options.tail(tail),
        Replay::Since(time) => options.since(i32::try_from(time).unwrap_or(0)),
    };
    tokio::spawn(follow_logs(
        docker.clone(),
        id,
        lines,
        options.build(),
        prefix,
    ))
}

/// Splits Docker's log frames into lines, per stream.
async fn follow_logs(
    docker: Docker,
    id: String,
    lines: LineSink,
    options: bollard::query_parameters::LogsOptions,
    prefix: String,
) {
    let mut logs = docker.logs(&id, Some(options));
    let mut partial: HashMap<bool, String> = HashMap::new();
    while let Some(Ok(frame)) = logs.next().await {
        let (is_err, bytes) = match frame {
            bollard::container::LogOutput::StdErr { message } => (true, message),
            bollard::container::LogOutput::StdOut { message }
            | bollard::container::LogOutput::Console { message } => (false, message),
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        let buffer = partial.entry(is_err).or_default();
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find('\n') {
            let text: String = buffer.drain(..=end).collect();
            let stream = if is_err {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let line = OutputLine {
                stream,
                text: format!("{prefix}{}", text.trim_end_matches(['\n', '\r'])),
            };
            lines.deliver(line);
        }
    }
}

async fn wait_for_exit(docker: Docker, id: String, exit: watch::Sender<Option<Exit>>) {
    let code = match docker
        .wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>)
        .next()
        .await
    {
        Some(Ok(response)) => response.status_code as i32,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code as i32,
        _ => -1,
    };
    let _ = exit.send(Some(Exit {
        code: Some(code),
        signal: None,
    }));
}

/// Removes a container, running or not.
pub async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(id, Some(options)).await;
}

impl ContainerHandle {
    /// Waits for the container to exit (cancel-safe: it may be called again).
    pub async fn wait(&mut self) -> Exit {
        let exit = self.exit.wait_for(Option::is_some).await.map(|e| *e);
        match exit {
            Ok(Some(exit)) => exit,
            _ => Exit {
                code: None,
                signal: None,
            },
        }
    }

    /// Stops with `grace` before Docker's SIGKILL, then removes the container.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        let options = StopContainerOptionsBuilder::new()
            .t(grace.as_secs().max(1) as i32)
            .build();
        let _ = self.docker.stop_container(&self.id, Some(options)).await;
        let exit = self.wait().await;
        remove(&self.docker, &self.id).await;
        exit
    }

    /// Removes a container that exited by itself.
    pub async fn remove(&self) {
        remove(&self.docker, &self.id).await;
    }
}

/// A short hash of what the container is made from.
pub fn spec_hash(spec: &ContainerSpec) -> String {
    use sha2::{Digest, Sha256};
    let described = format!(
        "{}|{:?}|{:?}|{}|{}|{}|{:?}|{:?}|{:?}",
        spec.image,
        spec.command,
        // The ready callback and the launch id change with every daemon and
        // launch; the container does not.
        spec.env
            .iter()
            .filter(|(key, _)| {
                !matches!(
                    key.as_str(),
                    "NANNY_READY_TOKEN" | "NANNY_READY_URL" | "NANNY_LAUNCH"
                )
            })
            .collect::<Vec<_>>(),
        spec.host,
        spec.host_port,
        spec.container_port,
        spec.mounts,
        spec.shm_size_mib,
        spec.gpus
    );
    // Only when set, so the containers of services without limits keep the
    // hash they had before limits existed (and are adopted, not replaced).
    let described = if spec.limits.is_empty() {
        described
    } else {
        format!("{described}|{:?}", spec.limits)
    };
    Sha256::digest(described.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// How often containers of this instance that nothing runs are removed.
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

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
                let docker = connect().await.map_err(|error| error.to_string())?;
                let running = leftovers(&docker, &self.instance).await;
                *lock(&self.adoptable) = running;
                tokio::spawn(reconcile(Arc::downgrade(self), docker.clone()));
                Ok::<_, String>(docker)
            })
            .await
            .cloned()
    }

    /// Adopts the container an earlier run left for this service when it was
    /// made from the same spec; else removes it and runs a new one.
    pub(super) async fn launch(
        self: &Arc<Self>,
        mut spec: ContainerSpec,
        lines: LineSink,
    ) -> Result<ContainerHandle, LaunchError> {
        let docker = self.engine().await.map_err(LaunchError::Fatal)?;
        let suffix = crate::secrets::random_token()
            .map_err(|error| LaunchError::Transient(format!("no random name: {error}")))?;
        spec.instance.clone_from(&self.instance);
        spec.name = format!("nanny-{}-{}-{}", self.instance, spec.service, &suffix[..8]);
        spec.spec_hash = spec_hash(&spec);
        let earlier = lock(&self.adoptable).remove(&spec.service);
        let handle = match earlier {
            Some((id, hash)) if hash == spec.spec_hash => {
                tracing::info!(service = %spec.service, "adopting container {id}, left running by an earlier nanny");
                Ok(adopt(&docker, id, lines))
            }
            Some((id, _)) => {
                // Made from another spec: the configuration changed since.
                remove(&docker, &id).await;
                run(&docker, &spec, lines).await
            }
            None => {
                ports::check_free(&spec.host, spec.host_port).map_err(LaunchError::Transient)?;
                run(&docker, &spec, lines).await
            }
        };
        let handle = handle.map_err(|error| LaunchError::Fatal(error.to_string()))?;
        lock(&self.live).push(handle.id.clone());
        Ok(handle)
    }

    /// The container `id` is gone.
    pub(super) fn ended(&self, id: &str) {
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
        let removed = remove_unknown(&docker, &containers.instance, &keep).await;
        if removed > 0 {
            tracing::info!("removed {removed} container(s) nothing runs");
        }
    }
}
