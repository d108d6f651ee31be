//! `nanny.toml` and the service manifests beside it: parsing, `NANNY_*` overrides,
//! and validation against the plugins. Every error names the file, the line and the key.

mod cluster;
pub mod duration;
mod error;
mod file;
mod keys;
mod manifest;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::gpu::{GpuDevices, GpuRequest};
use crate::runtime::ResourceLimits;
use crate::supervise::Condition;
pub use cluster::{host_and_port, ClusterConfig};
use error::Source;
pub use error::{did_you_mean, ConfigError, ConfigErrors};
use file::{RawConfig, RawService, RestartSetting};
use manifest::ManifestFile;

use crate::plugin::{Catalog, Service, Setting, Value};
use crate::supervise::{
    dependency_order, BackoffPolicy, ProbeOverrides, RestartPolicy, ServiceSpec,
};

/// The daemon's settings, after `NANNY_*` overrides.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub plugin_dirs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub services_dir: Option<PathBuf>,
    pub port_range: [u16; 2],
    pub max_concurrent_starts: usize,
    /// Bytes of recent output kept in memory per service.
    pub log_ring_bytes: usize,
    /// API connections served at once.
    pub max_connections: usize,
}

/// `[gateway]`, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    /// Stop services idle this long unless they say otherwise; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// The largest request body the gateway takes.
    pub max_body: usize,
    /// How long an evicted service's requests in flight may take to finish.
    pub drain_timeout: std::time::Duration,
    /// How long a request waits for a busy GPU before its service goes next anyway.
    pub max_wait: std::time::Duration,
    /// Requests waiting for a `max_concurrent` slot, all services together.
    pub max_queue: usize,
    /// `api_keys` and the lines of `api_keys_file`, as written.
    #[serde(skip)]
    pub api_keys: Vec<String>,
}

/// The gateway's body cap unless `[gateway] max_body` says: enough for base64 images.
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: None,
            max_body: DEFAULT_MAX_BODY,
            drain_timeout: std::time::Duration::from_secs(30),
            max_wait: std::time::Duration::from_secs(30),
            max_queue: 512,
            api_keys: Vec::new(),
        }
    }
}

/// A parsed configuration: `nanny.toml` and the manifests under its `services_dir`.
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    /// `[[gpus]]`, used when nvidia-smi does not answer.
    pub declared_gpus: Vec<crate::gpu::DeclaredGpu>,
    pub gateway: GatewayConfig,
    /// Where the model catalog looks, and its templates' matches.
    pub catalog: CatalogConfig,
    /// `[cluster]`, when this node joins one.
    pub cluster: Option<ClusterConfig>,
    /// `[plugins.NAME]`: capability grants (and overrides) for plugin files.
    pub plugins: crate::plugin::Policies,
    /// Where each template's `backend` is written, to say so when no plugin
    /// has that name.
    template_backends_at: Vec<usize>,
    text: String,
    manifests: Vec<ManifestFile>,
    services: Vec<Declared>,
}

/// One service as written, and where.
struct Declared {
    name: String,
    /// Where the name is written, for errors about the service as a whole.
    name_offset: usize,
    /// `None`: `nanny.toml`; else an index into `Config::manifests`.
    manifest: Option<usize>,
    raw: RawService,
}

impl Declared {
    /// The key as the user wrote it: `services.chat.port` in nanny.toml, `port` in a manifest.
    fn key(&self, suffix: &str) -> String {
        match self.manifest {
            None => format!("services.{}.{suffix}", self.name),
            Some(_) => suffix.to_string(),
        }
    }
}

const BAD_NAME: &str = "service names are lowercase letters, digits and `_.-`, starting with a letter or digit, at most 63";

