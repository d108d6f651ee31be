//! The model catalog: the models on this machine's disks, found by walking
//! `[catalog] dirs` (and the Hugging Face hub cache) and matching each file
//! or model folder against the templates that say how to serve its kind.
//! Scanning happens at start-up, on reload and when the folders change, on a
//! blocking thread, never on a request's path; what could not be read is
//! reported per entry. A rescan reads again only the GGUF headers of files
//! that changed.

pub mod gguf;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;

/// How to serve one kind of model: `match = "*.gguf"` (a glob on file names)
/// or `"dir:*"` (on the names of folders that hold a `config.json`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    pub pattern: String,
    /// The context the template serves at, when its settings say
    /// (`ctx_size`, `max_model_len`): the KV cache of the VRAM estimate.
    pub context: Option<u64>,
    /// The backend that serves what the template matches.
    pub backend: String,
    /// The GPUs each of its services leases (for the model's estimated VRAM).
    pub gpus: crate::gpu::GpuDevices,
    /// Its settings, as the plugin takes them.
    pub settings: Vec<crate::plugin::Setting>,
    /// Stopped this long after its last request; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// Kept (in `nanny ps`) once stopped; else forgotten until asked for again.
    pub keep: bool,
}

/// One model the catalog found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CatalogModel {
    /// The name clients use: the file's stem (a split model's, without the
    /// part), the hub's `org/name`, or the folder's name, normalised.
    pub id: String,
    /// The file (a split model's first part) or the folder.
    pub path: PathBuf,
    /// Bytes on disk, every part of a split model together.
    pub size_bytes: u64,
    /// When the file last changed: a rescan reads its header again only then.
    #[serde(skip)]
    pub modified: Option<std::time::SystemTime>,
    /// The `match` of the template that claimed it.
    pub template: String,
    /// For a split GGUF, how many files it is.
    pub parts: u32,
    /// What its GGUF header says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<gguf::GgufInfo>,
    /// Weights and KV cache at the template's context (else the model's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vram_estimate_mib: Option<u64>,
}

/// Something found that could not become a model, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CatalogProblem {
    pub path: PathBuf,
    pub problem: String,
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModelCatalog {
    pub models: Vec<CatalogModel>,
    pub problems: Vec<CatalogProblem>,
}

/// Where to look.
#[derive(Debug, Clone, Default)]
pub struct Places {
    pub dirs: Vec<PathBuf>,
    /// The hub cache's `hub` folder (`$HF_HOME/hub`), read only.
    pub huggingface_hub: Option<PathBuf>,
}

impl Places {
    /// The hub cache where Hugging Face's tools put it: `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub fn huggingface_hub_from_env() -> Option<PathBuf> {
        let home = std::env::var_os("HF_HOME").map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface"))
        })?;
        Some(home.join("hub"))
    }
}

/// The catalog as the daemon holds it: scanned at start, on reload and when
/// its folders change (on a blocking thread), read by the API and the gateway.
#[derive(Clone)]
pub struct Shelf {
    held: Arc<RwLock<(ModelCatalog, Vec<Template>)>>,
    /// The folders' watcher; replaced when the places change (a reload).
    watching: Arc<Mutex<Option<notify::RecommendedWatcher>>>,
    /// Told how many models each scan found.
    announce: Arc<dyn Fn(usize) + Send + Sync>,
}

/// Changes that come together (a copy in progress, a folder of files) are
/// one rescan, this long after the first.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

impl Default for Shelf {
    fn default() -> Self {
        Self::new(|_| {})
    }
}

