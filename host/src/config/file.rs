//! The shape of `nanny.toml`, with spans kept so errors can name their line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration;
use crate::gpu::GpuDevices;
use crate::supervise::{Condition, RestartMode};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
    /// `[[gpus]]`: devices for machines where nvidia-smi cannot tell.
    #[serde(default)]
    pub gpus: Vec<crate::gpu::DeclaredGpu>,
    #[serde(default)]
    pub gateway: RawGateway,
    /// `[catalog]`: the models on this machine's disks.
    #[serde(default)]
    pub catalog: RawCatalog,
    /// `[cluster]`: the etcd this node registers in, and how others reach it.
    #[serde(default)]
    pub cluster: RawCluster,
    /// `[plugins.NAME]`: what a third-party plugin's plans may launch.
    #[serde(default)]
    pub plugins: BTreeMap<Spanned<String>, RawPluginGrants>,
}

/// `[plugins.NAME]`: capability grants for a plugin loaded from a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginGrants {
    /// Programs its plans may launch: bare names or absolute paths (`*` within a part).
    #[serde(default)]
    pub programs: Vec<Spanned<String>>,
    /// Container images (`vllm/vllm-openai:*`).
    #[serde(default)]
    pub images: Vec<String>,
    /// Host folders it may mount: `"/srv/models"` (read-only) or `{ path, rw = true }`.
    #[serde(default)]
    pub mounts: Vec<Spanned<RawMountGrant>>,
    /// Environment names it may set (`HF_*`); never `LD_*` or `NANNY_*`.
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// Compose project folders it may bring up (absolute; `*` within a part).
    #[serde(default)]
    pub compose: Vec<Spanned<String>>,
    /// Let a file of this name replace the builtin plugin of the same name.
    #[serde(default, rename = "override")]
    pub replaces_builtin: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMountGrant {
    Path(PathBuf),
    Table {
        path: PathBuf,
        #[serde(default)]
        rw: bool,
    },
}

/// `[cluster]`: several machines, one endpoint. Off until `etcd` names endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd's client URLs (`http://127.0.0.1:2379`); `NANNY_ETCD` (comma-separated) overrides.
    #[serde(default)]
    pub etcd: Vec<Spanned<String>>,
    /// This node's name (default: the host name); `NANNY_NODE` overrides.
    pub node: Option<Spanned<String>>,
    /// The URL other nodes reach this one at; `NANNY_ADVERTISE` overrides.
    pub advertise: Option<Spanned<String>>,
    /// Where in etcd the cluster's keys live (`/nanny/v1`).
    pub prefix: Option<Spanned<String>>,
    /// How long a node that stopped answering stays listed (`"10s"`).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub lease_ttl: Option<Duration>,
    /// The cluster's shared token for node-to-node calls (relative to the
    /// config file); `NANNY_CLUSTER_TOKEN_FILE` overrides.
    pub token_file: Option<Spanned<PathBuf>>,
}

/// `[catalog]`: where models are, and how each kind is served.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// Scanned recursively; `NANNY_CATALOG_DIRS` (`:`-separated) adds more.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Also the local Hugging Face hub cache (`$HF_HOME/hub`), read only.
    #[serde(default)]
    pub huggingface_cache: bool,
    /// `[[catalog.templates]]`: the first whose `match` fits serves a model.
    #[serde(default)]
    pub templates: Vec<RawTemplate>,
}

/// How to serve one kind of model found in the catalog.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    /// A glob on file names (`*.gguf`), or `dir:<glob>` on the names of
    /// folders holding a `config.json`.
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub backend: Spanned<String>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub idle_timeout: Option<Duration>,
    /// As a service's `gpus`: a count or a list of devices. The lease asks
    /// for the model's estimated VRAM.
    pub gpus: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub settings: toml::Table,
    /// Keep the service listed (`nanny ps`) once it is stopped and idle.
    #[serde(default)]
    pub keep: bool,
}