impl Config {
    /// Reads and parses `path`, applying `NANNY_*` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                key: String::new(),
                message: format!("cannot read: {error}"),
            }])
        })?;
        Self::parse(path, text)
    }

    /// Parses `text` as if read from `path`, with the manifests under its `services_dir`.
    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigErrors> {
        let source = Source {
            path,
            text: &text,
            yaml: None,
        };
        // Every unknown key at once; serde would stop at the first.
        let unknown = keys::unknown_in_config(&source);
        if !unknown.is_empty() {
            return Err(ConfigErrors(unknown));
        }
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|error| ConfigErrors(vec![parse_error(&source, &error)]))?;
        let mut daemon = resolve_daemon(&source, &raw)?;
        let mut errors = Vec::new();
        let mut services = Vec::new();
        for (name, service) in raw.services {
            if !crate::names::is_valid(name.get_ref()) {
                errors.push(source.error(
                    name.span().start,
                    format!("services.{}", name.get_ref()),
                    BAD_NAME,
                ));
            }
            if let Some(inner) = &service.name {
                errors.push(source.error(
                    inner.span().start,
                    format!("services.{}.name", name.get_ref()),
                    "`name` is for service manifests; here the table's name is the service's",
                ));
            }
            services.push(Declared {
                name_offset: name.span().start,
                name: name.into_inner(),
                manifest: None,
                raw: service,
            });
        }
        let mut manifests = Vec::new();
        if let Some(dir) = &mut daemon.services_dir {
            if dir.is_relative() {
                *dir = path.parent().unwrap_or(Path::new(".")).join(&*dir);
            }
            match manifest::discover(dir) {
                Ok(found) => {
                    for manifest_path in found {
                        match declare_manifest(&manifest_path, manifests.len(), &services) {
                            Ok((file, declared)) => {
                                manifests.push(file);
                                services.push(declared);
                            }
                            Err(problems) => errors.extend(problems),
                        }
                    }
                }
                Err(message) => {
                    let offset = keys::offset_of(&text, &["daemon", "services_dir"]).unwrap_or(0);
                    errors.push(source.error(offset, "daemon.services_dir", message));
                }
            }
        }
        let defaults = GatewayConfig::default();
        let gateway = GatewayConfig {
            idle_timeout: raw.gateway.idle_timeout.filter(|idle| !idle.is_zero()),
            drain_timeout: raw.gateway.drain_timeout.unwrap_or(defaults.drain_timeout),
            max_wait: raw.gateway.max_wait.unwrap_or(defaults.max_wait),
            max_queue: raw.gateway.max_queue.unwrap_or(defaults.max_queue),
            api_keys: api_keys(&source, path, &raw.gateway, &mut errors),
            max_body: match &raw.gateway.max_body {
                None => DEFAULT_MAX_BODY,
                Some(size) => match file::vram_mib(size.get_ref()) {
                    Ok(mib) if mib > 0 => (mib as usize) << 20,
                    Ok(_) => {
                        errors.push(source.error(
                            size.span().start,
                            "gateway.max_body",
                            "the body cap must be at least 1MiB",
                        ));
                        DEFAULT_MAX_BODY
                    }
                    Err(message) => {
                        errors.push(source.error(size.span().start, "gateway.max_body", message));
                        DEFAULT_MAX_BODY
                    }
                },
            },
        };
        let catalog = catalog_config(&source, path, &raw.catalog, &mut errors);
        let cluster = cluster::resolve(&source, path, &raw.cluster, daemon.listen, &mut errors);
        let plugins = plugin_policies(&source, &raw.plugins, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self {
            path: path.to_path_buf(),
            daemon,
            gateway,
            catalog,
            cluster,
            plugins,
            template_backends_at: raw
                .catalog
                .templates
                .iter()
                .map(|template| template.backend.span().start)
                .collect(),
            declared_gpus: raw.gpus,
            text,
            manifests,
            services,
        })
    }

    fn source_of(&self, declared: &Declared) -> Source<'_> {
        match declared.manifest {
            Some(index) => self.manifests[index].source(),
            None => self.file_source(),
        }
    }

    /// `nanny.toml` itself, for errors about what it says.
    fn file_source(&self) -> Source<'_> {
        Source {
            path: &self.path,
            text: &self.text,
            yaml: None,
        }
    }

    /// The services, checked against the plugins in `catalog`: backends exist,
    /// settings are the plugin's, dependencies exist and form no cycle; ports are
    /// assigned from `port_range` where none is configured.
    pub fn service_specs(&self, catalog: &Catalog) -> Result<Vec<ServiceSpec>, ConfigErrors> {
        let mut errors = Vec::new();
        let mut specs = Vec::new();
        let mut ports = PortPicker::new(
            self.daemon.port_range,
            self.services.iter().filter_map(|s| s.raw.port),
            self.remembered_ports(),
        );
        // A template names a backend that exists.
        let templates = self
            .catalog
            .templates
            .iter()
            .zip(&self.template_backends_at);
        for (index, (template, &offset)) in templates.enumerate() {
            if catalog.get(&template.backend).is_none() {
                errors.push(self.file_source().error(
                    offset,
                    format!("catalog.templates[{index}].backend"),
                    format!("no backend named `{}`", template.backend),
                ));
            }
        }
        for declared in &self.services {
            let source = self.source_of(declared);
            let raw = &declared.raw;
            let known: Vec<&str> = catalog.plugins().map(|p| p.name()).collect();
            let Some(backend) = &raw.backend else {
                errors.push(source.error(
                    declared.name_offset,
                    declared.key("backend"),
                    format!(
                        "missing key `backend`: which backend runs this service ({})",
                        known.join(", ")
                    ),
                ));
                continue;
            };
            let Some(plugin) = catalog.get(backend.get_ref()) else {
                let hint = did_you_mean(backend.get_ref(), known.iter().copied()).map_or_else(
                    || format!("; known backends: {}", known.join(", ")),
                    |close| format!("; did you mean `{close}`?"),
                );
                errors.push(source.error(
                    backend.span().start,
                    declared.key("backend"),
                    format!("no backend named `{}`{hint}", backend.get_ref()),
                ));
                continue;
            };
            let settings = check_settings(&source, declared, plugin, &mut errors);
            let depends_on = self.dependencies(&source, declared, &mut errors);
            let gpu = gpu_request(&source, declared, &mut errors);
            let health_path = health_path(&source, declared, &mut errors);
            let resources = resource_limits(&source, declared, &mut errors);
            let mcp_path = mcp_path(&source, declared, &mut errors);
            let Some(port) = raw.port.or_else(|| ports.pick(&declared.name)) else {
                errors.push(source.error(
                    declared.name_offset,
                    declared.key("port"),
                    "no free port left in `daemon.port_range`",
                ));
                continue;
            };
            specs.push(ServiceSpec {
                service: Service {
                    name: declared.name.clone(),
                    host: raw.host.clone(),
                    port,
                    model: raw.model.clone(),
                    args: raw.args.clone(),
                    env: raw
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    work_dir: self.work_dir(declared).map(|dir| dir.display().to_string()),
                    gpus: Vec::new(),
                    settings,
                },
                plugin: plugin.clone(),
                restart: restart_policy(&raw.restart),
                startup_timeout: raw.startup_timeout,
                depends_on,
                autostart: raw.scheduling.auto_start.unwrap_or(raw.autostart),
                description: raw.description.clone(),
                idle_stop: raw
                    .idle_timeout
                    .or(raw.scheduling.auto_stop_after)
                    .or(self.gateway.idle_timeout)
                    .filter(|idle| !idle.is_zero()),
                models: raw
                    .models
                    .iter()
                    .map(|name| name.get_ref().clone())
                    .collect(),
                api_key: raw.api_key.clone(),
                drain_on_disconnect: raw.on_disconnect == Some(file::OnDisconnect::Drain),
                mcp_path,
                concurrency: crate::supervise::Concurrency {
                    max: raw.max_concurrent.filter(|max| *max > 0),
                    queue: raw.queue.unwrap_or(true),
                },
                probes: ProbeOverrides {
                    path: health_path,
                    readiness_period: raw.probes.readiness_period,
                    liveness_period: raw.probes.liveness_period,
                    liveness_timeout: raw.probes.liveness_timeout,
                },
                gpu,
                resources,
            });
        }
        // A name clients use routes to one service only.
        let mut routed: BTreeMap<String, &str> = BTreeMap::new();
        for spec in &specs {
            let Some(declared) = self.services.iter().find(|d| d.name == spec.service.name) else {
                continue;
            };
            for name in spec.routed_names() {
                if let Some(first) = routed.insert(name.clone(), &declared.name) {
                    let offset = declared
                        .raw
                        .models
                        .iter()
                        .find(|written| *written.get_ref() == name)
                        .map_or(declared.name_offset, |written| written.span().start);
                    errors.push(self.source_of(declared).error(
                        offset,
                        declared.key("models"),
                        format!("model `{name}` is served by `{first}` already; a name routes to one service"),
                    ));
                }
            }
        }
        // Two services configured on one port: the second would fail at launch.
        let mut claimed: BTreeMap<u16, &str> = BTreeMap::new();
        for declared in &self.services {
            let Some(port) = declared.raw.port else {
                continue;
            };
            if let Some(first) = claimed.insert(port, &declared.name) {
                errors.push(self.source_of(declared).error(
                    declared.name_offset,
                    declared.key("port"),
                    format!("port {port} is `{first}`'s already"),
                ));
            }
        }
        if errors.is_empty() {
            let graph: BTreeMap<String, Vec<String>> = specs
                .iter()
                .map(|spec| {
                    (
                        spec.service.name.clone(),
                        spec.depends_on.iter().map(|(d, _)| d.clone()).collect(),
                    )
                })
                .collect();
            if let Err(cycle) = dependency_order(&graph) {
                let first = self
                    .services
                    .iter()
                    .find(|declared| declared.name == cycle[0])
                    .expect("a cycle is made of declared services");
                errors.push(self.source_of(first).error(
                    first.name_offset,
                    first.key("depends_on"),
                    format!("dependency cycle: {}", cycle.join(" → ")),
                ));
            }
        }
        if errors.is_empty() {
            Ok(specs)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// What only a launch would find out, found now (`nanny config check`): each
    /// service's plugin is asked to plan it, and its refusals are reported with
    /// file, line and key; a configured port another program listens on is one too.
    pub fn launch_errors(&self, specs: &[ServiceSpec]) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for spec in specs {
            let Some(declared) = self.services.iter().find(|d| d.name == spec.service.name) else {
                continue;
            };
            let source = self.source_of(declared);
            let mut session =
                crate::plugin::PluginSession::new(spec.plugin.clone(), spec.service.clone());
            match session.plan() {
                Ok(Ok(plan)) => {
                    if let Err(refusal) = spec.plugin.check_plan(&plan.launch, &spec.service.env) {
                        let at =
                            keys::offset_of(source.text, &["services", &declared.name, "backend"])
                                .unwrap_or(declared.name_offset);
                        errors.push(source.error(at, declared.key("backend"), refusal.to_string()));
                    }
                }
                Ok(Err(refusals)) => {
                    for refusal in refusals {
                        // A plugin names a service key (`model`) or one of its settings.
                        const SERVICE_KEYS: [&str; 6] =
                            ["model", "port", "host", "args", "env", "work_dir"];
                        let key = if SERVICE_KEYS.contains(&refusal.key.as_str()) {
                            declared.key(&refusal.key)
                        } else {
                            declared.key(&format!("settings.{}", refusal.key))
                        };
                        let mut path: Vec<&str> = match declared.manifest {
                            None => vec!["services", &declared.name],
                            Some(_) => Vec::new(),
                        };
                        if !SERVICE_KEYS.contains(&refusal.key.as_str()) {
                            path.push("settings");
                        }
                        path.push(&refusal.key);
                        let offset =
                            keys::offset_of(source.text, &path).unwrap_or(declared.name_offset);
                        errors.push(source.error(offset, key, refusal.message));
                    }
                }
                Err(error) => errors.push(source.error(
                    declared.name_offset,
                    declared.key("backend"),
                    format!("the plugin could not plan this service: {error}"),
                )),
            }
            if declared.raw.port.is_some() {
                if let Err(reason) =
                    crate::runtime::ports::check_free(&spec.service.host, spec.service.port)
                {
                    errors.push(source.error(declared.name_offset, declared.key("port"), reason));
                }
            }
        }
        errors
    }

    /// `depends_on`, with every name checked against the declared services.
    fn dependencies(
        &self,
        source: &Source<'_>,
        declared: &Declared,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<(String, Condition)> {
        let Some(value) = &declared.raw.depends_on else {
            return Vec::new();
        };
        let offset = value.span().start;
        let entries = file::depends_on(value.get_ref()).unwrap_or_else(|message| {
            errors.push(source.error(offset, declared.key("depends_on"), message));
            Vec::new()
        });
        for (dependency, _) in &entries {
            if !self.services.iter().any(|other| other.name == *dependency) {
                let known = self.services.iter().map(|other| other.name.as_str());
                let hint = did_you_mean(dependency, known)
                    .map_or(String::new(), |close| format!("; did you mean `{close}`?"));
                errors.push(source.error(
                    offset,
                    declared.key("depends_on"),
                    format!("no service named `{dependency}`{hint}"),
                ));
            }
        }
        entries
    }

    /// A manifest's service runs in the manifest's folder unless it says otherwise,
    /// and a relative `work_dir` there is relative to that folder.
    fn work_dir(&self, declared: &Declared) -> Option<PathBuf> {
        let configured = declared.raw.work_dir.clone();
        match declared.manifest {
            None => configured,
            Some(index) => {
                let dir = self.manifests[index].dir();
                Some(configured.map_or_else(|| dir.to_path_buf(), |path| dir.join(path)))
            }
        }
    }
}

/// Reads one manifest into a declared service, named by its `name` or its folder.
fn declare_manifest(
    path: &Path,
    index: usize,
    declared: &[Declared],
) -> Result<(ManifestFile, Declared), Vec<ConfigError>> {
    let (file, raw) = manifest::read(path)?;
    let source = file.source();
    let one = |error: ConfigError| vec![error];
    let (name, name_offset) = match &raw.name {
        Some(name) => (name.get_ref().clone(), name.span().start),
        None => {
            let folder = file.dir().file_name().unwrap_or_default();
            (folder.to_string_lossy().into_owned(), 0)
        }
    };
    if !crate::names::is_valid(&name) {
        return Err(one(source.error(
            name_offset,
            "name",
            format!("`{name}`: {BAD_NAME}"),
        )));
    }
    if declared.iter().any(|other| other.name == name) {
        return Err(one(source.error(
            name_offset,
            "name",
            format!("a service named `{name}` is already declared"),
        )));
    }
    let declared = Declared {
        name,
        name_offset,
        manifest: Some(index),
        raw,
    };
    Ok((file, declared))
}

/// `[gateway] api_keys` and the lines of `api_keys_file` (blank lines and `#`
/// comments skipped); a `sha256:` entry must be a whole digest.
fn api_keys(
    source: &Source<'_>,
    config: &Path,
    gateway: &file::RawGateway,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    let mut keys = gateway.api_keys.clone();
    if let Some(file) = &gateway.api_keys_file {
        let path = config
            .parent()
            .unwrap_or(Path::new("."))
            .join(file.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) => keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_string),
            ),
            Err(error) => errors.push(source.error(
                file.span().start,
                "gateway.api_keys_file",
                format!("cannot read {}: {error}", path.display()),
            )),
        }
    }
    for key in &keys {
        if let Some(hex) = key.strip_prefix("sha256:") {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let offset = keys::offset_of(source.text, &["gateway", "api_keys"]).unwrap_or(0);
                errors.push(source.error(
                    offset,
                    "gateway.api_keys",
                    "a `sha256:` key is the 64 hex digits of a key's SHA-256",
                ));
            }
        }
    }
    keys
}

