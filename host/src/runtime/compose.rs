//! Docker Compose projects as backends. nanny drives the `docker compose` CLI
//! (v2: the Docker CLI plugin, or a `docker-compose` that is v2; v1 is refused)
//! with the project name `nanny-{instance}-{service}`: `up -d --remove-orphans`
//! to start, `down --remove-orphans -t {grace}` to stop. What runs is read from
//! container labels through the Docker API: the backend's exit is its compose
//! service's container's, and every container's output goes to the service's
//! log as `container | line`. [`Composer`] owns the CLI found, the engine, and
//! the projects an earlier run left to adopt.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::container::{self, ContainerHandle, Replay};
use super::process::{Exit, OutputLine, Stream};
use super::{ports, LaunchError, LineSink};
use crate::locks::lock;

/// The label compose puts on every container of a project.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// The label naming a container's compose service.
const LABEL_COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// nanny's labels, put on every service of a project it brings up.
pub const LABEL_INSTANCE: &str = "nanny.compose.instance";
pub const LABEL_SERVICE: &str = "nanny.compose.service";
pub const LABEL_HASH: &str = "nanny.compose.hash";

/// Lines of an adopted project's past output read again on adoption.
const ADOPTION_REPLAY_LINES: &str = "500";
/// How long projects an earlier run left wait to be adopted before they go.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(300);
/// What a stop that found the backend already gone gives the rest of its project.
const CLEAN_UP_GRACE: Duration = Duration::from_secs(10);
/// How long a compose command may run before it is killed and counts as
/// failed: reading the files is quick; `up` may pull or build images; `down`
/// gets its grace and this much more.
const CONFIG_LIMIT: Duration = Duration::from_secs(60);
const UP_LIMIT: Duration = Duration::from_secs(15 * 60);
const DOWN_LIMIT_BEYOND_GRACE: Duration = Duration::from_secs(60);

/// What to bring up, resolved by the host from the plugin's plan.
#[derive(Debug, Clone)]
pub struct ComposeSpec {
    /// The nanny service.
    pub service: String,
    /// The project directory (relative files are its).
    pub project_dir: PathBuf,
    /// `-f` files; none: compose finds `compose.yaml` (or its older names) itself.
    pub files: Vec<PathBuf>,
    pub profiles: Vec<String>,
    pub env_files: Vec<PathBuf>,
    /// The compose service that is the backend; `None`: the project's only one.
    pub target: Option<String>,
    /// Where the target listens in its container; nanny publishes `host:port` to it.
    pub container_port: Option<u16>,
    /// The variables the files are interpolated from, over the daemon's own.
    pub env: Vec<(String, String)>,
    pub host: String,
    pub port: u16,
}

/// The compose project of `service` in the daemon `instance` (8 hex digits).
/// Compose allows lowercase letters, digits, `-` and `_`; a service name may
/// also hold `.`, so `_` is written `__` and `.` is `_-`: two services never
/// share a project (`qwen2.5` is `qwen2_-5`, `qwen2_5` is `qwen2__5`).
pub fn project_name(instance: &str, service: &str) -> String {
    let mut name = format!("nanny-{}-", instance.to_ascii_lowercase());
    for c in service.chars() {
        match c.to_ascii_lowercase() {
            '_' => name.push_str("__"),
            '.' => name.push_str("_-"),
            c @ ('a'..='z' | '0'..='9' | '-') => name.push(c),
            // Not in a valid service name; kept distinct all the same.
            other => name.push_str(&format!("_{:x}_", other as u32)),
        }
    }
    name
}

/// The `docker compose` CLI found on this machine.
#[derive(Debug, Clone)]
pub struct ComposeCli {
    program: String,
    /// `["compose"]` for the Docker CLI plugin; nothing for `docker-compose`.
    leading: Vec<String>,
    pub version: String,
}