/// `[gateway]`: the OpenAI-compatible endpoint on the daemon's listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Stop a service this long after its last request ended; `0`: never (the default).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub idle_timeout: Option<Duration>,
    /// The largest request body (`"64MiB"`).
    pub max_body: Option<Spanned<String>>,
    /// How long requests in flight on a service being evicted may take (`"30s"`).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub drain_timeout: Option<Duration>,
    /// How long a request waits for a busy GPU before its model goes next anyway.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub max_wait: Option<Duration>,
    /// Requests waiting for a `max_concurrent` slot, all services together;
    /// beyond it, 503 with `Retry-After`.
    pub max_queue: Option<usize>,
    /// Keys that open the gateway's routes: `sk-…`, or `sha256:<hex>` of one.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// More keys, one a line (relative to the config file).
    pub api_keys_file: Option<Spanned<PathBuf>>,
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
    /// How much of each service's recent output is kept in memory (`"4MiB"`).
    pub log_ring: Option<String>,
    /// API connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
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
            log_ring: None,
            max_connections: 512,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Only in a manifest under `services_dir`; in `nanny.toml` the table names the service.
    pub name: Option<Spanned<String>>,
    /// Required, but in a manifest folder that holds a compose file (then `compose`).
    pub backend: Option<Spanned<String>>,
    pub model: Option<String>,
    /// The names clients use for what this service serves (the first is canonical).
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    /// Stopped this long after its last request through the gateway; `0`: never.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub idle_timeout: Option<Duration>,
    /// Requests the gateway lets in at once; more wait (or get 429 with `queue = false`).
    pub max_concurrent: Option<usize>,
    /// Whether requests beyond `max_concurrent` wait (the default) or are refused.
    pub queue: Option<bool>,
    /// The key the backend itself wants: the gateway sends it upstream as
    /// `Authorization: Bearer …`; clients never see it.
    pub api_key: Option<String>,
    /// What a client going away mid-answer does upstream: `cancel` (the
    /// default) or `drain` (the backend finishes, its answer thrown away).
    pub on_disconnect: Option<OnDisconnect>,
    /// `mcp = { path = "/mcp" }`: the service is an MCP server there; nanny
    /// serves it at `/mcp/services/{name}`, started on demand.
    pub mcp: Option<RawMcp>,
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
    /// `depends_on = ["cache"]`, or a manifest's `dependencies:` list of
    /// `{service: cache, required: true}`.
    #[serde(alias = "dependencies")]
    pub depends_on: Option<Spanned<toml::Value>>,
    /// What the service is, for people (`nanny config show`).
    pub description: Option<String>,
    /// A manifest's `scheduling:` block.
    #[serde(default)]
    pub scheduling: RawScheduling,
    /// `resources = { cpu_limit = 2, memory_limit = "8GiB" }`.
    #[serde(default)]
    pub resources: RawResources,
    #[serde(default)]
    pub restart: RestartSetting,
    #[serde(default)]
    pub probes: RawProbes,
    #[serde(default = "ten_minutes", deserialize_with = "duration::deserialize")]
    pub startup_timeout: Duration,
    #[serde(default)]
    pub settings: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// `gpus = 2`, `gpus = [0, 2]` or `gpus = ["GPU-…"]`.
    pub gpus: Option<Spanned<toml::Value>>,
    /// `vram = "20GiB"`.
    pub vram: Option<Spanned<String>>,
    /// `exclusive` (default) or `shared`.
    #[serde(default)]
    pub gpu_mode: crate::gpu::GpuMode,
    // What people already write in service manifests, read as the keys above.
    /// `gpu_required = true` is `gpus = 1`.
    pub gpu_required: Option<Spanned<bool>>,
    /// `vram_gb = 24` is `vram = "24GiB"`.
    pub vram_gb: Option<Spanned<f64>>,
    /// `health_endpoint = "/health"` is `probes.path = "/health"`.
    #[serde(alias = "health", alias = "health_check", alias = "health_path")]
    pub health_endpoint: Option<Spanned<String>>,
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
    // A manifest's `- service: cache` with `required: true` (ready, the default)
    // or `required: false` (started is enough).
    let entry = |item: &toml::Value| -> Result<(String, Condition), String> {
        if let Some(name) = item.as_str() {
            return Ok((name.to_string(), Condition::Ready));
        }
        let table = item
            .as_table()
            .ok_or("list service names, or `{ service = \"name\", required = true }`")?;
        let name = table
            .get("service")
            .and_then(toml::Value::as_str)
            .ok_or("each dependency needs `service`, a service name")?;
        if let Some(unknown) = table
            .keys()
            .find(|key| !matches!(key.as_str(), "service" | "required"))
        {
            return Err(format!(
                "unknown key `{unknown}` in the dependency on `{name}`"
            ));
        }
        match table.get("required").map(toml::Value::as_bool) {
            None | Some(Some(true)) => Ok((name.to_string(), Condition::Ready)),
            Some(Some(false)) => Ok((name.to_string(), Condition::Started)),
            Some(None) => Err(format!("`required` for `{name}` must be true or false")),
        }
    };
    match value {
        toml::Value::Array(items) => items.iter().map(entry).collect(),
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

/// `scheduling.auto_start` is `autostart`; `scheduling.auto_stop_after` is the
/// idle time after which the gateway may stop the service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduling {
    pub auto_start: Option<bool>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub auto_stop_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    Cancel,
    Drain,
}

/// Where a service that is an MCP server answers (Streamable HTTP).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    pub path: Spanned<String>,
}