/// `resources.cpu_limit` and `resources.memory_limit`.
fn resource_limits(
    source: &Source<'_>,
    declared: &Declared,
    errors: &mut Vec<ConfigError>,
) -> ResourceLimits {
    let resources = &declared.raw.resources;
    let mut limits = ResourceLimits::default();
    if let Some(cpu) = &resources.cpu_limit {
        match file::cpus(cpu.get_ref()) {
            Ok(cpus) => limits.cpus = Some(cpus),
            Err(message) => errors.push(source.error(
                cpu.span().start,
                declared.key("resources.cpu_limit"),
                message,
            )),
        }
    }
    if let Some(memory) = &resources.memory_limit {
        match file::vram_mib(memory.get_ref()) {
            Ok(mib) if mib > 0 => limits.memory_bytes = Some(mib * 1024 * 1024),
            Ok(_) => errors.push(source.error(
                memory.span().start,
                declared.key("resources.memory_limit"),
                "the memory limit must be at least 1MiB",
            )),
            Err(message) => errors.push(source.error(
                memory.span().start,
                declared.key("resources.memory_limit"),
                message,
            )),
        }
    }
    limits
}

/// `gpus`/`vram`, or their manifest spellings `gpu_required`/`vram_gb` (not both).
fn gpu_request(
    source: &Source<'_>,
    declared: &Declared,
    errors: &mut Vec<ConfigError>,
) -> GpuRequest {
    let raw = &declared.raw;
    let mut request = GpuRequest {
        mode: raw.gpu_mode,
        ..GpuRequest::default()
    };
    match (&raw.gpus, &raw.gpu_required) {
        (Some(_), Some(required)) => errors.push(source.error(
            required.span().start,
            declared.key("gpu_required"),
            "set `gpus` or `gpu_required`, not both",
        )),
        (Some(gpus), None) => match file::gpu_devices(gpus.get_ref()) {
            Ok(devices) => request.devices = devices,
            Err(message) => {
                errors.push(source.error(gpus.span().start, declared.key("gpus"), message))
            }
        },
        (None, Some(required)) if *required.get_ref() => request.devices = GpuDevices::Count(1),
        (None, _) => {}
    }
    match (&raw.vram, &raw.vram_gb) {
        (Some(_), Some(gb)) => errors.push(source.error(
            gb.span().start,
            declared.key("vram_gb"),
            "set `vram` or `vram_gb`, not both",
        )),
        (Some(vram), None) => match file::vram_mib(vram.get_ref()) {
            Ok(mib) => request.vram_mib = Some(mib),
            Err(message) => {
                errors.push(source.error(vram.span().start, declared.key("vram"), message))
            }
        },
        (None, Some(gb)) if *gb.get_ref() >= 0.0 => {
            request.vram_mib = Some((gb.get_ref() * 1024.0).round() as u64);
        }
        (None, Some(gb)) => errors.push(source.error(
            gb.span().start,
            declared.key("vram_gb"),
            "must not be negative",
        )),
        (None, None) => {}
    }
    request
}

