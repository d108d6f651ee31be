//! The shape of `nanny.toml`, with spans kept so errors can name their line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration;
use crate::supervise::{Condition, RestartMode};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDaemon {
    pub listen: String,
    pub token_file: Option<PathBuf>,
    pub plugin_dirs: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub services_dir: Option<PathBuf>,
    pub port_range: [u16; 2],
    pub max_concurrent_starts: usize,
}

impl Default for RawDaemon {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            token_file: None,
            plugin_dirs: Vec::new(),
            state_dir: None,
            services_dir: None,
            port_range: [20_000, 29_999],
            max_concurrent_starts: 4,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub backend: Spanned<String>,
    pub model: Option<String>,
    #[serde(default = "loopback")]
    pub host: String,
    pub port: Option<u16>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub work_dir: Option<PathBuf>,
    #[serde(default = "yes")]
    pub autostart: bool,
    pub depends_on: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub restart: RestartSetting,
    #[serde(default)]
    pub probes: RawProbes,
    #[serde(default = "ten_minutes", deserialize_with = "duration::deserialize")]
    pub startup_timeout: Duration,
    #[serde(default)]
    pub settings: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

fn yes() -> bool {
    true
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

/// `depends_on = ["cache"]` (each must be ready) or `depends_on = { cache = "started" }`.
/// Read by hand from the TOML value: spans do not survive serde's untagged enums.
pub fn depends_on(value: &toml::Value) -> Result<Vec<(String, Condition)>, String> {
    let condition = |name: &str, value: &toml::Value| match value.as_str() {
        Some("ready") => Ok(Condition::Ready),
        Some("started") => Ok(Condition::Started),
        _ => Err(format!(
            "the condition for `{name}` must be \"ready\" or \"started\""
        )),
    };
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(|name| (name.to_string(), Condition::Ready))
                    .ok_or_else(|| "list service names as strings".to_string())
            })
            .collect(),
        toml::Value::Table(table) => table
            .iter()
            .map(|(name, value)| Ok((name.clone(), condition(name, value)?)))
            .collect(),
        _ => Err(
            "must be a list of service names, or a table of name = \"ready\" | \"started\"".into(),
        ),
    }
}

/// `restart = "always"` or `restart = { policy = "on-failure", max_restarts = 5, backoff = "10s" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RestartSetting {
    Policy(RestartMode),
    Detailed(RawRestart),
}

impl Default for RestartSetting {
    fn default() -> Self {
        RestartSetting::Policy(RestartMode::OnFailure)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    #[serde(default = "on_failure")]
    pub policy: RestartMode,
    pub max_restarts: Option<u32>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub backoff: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub max_backoff: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub reset_after: Option<Duration>,
}

fn on_failure() -> RestartMode {
    RestartMode::OnFailure
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbes {
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub readiness_period: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub liveness_period: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub liveness_timeout: Option<Duration>,
}