/// Caps for each launch, through its cgroup or Docker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    /// CPUs: `2`, `1.5`, `"1.5"` or Kubernetes' `"500m"`.
    pub cpu_limit: Option<Spanned<toml::Value>>,
    /// `"8GiB"`, `"512MiB"`.
    pub memory_limit: Option<Spanned<String>>,
}

/// `2`, `1.5`, `"1.5"`, `"500m"` → CPUs.
pub fn cpus(value: &toml::Value) -> Result<f64, String> {
    let cpus = match value {
        toml::Value::Integer(count) => *count as f64,
        toml::Value::Float(count) => *count,
        toml::Value::String(text) => match text.trim().strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0).map_err(|_| ()),
            None => text.trim().parse::<f64>().map_err(|_| ()),
        }
        .map_err(|()| format!("`{text}` is not a number of CPUs like 2, 1.5 or \"500m\""))?,
        other => {
            return Err(format!(
                "expected a number of CPUs, found {}",
                other.type_str()
            ))
        }
    };
    if !(cpus.is_finite() && cpus >= 0.01) {
        return Err(format!("{cpus} CPUs: the limit must be at least 0.01"));
    }
    Ok(cpus)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbes {
    /// The HTTP path probed instead of the plugin's.
    pub path: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub readiness_period: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub liveness_period: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub liveness_timeout: Option<Duration>,
}

/// `gpus = 2`, `gpus = [0, 2]`, `gpus = ["GPU-8f…"]`, read by hand like `depends_on`.
pub fn gpu_devices(value: &toml::Value) -> Result<GpuDevices, String> {
    let invalid = || "must be a count, or a list of GPU indices or UUIDs".to_string();
    match value {
        toml::Value::Integer(0) => Ok(GpuDevices::None),
        toml::Value::Integer(count) => u32::try_from(*count)
            .map(GpuDevices::Count)
            .map_err(|_| invalid()),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Integer(index) if *index >= 0 => Ok(index.to_string()),
                toml::Value::String(uuid) if !uuid.is_empty() => Ok(uuid.clone()),
                _ => Err(invalid()),
            })
            .collect::<Result<_, _>>()
            .map(GpuDevices::Named),
        _ => Err(invalid()),
    }
}

/// `"20GiB"`, `"512MiB"`, `"24GB"` (read as GiB, as people mean it) → MiB.
pub fn vram_mib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = duration::number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a size like \"20GiB\" or \"512MiB\""))?;
    let mib_per_unit = match unit.to_ascii_lowercase().as_str() {
        "gib" | "gb" | "g" => 1024.0,
        "mib" | "mb" | "m" => 1.0,
        "tib" | "tb" | "t" => 1024.0 * 1024.0,
        _ => return Err(format!("`{text}`: the unit must be MiB, GiB or TiB")),
    };
    Ok((number * mib_per_unit).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_limits_as_people_write_them() {
        let value = |text: &str| {
            toml::from_str::<toml::Table>(&format!("v = {text}")).unwrap()["v"].clone()
        };
        assert_eq!(cpus(&value("2")), Ok(2.0));
        assert_eq!(cpus(&value("1.5")), Ok(1.5));
        assert_eq!(cpus(&value("\"0.25\"")), Ok(0.25));
        assert_eq!(cpus(&value("\"500m\"")), Ok(0.5));
        assert!(cpus(&value("0")).unwrap_err().contains("at least 0.01"));
        assert!(cpus(&value("\"lots\""))
            .unwrap_err()
            .contains("not a number of CPUs"));
        assert!(cpus(&value("true")).unwrap_err().contains("found boolean"));
    }

    #[test]
    fn reads_gpu_requests() {
        let value = |text: &str| {
            toml::from_str::<toml::Table>(&format!("v = {text}")).unwrap()["v"].clone()
        };
        assert_eq!(gpu_devices(&value("2")), Ok(GpuDevices::Count(2)));
        assert_eq!(gpu_devices(&value("0")), Ok(GpuDevices::None));
        assert_eq!(
            gpu_devices(&value("[0, \"GPU-8f2a\"]")),
            Ok(GpuDevices::Named(vec!["0".into(), "GPU-8f2a".into()]))
        );
        assert!(gpu_devices(&value("-1")).is_err());
        assert!(gpu_devices(&value("[true]")).is_err());
        assert_eq!(vram_mib("20GiB"), Ok(20 * 1024));
        assert_eq!(vram_mib("512 MiB"), Ok(512));
        assert_eq!(vram_mib("1.5GB"), Ok(1536));
        assert!(vram_mib("lots").is_err());
        assert!(vram_mib("3 bananas").unwrap_err().contains("unit"));
    }
}