/// `[plugins.NAME]`, checked: names valid, program grants bare names or
/// absolute paths, mounts absolute, no loader or nanny variable granted.
fn plugin_policies(
    source: &Source<'_>,
    raw: &BTreeMap<toml::Spanned<String>, file::RawPluginGrants>,
    errors: &mut Vec<ConfigError>,
) -> crate::plugin::Policies {
    use crate::plugin::{Grants, MountGrant, Policy};
    let mut policies = crate::plugin::Policies::new();
    for (name, raw) in raw {
        let key = |suffix: &str| format!("plugins.{}.{suffix}", name.get_ref());
        if !crate::names::is_valid(name.get_ref()) {
            errors.push(source.error(
                name.span().start,
                format!("plugins.{}", name.get_ref()),
                "plugin names are lowercase letters, digits and `_.-`, at most 63",
            ));
        }
        for program in &raw.programs {
            let text = program.get_ref();
            if text.contains('/') && !text.starts_with('/') {
                errors.push(source.error(
                    program.span().start,
                    key("programs"),
                    format!(
                        "`{text}`: a program is a bare name (found on PATH) or an absolute path"
                    ),
                ));
            }
        }
        for variable in &raw.env {
            if crate::plugin::never_grantable(variable.get_ref()) {
                errors.push(source.error(
                    variable.span().start,
                    key("env"),
                    format!("`{}` is never granted: loader and nanny variables stay the user's to set (in a service's `env`)", variable.get_ref()),
                ));
            }
        }
        for folder in &raw.compose {
            if !folder.get_ref().starts_with('/') {
                errors.push(source.error(
                    folder.span().start,
                    key("compose"),
                    format!("`{}` is not an absolute path", folder.get_ref()),
                ));
            }
        }
        let mut mounts = Vec::new();
        for mount in &raw.mounts {
            let (path, rw) = match mount.get_ref() {
                file::RawMountGrant::Path(path) => (path.clone(), false),
                file::RawMountGrant::Table { path, rw } => (path.clone(), *rw),
            };
            if !path.is_absolute() {
                errors.push(source.error(
                    mount.span().start,
                    key("mounts"),
                    format!("`{}` is not an absolute path", path.display()),
                ));
            }
            mounts.push(MountGrant { path, rw });
        }
        policies.insert(
            name.get_ref().clone(),
            Policy {
                grants: Grants {
                    programs: raw.programs.iter().map(|p| p.get_ref().clone()).collect(),
                    images: raw.images.clone(),
                    mounts,
                    env: raw.env.iter().map(|e| e.get_ref().clone()).collect(),
                    compose: raw.compose.iter().map(|c| c.get_ref().clone()).collect(),
                },
                replaces_builtin: raw.replaces_builtin,
            },
        );
    }
    policies
}