impl Shelf {
    /// An empty shelf that tells `announce` how many models each scan found.
    pub fn new(announce: impl Fn(usize) + Send + Sync + 'static) -> Self {
        Self {
            held: Arc::default(),
            watching: Arc::default(),
            announce: Arc::new(announce),
        }
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, (ModelCatalog, Vec<Template>)> {
        self.held.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the last scan found.
    pub fn read(&self) -> ModelCatalog {
        self.held().0.clone()
    }

    /// The ids of the models the last scan found.
    pub fn ids(&self) -> Vec<String> {
        self.held()
            .0
            .models
            .iter()
            .map(|model| model.id.clone())
            .collect()
    }

    /// The model clients call `id`, and the template that serves it.
    pub fn find(&self, id: &str) -> Option<(CatalogModel, Template)> {
        let held = self.held();
        let (catalog, templates) = &*held;
        let model = catalog.models.iter().find(|model| model.id == id)?;
        let template = templates
            .iter()
            .find(|template| template.pattern == model.template)?;
        Some((model.clone(), template.clone()))
    }

    /// Scans `places` now and keeps what it finds.
    async fn rescan(&self, places: Places, templates: Vec<Template>) {
        let before = self.read();
        let scanned = tokio::task::spawn_blocking(move || {
            let catalog = ModelCatalog::scan_after(&places, &templates, &before);
            (catalog, templates)
        })
        .await;
        if let Ok(scanned) = scanned {
            let found = scanned.0.models.len();
            *self.held.write().unwrap_or_else(PoisonError::into_inner) = scanned;
            (self.announce)(found);
        }
    }

    /// Scans `places` now, and again whenever something changes in their
    /// folders, until the next `follow`. A folder that cannot be watched is
    /// said (and rescanned on reload only). Without templates nothing can be
    /// a model: the catalog is empty, and nothing is scanned or watched.
    pub async fn follow(&self, places: Places, templates: Vec<Template>) {
        use notify::Watcher;
        if templates.is_empty() {
            *self.watching.lock().unwrap_or_else(PoisonError::into_inner) = None;
            *self.held.write().unwrap_or_else(PoisonError::into_inner) = Default::default();
            return;
        }
        self.rescan(places.clone(), templates.clone()).await;
        let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let worth =
                event.is_ok_and(|event| !matches!(event.kind, notify::EventKind::Access(_)));
            if worth {
                let _ = changed.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!("the catalog's folders are not watched: {error}");
                return;
            }
        };
        for dir in places.dirs.iter().chain(&places.huggingface_hub) {
            if let Err(error) = watcher.watch(dir, notify::RecursiveMode::Recursive) {
                tracing::warn!("{} is not watched: {error}", dir.display());
            }
        }
        // The old watcher goes, and with it its task (its channel closes).
        *self.watching.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
        let shelf = self.clone();
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                shelf.rescan(places.clone(), templates.clone()).await;
            }
        });
    }
}

/// The service that serves `model` as `template` says: named `cat-<id>`,
/// the model's path as its `model`, listening on `port`, stopped until asked
/// for, and routed by the model's id.
pub fn service_for(
    model: &CatalogModel,
    template: &Template,
    plugin: std::sync::Arc<crate::plugin::Plugin>,
    port: u16,
) -> crate::supervise::ServiceSpec {
    let service = crate::plugin::Service {
        name: format!("cat-{}", model.id),
        host: "127.0.0.1".into(),
        port,
        model: Some(model.path.display().to_string()),
        args: Vec::new(),
        env: Vec::new(),
        work_dir: None,
        gpus: Vec::new(),
        settings: template.settings.clone(),
    };
    let mut spec = crate::supervise::ServiceSpec::new(service, plugin);
    spec.autostart = false;
    spec.models = vec![model.id.clone()];
    spec.idle_stop = template.idle_timeout;
    spec.gpu = crate::gpu::GpuRequest {
        devices: template.gpus.clone(),
        vram_mib: model.vram_estimate_mib,
        ..crate::gpu::GpuRequest::default()
    };
    spec.description = Some(format!(
        "catalog model `{}` ({}), served as `{}` says",
        model.id,
        model.path.display(),
        template.pattern
    ));
    spec
}

/// A port of `range` no service has, that nothing listens on now.
pub fn free_port(range: [u16; 2], taken: &[u16]) -> Option<u16> {
    (range[0]..=range[1])
        .filter(|port| !taken.contains(port))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
}

