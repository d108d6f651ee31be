//! What the API sends: flat, documented shapes made from the supervisor's types.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::plugin::PluginInfo;
use crate::supervise::{ModelInfo, ServiceStatus, State, StateChange};

/// A service's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Stopped,
    Waiting,
    Starting,
    Ready,
    Unhealthy,
    Stopping,
    Backoff,
    Failed,
}

impl From<&State> for StateName {
    fn from(state: &State) -> Self {
        match state {
            State::Stopped => Self::Stopped,
            State::Waiting { .. } => Self::Waiting,
            State::Starting { .. } => Self::Starting,
            State::Ready => Self::Ready,
            State::Unhealthy { .. } => Self::Unhealthy,
            State::Stopping => Self::Stopping,
            State::Backoff { .. } => Self::Backoff,
            State::Failed { .. } => Self::Failed,
        }
    }
}

/// One service, as `GET /v1/services` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub backend: String,
    pub plugin_version: String,
    pub state: StateName,
    /// When it entered this state (Unix milliseconds).
    pub since_unix_ms: u64,
    pub pid: Option<i32>,
    pub container_id: Option<String>,
    /// When the running launch began (Unix milliseconds): uptime counts from here.
    pub launched_unix_ms: Option<u64>,
    pub port: u16,
    /// The GPUs leased to it (UUIDs).
    pub gpus: Vec<String>,
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// Why it gave up, when `failed`; what it waits for, when `waiting`.
    pub reason: Option<String>,
    /// When the next start is due, when `backoff` (Unix milliseconds).
    pub next_retry_unix_ms: Option<u64>,
    /// Loading progress, when `starting` and the backend reports it.
    pub loading_percent: Option<u8>,
    /// Failed liveness probes in a row, when `unhealthy`.
    pub failed_probes: Option<u32>,
    pub models: Vec<ModelView>,
    /// Where nanny serves this service's own MCP tools (`/mcp/services/{name}`),
    /// when it is an MCP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp: Option<String>,
    /// The node it runs on, when `all=true` lists another node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl From<&ServiceStatus> for ServiceView {
    fn from(status: &ServiceStatus) -> Self {
        let mut view = Self {
            name: status.name.clone(),
            backend: status.backend.clone(),
            plugin_version: status.plugin_version.clone(),
            state: StateName::from(&status.state),
            since_unix_ms: status.since_unix_ms,
            pid: status.pid,
            container_id: status.container_id.clone(),
            launched_unix_ms: status.launched_unix_ms,
            port: status.port,
            gpus: status.gpus.clone(),
            restarts: status.restarts,
            last_failure: status.last_failure.clone(),
            reason: None,
            next_retry_unix_ms: None,
            loading_percent: None,
            failed_probes: None,
            models: status.models.iter().map(ModelView::from).collect(),
            mcp: None,
            node: None,
        };
        match &status.state {
            State::Failed { reason } | State::Waiting { reason } => {
                view.reason = Some(reason.clone())
            }
            State::Backoff { next_try_unix_ms } => {
                view.next_retry_unix_ms = Some(*next_try_unix_ms)
            }
            State::Starting { loading_percent } => view.loading_percent = *loading_percent,
            State::Unhealthy { failed_probes } => view.failed_probes = Some(*failed_probes),
            _ => {}
        }
        view
    }
}

impl ServiceView {
    /// Another node's service, as much as its record says.
    pub fn elsewhere(node: &str, record: &crate::cluster::ServiceRecord) -> Self {
        let state = serde_json::from_value(serde_json::Value::String(record.state.clone()))
            .unwrap_or(StateName::Stopped);
        Self {
            name: record.name.clone(),
            backend: record.backend.clone(),
            plugin_version: String::new(),
            state,
            since_unix_ms: 0,
            pid: None,
            container_id: None,
            launched_unix_ms: None,
            port: record.port,
            gpus: Vec::new(),
            restarts: 0,
            last_failure: None,
            reason: None,
            next_retry_unix_ms: None,
            loading_percent: None,
            failed_probes: None,
            models: record
                .models
                .iter()
                .map(|id| ModelView {
                    id: id.clone(),
                    owned_by: None,
                    context_length: None,
                })
                .collect(),
            mcp: None,
            node: Some(node.to_string()),
        }
    }
}

/// `GET /v1/services`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Also every other node's services (with `node` set), when in a cluster.
    pub all: Option<bool>,
}

/// One model a backend serves, as its plugin read the backend's list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    pub owned_by: Option<String>,
    pub context_length: Option<u32>,
}

impl From<&ModelInfo> for ModelView {
    fn from(model: &ModelInfo) -> Self {
        Self {
            id: model.id.clone(),
            owned_by: model.owned_by.clone(),
            context_length: model.context_length,
        }
    }
}

