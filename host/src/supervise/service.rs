//! One task per service: it launches the plugin's plan, feeds output lines and
//! probe answers to the plugin, keeps the status true, restarts with back-off and
//! stops with nothing left behind.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{interval, interval_at, sleep_until, Instant, Interval, MissedTickBehavior};

use super::backoff::{Backoff, BackoffPolicy};
use super::lock;
use super::logs::LogBook;
use super::probe;
use super::state::{unix_ms, ModelInfo, ServiceStatus, State, StateChange};
use crate::gpu::{GpuBroker, GpuRequest, Lease};
use crate::plugin::{
    ExitAdvice, HttpResponse, Launch, Output, Plan, Plugin, PluginSession, Progress, Service,
    SessionHandle,
};
use crate::runtime::cgroup::Cgroup;
use crate::runtime::container;
use crate::runtime::orphans::LaunchRecords;
use crate::runtime::ports::Listener;
use crate::runtime::{
    spawn, ContainerSpec, Exit, Launched, LineSink, OutputLine, ProcessSpec, Stream,
};
use std::collections::HashMap;

/// Output lines waiting for the plugin; beyond this they are dropped for the
/// plugin (never for the log) rather than block the backend.
const PLUGIN_LINE_BACKLOG: usize = 1024;
/// Lines handed to the plugin's `on-exit`.
const EXIT_LINES: usize = 50;
/// Failed liveness probes in a row that restart the backend (kubelet's default).
const LIVENESS_FAILURE_THRESHOLD: u32 = 3;
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Models kept per service: `/v1/models` lists every service's.
const MAX_MODELS: usize = 1000;
/// How long a ready backend may take to list its models (it delays `ready`).
const MODELS_TIMEOUT: Duration = Duration::from_secs(2);

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
    fn apply(&self, plan: &mut Plan) {
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

/// A service this one depends on, as its runner watches it.
pub(super) struct Dependency {
    pub name: String,
    pub condition: Condition,
    pub status: watch::Receiver<ServiceStatus>,
}

impl Dependency {
    fn is_met(&self) -> bool {
        let status = self.status.borrow();
        match self.condition {
            Condition::Started => status.state.is_started(),
            Condition::Ready => status.state == State::Ready,
        }
    }

    /// What a dependent waiting on this one says.
    fn waiting_reason(&self) -> String {
        let status = self.status.borrow();
        match &status.state {
            State::Failed { reason } => {
                format!("waiting for {}, which failed: {reason}", self.name)
            }
            state => {
                let target = match self.condition {
                    Condition::Started => "started",
                    Condition::Ready => "ready",
                };
                format!(
                    "waiting for {} to be {target} (it is {})",
                    self.name,
                    state.name()
                )
            }
        }
    }
}

/// What one service task shares with the others.
#[derive(Clone)]
pub(super) struct Shared {
    pub cgroup_root: Option<PathBuf>,
    pub launch_records: Option<LaunchRecords>,
    pub starts: Arc<Semaphore>,
    /// Launches waiting for a start slot now.
    pub queued_starts: Arc<std::sync::atomic::AtomicUsize>,
    /// Every state change of every service, in order.
    pub events: Arc<super::EventLog>,
    /// The daemon's address for ready callbacks (`http://127.0.0.1:7878`), if it serves them.
    pub ready_url: Option<String>,
    pub gpus: Option<Arc<GpuBroker>>,
    /// Names this daemon's containers apart from other daemons'.
    pub instance: String,
    /// The Docker engine, connected (and swept of this instance's leftovers) at
    /// start-up when it answers, else on the first container launch.
    pub docker: Arc<tokio::sync::OnceCell<bollard::Docker>>,
    /// Running containers an earlier run of this daemon left, by service: (id, spec hash).
    pub adoptable: Arc<std::sync::Mutex<HashMap<String, (String, String)>>>,
    /// The containers of the launches running now.
    pub live_containers: Arc<std::sync::Mutex<Vec<String>>>,
}

/// How often containers of this instance that nothing runs are removed.
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

impl Shared {
    pub async fn docker(&self) -> Result<bollard::Docker, String> {
        // An engine that is not there now may be later: failures are not kept.
        self.docker
            .get_or_try_init(|| async {
                let docker = crate::runtime::container::connect()
                    .await
                    .map_err(|error| error.to_string())?;
                let running = container::leftovers(&docker, &self.instance).await;
                *lock(&self.adoptable) = running;
                tokio::spawn(reconcile(self.clone(), docker.clone()));
                Ok::<_, String>(docker)
            })
            .await
            .cloned()
    }
}

/// Why one launch ended.
enum Outcome {
    /// Asked to stop; the caller waits on the reply.
    Stopped(Option<oneshot::Sender<()>>),
    /// Asked to restart: go again at once.
    Restart,
    /// The plugin (or the configuration) says trying again cannot help.
    GaveUp(String),
    /// It went down; the restart policy decides.
    Down { reason: String, clean: bool },
}

pub(super) struct Runner {
    spec: ServiceSpec,
    shared: Shared,
    status: watch::Sender<ServiceStatus>,
    commands: mpsc::Receiver<Command>,
    dependencies: Vec<Dependency>,
    logs: Arc<LogBook>,
    backoff: Backoff,
    /// Whether the service should run when its task (re)starts: `autostart` at
    /// first, and false after a panic took the task down.
    start_at_once: bool,
    launches: u64,
    /// The last launch's process, for the GPU release check.
    last_pid: Option<i32>,
    /// The last launch's `NANNY_LAUNCH`, which every process of it inherits.
    launch_id: String,
}

impl Runner {
    pub fn new(
        spec: ServiceSpec,
        shared: Shared,
        status: watch::Sender<ServiceStatus>,
        commands: mpsc::Receiver<Command>,
        dependencies: Vec<Dependency>,
        logs: Arc<LogBook>,
    ) -> Self {
        let backoff = Backoff::new(spec.restart.backoff);
        Self {
            start_at_once: spec.autostart,
            spec,
            shared,
            status,
            commands,
            dependencies,
            logs,
            backoff,
            launches: 0,
            last_pid: None,
            launch_id: String::new(),
        }
    }

    fn set(&self, state: State) {
        self.set_with(state, |_| {});
    }

    /// `set`, with `also` applied in the same update, so nobody sees one without
    /// the other.
    fn set_with(&self, state: State, also: impl FnOnce(&mut ServiceStatus)) {
        let mut change = None;
        self.status.send_if_modified(|status| {
            if status.state == state {
                return false;
            }
            also(status);
            // `nanny up` prints every change already; this is for debugging only.
            tracing::debug!(service = %status.name, "{} → {}", status.state.name(), state.name());
            status.since_unix_ms = unix_ms(SystemTime::now());
            change = Some(StateChange {
                service: status.name.clone(),
                from: status.state.name(),
                to: state.clone(),
                at_unix_ms: status.since_unix_ms,
                port: status.port,
                last_failure: status.last_failure.clone(),
            });
            status.state = state;
            true
        });
        if let Some(change) = change {
            self.shared.events.publish(change);
        }
    }

    /// Runs the service's lifecycle until the supervisor goes away. A panic in it
    /// (a bug in nanny) fails this service with the panic's message instead of
    /// stranding it, and the lifecycle begins again, so `start` works once more.
    /// Ends, giving back the status channel, once its inbox closes.
    pub async fn run(mut self) -> watch::Sender<ServiceStatus> {
        use futures_util::FutureExt;
        loop {
            let lifecycle = std::panic::AssertUnwindSafe(self.lifecycle());
            let Err(panic) = lifecycle.catch_unwind().await else {
                return self.status;
            };
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::error!(service = %self.spec.service.name, "supervision panicked: {message}");
            self.status.send_modify(|status| {
                status.pid = None;
                status.container_id = None;
                status.launched_unix_ms = None;
                status.models.clear();
                status.gpus.clear();
            });
            self.set(State::Failed {
                reason: format!("nanny's supervision of this service panicked: {message}"),
            });
            self.start_at_once = false;
        }
    }

    async fn lifecycle(&mut self) {
        let mut wanted = self.start_at_once;
        loop {
            if !wanted {
                match self.commands.recv().await {
                    None => return,
                    Some(Command::Start | Command::Restart) => {
                        self.backoff.reset();
                        wanted = true;
                    }
                    Some(Command::Stop(reply)) => {
                        let _ = reply.send(());
                        continue;
                    }
                    Some(Command::MarkReady { reply, .. }) => {
                        let _ = reply.send(false);
                        continue;
                    }
                }
            }
            if let Some(reply) = self.await_dependencies().await {
                self.set(State::Stopped);
                let _ = reply.map(|reply| reply.send(()));
                wanted = false;
                continue;
            }
            match self.launch_once().await {
                Outcome::Stopped(reply) => {
                    self.set(State::Stopped);
                    if let Some(reply) = reply {
                        let _ = reply.send(());
                    } else {
                        return;
                    }
                    wanted = false;
                }
                Outcome::Restart => self.backoff.reset(),
                Outcome::GaveUp(reason) => {
                    tracing::error!(service = %self.spec.service.name, "gave up: {reason}");
                    self.status
                        .send_modify(|status| status.last_failure = Some(reason.clone()));
                    self.set(State::Failed { reason });
                    wanted = false;
                }
                Outcome::Down { reason, clean } => {
                    tracing::warn!(service = %self.spec.service.name, "down: {reason}");
                    self.status
                        .send_modify(|status| status.last_failure = Some(reason.clone()));
                    match self.wait_to_restart(reason, clean).await {
                        Some(again) => wanted = again,
                        None => return,
                    }
                }
            }
        }
    }

    /// Applies the restart policy after a launch went down: `Some(true)` to launch
    /// again, `Some(false)` to stay down, `None` when the supervisor is gone.
    async fn wait_to_restart(&mut self, reason: String, clean: bool) -> Option<bool> {
        let policy = &self.spec.restart;
        let restart = match policy.mode {
            RestartMode::Always => true,
            RestartMode::OnFailure => !clean,
            RestartMode::Never => false,
        };
        if !restart {
            self.set(if clean {
                State::Stopped
            } else {
                State::Failed { reason }
            });
            return Some(false);
        }
        let delay = self.backoff.next_delay();
        // Restarts count within a window that a long enough ready run (or an
        // explicit start) opens anew: a crash a day never adds up to giving up.
        let restarts = self.backoff.failures_in_window().saturating_sub(1);
        if policy.max_restarts.is_some_and(|max| restarts >= max) {
            let window = policy.backoff.reset_after.as_secs();
            self.set(State::Failed {
                reason: format!(
                    "gave up after {restarts} {} in a row (none stayed ready for {window}s); last: {reason}",
                    if restarts == 1 { "restart" } else { "restarts" }
                ),
            });
            return Some(false);
        }
        let backoff = State::Backoff {
            next_try_unix_ms: unix_ms(SystemTime::now() + delay),
        };
        self.set_with(backoff, |status| status.restarts += 1);
        let wake = tokio::time::sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => return Some(true),
                command = self.commands.recv() => match command {
                    None => return None,
                    Some(Command::Start | Command::Restart) => {
                        self.backoff.reset();
                        return Some(true);
                    }
                    Some(Command::Stop(reply)) => {
                        self.set(State::Stopped);
                        let _ = reply.send(());
                        return Some(false);
                    }
                    Some(Command::MarkReady { reply, .. }) => {
                        let _ = reply.send(false);
                    }
                },
            }
        }
    }

    /// Waits until every dependency meets its condition, saying what it waits for
    /// (and when that has failed); a stop request meanwhile is returned (`Some`),
    /// and so is the supervisor going away (`Some(None)`).
    async fn await_dependencies(&mut self) -> Option<Option<oneshot::Sender<()>>> {
        let mut dependencies = std::mem::take(&mut self.dependencies);
        let interrupted = loop {
            let Some(unmet) = dependencies.iter().find(|d| !d.is_met()) else {
                break None;
            };
            self.set(State::Waiting {
                reason: unmet.waiting_reason(),
            });
            let any_changed = futures_util::future::select_all(
                dependencies
                    .iter_mut()
                    .map(|dependency| Box::pin(dependency.status.changed())),
            );
            tokio::select! {
                (changed, _, _) = any_changed => if changed.is_err() {
                    break Some(None);
                },
                command = wait_for_stop(&mut self.commands) => break Some(command),
            }
        };
        self.dependencies = dependencies;
        interrupted
    }

    /// One launch under a GPU lease (when the service asks for GPUs), which is
    /// given back only once the launch's processes are gone.
    async fn launch_once(&mut self) -> Outcome {
        let broker = self
            .shared
            .gpus
            .clone()
            .filter(|_| self.spec.gpu.wants_gpus());
        let Some(broker) = broker else {
            return self.launch_with(None).await;
        };
        let lease = match self.await_lease(&broker).await {
            Ok(lease) => lease,
            Err(outcome) => return outcome,
        };
        self.status
            .send_modify(|status| status.gpus.clone_from(&lease.devices));
        let outcome = self.launch_with(Some(&lease)).await;
        let (main_pid, launch) = (self.last_pid, self.launch_id.clone());
        {
            let (broker, launch) = (broker.clone(), launch.clone());
            let released = tokio::task::spawn_blocking(move || {
                broker.release(&lease, main_pid, &launch);
            });
            if let Err(error) = released.await {
                tracing::error!("the GPU release check failed: {error}");
            }
        }
        self.status.send_modify(|status| status.gpus.clear());
        // The release belongs to the launch that ends: confirmed (or reported)
        // before the next launch exists, so the check can neither race the
        // restart for the devices nor kill the new launch's processes, which it
        // tells apart by NANNY_LAUNCH.
        let name = &self.spec.service.name;
        if let Some(report) = broker.await_release(name, &launch).await {
            tracing::warn!(service = %name, "{report}");
            // In the service's own log, where `nanny logs` shows it.
            self.logs.push(&OutputLine {
                stream: Stream::Stderr,
                text: format!("nanny: {report}"),
            });
        }
        outcome
    }

    /// A lease for this launch. While other services hold the devices it needs,
    /// the service waits (saying for whom) and tries again at each release, as a
    /// queued start does; a request no release can satisfy fails it.
    async fn await_lease(&mut self, broker: &Arc<GpuBroker>) -> Result<Lease, Outcome> {
        loop {
            let mut releases = broker.releases();
            let acquired = {
                let (broker, name, request) = (
                    broker.clone(),
                    self.spec.service.name.clone(),
                    self.spec.gpu.clone(),
                );
                // It may ask nvidia-smi: off the async workers.
                tokio::task::spawn_blocking(move || broker.acquire(&name, &request)).await
            };
            let acquired = match acquired {
                Ok(acquired) => acquired,
                Err(error) => {
                    return Err(Outcome::GaveUp(format!("the GPU lease failed: {error}")))
                }
            };
            let conflict = match acquired {
                Ok(lease) => return Ok(lease),
                Err(conflict) if conflict.holders.is_empty() => {
                    return Err(Outcome::GaveUp(conflict.message))
                }
                Err(conflict) => conflict,
            };
            self.set(State::Waiting {
                reason: format!(
                    "waiting for GPUs held by {}: {}",
                    conflict.holders.join(", "),
                    conflict.message
                ),
            });
            tokio::select! {
                _ = releases.changed() => {}
                stop = wait_for_stop(&mut self.commands) => return Err(Outcome::Stopped(stop)),
            }
        }
    }

    /// A start slot: at most `max_concurrent_starts` services load at once. A
    /// queued service says so and still answers `stop` at once.
    async fn start_slot(&mut self) -> Result<Option<OwnedSemaphorePermit>, Outcome> {
        let starts = self.shared.starts.clone();
        match starts.clone().try_acquire_owned() {
            Ok(permit) => return Ok(Some(permit)),
            Err(TryAcquireError::Closed) => return Ok(None),
            Err(TryAcquireError::NoPermits) => {}
        }
        let queued = &self.shared.queued_starts;
        let ahead = queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.set(State::Waiting {
            reason: format!("queued for a start slot ({ahead} ahead)"),
        });
        let slot = tokio::select! {
            permit = starts.acquire_owned() => Ok(permit.ok()),
            stop = wait_for_stop(&mut self.commands) => Err(Outcome::Stopped(stop)),
        };
        queued.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        slot
    }

    async fn launch_with(&mut self, lease: Option<&Lease>) -> Outcome {
        // Held while starting: at most `max_concurrent_starts` load at once.
        let permit = match self.start_slot().await {
            Ok(permit) => permit,
            Err(stopped) => return stopped,
        };
        self.set(State::Starting {
            loading_percent: None,
        });
        let mut service = self.spec.service.clone();
        if let (Some(lease), Some(broker)) = (lease, &self.shared.gpus) {
            service.gpus = broker.devices_of(lease);
        }
        let session =
            match SessionHandle::spawn(PluginSession::new(self.spec.plugin.clone(), service)) {
                Ok(session) => session,
                Err(error) => {
                    return Outcome::GaveUp(format!("cannot start the plugin's thread: {error}"))
                }
            };
        let mut plan = match session.call(|session| session.plan()).await {
            Ok(Ok(plan)) => plan,
            Ok(Err(errors)) => {
                let problems: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.key, e.message))
                    .collect();
                return Outcome::GaveUp(format!(
                    "the {} plugin refused the configuration: {}",
                    self.spec.plugin.name(),
                    problems.join("; ")
                ));
            }
            Err(error) => return Outcome::GaveUp(error.to_string()),
        };
        self.spec.probes.apply(&mut plan);
        let (lines_in, lines) = mpsc::channel(PLUGIN_LINE_BACKLOG);
        let logs = self.logs.clone();
        let lines_in = LineSink::new(move |line| logs.push(line), lines_in);
        let ready_token = match crate::secrets::random_token() {
            Ok(token) => token,
            Err(error) => {
                return Outcome::Down {
                    reason: format!("no random ready token: {error}"),
                    clean: false,
                }
            }
        };
        let process = match self.spawn_launch(&plan, &ready_token, lines_in).await {
            Ok(process) => process,
            Err(LaunchError::Transient(reason)) => {
                return Outcome::Down {
                    reason,
                    clean: false,
                }
            }
            Err(LaunchError::Fatal(reason)) => return Outcome::GaveUp(reason),
        };
        self.last_pid = process.pid();
        let container_id = process.container_id().map(str::to_string);
        self.status.send_modify(|status| {
            status.pid = process.pid();
            status.container_id = container_id;
            status.launched_unix_ms = Some(unix_ms(SystemTime::now()));
        });
        let mut launch = Running {
            runner: self,
            session,
            plan,
            process,
            lines,
            permit,
            tail: VecDeque::new(),
            ready_token,
            launched_at: Instant::now(),
            foreign_noted: false,
        };
        let outcome = launch.watch().await;
        // Its processes are gone (the watch ends only once they are).
        if let Some(records) = &self.shared.launch_records {
            records.forget(&self.launch_id);
        }
        let mut ended = None;
        self.status.send_modify(|status| {
            status.pid = None;
            status.launched_unix_ms = None;
            ended = status.container_id.take();
            status.models.clear();
        });
        if let Some(id) = ended {
            lock(&self.shared.live_containers).retain(|live| *live != id);
        }
        outcome
    }

    /// Starts the plan's process or container with nanny's environment on top of
    /// the plan's: the service name, the GPU lease, the ready callback.
    async fn spawn_launch(
        &mut self,
        plan: &Plan,
        ready_token: &str,
        lines: LineSink,
    ) -> Result<Launched, LaunchError> {
        let name = self.spec.service.name.clone();
        #[cfg(test)]
        if tests::PANIC_AT_NEXT_LAUNCH.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected by a test");
        }
        self.launches += 1;
        // Unique among this daemon's launches, and across daemons by the pid.
        self.launch_id = format!("{name}.{}.{}", std::process::id(), self.launches);
        let mut extra = vec![
            ("NANNY_SERVICE".to_string(), name.clone()),
            ("NANNY_LAUNCH".to_string(), self.launch_id.clone()),
        ];
        let leased = self.status.borrow().gpus.join(",");
        if !leased.is_empty() {
            extra.push(("CUDA_VISIBLE_DEVICES".into(), leased));
        }
        if let Some(base) = &self.shared.ready_url {
            extra.push((
                "NANNY_READY_URL".into(),
                format!("{base}/v1/services/{name}/ready"),
            ));
            extra.push(("NANNY_READY_TOKEN".into(), ready_token.to_string()));
        }
        // Set by nanny after the plan: what nanny sets wins.
        let with_extra = |env: &[(String, String)]| {
            let mut env: Vec<(String, String)> = env
                .iter()
                .filter(|(key, _)| !extra.iter().any(|(ours, _)| ours == key))
                .cloned()
                .collect();
            env.extend(extra.iter().cloned());
            env
        };
        match &plan.launch {
            Launch::Process(process) => {
                let service = &self.spec.service;
                // Retried under back-off: the holder may go away.
                crate::runtime::ports::check_free(&service.host, service.port)
                    .map_err(LaunchError::Transient)?;
                let spec = ProcessSpec {
                    program: process.program.clone(),
                    args: process.args.clone(),
                    env: with_extra(&process.env),
                    work_dir: process.work_dir.as_ref().map(PathBuf::from),
                };
                let cgroup = self.shared.cgroup_root.as_ref().and_then(|root| {
                    Cgroup::create(root.join(format!("{name}-{}", self.launches)))
                        .map_err(|error| {
                            tracing::warn!(service = %name, "no cgroup for this launch: {error}")
                        })
                        .ok()
                });
                let launched = spawn(&spec, cgroup, lines);
                if let (Ok(process), Some(records)) = (&launched, &self.shared.launch_records) {
                    if let Err(error) = records.record(&self.launch_id, process.pid()) {
                        tracing::warn!(service = %name, "cannot record the launch: {error}");
                    }
                }
                launched.map(Launched::Process).map_err(|error| {
                    let reason = format!("cannot start `{}`: {error}", process.program);
                    if is_transient(&error) {
                        LaunchError::Transient(reason)
                    } else {
                        LaunchError::Fatal(reason)
                    }
                })
            }
            Launch::Container(plan) => {
                let container = plan;
                let docker = self.shared.docker().await.map_err(LaunchError::Fatal)?;
                let suffix = crate::secrets::random_token()
                    .map_err(|error| LaunchError::Transient(format!("no random name: {error}")))?;
                let instance = &self.shared.instance;
                let mut spec = ContainerSpec {
                    name: format!("nanny-{instance}-{name}-{}", &suffix[..8]),
                    service: name.clone(),
                    instance: instance.clone(),
                    image: container.image.clone(),
                    command: container.command.clone(),
                    env: with_extra(&container.env),
                    host: self.spec.service.host.clone(),
                    host_port: self.spec.service.port,
                    container_port: container.port,
                    mounts: container
                        .mounts
                        .iter()
                        .map(|m| (m.source.clone(), m.target.clone(), m.read_only))
                        .collect(),
                    shm_size_mib: container.shm_size_mib,
                    gpus: self.status.borrow().gpus.clone(),
                    spec_hash: String::new(),
                };
                spec.spec_hash = container::spec_hash(&spec);
                let earlier = lock(&self.shared.adoptable).remove(&name);
                let handle = match earlier {
                    Some((id, hash)) if hash == spec.spec_hash => {
                        tracing::info!(service = %name, "adopting container {id}, left running by an earlier nanny");
                        Ok(container::adopt(&docker, id, lines))
                    }
                    Some((id, _)) => {
                        // Made from another spec: the configuration changed since.
                        container::remove(&docker, &id).await;
                        container::run(&docker, &spec, lines).await
                    }
                    None => {
                        crate::runtime::ports::check_free(&spec.host, spec.host_port)
                            .map_err(LaunchError::Transient)?;
                        container::run(&docker, &spec, lines).await
                    }
                };
                if let Ok(handle) = &handle {
                    lock(&self.shared.live_containers).push(handle.id.clone());
                }
                handle.map(Launched::Container).map_err(|error| {
                    LaunchError::Fatal(format!(
                        "cannot start a container of `{}`: {error}",
                        container.image
                    ))
                })
            }
        }
    }
}