/// A candidate before ids are given out.
struct Found {
    name: String,
    path: PathBuf,
    size_bytes: u64,
    /// When the file (a split model's first part) last changed.
    modified: Option<std::time::SystemTime>,
    template: usize,
    parts: u32,
    gguf: bool,
}

/// A file in a folder being walked.
struct Entry {
    name: String,
    path: PathBuf,
    size: u64,
    modified: Option<std::time::SystemTime>,
}

impl ModelCatalog {
    /// Walks `places` and matches what it finds against `templates` (the
    /// first that matches wins).
    pub fn scan(places: &Places, templates: &[Template]) -> Self {
        Self::scan_after(places, templates, &Self::default())
    }

    /// As [`scan`](Self::scan), taking the GGUF headers of the files that did
    /// not change (same size, same modification time) from `before`.
    pub fn scan_after(places: &Places, templates: &[Template], before: &Self) -> Self {
        let mut walk = Walk {
            templates,
            found: Vec::new(),
            problems: Vec::new(),
            seen_dirs: HashSet::new(),
        };
        for dir in &places.dirs {
            walk.dir(dir, None);
        }
        if let Some(hub) = &places.huggingface_hub {
            walk.hub(hub);
        }
        walk.finish(before)
    }
}

struct Walk<'a> {
    templates: &'a [Template],
    found: Vec<Found>,
    problems: Vec<CatalogProblem>,
    /// (device, inode) of every folder entered: a symlink loop ends here.
    seen_dirs: HashSet<(u64, u64)>,
}

