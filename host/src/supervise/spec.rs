//! What a service is run from, as its task sees it: the spec built from the
//! configuration, and the commands the supervisor sends it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::backoff::BackoffPolicy;
use crate::gpu::GpuRequest;
use crate::plugin::{Plan, Plugin, Service};
use crate::runtime::ResourceLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub max_restarts: Option<u32>,
    pub backoff: BackoffPolicy,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            max_restarts: None,
            backoff: BackoffPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The dependency's process is running.
    Started,
    /// The dependency is ready.
    Ready,
}

/// The service's own probe settings, which override the plugin's plan.
#[derive(Debug, Clone, Default)]
pub struct ProbeOverrides {
    /// Probed instead of the plugin's paths (a manifest's health endpoint).
    pub path: Option<String>,
    pub readiness_period: Option<Duration>,
    pub liveness_period: Option<Duration>,
    pub liveness_timeout: Option<Duration>,
}

impl ProbeOverrides {
    pub(super) fn apply(&self, plan: &mut Plan) {
        let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
        if let Some(period) = self.readiness_period {
            plan.readiness.period_ms = ms(period);
        }
        if let Some(path) = &self.path {
            plan.readiness.path.clone_from(path);
            if let Some(liveness) = plan.liveness.as_mut() {
                liveness.path.clone_from(path);
            }
        }
        if let Some(liveness) = plan.liveness.as_mut() {
            if let Some(period) = self.liveness_period {
                liveness.period_ms = ms(period);
            }
            if let Some(timeout) = self.liveness_timeout {
                liveness.timeout_ms = ms(timeout);
            }
        }
    }
}

/// Everything a service task needs to know.
#[derive(Clone)]
pub struct ServiceSpec {
    pub service: Service,
    pub plugin: Arc<Plugin>,
    pub restart: RestartPolicy,
    pub startup_timeout: Duration,
    pub depends_on: Vec<(String, Condition)>,
    pub autostart: bool,
    pub probes: ProbeOverrides,
    pub gpu: GpuRequest,
    /// What the service is, for people.
    pub description: Option<String>,
    /// Idle time after which the gateway may stop the service (a manifest's
    /// `scheduling.auto_stop_after`); the supervisor itself never does.
    pub idle_stop: Option<Duration>,
    /// CPU and memory caps for each launch (`resources`).
    pub resources: ResourceLimits,
    /// The names the gateway routes here (`models`; else `service.model`).
    pub models: Vec<String>,
    /// How many requests the gateway lets in at once.
    pub concurrency: Concurrency,
    /// What the gateway sends the backend as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    /// `on_disconnect = "drain"`: an answer whose client went away runs on.
    pub drain_on_disconnect: bool,
    /// Where the backend serves MCP (Streamable HTTP), when it is an MCP server.
    pub mcp_path: Option<String>,
}

impl ServiceSpec {
    /// The service as nanny resolved it from its configuration (defaults
    /// filled in, ports assigned), for people: `nanny config show` and
    /// `GET /v1/services/{name}/config`. `redact` hides what may be secret
    /// (environment values, the backend's key) from API callers.
    pub fn resolved(&self, redact: bool) -> serde_json::Value {
        use serde_json::json;
        let hidden = |value: &str| {
            if redact {
                "(hidden)".to_string()
            } else {
                value.to_string()
            }
        };
        let settings: serde_json::Map<String, serde_json::Value> = self
            .service
            .settings
            .iter()
            .map(|setting| {
                (
                    setting.key.clone(),
                    crate::plugin::value_json(&setting.value),
                )
            })
            .collect();
        let env: std::collections::BTreeMap<&str, String> = self
            .service
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), hidden(value)))
            .collect();
        json!({
            "name": self.service.name,
            "backend": self.plugin.name(),
            "host": self.service.host,
            "port": self.service.port,
            "model": self.service.model,
            "models": self.models,
            "args": self.service.args,
            "env": env,
            "work_dir": self.service.work_dir,
            "description": self.description,
            "autostart": self.autostart,
            "idle_stop_s": self.idle_stop.map(|d| d.as_secs_f64()),
            "max_concurrent": self.concurrency.max,
            "queue": self.concurrency.queue,
            "api_key": self.api_key.as_deref().map(hidden),
            "on_disconnect": if self.drain_on_disconnect { "drain" } else { "cancel" },
            "mcp_path": self.mcp_path,
            "cpu_limit": self.resources.cpus,
            "memory_limit_bytes": self.resources.memory_bytes,
            "depends_on": self.depends_on.iter().map(|(name, condition)| json!({"service": name, "condition": condition})).collect::<Vec<_>>(),
            "restart": {
                "policy": self.restart.mode,
                "max_restarts": self.restart.max_restarts,
                "backoff_s": self.restart.backoff.initial.as_secs_f64(),
                "max_backoff_s": self.restart.backoff.max.as_secs_f64(),
                "reset_after_s": self.restart.backoff.reset_after.as_secs_f64(),
            },
            "startup_timeout_s": self.startup_timeout.as_secs_f64(),
            "probes": {
                "path": self.probes.path,
                "readiness_period_s": self.probes.readiness_period.map(|d| d.as_secs_f64()),
                "liveness_period_s": self.probes.liveness_period.map(|d| d.as_secs_f64()),
                "liveness_timeout_s": self.probes.liveness_timeout.map(|d| d.as_secs_f64()),
            },
            "gpu": self.gpu,
            "settings": settings,
        })
    }
}

/// `max_concurrent` and `queue`: requests in flight at once, and what happens
/// to one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// `None`: unlimited.
    pub max: Option<usize>,
    /// Beyond `max`: wait for a slot (`true`), or 429 at once.
    pub queue: bool,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            max: None,
            queue: true,
        }
    }
}

impl ServiceSpec {
    /// The names clients use for this service's models: `models`, else `model`.
    pub fn routed_names(&self) -> Vec<String> {
        if self.models.is_empty() {
            self.service.model.iter().cloned().collect()
        } else {
            self.models.clone()
        }
    }
}

impl ServiceSpec {
    /// `service` run by `plugin` with nanny's defaults: restart on failure with the
    /// default back-off, 10 minutes to show progress, started at once, no
    /// dependencies, the plugin's own probe periods.
    pub fn new(service: Service, plugin: Arc<Plugin>) -> Self {
        Self {
            service,
            plugin,
            restart: RestartPolicy::default(),
            startup_timeout: Duration::from_secs(600),
            depends_on: Vec::new(),
            autostart: true,
            probes: ProbeOverrides::default(),
            gpu: GpuRequest::default(),
            description: None,
            idle_stop: None,
            resources: ResourceLimits::default(),
            models: Vec::new(),
            concurrency: Concurrency::default(),
            api_key: None,
            drain_on_disconnect: false,
            mcp_path: None,
        }
    }
}

/// What a service task is asked to do.
#[derive(Debug)]
pub enum Command {
    Start,
    Restart,
    Stop(oneshot::Sender<()>),
    /// The backend announced itself at `NANNY_READY_URL`; the reply says whether
    /// the token was this launch's.
    MarkReady {
        token: String,
        reply: oneshot::Sender<bool>,
    },
}