/// The major version and the version as printed (`v2.40.3`, `2.40.3`, `1.29.2`).
pub fn parse_version(printed: &str) -> Option<(u64, String)> {
    let version = printed.split_whitespace().find(|word| {
        word.trim_start_matches('v')
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })?;
    let version = version.trim_start_matches('v').trim_end_matches(',');
    let major = version.split('.').next()?.parse().ok()?;
    Some((major, version.to_string()))
}

impl ComposeCli {
    /// `docker compose` when the Docker CLI has the plugin, else a
    /// `docker-compose` that is v2. Compose v1 is refused: it reads files and
    /// labels differently and has no JSON output.
    pub async fn find() -> Result<Self, String> {
        let mut old = None;
        for (program, leading) in [("docker", vec!["compose"]), ("docker-compose", vec![])] {
            let printed = tokio::process::Command::new(program)
                .args(&leading)
                .args(["version", "--short"])
                .stdin(Stdio::null())
                .output()
                .await;
            let Ok(printed) = printed else { continue };
            if !printed.status.success() {
                continue;
            }
            match parse_version(&String::from_utf8_lossy(&printed.stdout)) {
                Some((major, version)) if major >= 2 => {
                    return Ok(Self {
                        program: program.to_string(),
                        leading: leading.into_iter().map(str::to_string).collect(),
                        version,
                    })
                }
                Some((_, version)) => old = Some(format!("`{program}` is Compose {version}")),
                None => {}
            }
        }
        Err(match old {
            Some(old) => format!(
                "{old} (v1), which nanny does not drive: install Compose v2 (the Docker CLI plugin `docker compose`, or a v2 `docker-compose` on PATH)"
            ),
            None => "no Docker Compose found: install Compose v2 (the Docker CLI plugin `docker compose`, or a v2 `docker-compose` on PATH)".into(),
        })
    }

