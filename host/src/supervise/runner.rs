//! One task per service: the lifecycle loop, read top to bottom. It waits to be
//! wanted, waits for its dependencies, launches (see `launch`), watches the
//! launch (see `running`) and decides from how it ended what comes next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::backoff::Backoff;
use super::logs::LogBook;
use super::spec::{Command, Condition, RestartMode, ServiceSpec};
use super::state::{unix_ms, ServiceStatus, State, StateChange};
use super::world::World;
use crate::gpu::GpuBroker;
use crate::metrics::Metrics;

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
    /// Launches plans, probes ports and makes plugin sessions.
    pub world: Arc<dyn World>,
    pub starts: Arc<Semaphore>,
    /// Launches waiting for a start slot now.
    pub queued_starts: Arc<AtomicUsize>,
    /// Every state change of every service, in order.
    pub events: Arc<super::EventLog>,
    /// The daemon's address for ready callbacks (`http://127.0.0.1:7878`), if it serves them.
    pub ready_url: Option<String>,
    pub gpus: Option<Arc<GpuBroker>>,
    pub metrics: Metrics,
}

/// Why one launch ended.
pub(super) enum Outcome {
    /// Asked to stop; the caller waits on the reply.
    Stopped(Option<oneshot::Sender<()>>),
    /// Asked to restart: go again at once.
    Restart,
    /// The plugin (or the configuration) says trying again cannot help.
    GaveUp(String),
    /// It went down; the restart policy decides.
    Down { reason: String, clean: bool },
}

/// What interrupted a wait (for dependencies, a start slot, a GPU).
pub(super) enum Interruption {
    /// A stop request; the caller answers it.
    Stop(oneshot::Sender<()>),
    /// The supervisor went away.
    Gone,
}

impl From<Interruption> for Outcome {
    fn from(interruption: Interruption) -> Self {
        match interruption {
            Interruption::Stop(reply) => Outcome::Stopped(Some(reply)),
            Interruption::Gone => Outcome::Stopped(None),
        }
    }
}

/// What the restart policy decided after a launch went down.
enum AfterDown {
    Relaunch,
    StayDown,
    /// The supervisor went away meanwhile.
    Gone,
}

pub(super) struct Runner {
    pub(super) spec: ServiceSpec,
    pub(super) shared: Shared,
    pub(super) status: watch::Sender<ServiceStatus>,
    pub(super) commands: mpsc::Receiver<Command>,
    dependencies: Vec<Dependency>,
    pub(super) logs: Arc<LogBook>,
    pub(super) backoff: Backoff,
    /// Whether the service should run when its task (re)starts: `autostart` at
    /// first, and false after a panic took the task down.
    start_at_once: bool,
    pub(super) launches: u64,
    /// The last launch's process, for the GPU release check.
    pub(super) last_pid: Option<i32>,
    /// The last launch's `NANNY_LAUNCH`, which every process of it inherits.
    pub(super) launch_id: String,
    /// Why the service is being stopped, when whoever stops it said; shown
    /// with the `stopping` and `stopped` changes.
    stop_reason: Arc<std::sync::Mutex<Option<String>>>,
}