/// The model catalog's places and templates, as configured.
#[derive(Debug, Clone, Default)]
pub struct CatalogConfig {
    pub places: crate::catalog::Places,
    pub templates: Vec<crate::catalog::Template>,
}

/// `[catalog]`: relative folders are the configuration file's; a template's
/// context is its settings' `ctx_size` or `max_model_len`.
fn catalog_config(
    source: &Source<'_>,
    path: &Path,
    raw: &file::RawCatalog,
    errors: &mut Vec<ConfigError>,
) -> CatalogConfig {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut dirs: Vec<PathBuf> = raw.dirs.iter().map(|dir| base.join(dir)).collect();
    if let Some(more) = std::env::var_os("NANNY_CATALOG_DIRS") {
        dirs.extend(std::env::split_paths(&more).filter(|dir| !dir.as_os_str().is_empty()));
    }
    let mut templates = Vec::new();
    for (index, template) in raw.templates.iter().enumerate() {
        let pattern = template.pattern.get_ref();
        let glob = pattern.strip_prefix("dir:").unwrap_or(pattern);
        if glob.is_empty() || glob.contains('/') {
            errors.push(source.error(
                template.pattern.span().start,
                format!("catalog.templates[{index}].match"),
                format!("`{pattern}` must be a glob on a file name (`*.gguf`) or `dir:` and one on a folder's (`dir:*`)"),
            ));
        }
        let context = ["ctx_size", "max_model_len"]
            .iter()
            .find_map(|key| template.settings.get(*key)?.as_integer())
            .and_then(|context| u64::try_from(context).ok());
        let mut settings = Vec::new();
        for (key, value) in &template.settings {
            match to_value(value) {
                Some(value) => settings.push(Setting {
                    key: key.clone(),
                    value,
                }),
                None => errors.push(source.error(
                    template.pattern.span().start,
                    format!("catalog.templates[{index}].settings.{key}"),
                    "must be text, a number, true/false or a list of strings",
                )),
            }
        }
        let gpus = match &template.gpus {
            None => crate::gpu::GpuDevices::None,
            Some(gpus) => file::gpu_devices(gpus.get_ref()).unwrap_or_else(|message| {
                errors.push(source.error(
                    gpus.span().start,
                    format!("catalog.templates[{index}].gpus"),
                    message,
                ));
                crate::gpu::GpuDevices::None
            }),
        };
        templates.push(crate::catalog::Template {
            pattern: pattern.clone(),
            context,
            gpus,
            backend: template.backend.get_ref().clone(),
            settings,
            idle_timeout: template.idle_timeout.filter(|idle| !idle.is_zero()),
            keep: template.keep,
        });
    }
    CatalogConfig {
        places: crate::catalog::Places {
            dirs,
            huggingface_hub: raw
                .huggingface_cache
                .then(crate::catalog::Places::huggingface_hub_from_env)
                .flatten(),
        },
        templates,
    }
}