    /// A compose command for `project`, its environment the daemon's plus `env`.
    fn command(&self, project: &str, env: &[(String, String)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.leading)
            .args(["--ansi", "never", "-p", project])
            // Files, profiles and the project come from the plan, never from the
            // daemon's own environment.
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROFILES")
            .env_remove("COMPOSE_PROJECT_NAME")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs one compose command for at most `limit` (then it is killed); its
    /// stdout and stderr, or what it said on failure.
    async fn run(
        &self,
        command: tokio::process::Command,
        stdin: Option<String>,
        limit: Duration,
    ) -> Result<(String, String), String> {
        tokio::time::timeout(limit, self.run_to_end(command, stdin))
            .await
            .unwrap_or_else(|_| Err(format!("no answer in {} s; stopped it", limit.as_secs())))
    }

    async fn run_to_end(
        &self,
        mut command: tokio::process::Command,
        stdin: Option<String>,
    ) -> Result<(String, String), String> {
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot run `{}`: {error}", self.program))?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input
                .write_all(text.as_bytes())
                .await
                .map_err(|error| format!("cannot write to compose: {error}"))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|error| format!("compose did not finish: {error}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            Ok((stdout, stderr))
        } else {
            Err(last_lines(&stderr, 6))
        }
    }

    /// The project's files, profiles and env files as arguments.
    fn project_args(spec: &ComposeSpec) -> Vec<String> {
        let mut args = vec![
            "--project-directory".to_string(),
            spec.project_dir.to_string_lossy().into_owned(),
        ];
        // Named even when it is the one compose would find: `up` reads
        // nanny's file after it (`-f -`), which would replace the default.
        let default = [default_file(spec)];
        let files = if spec.files.is_empty() {
            &default[..]
        } else {
            &spec.files[..]
        };
        for file in files {
            args.push("-f".into());
            args.push(spec.project_dir.join(file).to_string_lossy().into_owned());
        }
        for profile in &spec.profiles {
            args.push("--profile".into());
            args.push(profile.clone());
        }
        for file in &spec.env_files {
            args.push("--env-file".into());
            args.push(spec.project_dir.join(file).to_string_lossy().into_owned());
        }
        args
    }

    /// `down --remove-orphans -t {grace}`: everything of the project goes
    /// (containers and networks), found by its name alone.
    async fn down(&self, project: &str, grace: Duration) -> Result<(), String> {
        let mut command = self.command(project, &[]);
        command.args([
            "down",
            "--remove-orphans",
            "-t",
            &grace.as_secs().to_string(),
        ]);
        self.run(command, None, grace + DOWN_LIMIT_BEYOND_GRACE)
            .await
            .map(|_| ())
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join("; ")
}

/// What `config` says of the project: its services, and a hash of the whole
/// resolved configuration (files, env files and variables interpolated) with
/// where nanny publishes it.
struct Resolved {
    services: Vec<String>,
    hash: String,
}

fn resolve(spec: &ComposeSpec, config_json: &str) -> Result<Resolved, String> {
    use sha2::{Digest, Sha256};
    let config: serde_json::Value = serde_json::from_str(config_json)
        .map_err(|error| format!("compose printed a configuration nanny cannot read: {error}"))?;
    let services: Vec<String> = config
        .get("services")
        .and_then(serde_json::Value::as_object)
        .map(|services| services.keys().cloned().collect())
        .unwrap_or_default();
    let described = format!(
        "{config_json}|{:?}|{:?}|{}|{}",
        spec.target, spec.container_port, spec.host, spec.port
    );
    let hash = Sha256::digest(described.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(Resolved { services, hash })
}

/// The compose service that is the backend: the one named, or the only one.
fn target_of(spec: &ComposeSpec, services: &[String]) -> Result<String, String> {
    match &spec.target {
        Some(target) if services.contains(target) => Ok(target.clone()),
        Some(target) => Err(format!(
            "the project has no service `{target}` (it has: {}); set `settings.service` to one of them",
            services.join(", ")
        )),
        None => match services {
            [only] => Ok(only.clone()),
            [] => Err("the project has no services (are they all in profiles not enabled?)".into()),
            several => Err(format!(
                "the project has {} services ({}): set `settings.service` to the one that is the backend",
                several.len(),
                several.join(", ")
            )),
        },
    }
}

/// The file compose reads over the project's own (`-f -`): nanny's labels on
/// every service, and the service's port published to the backend's.
fn override_file(
    spec: &ComposeSpec,
    instance: &str,
    services: &[String],
    target: &str,
    hash: &str,
) -> String {
    let mut all = serde_json::Map::new();
    for service in services {
        let mut entry = serde_json::json!({
            "labels": {
                LABEL_INSTANCE: instance,
                LABEL_SERVICE: &spec.service,
                LABEL_HASH: hash,
            },
        });
        if let (true, Some(container_port)) = (service == target, spec.container_port) {
            entry["ports"] =
                serde_json::json!([format!("{}:{}:{container_port}", spec.host, spec.port)]);
        }
        all.insert(service.clone(), entry);
    }
    serde_json::json!({ "services": all }).to_string()
}

/// A running project: its backend's container watched, every container's
/// output followed.
pub struct ComposeHandle {
    cli: ComposeCli,
    project: String,
    target: ContainerHandle,
    /// The watch for containers that start later; it ends with the handle.
    newcomers: tokio::task::AbortHandle,
}

impl Drop for ComposeHandle {
    fn drop(&mut self) {
        self.newcomers.abort();
    }
}

impl ComposeHandle {
    /// The backend's container.
    pub fn container_id(&self) -> &str {
        &self.target.id
    }

    /// Waits for the backend's container to exit (cancel-safe).
    pub async fn wait(&mut self) -> Exit {
        self.target.wait().await
    }

    /// Brings the whole project down, `grace` before Docker's SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        if let Err(error) = self.cli.down(&self.project, grace).await {
            tracing::warn!(project = %self.project, "compose down failed: {error}");
            self.target.remove().await;
        }
        self.target.wait().await
    }

    /// After the backend exited by itself: the rest of the project goes too,
    /// so the next launch starts it afresh.
    pub async fn clean_up(&self) {
        if let Err(error) = self.cli.down(&self.project, CLEAN_UP_GRACE).await {
            tracing::warn!(project = %self.project, "compose down failed: {error}");
        }
    }
}

/// This daemon's compose projects: the CLI, and the projects an earlier run
/// left running, to adopt. The engine is the daemon's one connection, which
/// [`Containers`](super::Containers) owns.
pub struct Composer {
    instance: String,
    /// The services configured at start: a project of any other goes at once.
    configured: Vec<String>,
    containers: Arc<super::Containers>,
    /// Found when first needed; a failure is not kept (it may be installed later).
    cli: tokio::sync::OnceCell<ComposeCli>,
    /// Set once this instance's leftover projects are sorted out.
    swept: tokio::sync::OnceCell<()>,
    /// Running projects an earlier run left: project → configuration hash.
    adoptable: Mutex<HashMap<String, String>>,
}

impl Composer {
    pub fn new(
        instance: String,
        configured: Vec<String>,
        containers: Arc<super::Containers>,
    ) -> Arc<Self> {
        Arc::new(Self {
            instance,
            configured,
            containers,
            cli: tokio::sync::OnceCell::new(),
            swept: tokio::sync::OnceCell::new(),
            adoptable: Mutex::default(),
        })
    }