/// Why a launch did not happen.
enum LaunchError {
    /// The machine is short of something now (file descriptors, processes,
    /// memory): back off and try again.
    Transient(String),
    /// Trying again cannot help.
    Fatal(String),
}

/// Spawn errors that a later try may not meet: the daemon or the machine is out
/// of file descriptors, processes or memory for the moment.
fn is_transient(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// Returns the reply channel of the next stop request (`None`: supervisor gone);
/// start requests meanwhile are moot.
async fn wait_for_stop(commands: &mut mpsc::Receiver<Command>) -> Option<oneshot::Sender<()>> {
    loop {
        match commands.recv().await? {
            Command::Stop(reply) => return Some(reply),
            Command::Start | Command::Restart => {}
            Command::MarkReady { reply, .. } => {
                let _ = reply.send(false);
            }
        }
    }
}

/// One launched backend being watched.
struct Running<'a> {
    runner: &'a mut Runner,
    session: SessionHandle,
    plan: Plan,
    process: Launched,
    lines: mpsc::Receiver<OutputLine>,
    permit: Option<OwnedSemaphorePermit>,
    tail: VecDeque<String>,
    /// What this launch's ready callback must present.
    ready_token: String,
    launched_at: Instant,
    /// Whether the log says already that another program answers on the port.
    foreign_noted: bool,
}