/// `mcp = { path = "/mcp" }`: an HTTP path, which requests' own paths follow.
fn mcp_path(
    source: &Source<'_>,
    declared: &Declared,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let path = &declared.raw.mcp.as_ref()?.path;
    let text = path.get_ref();
    let fine = text.starts_with('/')
        && !text.contains(['?', '#'])
        && !text.split('/').any(|part| part == "..")
        && !text.contains(|c: char| c.is_whitespace() || c.is_control());
    if fine {
        let trimmed = text.trim_end_matches('/');
        Some(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
    } else {
        errors.push(source.error(
            path.span().start,
            declared.key("mcp.path"),
            format!(
                "`{}` must be an HTTP path starting with `/` (no query, no `..`)",
                text.escape_default()
            ),
        ));
        None
    }
}

/// `probes.path`, or a manifest's `health_endpoint` (not both); it must be a path.
fn health_path(
    source: &Source<'_>,
    declared: &Declared,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    let raw = &declared.raw;
    let path = match (&raw.probes.path, &raw.health_endpoint) {
        (Some(_), Some(endpoint)) => {
            errors.push(source.error(
                endpoint.span().start,
                declared.key("health_endpoint"),
                "set `probes.path` or `health_endpoint`, not both",
            ));
            return None;
        }
        (Some(path), None) => path.clone(),
        (None, Some(endpoint)) => endpoint.get_ref().clone(),
        (None, None) => return None,
    };
    if path.starts_with('/') && !path.contains(char::is_whitespace) {
        Some(path)
    } else {
        let offset = raw.health_endpoint.as_ref().map_or(0, |e| e.span().start);
        errors.push(source.error(
            offset,
            declared.key("health_endpoint"),
            format!("`{path}` must be an HTTP path starting with `/`"),
        ));
        None
    }
}

/// A toml or serde error, with a "did you mean" for unknown keys.
fn parse_error(source: &Source<'_>, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start);
    let message = error.message().trim().to_string();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let Some(unknown) = unknown else {
        return source.error(offset, key_at(source.text, offset), message);
    };
    let expected: Vec<&str> = message
        .split("expected")
        .nth(1)
        .unwrap_or_default()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let hint = did_you_mean(unknown, expected.iter().copied()).map_or_else(
        || format!("unknown key; expected one of {}", expected.join(", ")),
        |close| format!("unknown key; did you mean `{close}`?"),
    );
    source.error(offset, unknown, hint)
}

/// The key on the line at `offset` (`port = "x"` → `port`), for errors that point
/// at a value.
fn key_at(text: &str, offset: usize) -> &str {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((key, _)) => key.trim().trim_matches('"'),
        None => line.trim(),
    }
}

