//! Launching backends and getting rid of them: processes, containers and
//! compose projects, behind the same shapes (`OutputLine`, `Exit`, `Launched`).

pub mod cgroup;
pub mod compose;
pub mod container;
pub mod launcher;
pub mod orphans;
pub mod ports;
pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use cgroup::ResourceLimits;
pub use compose::{ComposeHandle, ComposeSpec, Composer};
pub use container::Containers;
pub use container::{ContainerHandle, ContainerSpec};
pub use launcher::{LaunchOrder, LaunchWhat, Launcher};
pub use process::{spawn, Exit, OutputLine, ProcessHandle, ProcessSpec, Stream};

/// Why a launch did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    /// The machine is short of something now (a port, file descriptors,
    /// processes, memory): back off and try again.
    Transient(String),
    /// Trying again cannot help.
    Fatal(String),
}

impl LaunchError {
    /// A fatal reason told after `what` was being launched; a transient one as it is.
    pub fn within(self, what: &str) -> Self {
        match self {
            LaunchError::Fatal(reason) => LaunchError::Fatal(format!("{what}: {reason}")),
            transient => transient,
        }
    }
}

/// Where a launch's output lines go. The record (the service's log) takes each
/// line first and never waits; the reader's copy (for the plugin) is best effort:
/// while that reader is behind, lines are counted and dropped for it, so a slow
/// plugin call or probe never blocks the backend writing to its own stdout.
#[derive(Clone)]
pub struct LineSink {
    record: Arc<dyn Fn(&OutputLine) + Send + Sync>,
    reader: mpsc::Sender<OutputLine>,
    dropped: Arc<AtomicU64>,
}

impl LineSink {
    pub fn new(
        record: impl Fn(&OutputLine) + Send + Sync + 'static,
        reader: mpsc::Sender<OutputLine>,
    ) -> Self {
        Self {
            record: Arc::new(record),
            reader,
            dropped: Arc::default(),
        }
    }

    /// Records the line, then offers it to the reader.
    pub fn deliver(&self, line: OutputLine) {
        (self.record)(&line);
        if let Err(mpsc::error::TrySendError::Full(_)) = self.reader.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines the reader missed because it was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Only a reader, nothing recorded: for embedding the runtime alone.
impl From<mpsc::Sender<OutputLine>> for LineSink {
    fn from(reader: mpsc::Sender<OutputLine>) -> Self {
        Self::new(|_| {}, reader)
    }
}

/// One running launch, whichever runtime it took.
pub enum Launched {
    Process(ProcessHandle),
    Container(ContainerHandle),
    Compose(ComposeHandle),
}

impl Launched {
    /// The process id, for a process; containers are known by `container_id`.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Launched::Process(process) => Some(process.pid()),
            Launched::Container(_) | Launched::Compose(_) => None,
        }
    }

    /// The container, for a container; the backend's container, for a project.
    pub fn container_id(&self) -> Option<&str> {
        match self {
            Launched::Process(_) => None,
            Launched::Container(container) => Some(&container.id),
            Launched::Compose(project) => Some(project.container_id()),
        }
    }

    /// Waits for the end (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<Exit> {
        match self {
            Launched::Process(process) => process.wait().await,
            Launched::Container(container) => Ok(container.wait().await),
            Launched::Compose(project) => Ok(project.wait().await),
        }
    }

    /// Asks it to stop (`signal` for a process; Docker's stop for a container;
    /// `compose down` for a project),
    /// waits `grace`, then kills; returns once nothing of it is left.
    pub async fn stop(&mut self, signal: i32, grace: Duration) -> std::io::Result<Exit> {
        match self {
            Launched::Process(process) => process.stop(signal, grace).await,
            Launched::Container(container) => Ok(container.stop(grace).await),
            Launched::Compose(project) => Ok(project.stop(grace).await),
        }
    }

    /// Who holds the socket listening on `port`: a probe's answer counts as this
    /// launch's only when the launch does. Containers publish through Docker,
    /// which nanny cannot see into: `Unknown`.
    pub async fn listener(&self, port: u16) -> ports::Listener {
        let Launched::Process(process) = self else {
            return ports::Listener::Unknown;
        };
        let (group, launch) = (process.pid(), process.launch().map(str::to_string));
        let asked = tokio::task::spawn_blocking(move || {
            ports::who_listens(port, |pid| {
                orphans::belongs_to_launch(pid, group, launch.as_deref())
            })
        });
        asked.await.unwrap_or(ports::Listener::Unknown)
    }

    /// After it exited by itself: a container is removed, a project brought
    /// down, a process is reaped already.
    pub async fn clean_up(&self) {
        match self {
            Launched::Process(_) => {}
            Launched::Container(container) => container.remove().await,
            Launched::Compose(project) => project.clean_up().await,
        }
    }
}
