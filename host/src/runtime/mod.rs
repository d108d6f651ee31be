//! Launching backends and getting rid of them: processes and containers, behind
//! the same shapes (`OutputLine`, `Exit`, `Launched`).

pub mod cgroup;
pub mod container;
pub mod process;

use std::time::Duration;

pub use container::{ContainerHandle, ContainerSpec};
pub use process::{spawn, Exit, OutputLine, ProcessHandle, ProcessSpec, Stream};

/// One running launch, whichever runtime it took.
pub enum Launched {
    Process(ProcessHandle),
    Container(ContainerHandle),
}

impl Launched {
    /// The process id, for a process; containers are known by `container_id`.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Launched::Process(process) => Some(process.pid()),
            Launched::Container(_) => None,
        }
    }

    pub fn container_id(&self) -> Option<&str> {
        match self {
            Launched::Process(_) => None,
            Launched::Container(container) => Some(&container.id),
        }
    }

    /// Waits for the end (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<Exit> {
        match self {
            Launched::Process(process) => process.wait().await,
            Launched::Container(container) => Ok(container.wait().await),
        }
    }

    /// Asks it to stop (`signal` for a process; Docker's stop for a container),
    /// waits `grace`, then kills; returns once nothing of it is left.
    pub async fn stop(&mut self, signal: i32, grace: Duration) -> std::io::Result<Exit> {
        match self {
            Launched::Process(process) => process.stop(signal, grace).await,
            Launched::Container(container) => Ok(container.stop(grace).await),
        }
    }

    /// After it exited by itself: a container is removed, a process is reaped already.
    pub async fn clean_up(&self) {
        if let Launched::Container(container) = self {
            container.remove().await;
        }
    }
}