    async fn cli(&self) -> Result<ComposeCli, String> {
        self.cli.get_or_try_init(ComposeCli::find).await.cloned()
    }

    /// The engine; the first time it answers, this instance's projects are
    /// sorted into those to adopt (of a configured service, every container
    /// running, one configuration) and those to bring down, and the end of
    /// those left unclaimed is scheduled. The CLI is looked for only when
    /// something is to be brought down.
    async fn engine(self: &Arc<Self>) -> Result<Docker, String> {
        let docker = self.containers.engine().await?;
        self.swept
            .get_or_init(|| async {
                let mut adoptable = HashMap::new();
                let mut broken = Vec::new();
                for (project, (service, hash)) in self.leftovers(&docker).await {
                    match hash.filter(|_| self.configured.contains(&service)) {
                        Some(hash) => {
                            adoptable.insert(project, hash);
                        }
                        None => broken.push(project),
                    }
                }
                if !adoptable.is_empty() {
                    *lock(&self.adoptable) = adoptable;
                    tokio::spawn(bring_down_unclaimed(Arc::downgrade(self)));
                }
                self.bring_down(broken, "an earlier nanny left that no service adopts")
                    .await;
            })
            .await;
        Ok(docker)
    }

    /// Brings `projects` down, saying `why` each goes.
    async fn bring_down(&self, projects: Vec<String>, why: &str) {
        if projects.is_empty() {
            return;
        }
        let cli = match self.cli().await {
            Ok(cli) => cli,
            Err(error) => {
                tracing::warn!("cannot bring down compose projects {projects:?}: {error}");
                return;
            }
        };
        for project in projects {
            tracing::info!(%project, "bringing down a compose project {why}");
            if let Err(error) = cli.down(&project, CLEAN_UP_GRACE).await {
                tracing::warn!(%project, "compose down failed: {error}");
            }
        }
    }

    /// This instance's projects, by name: their service, and the
    /// configuration hash of those whose every container runs and carries the
    /// same one (`None` for the others).
    async fn leftovers(&self, docker: &Docker) -> BTreeMap<String, (String, Option<String>)> {
        let label = format!("{LABEL_INSTANCE}={}", self.instance);
        let containers = container::list_labelled(docker, &label)
            .await
            .unwrap_or_default();
        let mut projects: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            let Some(project) = labels.get(LABEL_PROJECT).cloned() else {
                continue;
            };
            let service = labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
            let running =
                container.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            let hash = labels.get(LABEL_HASH).cloned().filter(|_| running);
            let entry = projects
                .entry(project)
                .or_insert_with(|| (service, hash.clone()));
            if entry.1 != hash {
                entry.1 = None;
            }
        }
        projects
    }

