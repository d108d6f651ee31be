//! What a service is doing, as the rest of nanny (and the API) sees it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// `stopped → starting → ready ⇄ unhealthy → stopping → stopped`, plus `backoff`
/// (waiting to restart) and `failed` (gave up, with the reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Stopped,
    /// Waiting to launch: for the services it depends on, a start slot or a GPU;
    /// `reason` says which (`waiting for cache, which failed: …`).
    Waiting {
        reason: String,
    },
    Starting {
        loading_percent: Option<u8>,
    },
    Ready,
    Unhealthy {
        failed_probes: u32,
    },
    Stopping,
    Backoff {
        next_try_unix_ms: u64,
    },
    Failed {
        reason: String,
    },
}

impl State {
    /// Every state's name, in lifecycle order: the one list the API, the CLI and
    /// `/metrics` use.
    pub const NAMES: [&'static str; 8] = [
        "stopped",
        "waiting",
        "starting",
        "ready",
        "unhealthy",
        "stopping",
        "backoff",
        "failed",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Waiting { .. } => "waiting",
            State::Starting { .. } => "starting",
            State::Ready => "ready",
            State::Unhealthy { .. } => "unhealthy",
            State::Stopping => "stopping",
            State::Backoff { .. } => "backoff",
            State::Failed { .. } => "failed",
        }
    }

    /// Whether a process of the service has been launched and not yet gone.
    pub fn is_started(&self) -> bool {
        matches!(
            self,
            State::Starting { .. } | State::Ready | State::Unhealthy { .. }
        )
    }
}

/// One service's status.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub backend: String,
    pub plugin_version: String,
    #[serde(flatten)]
    pub state: State,
    pub since_unix_ms: u64,
    pub pid: Option<i32>,
    pub container_id: Option<String>,
    /// When the running launch began (its uptime counts from here).
    pub launched_unix_ms: Option<u64>,
    pub port: u16,
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// The UUIDs of the GPUs leased to the running launch.
    pub gpus: Vec<String>,
    /// What the backend serves, as its plugin read the backend's model list once ready.
    pub models: Vec<ModelInfo>,
    /// The model ids it reported the last time it was ready, kept while it is
    /// stopped (and across daemon restarts): the gateway still routes them here.
    #[serde(skip)]
    pub last_models: Vec<String>,
}

/// One model a backend serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub owned_by: Option<String>,
    pub context_length: Option<u32>,
}

impl ServiceStatus {
    pub fn new(name: &str, backend: &str, plugin_version: &str, port: u16) -> Self {
        Self {
            name: name.to_string(),
            backend: backend.to_string(),
            plugin_version: plugin_version.to_string(),
            state: State::Stopped,
            since_unix_ms: unix_ms(SystemTime::now()),
            pid: None,
            container_id: None,
            launched_unix_ms: None,
            port,
            restarts: 0,
            last_failure: None,
            gpus: Vec::new(),
            models: Vec::new(),
            last_models: Vec::new(),
        }
    }
}

pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// One state change, as `nanny up` prints it and `/v1/events` will stream it.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub service: String,
    pub from: &'static str,
    #[serde(flatten)]
    pub to: State,
    pub at_unix_ms: u64,
    /// The service's port, for the reader's convenience.
    pub port: u16,
    pub last_failure: Option<String>,
    /// Why it stops, when someone said (`idle for 5m`, `evicted for chat`).
    pub reason: Option<String>,
}
