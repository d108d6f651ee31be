//! Which plugins exist: the builtins embedded in the binary, then `.wasm` files in
//! the plugin directories. A file overrides a builtin of the same name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Component;
use wasmtime::Store;

use super::bindings::{Linked, WIT_VERSIONS};
use super::engine::PluginEngine;
use super::error::PluginError;
use super::grants::{Grants, Refusal};
use super::reply::{check_reply, classify};
use super::sandbox::StoreState;

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The embedded component of the builtin plugin `name` (its directory name).
pub fn builtin_wasm(name: &str) -> Option<&'static [u8]> {
    BUILTIN_PLUGINS
        .iter()
        .find(|(dir, _)| *dir == name)
        .map(|(_, wasm)| *wasm)
}

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Builtin,
    File(PathBuf),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Builtin => f.write_str("builtin"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Serialize for PluginSource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What a plugin says about itself, plus where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub summary: String,
    pub source: PluginSource,
    pub wit_version: String,
    pub settings: Vec<SettingInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SettingInfo {
    pub key: String,
    pub help: String,
    pub default: Option<serde_json::Value>,
    pub required: bool,
}

/// What the user wrote for one plugin in `[plugins.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub grants: Grants,
    /// A file of this name may replace the builtin of the same name.
    pub replaces_builtin: bool,
}

/// Every plugin's policy, by plugin name.
pub type Policies = BTreeMap<String, Policy>;

/// A loaded plugin, ready to be instantiated once per service.
pub struct Plugin {
    pub info: PluginInfo,
    /// What its plans may launch; `None` for a builtin (trusted).
    pub grants: Option<Grants>,
    pub(super) linked: Linked,
    pub(super) engine: Arc<PluginEngine>,
}

impl Plugin {
    /// Whether a plan of this plugin's may run: always for a builtin; for a
    /// file, when it stays within the grants (`env` is the service's own).
    pub fn check_plan(
        &self,
        launch: &super::Launch,
        env: &[(String, String)],
    ) -> Result<(), Refusal> {
        match &self.grants {
            None => Ok(()),
            Some(grants) => grants.check(&self.info.name, launch, env),
        }
    }

