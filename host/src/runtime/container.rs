//! Backends in Docker containers, through bollard: created with nanny's labels,
//! the service port mapped, `init` on and no Docker restart policy (nanny owns
//! restarts); output fed into the same line pipeline as a process's; stopped with
//! the grace period, then removed.

use std::collections::HashMap;
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
use tokio::sync::{mpsc, watch};

use super::process::{Exit, OutputLine, Stream};

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
    lines: mpsc::Sender<OutputLine>,
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
    let created = docker.create_container(Some(options), body).await?;
    if let Err(error) = docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
    {
        remove(docker, &created.id).await;
        return Err(error.into());
    }
    let (exit_in, exit) = watch::channel(None);
    tokio::spawn(follow_logs(docker.clone(), created.id.clone(), lines));
    tokio::spawn(wait_for_exit(docker.clone(), created.id.clone(), exit_in));
    Ok(ContainerHandle {
        docker: docker.clone(),
        id: created.id,
        exit,
    })
}

/// Splits Docker's log frames into lines, per stream.
async fn follow_logs(docker: Docker, id: String, lines: mpsc::Sender<OutputLine>) {
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
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
                text: text.trim_end_matches(['\n', '\r']).to_string(),
            };
            if lines.send(line).await.is_err() {
                return;
            }
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

async fn remove(docker: &Docker, id: &str) {
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

/// Every container this instance labelled, for the sweep at start-up.
pub async fn remove_all_of(docker: &Docker, instance: &str) -> usize {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_INSTANCE}={instance}")],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let found = docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default();
    for container in &found {
        if let Some(id) = &container.id {
            remove(docker, id).await;
        }
    }
    found.len()
}

/// A short hash of what the container is made from.
pub fn spec_hash(spec: &ContainerSpec) -> String {
    use sha2::{Digest, Sha256};
    let described = format!(
        "{}|{:?}|{:?}|{}|{}|{}|{:?}|{:?}|{:?}",
        spec.image,
        spec.command,
        // The ready token changes with every launch; the container does not.
        spec.env
            .iter()
            .filter(|(key, _)| key != "NANNY_READY_TOKEN")
            .collect::<Vec<_>>(),
        spec.host,
        spec.host_port,
        spec.container_port,
        spec.mounts,
        spec.shm_size_mib,
        spec.gpus
    );
    Sha256::digest(described.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
