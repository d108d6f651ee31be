//! Launching one resolved plan on this machine: a process (in a cgroup of its
//! own when the machine allows one, recorded for the guardian and the next
//! daemon), or a container through the daemon's [`Containers`]. Nothing here
//! knows about services' states.

use std::path::PathBuf;
use std::sync::Arc;

use super::cgroup::Cgroup;
use super::compose::{ComposeSpec, Composer};
use super::container::{ContainerSpec, Containers};
use super::orphans::LaunchRecords;
use super::{
    ports, spawn, LaunchError, Launched, LineSink, OutputLine, ProcessSpec, ResourceLimits, Stream,
};

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
    /// A Docker Compose project; its name is [`Composer`]'s to make.
    Compose(ComposeSpec),
}

/// Launches plans; one per daemon.
pub struct Launcher {
    /// Where per-launch cgroups go; `None` relies on process groups alone.
    pub cgroup_root: Option<PathBuf>,
    /// Where running launches are recorded for the guardian and the next daemon.
    pub records: Option<LaunchRecords>,
    pub containers: Arc<Containers>,
    pub compose: Arc<Composer>,
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
                    .map_err(|error| {
                        error.within(&format!("cannot start a container of `{image}`"))
                    })
            }
            LaunchWhat::Compose(spec) => {
                if !order.limits.is_empty() {
                    // Compose files carry their own limits; say so where the user looks.
                    lines.deliver(OutputLine {
                        stream: Stream::Stderr,
                        text: "nanny: resources not applied: a compose project sets its own (deploy.resources in its file)".into(),
                    });
                }
                let folder = spec.project_dir.display().to_string();
                self.compose
                    .launch(spec, lines)
                    .await
                    .map(Launched::Compose)
                    .map_err(|error| {
                        error.within(&format!(
                            "cannot bring up the compose project in `{folder}`"
                        ))
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