    /// Sorts out what an earlier run left, where an engine answers (nothing
    /// to do where none does).
    pub async fn sweep(self: &Arc<Self>) {
        let _ = self.engine().await;
    }

    /// Brings up `spec`'s project (or adopts it, when an earlier nanny left it
    /// running from the same configuration) and follows it.
    pub(super) async fn launch(
        self: &Arc<Self>,
        spec: ComposeSpec,
        lines: LineSink,
    ) -> Result<ComposeHandle, LaunchError> {
        let cli = self.cli().await.map_err(LaunchError::Fatal)?;
        let docker = self.engine().await.map_err(LaunchError::Fatal)?;
        let project = project_name(&self.instance, &spec.service);
        let mut config = cli.command(&project, &spec.env);
        config
            .args(ComposeCli::project_args(&spec))
            .args(["config", "--format", "json"]);
        let (config_json, _) = cli
            .run(config, None, CONFIG_LIMIT)
            .await
            .map_err(|error| LaunchError::Fatal(format!("compose config: {error}")))?;
        let resolved = resolve(&spec, &config_json).map_err(LaunchError::Fatal)?;
        let target = target_of(&spec, &resolved.services).map_err(LaunchError::Fatal)?;

        let earlier = lock(&self.adoptable).remove(&project);
        let adopted = match earlier {
            Some(hash) if hash == resolved.hash => {
                tracing::info!(service = %spec.service, %project, "adopting the compose project an earlier nanny left running");
                true
            }
            Some(_) => {
                // Brought up from another configuration: it changed since.
                cli.down(&project, CLEAN_UP_GRACE)
                    .await
                    .map_err(|error| LaunchError::Transient(format!("compose down: {error}")))?;
                false
            }
            None => false,
        };
        if !adopted {
            if spec.container_port.is_some() {
                ports::check_free(&spec.host, spec.port).map_err(LaunchError::Transient)?;
            }
            let mut up = cli.command(&project, &spec.env);
            up.args(ComposeCli::project_args(&spec));
            up.args(["-f", "-", "up", "-d", "--remove-orphans"]);
            let overlay = override_file(
                &spec,
                &self.instance,
                &resolved.services,
                &target,
                &resolved.hash,
            );
            match cli.run(up, Some(overlay), UP_LIMIT).await {
                Ok((_, said)) => {
                    for line in said.lines().filter(|line| !line.trim().is_empty()) {
                        lines.deliver(OutputLine {
                            stream: Stream::Stderr,
                            text: format!("compose | {}", line.trim()),
                        });
                    }
                }
                Err(error) => {
                    // Whatever it managed to start goes, so the next try starts clean.
                    let _ = cli.down(&project, CLEAN_UP_GRACE).await;
                    return Err(LaunchError::Fatal(format!("compose up: {error}")));
                }
            }
        }
        let tail = if adopted {
            ADOPTION_REPLAY_LINES
        } else {
            "all"
        };
        follow_project(&docker, cli, project, &target, lines, tail).await
    }
}

/// The names compose looks for in a project directory, in its order.
pub const FILE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The file compose would pick in the project directory by itself.
fn default_file(spec: &ComposeSpec) -> PathBuf {
    let name = FILE_NAMES
        .iter()
        .find(|name| spec.project_dir.join(name).is_file())
        .unwrap_or(&FILE_NAMES[0]);
    PathBuf::from(name)
}