fn resolve_daemon(source: &Source<'_>, raw: &RawConfig) -> Result<DaemonConfig, ConfigErrors> {
    let daemon = &raw.daemon;
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let mut errors = Vec::new();
    // A value from the environment is reported under the variable's name.
    let from_env = |variable: &str, problem: String| ConfigError {
        file: source.path.to_path_buf(),
        line: 0,
        key: variable.to_string(),
        message: format!("{problem} (from the environment)"),
    };
    let listen = match env("NANNY_LISTEN") {
        Some(text) => text.parse().map_err(|_| {
            from_env(
                "NANNY_LISTEN",
                format!("`{text}` is not an address like 127.0.0.1:7878"),
            )
        }),
        None => daemon.listen.parse().map_err(|_| {
            let offset = keys::offset_of(source.text, &["daemon", "listen"]).unwrap_or(0);
            source.error(
                offset,
                "daemon.listen",
                format!("`{}` is not an address like 127.0.0.1:7878", daemon.listen),
            )
        }),
    }
    .unwrap_or_else(|error| {
        errors.push(error);
        SocketAddr::from(([127, 0, 0, 1], 7878))
    });
    let max_concurrent_starts = match env("NANNY_MAX_CONCURRENT_STARTS") {
        Some(text) => text.parse().unwrap_or_else(|_| {
            let problem = format!("`{text}` is not a whole number of starts");
            errors.push(from_env("NANNY_MAX_CONCURRENT_STARTS", problem));
            daemon.max_concurrent_starts
        }),
        None => daemon.max_concurrent_starts,
    };
    let log_ring_bytes = match &daemon.log_ring {
        None => DEFAULT_LOG_RING_BYTES,
        Some(text) => match file::vram_mib(text) {
            Ok(mib) if mib > 0 => (mib as usize).saturating_mul(1 << 20),
            Ok(_) => DEFAULT_LOG_RING_BYTES,
            Err(message) => {
                let offset = keys::offset_of(source.text, &["daemon", "log_ring"]).unwrap_or(0);
                errors.push(source.error(offset, "daemon.log_ring", message));
                DEFAULT_LOG_RING_BYTES
            }
        },
    };
    let [low, high] = daemon.port_range;
    if low > high || low == 0 {
        let offset = keys::offset_of(source.text, &["daemon", "port_range"]).unwrap_or(0);
        errors.push(source.error(
            offset,
            "daemon.port_range",
            "must be [first, last] with 0 < first <= last",
        ));
    }
    let mut plugin_dirs = daemon.plugin_dirs.clone();
    plugin_dirs.extend(crate::paths::env_plugin_dirs());
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(DaemonConfig {
        listen,
        token_file: env("NANNY_TOKEN_FILE")
            .map(PathBuf::from)
            .or_else(|| daemon.token_file.clone()),
        plugin_dirs,
        state_dir: env("NANNY_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| daemon.state_dir.clone())
            .unwrap_or_else(crate::paths::default_state_dir),
        services_dir: env("NANNY_SERVICES_DIR")
            .map(PathBuf::from)
            .or_else(|| daemon.services_dir.clone()),
        port_range: daemon.port_range,
        max_concurrent_starts: max_concurrent_starts.max(1),
        log_ring_bytes,
        max_connections: daemon.max_connections.max(1),
    })
}

/// Recent output kept in memory per service unless `daemon.log_ring` says.
pub const DEFAULT_LOG_RING_BYTES: usize = 4 << 20;

/// The service's settings, converted, with unknown and missing keys reported.
fn check_settings(
    source: &Source<'_>,
    declared: &Declared,
    plugin: &crate::plugin::Plugin,
    errors: &mut Vec<ConfigError>,
) -> Vec<Setting> {
    let raw = &declared.raw;
    let specs = &plugin.info.settings;
    let mut settings = Vec::new();
    for (key, value) in &raw.settings {
        let full_key = declared.key(&format!("settings.{}", key.get_ref()));
        if !specs.iter().any(|spec| spec.key == *key.get_ref()) {
            let known = specs.iter().map(|spec| spec.key.as_str());
            let hint = did_you_mean(key.get_ref(), known).map_or_else(
                || {
                    format!(
                        "the {} backend has no setting `{}`",
                        plugin.name(),
                        key.get_ref()
                    )
                },
                |close| {
                    format!(
                        "the {} backend has no setting `{}`; did you mean `{close}`?",
                        plugin.name(),
                        key.get_ref()
                    )
                },
            );
            errors.push(source.error(key.span().start, full_key, hint));
            continue;
        }
        match to_value(value.get_ref()) {
            Some(converted) => settings.push(Setting {
                key: key.get_ref().clone(),
                value: converted,
            }),
            None => errors.push(source.error(
                value.span().start,
                full_key,
                "must be text, a number, true/false or a list of strings",
            )),
        }
    }
    for spec in specs.iter().filter(|spec| spec.required) {
        if !raw.settings.keys().any(|key| *key.get_ref() == spec.key) {
            errors.push(source.error(
                declared.name_offset,
                declared.key(&format!("settings.{}", spec.key)),
                format!("required by the {} backend: {}", plugin.name(), spec.help),
            ));
        }
    }
    settings
}

fn to_value(value: &toml::Value) -> Option<Value> {
    Some(match value {
        toml::Value::String(text) => Value::Text(text.clone()),
        toml::Value::Integer(number) => Value::Integer(*number),
        toml::Value::Float(number) => Value::Float(*number),
        toml::Value::Boolean(flag) => Value::Boolean(*flag),
        toml::Value::Array(items) => Value::List(
            items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

fn restart_policy(setting: &RestartSetting) -> RestartPolicy {
    match setting {
        RestartSetting::Policy(mode) => RestartPolicy {
            mode: *mode,
            ..RestartPolicy::default()
        },
        RestartSetting::Detailed(raw) => {
            let defaults = BackoffPolicy::default();
            RestartPolicy {
                mode: raw.policy,
                max_restarts: raw.max_restarts,
                backoff: BackoffPolicy {
                    initial: raw.backoff.unwrap_or(defaults.initial),
                    max: raw.max_backoff.unwrap_or(defaults.max),
                    reset_after: raw.reset_after.unwrap_or(defaults.reset_after),
                },
            }
        }
    }
}

/// Where the ports nanny picked are remembered, under `state_dir`.
const PORTS_FILE: &str = "ports.json";

impl Config {
    /// The ports picked for services in earlier runs, by service.
    fn remembered_ports(&self) -> BTreeMap<String, u16> {
        std::fs::read(self.daemon.state_dir.join(PORTS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Remembers the ports picked for services that configure none, so that the
    /// next run gives each the same one: adding a service moves nobody else's,
    /// and a container adopted after `kill -9` keeps the port it holds.
    pub fn remember_ports(&self, specs: &[ServiceSpec]) -> std::io::Result<()> {
        let mut remembered = self.remembered_ports();
        for spec in specs {
            let configured = self
                .services
                .iter()
                .any(|declared| declared.name == spec.service.name && declared.raw.port.is_some());
            if !configured {
                remembered.insert(spec.service.name.clone(), spec.service.port);
            }
        }
        let bytes = serde_json::to_vec_pretty(&remembered).map_err(std::io::Error::other)?;
        crate::files::write_atomically(&self.daemon.state_dir.join(PORTS_FILE), &bytes)
    }
}

/// Ports for services that configure none: the one remembered for the service
/// when it is still in the range and nobody else's, else the next free one,
/// skipping configured and remembered ports and ports in use.
struct PortPicker {
    next: u32,
    last: u32,
    taken: Vec<u16>,
    remembered: BTreeMap<String, u16>,
}

impl PortPicker {
    fn new(
        [first, last]: [u16; 2],
        configured: impl Iterator<Item = u16>,
        remembered: BTreeMap<String, u16>,
    ) -> Self {
        let configured: Vec<u16> = configured.collect();
        let range = first..=last;
        // A remembered port that is now configured for someone is forgotten.
        let remembered: BTreeMap<String, u16> = remembered
            .into_iter()
            .filter(|(_, port)| range.contains(port) && !configured.contains(port))
            .collect();
        let mut taken = configured;
        taken.extend(remembered.values());
        Self {
            next: u32::from(first),
            last: u32::from(last),
            taken,
            remembered,
        }
    }

    /// The port for `service`. Its remembered port is kept even if something
    /// listens there now: that may be its own adopted container, and a real
    /// conflict is named at launch.
    fn pick(&mut self, service: &str) -> Option<u16> {
        if let Some(port) = self.remembered.get(service) {
            return Some(*port);
        }
        self.next()
    }

    fn next(&mut self) -> Option<u16> {
        while self.next <= self.last {
            let port = self.next as u16;
            self.next += 1;
            if !self.taken.contains(&port)
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                self.taken.push(port);
                return Some(port);
            }
        }
        None
    }
}

#[cfg(test)]
mod catalog_tests {
    use super::*;

    #[test]
    fn catalog_templates_are_read_with_their_gpus_and_context_and_checked() {
        let text = r#"
[catalog]
dirs = ["models"]

[[catalog.templates]]
match = "*.gguf"
backend = "llama-cpp"
gpus = 1
idle_timeout = "10m"
settings = { ctx_size = 8192 }

[[catalog.templates]]
match = "dir:*"
backend = "vllm"
keep = true
"#;
        let config = Config::parse(Path::new("/etc/nanny/nanny.toml"), text.into()).unwrap();
        let templates = &config.catalog.templates;
        assert_eq!(templates[0].gpus, crate::gpu::GpuDevices::Count(1));
        assert_eq!(templates[0].context, Some(8192));
        assert_eq!(
            templates[0].idle_timeout,
            Some(std::time::Duration::from_secs(600))
        );
        assert!(templates[1].keep && templates[1].gpus == crate::gpu::GpuDevices::None);
        assert!(config.catalog.places.dirs[0].starts_with("/etc/nanny/models"));

        let errors_of = |text: &str| {
            Config::parse(Path::new("nanny.toml"), text.into())
                .err()
                .map(|errors| errors.to_string())
                .unwrap_or_default()
        };
        let bad = "[[catalog.templates]]\nmatch = \"a/*.gguf\"\nbackend = \"x\"\ngpus = \"lots\"\n";
        let errors = errors_of(bad);
        for key in ["catalog.templates[0].match", "catalog.templates[0].gpus"] {
            assert!(errors.contains(key), "{key} in {errors}");
        }
        let unknown =
            errors_of("[[catalog.templates]]\nmatch = \"*\"\nbackend = \"x\"\nflavour = 1\n");
        assert!(
            unknown.contains("nanny.toml:4: `flavour`: unknown key"),
            "{unknown}"
        );
    }
}
