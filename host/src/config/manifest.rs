//! Service manifests: every `<dir>/service.toml` or `service.yaml` under
//! `services_dir` declares one service, with the same keys as `[services.<name>]`
//! plus `name` (else the folder's name) and the fields people already write in such
//! manifests (`health_endpoint`, `gpu_required`, `vram_gb`). A manifest beside a
//! compose file that names no backend is a `compose` service.

use std::path::{Path, PathBuf};

use super::error::{ConfigError, Source};
use super::file::RawService;
use super::parse_error;

const FILE_NAMES: [&str; 3] = ["service.toml", "service.yaml", "service.yml"];

/// One manifest as read from disk; YAML keeps its own text for error lines.
pub(super) struct ManifestFile {
    pub path: PathBuf,
    /// The TOML the service was parsed from (the file itself, or YAML translated).
    pub text: String,
    pub yaml: Option<String>,
}

impl ManifestFile {
    pub fn source(&self) -> Source<'_> {
        Source {
            path: &self.path,
            text: &self.text,
            yaml: self.yaml.as_deref(),
        }
    }

    /// The folder the manifest lives in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// Whether a folder under `services_dir` is a template or hidden (`_base`,
/// `.git`): such folders hold no service, as in the repositories people keep
/// their manifests in.
fn is_template(folder: &Path) -> bool {
    folder
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with('_') || name.starts_with('.'))
}

/// The manifests under `dir`, one per sub-folder, in name order; template and
/// hidden folders are skipped.
pub(super) fn discover(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot read `{}`: {error}", dir.display()))?;
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && !is_template(path))
        .collect();
    folders.sort();
    let mut found = Vec::new();
    for folder in folders {
        let present: Vec<PathBuf> = FILE_NAMES
            .iter()
            .map(|name| folder.join(name))
            .filter(|path| path.is_file())
            .collect();
        match present.as_slice() {
            [] => {}
            [one] => found.push(one.clone()),
            several => {
                return Err(format!(
                    "`{}` has {} manifests; keep one",
                    folder.display(),
                    several.len()
                ))
            }
        }
    }
    Ok(found)
}

/// Reads and parses one manifest.
pub(super) fn read(path: &Path) -> Result<(ManifestFile, RawService), Vec<ConfigError>> {
    let whole_file = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        key: String::new(),
        message,
    };
    let original = std::fs::read_to_string(path)
        .map_err(|error| vec![whole_file(format!("cannot read: {error}"))])?;
    let is_yaml = path
        .extension()
        .is_some_and(|extension| extension != "toml");
    let file = if is_yaml {
        ManifestFile {
            path: path.to_path_buf(),
            text: yaml_to_toml(path, &original).map_err(|error| vec![error])?,
            yaml: Some(original),
        }
    } else {
        ManifestFile {
            path: path.to_path_buf(),
            text: original,
            yaml: None,
        }
    };
    // Every unknown key at once; serde would stop at the first.
    let unknown = super::keys::unknown_in_manifest(&file.source());
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let mut service: RawService =
        toml::from_str(&file.text).map_err(|error| vec![parse_error(&file.source(), &error)])?;
    // A folder that holds a compose file and says no backend is a compose project.
    if service.backend.is_none() && has_compose_file(file.dir()) {
        service.backend = Some(toml::Spanned::new(0..0, "compose".to_string()));
    }
    Ok((file, service))
}

fn has_compose_file(folder: &Path) -> bool {
    crate::runtime::compose::FILE_NAMES
        .iter()
        .any(|name| folder.join(name).is_file())
}

/// YAML → TOML text, so one set of types (and one set of error messages) reads both.
fn yaml_to_toml(path: &Path, yaml: &str) -> Result<String, ConfigError> {
    let error = |line: usize, message: String| ConfigError {
        file: path.to_path_buf(),
        line,
        key: String::new(),
        message,
    };
    let value: toml::Value = serde_yaml_ng::from_str(yaml).map_err(|problem| {
        let line = problem.location().map_or(0, |location| location.line());
        // serde_yaml_ng appends " at line L column C"; the line is ours to report.
        let message = problem.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        error(line, message)
    })?;
    if !value.is_table() {
        return Err(error(1, "a manifest is a mapping of keys to values".into()));
    }
    toml::to_string(&value).map_err(|problem| error(0, problem.to_string()))
}