enum Event {
    Line(OutputLine),
    ReadinessProbe,
    LivenessProbe,
    Exited(Exit),
    Deadline,
    Command(Option<Command>),
}

fn ticker(period_ms: u32) -> Interval {
    let mut ticker = interval(Duration::from_millis(u64::from(period_ms.max(10))));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

impl Running<'_> {
    async fn watch(&mut self) -> Outcome {
        let startup_timeout = self.runner.spec.startup_timeout;
        let mut deadline = Instant::now() + startup_timeout;
        let mut readiness = ticker(self.plan.readiness.period_ms);
        // The first liveness probe comes one period after ready, not at once.
        let mut liveness: Option<Interval> = None;
        let probe_readiness = !self.plan.readiness.path.is_empty();
        let mut ready = false;
        let mut failed_probes = 0;
        let mut lines_open = true;
        let mut announced: Option<oneshot::Sender<bool>> = None;
        loop {
            let event = tokio::select! {
                line = self.lines.recv(), if lines_open => match line {
                    Some(line) => Event::Line(line),
                    None => { lines_open = false; continue; }
                },
                _ = readiness.tick(), if !ready && probe_readiness => Event::ReadinessProbe,
                _ = async { liveness.as_mut().expect("guarded").tick().await }, if ready && liveness.is_some() => Event::LivenessProbe,
                exit = self.process.wait() => match exit {
                    Ok(exit) => Event::Exited(exit),
                    Err(error) => return self.stop_for(Outcome::Down { reason: format!("lost track of the process: {error}"), clean: false }).await,
                },
                _ = sleep_until(deadline), if !ready => Event::Deadline,
                command = self.runner.commands.recv() => Event::Command(command),
            };
            let progress = match event {
                Event::Line(line) => self.on_line(line).await,
                Event::ReadinessProbe => {
                    let answer = self
                        .probe(
                            &self.plan.readiness.path.clone(),
                            self.plan.readiness.timeout_ms,
                        )
                        .await;
                    match answer {
                        Ok(Progress::Ready) => Ok(self.answered_by_this_launch().await),
                        other => other,
                    }
                }
                Event::LivenessProbe => {
                    let probe = self.plan.liveness.clone().expect("guarded");
                    match self.probe(&probe.path, probe.timeout_ms).await {
                        Ok(Progress::Ready) => {
                            if failed_probes > 0 {
                                failed_probes = 0;
                                self.runner.set(State::Ready);
                            }
                        }
                        Ok(_) => {
                            failed_probes += 1;
                            if failed_probes >= LIVENESS_FAILURE_THRESHOLD {
                                let reason = format!(
                                    "{failed_probes} liveness probes of {} failed in a row",
                                    probe.path
                                );
                                return self
                                    .stop_for(Outcome::Down {
                                        reason,
                                        clean: false,
                                    })
                                    .await;
                            }
                            self.runner.set(State::Unhealthy { failed_probes });
                        }
                        Err(reason) => return self.stop_for(Outcome::GaveUp(reason)).await,
                    }
                    continue;
                }
                Event::Exited(exit) => return self.exited(exit).await,
                Event::Deadline => {
                    let reason = format!(
                        "not ready within {}s of its last sign of progress",
                        startup_timeout.as_secs()
                    );
                    return self
                        .stop_for(Outcome::Down {
                            reason,
                            clean: false,
                        })
                        .await;
                }
                Event::Command(None) => return self.stop_for(Outcome::Stopped(None)).await,
                Event::Command(Some(Command::Stop(reply))) => {
                    return self.stop_for(Outcome::Stopped(Some(reply))).await
                }
                Event::Command(Some(Command::Restart)) => {
                    return self.stop_for(Outcome::Restart).await
                }
                Event::Command(Some(Command::Start)) => continue,
                Event::Command(Some(Command::MarkReady { token, reply })) => {
                    if !crate::secrets::same(&token, &self.ready_token) {
                        let _ = reply.send(false);
                        continue;
                    }
                    // Answered once the state says ready, so the caller can rely on it.
                    announced = Some(reply);
                    Ok(Progress::Ready)
                }
            };
            match progress {
                Ok(Progress::Ready) if !ready => {
                    ready = true;
                    liveness = self.plan.liveness.as_ref().map(|probe| {
                        let period = Duration::from_millis(u64::from(probe.period_ms.max(10)));
                        let mut ticker = interval_at(Instant::now() + period, period);
                        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        ticker
                    });
                    self.permit = None;
                    self.runner.backoff.ready();
                    // Before `ready`: whoever sees it ready can ask for its models.
                    self.discover_models().await;
                    self.runner.set(State::Ready);
                    crate::metrics::observe_time_to_ready(
                        &self.runner.spec.service.name,
                        self.launched_at.elapsed(),
                    );
                }
                Ok(Progress::Loading(percent)) if !ready => {
                    deadline = Instant::now() + startup_timeout;
                    self.runner.set(State::Starting {
                        loading_percent: percent,
                    });
                }
                Ok(Progress::Failed(reason)) => {
                    return self.stop_for(Outcome::GaveUp(reason)).await
                }
                Ok(_) => {}
                Err(reason) => return self.stop_for(Outcome::GaveUp(reason)).await,
            }
            if let Some(reply) = announced.take() {
                let _ = reply.send(true);
            }
        }
    }

    /// The line is in the log already (the sink put it there); the plugin reads it.
    async fn on_line(&mut self, line: OutputLine) -> Result<Progress, String> {
        if self.tail.len() == EXIT_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.text.clone());
        let source = match line.stream {
            Stream::Stdout => Output::Stdout,
            Stream::Stderr => Output::Stderr,
        };
        self.session
            .call(move |session| session.on_output(source, &line.text))
            .await
            .map_err(|e| e.to_string())
    }

    async fn probe(&mut self, path: &str, timeout_ms: u32) -> Result<Progress, String> {
        let service = &self.runner.spec.service;
        let asked = Instant::now();
        let answer = probe::get(
            &service.host,
            service.port,
            path,
            Duration::from_millis(u64::from(timeout_ms)),
        )
        .await;
        crate::metrics::observe_probe(&service.name, asked.elapsed());
        let Some(answer) = answer else {
            return Ok(Progress::Nothing);
        };
        let response = HttpResponse {
            status: answer.status,
            content_type: answer.content_type,
            body: answer.body,
        };
        self.session
            .call(move |session| session.on_probe(&response))
            .await
            .map_err(|e| e.to_string())
    }

    /// A probe answer counts as readiness only when this launch holds the port:
    /// another program there (an orphan of an earlier run, say) answers too.
    async fn answered_by_this_launch(&mut self) -> Progress {
        let port = self.runner.spec.service.port;
        let Listener::Foreign(pid, name) = self.process.listener(port).await else {
            return Progress::Ready;
        };
        if !self.foreign_noted {
            self.foreign_noted = true;
            let note = format!(
                "port {port} answered, but pid {pid} ({name}) holds it, not this launch; not ready yet"
            );
            tracing::warn!(service = %self.runner.spec.service.name, "{note}");
            self.runner.logs.push(&OutputLine {
                stream: Stream::Stderr,
                text: format!("nanny: {note}"),
            });
        }
        Progress::Nothing
    }

    /// Asks the ready backend what it serves; a backend that cannot say still serves.
    async fn discover_models(&mut self) {
        let path = self.plan.models_path.clone();
        if path.is_empty() {
            return;
        }
        let service = &self.runner.spec.service;
        let name = service.name.clone();
        let Some(answer) = probe::get(&service.host, service.port, &path, MODELS_TIMEOUT).await
        else {
            tracing::warn!(service = %name, "no answer from {path}; models unknown");
            return;
        };
        let response = HttpResponse {
            status: answer.status,
            content_type: answer.content_type,
            body: answer.body,
        };
        match self
            .session
            .call(move |session| session.models(&response))
            .await
        {
            Ok(Ok(models)) => self.runner.status.send_modify(|status| {
                if models.len() > MAX_MODELS {
                    tracing::warn!(
                        service = %name,
                        "the backend lists {} models; nanny keeps the first {MAX_MODELS}",
                        models.len()
                    );
                }
                status.models = models
                    .into_iter()
                    .take(MAX_MODELS)
                    .map(|model| ModelInfo {
                        id: model.id,
                        owned_by: model.owned_by,
                        context_length: model.context_length,
                    })
                    .collect();
            }),
            Ok(Err(reason)) => tracing::warn!(service = %name, "models unknown: {reason}"),
            Err(error) => tracing::warn!(service = %name, "models unknown: {error}"),
        }
    }

    async fn exited(&mut self, exit: Exit) -> Outcome {
        // The pipes close once the whole group is gone; take what it printed last.
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(1), self.lines.recv()).await
        {
            let _ = self.on_line(line).await;
        }
        self.process.clean_up().await;
        let last_lines: Vec<String> = self.tail.iter().cloned().collect();
        match self
            .session
            .call(move |session| session.on_exit(exit.code, exit.signal, &last_lines))
            .await
        {
            Ok(ExitAdvice::GiveUp(reason)) => Outcome::GaveUp(reason),
            Ok(ExitAdvice::Restart) => Outcome::Down {
                reason: format!("exited with {exit}"),
                clean: exit.code == Some(0),
            },
            Err(error) => Outcome::GaveUp(error.to_string()),
        }
    }

    /// Stops the backend (the plan's signal, grace, then SIGKILL) and reports `outcome`.
    async fn stop_for(&mut self, outcome: Outcome) -> Outcome {
        self.runner.set(State::Stopping);
        let signal = self.plan.stop_signal.map_or(libc::SIGTERM, i32::from);
        let grace = self
            .plan
            .grace_ms
            .map_or(DEFAULT_GRACE, |ms| Duration::from_millis(u64::from(ms)));
        if let Err(error) = self.process.stop(signal, grace).await {
            tracing::error!(service = %self.runner.spec.service.name, "stopping: {error}");
        }
        outcome
    }
}