impl Walk<'_> {
    fn problem(&mut self, path: &Path, problem: impl Into<String>) {
        self.problems.push(CatalogProblem {
            path: path.to_path_buf(),
            problem: problem.into(),
        });
    }

    fn template_for(&self, name: &str, folder: bool) -> Option<usize> {
        self.templates.iter().position(|template| {
            match (template.pattern.strip_prefix("dir:"), folder) {
                (Some(pattern), true) => crate::glob::matches(pattern, name),
                (None, false) => crate::glob::matches(&template.pattern, name),
                _ => false,
            }
        })
    }

    /// Everything under `root`; `named` names a model folder found there
    /// (the hub's `org/name`) instead of its own name.
    fn dir(&mut self, root: &Path, named: Option<&str>) {
        use std::os::unix::fs::MetadataExt;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let identity = match std::fs::metadata(&dir) {
                Ok(meta) => (meta.dev(), meta.ino()),
                Err(error) => {
                    self.problem(&dir, format!("cannot read it: {error}"));
                    continue;
                }
            };
            if !self.seen_dirs.insert(identity) {
                self.problem(
                    &dir,
                    "seen already (a symbolic link loop, or two links to one folder): skipped",
                );
                continue;
            }
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) => {
                    self.problem(&dir, format!("cannot list it: {error}"));
                    continue;
                }
            };
            let mut files: Vec<Entry> = Vec::new();
            let mut model_folder = false;
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                // Followed through links: a linked model is a model.
                match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_dir() => stack.push(path),
                    Ok(meta) => {
                        model_folder |= name == "config.json";
                        files.push(Entry {
                            name,
                            path,
                            size: meta.len(),
                            modified: meta.modified().ok(),
                        });
                    }
                    Err(error) => self.problem(&path, format!("cannot read it: {error}")),
                }
            }
            if model_folder {
                let name = match named {
                    Some(name) if dir == root => name.to_string(),
                    _ => dir
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                };
                if let Some(template) = self.template_for(&name, true) {
                    let size_bytes = files.iter().map(|file| file.size).sum();
                    self.found.push(Found {
                        name,
                        path: dir.clone(),
                        size_bytes,
                        modified: None,
                        template,
                        parts: 1,
                        gguf: false,
                    });
                    continue;
                }
            }
            self.files(files);
        }
    }

    /// A folder's files: single models, and split GGUFs as one model each.
    fn files(&mut self, files: Vec<Entry>) {
        let mut splits: BTreeMap<String, Split> = BTreeMap::new();
        for file in files {
            let Some(template) = self.template_for(&file.name, false) else {
                continue;
            };
            let stem = file
                .name
                .rsplit_once('.')
                .map_or(file.name.as_str(), |(stem, _)| stem);
            let is_gguf = file.name.to_ascii_lowercase().ends_with(".gguf");
            if let Some((base, part, of)) = is_gguf.then(|| split_part(stem)).flatten() {
                let entry = splits
                    .entry(base.to_string())
                    .or_insert((of, BTreeMap::new()));
                entry.1.insert(part, (file, template));
                continue;
            }
            self.found.push(Found {
                name: stem.to_string(),
                path: file.path,
                size_bytes: file.size,
                modified: file.modified,
                template,
                parts: 1,
                gguf: is_gguf,
            });
        }
        for (base, (of, mut parts)) in splits {
            let size_bytes = parts.values().map(|(file, _)| file.size).sum();
            let missing: Vec<String> = (1..=of)
                .filter(|number| !parts.contains_key(number))
                .map(|number| number.to_string())
                .collect();
            let Some((first, template)) = parts.remove(&1) else {
                if let Some((_, (file, _))) = parts.iter().next() {
                    self.problem(
                        &file.path,
                        format!("part of the split model `{base}`, whose first part is missing"),
                    );
                }
                continue;
            };
            if !missing.is_empty() {
                self.problem(
                    &first.path,
                    format!(
                        "the split model `{base}` lacks part(s) {} of {of}",
                        missing.join(", ")
                    ),
                );
                continue;
            }
            self.found.push(Found {
                name: base,
                path: first.path,
                size_bytes,
                modified: first.modified,
                template,
                parts: of,
                gguf: true,
            });
        }
    }

    /// The hub cache: `models--org--name/snapshots/<revision>`, the one
    /// `refs/main` names (else the first), as the model `org/name`.
    fn hub(&mut self, hub: &Path) {
        let Ok(entries) = std::fs::read_dir(hub) else {
            return; // No hub cache here: nothing to say.
        };
        let mut repos: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        repos.sort();
        for repo in repos {
            let Some(name) = repo.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(id) = name
                .strip_prefix("models--")
                .map(|rest| rest.replacen("--", "/", 1))
            else {
                continue;
            };
            let main = std::fs::read_to_string(repo.join("refs/main"))
                .ok()
                .map(|revision| repo.join("snapshots").join(revision.trim()))
                .filter(|snapshot| snapshot.is_dir());
            let snapshot = main.or_else(|| {
                let mut snapshots: Vec<PathBuf> = std::fs::read_dir(repo.join("snapshots"))
                    .ok()?
                    .flatten()
                    .map(|entry| entry.path())
                    .collect();
                snapshots.sort();
                snapshots.into_iter().next()
            });
            match snapshot {
                Some(snapshot) => self.dir(&snapshot, Some(&id)),
                None => self.problem(&repo, "no snapshot of it is downloaded"),
            }
        }
    }

    /// Ids given out (normalised, collisions suffixed and reported), GGUF
    /// headers read, in a stable order.
    fn finish(mut self, before: &ModelCatalog) -> ModelCatalog {
        let known: std::collections::HashMap<&Path, &CatalogModel> = before
            .models
            .iter()
            .map(|model| (model.path.as_path(), model))
            .collect();
        self.found.sort_by(|a, b| a.path.cmp(&b.path));
        let mut taken: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut models = Vec::new();
        for found in std::mem::take(&mut self.found) {
            let wanted = normalised(&found.name);
            let mut id = wanted.clone();
            let mut number = 2;
            while taken.contains_key(&id) {
                id = format!("{wanted}-{number}");
                number += 1;
            }
            if id != wanted {
                let holder = taken.get(&wanted).cloned().unwrap_or_default();
                self.problem(
                    &found.path,
                    format!(
                        "`{wanted}` is {}'s already: this one is `{id}`",
                        holder.display()
                    ),
                );
            }
            taken.insert(id.clone(), found.path.clone());
            let template = &self.templates[found.template];
            let (gguf, vram_estimate_mib) = if found.gguf {
                let unchanged = known.get(found.path.as_path()).filter(|model| {
                    model.size_bytes == found.size_bytes
                        && model.modified.is_some()
                        && model.modified == found.modified
                });
                let header = match unchanged.and_then(|model| model.gguf.clone()) {
                    Some(header) => Ok(header),
                    None => gguf::read(&found.path),
                };
                match header {
                    Ok(info) => {
                        let vram = info.vram_mib(found.size_bytes, template.context);
                        (Some(info), vram)
                    }
                    Err(problem) => {
                        self.problem(&found.path, problem);
                        continue;
                    }
                }
            } else {
                (None, None)
            };
            models.push(CatalogModel {
                id,
                path: found.path,
                size_bytes: found.size_bytes,
                modified: found.modified,
                template: template.pattern.clone(),
                parts: found.parts,
                gguf,
                vram_estimate_mib,
            });
        }
        ModelCatalog {
            models,
            problems: self.problems,
        }
    }
}