    /// Compiles (or loads from the cache) `wasm`, checks its WIT version and asks it
    /// to describe itself.
    pub fn load(
        engine: &Arc<PluginEngine>,
        source: PluginSource,
        wasm: &[u8],
    ) -> Result<Self, PluginError> {
        let origin = source.to_string();
        let component =
            engine
                .cache
                .load(&engine.engine, wasm)
                .map_err(|error| PluginError::Compile {
                    origin: origin.clone(),
                    message: format!("{error:#}"),
                })?;
        let wit_version =
            wit_version(&engine.engine, &component).ok_or_else(|| PluginError::NotABackend {
                origin: origin.clone(),
            })?;
        if !speaks(&wit_version) {
            return Err(PluginError::IncompatibleWit {
                origin,
                found: wit_version,
                supported: WIT_VERSIONS.join(", nanny:backend@"),
            });
        }
        let instantiate_error = |error: wasmtime::Error| PluginError::Instantiate {
            plugin: origin.clone(),
            message: format!("{error:#}"),
        };
        let linked =
            Linked::new(&engine.linker, &component, &wit_version).map_err(instantiate_error)?;

        let mut store = new_store(engine, &origin, "");
        let backend = linked.instantiate(&mut store).map_err(instantiate_error)?;
        let described = backend.describe(&mut store);
        let described = described.map_err(|error| classify(&origin, "describe", error, &store))?;
        check_reply(&origin, "describe", &described, engine.limits.reply_bytes)?;
        if !crate::names::is_valid(&described.name) {
            return Err(PluginError::BadName {
                plugin: origin,
                name: described.name,
            });
        }
        // A file may launch nothing until the user grants it something.
        let grants = match source {
            PluginSource::Builtin => None,
            PluginSource::File(_) => Some(Grants::default()),
        };
        Ok(Self {
            grants,
            info: PluginInfo {
                name: described.name,
                version: described.version,
                summary: described.summary,
                source,
                wit_version,
                settings: described
                    .settings
                    .into_iter()
                    .map(SettingInfo::from)
                    .collect(),
            },
            linked,
            engine: engine.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }
}

/// A store with the sandbox's limits, its deadline armed for the first call.
pub(super) fn new_store(engine: &PluginEngine, plugin: &str, service: &str) -> Store<StoreState> {
    let mut store = Store::new(
        &engine.engine,
        StoreState::new(
            plugin,
            service,
            engine.limits.memory_bytes,
            engine.limits.call_deadline,
        ),
    );
    store.limiter(|state| &mut state.memory);
    store.set_epoch_deadline(engine.limits.deadline_ticks());
    store
}

/// The version of the `nanny:backend` package the component exports.
fn wit_version(engine: &wasmtime::Engine, component: &Component) -> Option<String> {
    let ty = component.component_type();
    let mut exports = ty.exports(engine);
    exports.find_map(|(name, _)| {
        let (package, version) = name.strip_prefix("nanny:backend/")?.split_once('@')?;
        (package == "session").then(|| version.to_string())
    })
}

/// Within a minor series only imports are added, so a plugin links when one of
/// the versions we speak has its minor and a patch at least as new as its own.
fn speaks(version: &str) -> bool {
    let numbers = |version: &str| -> Vec<u64> {
        version
            .split('.')
            .filter_map(|part| part.parse().ok())
            .collect()
    };
    let theirs = numbers(version);
    theirs.len() == 3
        && WIT_VERSIONS.iter().any(|ours| {
            let ours = numbers(ours);
            theirs[..2] == ours[..2] && theirs[2] <= ours[2]
        })
}

impl From<super::types::SettingSpec> for SettingInfo {
    fn from(spec: super::types::SettingSpec) -> Self {
        let default = spec.default.as_ref().map(super::value_json);
        Self {
            key: spec.key,
            help: spec.help,
            default,
            required: spec.required,
        }
    }
}

/// Every plugin this daemon can use, and what went wrong loading the others.
pub struct Catalog {
    plugins: BTreeMap<String, Arc<Plugin>>,
    problems: Vec<PluginError>,
}

impl Catalog {
    /// Loads the builtins, then every `*.wasm` in `plugin_dirs` (in order; the
    /// first file of a name wins over later ones). A file replaces the builtin
    /// of its name only where its policy says `override = true`. A broken file
    /// is recorded as a problem and skipped: it never stops the others. Files
    /// get the grants of their policy (none: they may launch nothing).
    pub fn load(engine: &Arc<PluginEngine>, plugin_dirs: &[PathBuf], policies: &Policies) -> Self {
        let mut catalog = Self {
            plugins: BTreeMap::new(),
            problems: Vec::new(),
        };
        for (_, wasm) in BUILTIN_PLUGINS {
            match Plugin::load(engine, PluginSource::Builtin, wasm) {
                Ok(plugin) => {
                    catalog
                        .plugins
                        .insert(plugin.name().to_string(), Arc::new(plugin));
                }
                Err(problem) => catalog.problems.push(problem),
            }
        }
        let mut from_files = BTreeMap::new();
        for path in plugin_dirs.iter().flat_map(|dir| wasm_files(dir)) {
            let loaded = std::fs::read(&path)
                .map_err(|source| PluginError::Read {
                    path: path.clone(),
                    source,
                })
                .and_then(|wasm| Plugin::load(engine, PluginSource::File(path.clone()), &wasm));
            match loaded {
                Ok(plugin) if from_files.contains_key(plugin.name()) => {
                    tracing::warn!(path = %path.display(), "ignoring plugin `{}`: an earlier plugin directory has one of that name", plugin.name());
                }
                Ok(plugin) => {
                    let policy = policies.get(plugin.name()).cloned().unwrap_or_default();
                    if catalog.plugins.contains_key(plugin.name()) {
                        if !policy.replaces_builtin {
                            catalog.problems.push(PluginError::ShadowsBuiltin {
                                path: path.clone(),
                                name: plugin.name().to_string(),
                            });
                            continue;
                        }
                        tracing::warn!(path = %path.display(), "the plugin `{}` from this file replaces the builtin (`override = true`)", plugin.name());
                    }
                    let mut plugin = plugin;
                    plugin.grants = Some(policy.grants);
                    from_files.insert(plugin.name().to_string(), Arc::new(plugin));
                }
                Err(problem) => catalog.problems.push(problem),
            }
        }
        catalog.plugins.extend(from_files);
        catalog
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// Plugins in name order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Plugin files that could not be loaded, and why.
    pub fn problems(&self) -> &[PluginError] {
        &self.problems
    }
}

fn wasm_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::debug!(dir = %dir.display(), "plugin directory not readable; skipped");
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm") && path.is_file())
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::speaks;

    #[test]
    fn speaks_its_own_minor_series_up_to_their_patches() {
        assert!(speaks("0.1.0"));
        assert!(speaks("0.2.0"));
        assert!(!speaks("0.1.1"));
        assert!(!speaks("0.2.1"));
        assert!(!speaks("0.3.0"));
        assert!(!speaks("0.0.1"));
        assert!(!speaks("1.1.0"));
        assert!(!speaks("0.1"));
    }
}