/// Every five minutes: this instance's containers that no launch runs and nobody
/// is about to adopt are removed.
async fn reconcile(shared: Shared, docker: bollard::Docker) {
    loop {
        tokio::time::sleep(RECONCILE_EVERY).await;
        let mut keep = lock(&shared.live_containers).clone();
        keep.extend(lock(&shared.adoptable).values().map(|(id, _)| id.clone()));
        let removed = container::remove_unknown(&docker, &shared.instance, &keep).await;
        if removed > 0 {
            tracing::info!("removed {removed} container(s) nothing runs");
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::plugin::{Catalog, Limits, PluginEngine, Setting};
    use crate::supervise::{Supervisor, SupervisorOptions};

    /// Makes the next launch (of any service in this test binary) panic.
    pub static PANIC_AT_NEXT_LAUNCH: AtomicBool = AtomicBool::new(false);

    #[tokio::test]
    async fn a_panic_in_supervision_fails_the_service_and_start_works_again() {
        let engine = PluginEngine::new(Limits::default(), None).unwrap();
        let catalog = Catalog::load(&engine, &[]);
        let settings = vec![
            Setting::list("command", &["sh", "-c", "echo READY; exec sleep 1000"]),
            Setting::text("ready_line", "^READY"),
            Setting::text("health_path", ""),
        ];
        let mut spec = ServiceSpec::new(
            Service::local("fragile", 1, settings),
            catalog.get("command").unwrap().clone(),
        );
        spec.autostart = false;
        let supervisor = Supervisor::launch(vec![spec], SupervisorOptions::in_memory(1)).unwrap();
        let mut status = supervisor.watch("fragile").unwrap();
        PANIC_AT_NEXT_LAUNCH.store(true, Ordering::SeqCst);
        supervisor.start("fragile").await.unwrap();
        let failed = status
            .wait_for(|s| matches!(s.state, State::Failed { .. }))
            .await
            .unwrap()
            .clone();
        assert!(
            matches!(&failed.state, State::Failed { reason } if reason.contains("panicked: injected by a test")),
            "{failed:?}"
        );
        supervisor.start("fragile").await.unwrap();
        let ready = status
            .wait_for(|s| s.state == State::Ready)
            .await
            .unwrap()
            .clone();
        assert!(ready.pid.is_some());
        supervisor.shutdown().await;
    }
}