/// A split model's parts as found: how many it says it has, and each found
/// part (and the template it matched) by its number.
type Split = (u32, BTreeMap<u32, (Entry, usize)>);

/// `qwen2.5-7b-instruct-q4_k_m-00001-of-00003` → (`qwen2.5-7b-instruct-q4_k_m`, 1, 3).
fn split_part(stem: &str) -> Option<(&str, u32, u32)> {
    let (rest, of) = stem.rsplit_once("-of-")?;
    let (base, part) = rest.rsplit_once('-')?;
    let digits = |text: &str| text.len() == 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(part) || !digits(of) {
        return None;
    }
    let (part, of) = (part.parse().ok()?, of.parse().ok()?);
    (part >= 1 && part <= of).then_some((base, part, of))
}

/// A name under nanny's naming rule (`cat-` and it still fit 63 characters):
/// lowercase; anything but letters, digits, `.`, `_`, `-` becomes `-`.
pub fn normalised(name: &str) -> String {
    let mut id: String = name
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    while id.contains("--") {
        id = id.replace("--", "-");
    }
    let id = id.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let id: String = id.chars().take(59).collect();
    if id.is_empty() {
        "model".to_string()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::gguf::tests::tiny_gguf;
    use super::*;

    fn templates() -> Vec<Template> {
        vec![
            Template {
                pattern: "*.gguf".into(),
                context: Some(1024),
                ..Template::default()
            },
            Template {
                pattern: "dir:*".into(),
                ..Template::default()
            },
        ]
    }

    #[test]
    fn globs_and_names() {
        assert!(
            crate::glob::matches("*.gguf", "a.gguf")
                && crate::glob::matches("*", "")
                && crate::glob::matches("q?en*", "qwen2.5")
        );
        assert!(
            !crate::glob::matches("*.gguf", "a.gguf.part") && !crate::glob::matches("dir", "dirs")
        );
        assert_eq!(
            normalised("Qwen2.5-7B-Instruct-Q4_K_M"),
            "qwen2.5-7b-instruct-q4_k_m"
        );
        assert_eq!(normalised("Qwen/Qwen2.5 0.5B"), "qwen-qwen2.5-0.5b");
        assert_eq!(normalised("../../etc"), "etc");
        assert_eq!(normalised("日本"), "model");
        assert!(crate::names::is_valid(&format!(
            "cat-{}",
            normalised(&"x".repeat(200))
        )));
        assert_eq!(split_part("m-00002-of-00003"), Some(("m", 2, 3)));
        assert_eq!(split_part("m-2-of-3"), None);
    }

    #[test]
    fn a_folder_of_models_becomes_a_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let model = tiny_gguf("llama", 2048);
        std::fs::create_dir_all(root.join("deep/er")).unwrap();
        std::fs::write(root.join("Tiny-Llama.gguf"), &model).unwrap();
        std::fs::write(root.join("deep/er/tiny-llama.gguf"), &model).unwrap();
        std::fs::write(root.join("big-00001-of-00002.gguf"), &model).unwrap();
        std::fs::write(root.join("big-00002-of-00002.gguf"), &model).unwrap();
        std::fs::write(root.join("lost-00001-of-00003.gguf"), &model).unwrap();
        std::fs::write(root.join("cut.gguf"), &model[..40]).unwrap();
        std::fs::write(root.join("notes.txt"), "not a model").unwrap();
        std::fs::create_dir_all(root.join("Mistral-7B")).unwrap();
        std::fs::write(root.join("Mistral-7B/config.json"), "{}").unwrap();
        std::os::unix::fs::symlink(root, root.join("deep/loop")).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let hub = cache.path().join("hub");
        let snapshot = hub.join("models--Qwen--Qwen2.5-0.5B/snapshots/abc");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();

        let places = Places {
            dirs: vec![root.to_path_buf()],
            huggingface_hub: Some(hub),
        };
        let catalog = ModelCatalog::scan(&places, &templates());
        let mut ids: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                "big",
                "mistral-7b",
                "qwen-qwen2.5-0.5b",
                "tiny-llama",
                "tiny-llama-2"
            ],
            "{catalog:#?}"
        );
        let big = catalog.models.iter().find(|m| m.id == "big").unwrap();
        assert_eq!((big.parts, big.size_bytes), (2, 2 * model.len() as u64));
        // The first by path keeps the name: `Tiny-Llama.gguf` before `deep/…`.
        let tiny = catalog
            .models
            .iter()
            .find(|m| m.id == "tiny-llama")
            .unwrap();
        assert!(tiny.path.ends_with("Tiny-Llama.gguf"));
        assert_eq!(
            tiny.gguf.as_ref().and_then(|g| g.context_length),
            Some(2048)
        );
        assert!(tiny.vram_estimate_mib.is_some());
        let said = |needle: &str| catalog.problems.iter().any(|p| p.problem.contains(needle));
        assert!(said("cut short"), "{:#?}", catalog.problems);
        assert!(said("lacks part(s) 2, 3 of 3"), "{:#?}", catalog.problems);
        assert!(said("symbolic link loop"), "{:#?}", catalog.problems);
        assert!(said("`tiny-llama` is"), "{:#?}", catalog.problems);
    }

    #[test]
    fn a_rescan_reads_again_only_the_headers_of_files_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let model = tiny_gguf("llama", 2048);
        std::fs::write(&path, &model).unwrap();
        let places = Places {
            dirs: vec![dir.path().to_path_buf()],
            huggingface_hub: None,
        };
        let first = ModelCatalog::scan(&places, &templates());
        assert_eq!(first.models.len(), 1);
        // Same size, same time: the header is the one read before, even
        // though the bytes are now garbage (no read shows it).
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let modified = file.metadata().unwrap().modified().unwrap();
        std::fs::write(&path, vec![0u8; model.len()]).unwrap();
        file.set_modified(modified).unwrap();
        let again = ModelCatalog::scan_after(&places, &templates(), &first);
        assert_eq!(again.models, first.models);
        // A new time: read again, and found to be no GGUF.
        file.set_modified(modified + std::time::Duration::from_secs(1))
            .unwrap();
        let changed = ModelCatalog::scan_after(&places, &templates(), &again);
        assert!(changed.models.is_empty(), "{changed:#?}");
        assert!(changed.problems[0].problem.contains("not a GGUF file"));
    }

    #[test]
    fn ten_thousand_entries_are_scanned_without_fail() {
        let dir = tempfile::tempdir().unwrap();
        for number in 0..10_000 {
            let name = if number % 100 == 0 {
                format!("model-{number}.gguf")
            } else {
                format!("file-{number}.bin")
            };
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let places = Places {
            dirs: vec![dir.path().to_path_buf()],
            huggingface_hub: None,
        };
        let catalog = ModelCatalog::scan(&places, &templates());
        // Empty `.gguf` files are no models, each said once; the rest is not ours.
        assert_eq!(catalog.models.len(), 0);
        assert_eq!(catalog.problems.len(), 100);
    }
}