/// Follows every container of `project` into `lines` (prefixed with its name
/// within the project) and watches `target`'s.
async fn follow_project(
    docker: &Docker,
    cli: ComposeCli,
    project: String,
    target: &str,
    lines: LineSink,
    tail: &str,
) -> Result<ComposeHandle, LaunchError> {
    // Containers that start from now on are the newcomers' watch's.
    let listed_at = unix_seconds();
    let containers = container::list_labelled(docker, &format!("{LABEL_PROJECT}={project}"))
        .await
        .map_err(|error| LaunchError::Transient(format!("Docker: {error}")))?;
    let mut watched = None;
    let mut followed = HashMap::new();
    for summary in containers {
        let Some(id) = summary.id else { continue };
        let labels = summary.labels.unwrap_or_default();
        let name = summary
            .names
            .and_then(|names| names.into_iter().next())
            .unwrap_or_else(|| id.chars().take(12).collect());
        let prefix = prefix_of(&project, &name);
        if watched.is_none()
            && labels.get(LABEL_COMPOSE_SERVICE).map(String::as_str) == Some(target)
        {
            watched = Some(container::attach(docker, id, lines.clone(), tail, prefix));
        } else {
            let replay = Replay::Tail(tail);
            let task = container::follow(docker, id.clone(), lines.clone(), replay, prefix);
            followed.insert(id, task);
        }
    }
    match watched {
        Some(target) => {
            let newcomers = tokio::spawn(follow_newcomers(
                docker.clone(),
                project.clone(),
                target.id.clone(),
                lines,
                followed,
                listed_at,
            ));
            Ok(ComposeHandle {
                cli,
                project,
                target,
                newcomers: newcomers.abort_handle(),
            })
        }
        None => {
            let _ = cli.down(&project, CLEAN_UP_GRACE).await;
            Err(LaunchError::Fatal(format!(
                "compose started no container for the service `{target}`"
            )))
        }
    }
}

/// What a container's lines start with in the service's log: its name within
/// the project (`web-1 | `).
fn prefix_of(project: &str, container_name: &str) -> String {
    let name = container_name.trim_start_matches('/');
    let short = name.strip_prefix(&format!("{project}-")).unwrap_or(name);
    format!("{short} | ")
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Follows the project's containers that start after the launch (a restart
/// policy in the file, a container compose made again) into `lines`, from
/// Docker's events since `since`; the backend's own container is watched by
/// its handle. Runs until aborted (the launch is over).
async fn follow_newcomers(
    docker: Docker,
    project: String,
    backend: String,
    lines: LineSink,
    mut followed: HashMap<String, tokio::task::JoinHandle<()>>,
    since: i64,
) {
    let filters = HashMap::from([
        ("label", vec![format!("{LABEL_PROJECT}={project}")]),
        ("type", vec!["container".to_string()]),
        ("event", vec!["start".to_string()]),
    ]);
    let options = bollard::query_parameters::EventsOptionsBuilder::new()
        .since(&since.to_string())
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(options));
    while let Some(Ok(event)) = events.next().await {
        let Some(actor) = event.actor else { continue };
        let Some(id) = actor.id else { continue };
        // Followed already (a start from before the listing, read again).
        if id == backend || followed.get(&id).is_some_and(|task| !task.is_finished()) {
            continue;
        }
        let name = actor
            .attributes
            .and_then(|attributes| attributes.get("name").cloned())
            .unwrap_or_else(|| id.chars().take(12).collect());
        let replay = Replay::Since(event.time.unwrap_or(since));
        let prefix = prefix_of(&project, &name);
        let task = container::follow(&docker, id.clone(), lines.clone(), replay, prefix);
        followed.insert(id, task);
    }
}