impl Runner {
    pub fn new(
        spec: ServiceSpec,
        shared: Shared,
        status: watch::Sender<ServiceStatus>,
        commands: mpsc::Receiver<Command>,
        dependencies: Vec<Dependency>,
        logs: Arc<LogBook>,
        stop_reason: Arc<std::sync::Mutex<Option<String>>>,
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
            stop_reason,
        }
    }

    pub(super) fn set(&self, state: State) {
        self.set_with(state, |_| {});
    }

    /// `set`, with `also` applied in the same update, so nobody sees one without
    /// the other.
    pub(super) fn set_with(&self, state: State, also: impl FnOnce(&mut ServiceStatus)) {
        let mut change = None;
        let reason = match state {
            State::Stopping => crate::locks::lock(&self.stop_reason).clone(),
            State::Stopped => crate::locks::lock(&self.stop_reason).take(),
            _ => None,
        };
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
                reason,
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

    /// Stopped until wanted; then dependencies, a launch, and what its end means.
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
            if let Err(interruption) = self.await_dependencies().await {
                self.set(State::Stopped);
                match interruption {
                    Interruption::Stop(reply) => {
                        let _ = reply.send(());
                    }
                    Interruption::Gone => return,
                }
                wanted = false;
                continue;
            }
            match self.launch_once().await {
                Outcome::Stopped(reply) => {
                    self.set(State::Stopped);
                    let Some(reply) = reply else { return };
                    let _ = reply.send(());
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
                        AfterDown::Relaunch => wanted = true,
                        AfterDown::StayDown => wanted = false,
                        AfterDown::Gone => return,
                    }
                }
            }
        }
    }

    /// Applies the restart policy after a launch went down.
    async fn wait_to_restart(&mut self, reason: String, clean: bool) -> AfterDown {
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
            return AfterDown::StayDown;
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
            return AfterDown::StayDown;
        }
        let backoff = State::Backoff {
            next_try_unix_ms: unix_ms(SystemTime::now() + delay),
        };
        self.set_with(backoff, |status| status.restarts += 1);
        let wake = tokio::time::sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => return AfterDown::Relaunch,
                command = self.commands.recv() => match command {
                    None => return AfterDown::Gone,
                    Some(Command::Start | Command::Restart) => {
                        self.backoff.reset();
                        return AfterDown::Relaunch;
                    }
                    Some(Command::Stop(reply)) => {
                        self.set(State::Stopped);
                        let _ = reply.send(());
                        return AfterDown::StayDown;
                    }
                    Some(Command::MarkReady { reply, .. }) => {
                        let _ = reply.send(false);
                    }
                },
            }
        }
    }

    /// Waits until every dependency meets its condition, saying what it waits for
    /// (and when that has failed).
    async fn await_dependencies(&mut self) -> Result<(), Interruption> {
        let mut dependencies = std::mem::take(&mut self.dependencies);
        let outcome = loop {
            let Some(unmet) = dependencies.iter().find(|d| !d.is_met()) else {
                break Ok(());
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
                    break Err(Interruption::Gone);
                },
                interruption = wait_for_stop(&mut self.commands) => break Err(interruption),
            }
        };
        self.dependencies = dependencies;
        outcome
    }

    /// A start slot: at most `max_concurrent_starts` services load at once. A
    /// queued service says so and still answers `stop` at once.
    pub(super) async fn start_slot(
        &mut self,
    ) -> Result<Option<OwnedSemaphorePermit>, Interruption> {
        let starts = self.shared.starts.clone();
        match starts.clone().try_acquire_owned() {
            Ok(permit) => return Ok(Some(permit)),
            Err(TryAcquireError::Closed) => return Ok(None),
            Err(TryAcquireError::NoPermits) => {}
        }
        let queued = &self.shared.queued_starts;
        let ahead = queued.fetch_add(1, Ordering::SeqCst);
        self.set(State::Waiting {
            reason: format!("queued for a start slot ({ahead} ahead)"),
        });
        let slot = tokio::select! {
            permit = starts.acquire_owned() => Ok(permit.ok()),
            interruption = wait_for_stop(&mut self.commands) => Err(interruption),
        };
        queued.fetch_sub(1, Ordering::SeqCst);
        slot
    }
}

/// The next stop request (or the supervisor going away); start requests
/// meanwhile are moot.
pub(super) async fn wait_for_stop(commands: &mut mpsc::Receiver<Command>) -> Interruption {
    loop {
        match commands.recv().await {
            None => return Interruption::Gone,
            Some(Command::Stop(reply)) => return Interruption::Stop(reply),
            Some(Command::Start | Command::Restart) => {}
            Some(Command::MarkReady { reply, .. }) => {
                let _ = reply.send(false);
            }
        }
    }
}