/// `GET /v1/models`: every ready service's models, in OpenAI's list shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<OpenAiModel>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiModel {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub created: u64,
    /// The service that serves it.
    pub owned_by: String,
    /// That service's state (`ready`, `stopped`, `starting`, …): a stopped
    /// service's models are routable too, started on the first request.
    pub status: String,
    /// The node that serves it, when another node of the cluster does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One state change, as `GET /v1/events` streams it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub service: String,
    pub from: String,
    pub to: StateName,
    pub at_unix_ms: u64,
    pub port: u16,
    /// Why: the failure behind a `backoff`, the reason for `failed`, what a
    /// `waiting` service waits for, why a service stops (`idle for 5m`,
    /// `evicted for chat, which needs its GPUs`) when that was said.
    pub reason: Option<String>,
    /// Loading progress, for `starting`.
    pub loading_percent: Option<u8>,
}

impl From<&StateChange> for EventView {
    fn from(change: &StateChange) -> Self {
        let reason = match &change.to {
            State::Failed { reason } | State::Waiting { reason } => Some(reason.clone()),
            State::Backoff { .. } => change.last_failure.clone(),
            _ => change.reason.clone(),
        };
        Self {
            service: change.service.clone(),
            from: change.from.to_string(),
            to: StateName::from(&change.to),
            at_unix_ms: change.at_unix_ms,
            port: change.port,
            reason,
            loading_percent: match change.to {
                State::Starting { loading_percent } => loading_percent,
                _ => None,
            },
        }
    }
}

/// One line of a service's output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogLineView {
    pub at_unix_ms: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogTail {
    pub service: String,
    pub lines: Vec<LogLineView>,
}

/// A backend plugin.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub summary: String,
    /// `builtin`, or the file it was loaded from.
    pub source: String,
    pub wit_version: String,
    pub settings: Vec<SettingView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettingView {
    pub key: String,
    pub help: String,
    /// Any JSON value; null when the setting has no default.
    pub default: Option<serde_json::Value>,
    pub required: bool,
}

impl From<&PluginInfo> for PluginView {
    fn from(info: &PluginInfo) -> Self {
        Self {
            name: info.name.clone(),
            version: info.version.clone(),
            summary: info.summary.clone(),
            source: info.source.to_string(),
            wit_version: info.wit_version.clone(),
            settings: info
                .settings
                .iter()
                .map(|setting| SettingView {
                    key: setting.key.clone(),
                    help: setting.help.clone(),
                    default: setting.default.clone(),
                    required: setting.required,
                })
                .collect(),
        }
    }
}

/// `GET /v1/info`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InfoView {
    pub version: String,
    pub wit_version: String,
    pub uptime_s: f64,
    pub listen: String,
    /// The `nanny.instance` label on this daemon's containers.
    pub instance: String,
    pub services: u32,
    pub ready: u32,
    pub failed: u32,
    pub plugins: u32,
    /// This node's place in its cluster (`[cluster]`), when it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterInfo>,
}

/// `GET /health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// `ok`, or `shutting_down`.
    pub status: String,
}

/// `POST /v1/services/{name}/start|stop|restart`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActionQuery {
    /// Answer once the target state is reached (or the service failed).
    pub wait: Option<bool>,
    /// `start` only: stop the services whose GPU leases stand in the way first.
    pub force: Option<bool>,
}

/// `GET /v1/services/{name}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The last N lines (default 100; more than 10,000 reads as 10,000).
    #[param(minimum = 0)]
    pub tail: Option<i32>,
    /// Keep the stream open as Server-Sent Events.
    pub follow: Option<bool>,
}

/// What `POST /v1/reload` did, by service name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReloadView {
    /// New services (started if `autostart`).
    pub added: Vec<String>,
    /// Services no longer configured, now stopped.
    pub removed: Vec<String>,
    /// Services whose configuration changed: stopped, and started again from it if they were up.
    pub changed: Vec<String>,
    /// Services left alone.
    pub unchanged: Vec<String>,
}

impl From<crate::supervise::ReloadReport> for ReloadView {
    fn from(report: crate::supervise::ReloadReport) -> Self {
        Self {
            added: report.added,
            removed: report.removed,
            changed: report.changed,
            unchanged: report.unchanged,
        }
    }
}

/// Which past state changes `GET /v1/events` sends before the live ones.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The last N changes the daemon remembers (it keeps 1000); none by default.
    #[param(minimum = 0)]
    pub last: Option<i32>,
    /// Only changes at or after this time (Unix milliseconds).
    #[param(minimum = 0)]
    pub since_unix_ms: Option<i64>,
    /// `false`: the stream ends after the past changes; by default live ones follow.
    pub follow: Option<bool>,
}

/// One Server-Sent Event as it travels: its name and its JSON.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamEvent {
    /// `line` on a log stream, `state` on the event stream.
    pub event: String,
    /// JSON: a `LogLineView` for `line`, an `EventView` for `state`.
    pub data: String,
}
