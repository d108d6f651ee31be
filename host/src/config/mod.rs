//! `nanny.toml`: parsing, `NANNY_*` overrides, and validation against the plugins.
//! Every error names the file, the line and the key.

mod duration;
mod error;
mod file;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::supervise::Condition;
use error::Source;
pub use error::{did_you_mean, ConfigError, ConfigErrors};
use file::{RawConfig, RawService, RestartSetting};

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
}

/// A parsed configuration file.
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    text: String,
    raw: RawConfig,
}

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

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigErrors> {
        let source = Source { path, text: &text };
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|error| ConfigErrors(vec![parse_error(&source, &error)]))?;
        let daemon = resolve_daemon(&source, &raw)?;
        let mut errors = Vec::new();
        for name in raw.services.keys() {
            if !crate::names::is_valid(name.get_ref()) {
                let message = "service names are lowercase letters, digits and `_.-`, starting with a letter or digit, at most 63";
                errors.push(source.error(
                    name.span().start,
                    format!("services.{}", name.get_ref()),
                    message,
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self {
            path: path.to_path_buf(),
            daemon,
            text,
            raw,
        })
    }

    fn source(&self) -> Source<'_> {
        Source {
            path: &self.path,
            text: &self.text,
        }
    }

    /// The services, checked against the plugins in `catalog`: backends exist,
    /// settings are the plugin's, dependencies exist and form no cycle; ports are
    /// assigned from `port_range` where none is configured.
    pub fn service_specs(&self, catalog: &Catalog) -> Result<Vec<ServiceSpec>, ConfigErrors> {
        let source = self.source();
        let mut errors = Vec::new();
        let mut specs = Vec::new();
        let mut ports = PortPicker::new(
            self.daemon.port_range,
            self.raw.services.values().filter_map(|s| s.port),
        );
        for (name, raw) in &self.raw.services {
            let key = |suffix: &str| format!("services.{}.{suffix}", name.get_ref());
            let Some(plugin) = catalog.get(raw.backend.get_ref()) else {
                let known: Vec<&str> = catalog.plugins().map(|p| p.name()).collect();
                let hint = did_you_mean(raw.backend.get_ref(), known.iter().copied()).map_or_else(
                    || format!("; known backends: {}", known.join(", ")),
                    |close| format!("; did you mean `{close}`?"),
                );
                errors.push(source.error(
                    raw.backend.span().start,
                    key("backend"),
                    format!("no backend named `{}`{hint}", raw.backend.get_ref()),
                ));
                continue;
            };
            let settings = check_settings(&source, name.get_ref(), raw, plugin, &mut errors);
            let depends_on: Vec<(String, Condition)> = match &raw.depends_on {
                None => Vec::new(),
                Some(value) => {
                    let offset = value.span().start;
                    let entries = file::depends_on(value.get_ref()).unwrap_or_else(|message| {
                        errors.push(source.error(offset, key("depends_on"), message));
                        Vec::new()
                    });
                    for (dependency, _) in &entries {
                        if !self
                            .raw
                            .services
                            .keys()
                            .any(|other| other.get_ref() == dependency)
                        {
                            let known = self.raw.services.keys().map(|k| k.get_ref().as_str());
                            let hint = did_you_mean(dependency, known)
                                .map_or(String::new(), |close| {
                                    format!("; did you mean `{close}`?")
                                });
                            errors.push(source.error(
                                offset,
                                key("depends_on"),
                                format!("no service named `{dependency}`{hint}"),
                            ));
                        }
                    }
                    entries
                }
            };
            let port = match raw.port.or_else(|| ports.next()) {
                Some(port) => port,
                None => {
                    errors.push(source.error(
                        name.span().start,
                        key("port"),
                        "no free port left in `daemon.port_range`",
                    ));
                    continue;
                }
            };
            specs.push(ServiceSpec {
                service: Service {
                    name: name.get_ref().clone(),
                    host: raw.host.clone(),
                    port,
                    model: raw.model.clone(),
                    args: raw.args.clone(),
                    env: raw
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    work_dir: raw.work_dir.as_ref().map(|dir| dir.display().to_string()),
                    gpus: Vec::new(),
                    settings,
                },
                plugin: plugin.clone(),
                restart: restart_policy(&raw.restart),
                startup_timeout: raw.startup_timeout,
                depends_on,
                autostart: raw.autostart,
                probes: ProbeOverrides {
                    readiness_period: raw.probes.readiness_period,
                    liveness_period: raw.probes.liveness_period,
                    liveness_timeout: raw.probes.liveness_timeout,
                },
            });
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
                    .raw
                    .services
                    .keys()
                    .find(|name| *name.get_ref() == cycle[0])
                    .map_or(0, |name| name.span().start);
                errors.push(source.error(
                    first,
                    format!("services.{}.depends_on", cycle[0]),
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
}

/// A toml or serde error, with a "did you mean" for unknown keys.
fn parse_error(source: &Source<'_>, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start);
    let message = error.message().trim().to_string();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let Some(unknown) = unknown else {
        let key = source
            .text
            .get(error.span().unwrap_or(0..0))
            .unwrap_or_default()
            .trim();
        return source.error(offset, key.lines().next().unwrap_or_default(), message);
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

fn resolve_daemon(source: &Source<'_>, raw: &RawConfig) -> Result<DaemonConfig, ConfigErrors> {
    let daemon = &raw.daemon;
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let mut errors = Vec::new();
    let listen_text = env("NANNY_LISTEN").unwrap_or_else(|| daemon.listen.clone());
    let listen = listen_text.parse().unwrap_or_else(|_| {
        let offset = source.text.find("listen").unwrap_or(0);
        errors.push(source.error(
            offset,
            "daemon.listen",
            format!("`{listen_text}` is not an address like 127.0.0.1:7878"),
        ));
        SocketAddr::from(([127, 0, 0, 1], 7878))
    });
    let max_concurrent_starts = match env("NANNY_MAX_CONCURRENT_STARTS") {
        Some(text) => text.parse().unwrap_or(daemon.max_concurrent_starts),
        None => daemon.max_concurrent_starts,
    };
    let [low, high] = daemon.port_range;
    if low > high || low == 0 {
        let offset = source.text.find("port_range").unwrap_or(0);
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
    })
}

/// The service's settings, converted, with unknown and missing keys reported.
fn check_settings(
    source: &Source<'_>,
    service: &str,
    raw: &RawService,
    plugin: &crate::plugin::Plugin,
    errors: &mut Vec<ConfigError>,
) -> Vec<Setting> {
    let specs = &plugin.info.settings;
    let mut settings = Vec::new();
    for (key, value) in &raw.settings {
        let full_key = format!("services.{service}.settings.{}", key.get_ref());
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
            let offset = source
                .text
                .find(&format!("services.{service}"))
                .unwrap_or(raw.backend.span().start);
            errors.push(source.error(
                offset,
                format!("services.{service}.settings.{}", spec.key),
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

/// Free ports from the range, skipping configured ones and ports in use.
struct PortPicker {
    next: u32,
    last: u32,
    taken: Vec<u16>,
}

impl PortPicker {
    fn new([first, last]: [u16; 2], taken: impl Iterator<Item = u16>) -> Self {
        Self {
            next: u32::from(first),
            last: u32::from(last),
            taken: taken.collect(),
        }
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