/// Projects an earlier run left that no launch adopted in time go.
async fn bring_down_unclaimed(composer: std::sync::Weak<Composer>) {
    tokio::time::sleep(UNCLAIMED_AFTER).await;
    let Some(composer) = composer.upgrade() else {
        return;
    };
    let unclaimed: Vec<String> = lock(&composer.adoptable).drain().map(|(p, _)| p).collect();
    composer
        .bring_down(unclaimed, "no service adopted in time")
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_each_compose_prints_them() {
        assert_eq!(parse_version("2.40.3\n"), Some((2, "2.40.3".into())));
        assert_eq!(parse_version("v2.24.0"), Some((2, "2.24.0".into())));
        assert_eq!(parse_version("1.29.2"), Some((1, "1.29.2".into())));
        assert_eq!(
            parse_version("docker-compose version 1.29.2, build unknown"),
            Some((1, "1.29.2".into()))
        );
        assert_eq!(parse_version("unknown flag: --short"), None);
    }

    #[test]
    fn project_names_are_what_compose_accepts() {
        assert_eq!(project_name("0a1b2c3d", "llm"), "nanny-0a1b2c3d-llm");
        assert_eq!(
            project_name("0a1b2c3d", "qwen2.5-7b"),
            "nanny-0a1b2c3d-qwen2_-5-7b"
        );
        assert_eq!(
            project_name("0a1b2c3d", "qwen2_5"),
            "nanny-0a1b2c3d-qwen2__5"
        );
    }

    proptest::proptest! {
        /// Any two valid service names get two projects, each a name compose takes.
        #[test]
        fn every_service_gets_a_project_of_its_own(
            a in "[a-z0-9][a-z0-9_.-]{0,20}",
            b in "[a-z0-9][a-z0-9_.-]{0,20}",
        ) {
            let (pa, pb) = (project_name("0a1b2c3d", &a), project_name("0a1b2c3d", &b));
            let compose_name = |name: &str| {
                name.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
                    && name.starts_with("nanny-")
            };
            proptest::prop_assert!(compose_name(&pa) && compose_name(&pb), "{pa} {pb}");
            proptest::prop_assert_eq!(a == b, pa == pb);
        }
    }

    fn spec(target: Option<&str>, container_port: Option<u16>) -> ComposeSpec {
        ComposeSpec {
            service: "llm".into(),
            project_dir: "/srv/llm".into(),
            files: Vec::new(),
            profiles: Vec::new(),
            env_files: Vec::new(),
            target: target.map(str::to_string),
            container_port,
            env: Vec::new(),
            host: "127.0.0.1".into(),
            port: 9000,
        }
    }

    #[test]
    fn the_backend_is_the_service_named_or_the_only_one() {
        let one = ["web".to_string()];
        let two = ["db".to_string(), "web".to_string()];
        assert_eq!(target_of(&spec(None, None), &one).unwrap(), "web");
        assert_eq!(target_of(&spec(Some("web"), None), &two).unwrap(), "web");
        let several = target_of(&spec(None, None), &two).unwrap_err();
        assert!(
            several.contains("db, web") && several.contains("settings.service"),
            "{several}"
        );
        let missing = target_of(&spec(Some("api"), None), &two).unwrap_err();
        assert!(missing.contains("no service `api`"), "{missing}");
    }

    #[test]
    fn the_override_labels_every_service_and_publishes_only_the_backend() {
        let services = ["db".to_string(), "web".to_string()];
        let text = override_file(
            &spec(Some("web"), Some(8000)),
            "main",
            &services,
            "web",
            "h1",
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["services"]["web"]["ports"][0], "127.0.0.1:9000:8000");
        assert_eq!(value["services"]["db"]["labels"][LABEL_INSTANCE], "main");
        assert_eq!(value["services"]["db"]["labels"][LABEL_HASH], "h1");
        assert!(value["services"]["db"].get("ports").is_none());
        let unpublished = override_file(&spec(Some("web"), None), "main", &services, "web", "h1");
        assert!(!unpublished.contains("ports"), "{unpublished}");
    }

    #[test]
    fn a_change_anywhere_in_the_configuration_changes_the_hash() {
        let config = r#"{"services":{"web":{"image":"a"}}}"#;
        let changed = r#"{"services":{"web":{"image":"b"}}}"#;
        let base = resolve(&spec(None, Some(8000)), config).unwrap();
        assert_eq!(base.services, ["web"]);
        assert_eq!(
            base.hash,
            resolve(&spec(None, Some(8000)), config).unwrap().hash
        );
        assert_ne!(
            base.hash,
            resolve(&spec(None, Some(8000)), changed).unwrap().hash
        );
        assert_ne!(
            base.hash,
            resolve(&spec(None, Some(8001)), config).unwrap().hash
        );
        assert!(resolve(&spec(None, None), "not json").is_err());
    }
}
