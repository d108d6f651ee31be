//! Watching one launched backend until it ends: its output lines and probe
//! answers go to the plugin, which says loading, ready or failed; liveness
//! failures, the start deadline, an exit or a command end the launch. Probes run
//! on tasks of their own and post their answers, so a slow probe never holds up
//! a line, an exit or a stop.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

use super::probe::ProbeResponse;
use super::runner::{Outcome, Runner};
use super::spec::Command;
use super::state::{ModelInfo, State};
use super::world::{Backend, Session};
use crate::plugin::{ExitAdvice, HttpResponse, Output, Plan, Probe, Progress};
use crate::runtime::ports::Listener;
use crate::runtime::{Exit, OutputLine, Stream};

/// Lines handed to the plugin's `on-exit`.
const EXIT_LINES: usize = 50;
/// Failed liveness probes in a row that restart the backend (kubelet's default).
const LIVENESS_FAILURE_THRESHOLD: u32 = 3;
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Models kept per service: `/v1/models` lists every service's.
const MAX_MODELS: usize = 1000;
/// How long a ready backend may take to list its models (it delays `ready`).
const MODELS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the last lines of an exited backend may take to arrive.
const LAST_LINES_TIMEOUT: Duration = Duration::from_secs(1);

/// One launched backend being watched.
pub(super) struct Running<'a> {
    pub runner: &'a mut Runner,
    pub session: Box<dyn Session>,
    pub plan: Plan,
    pub process: Box<dyn Backend>,
    pub lines: mpsc::Receiver<OutputLine>,
    /// The start slot, given back once ready.
    pub permit: Option<OwnedSemaphorePermit>,
    pub tail: VecDeque<String>,
    /// What this launch's ready callback must present.
    pub ready_token: String,
    pub launched_at: Instant,
    /// Whether the log says already that another program answers on the port.
    pub foreign_noted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Readiness,
    Liveness,
}

/// A probe's answer (`None`: nothing answered in time). The prober waits for
/// `judged` before its next probe, so answers are read one at a time, in order.
struct ProbeAnswer {
    kind: ProbeKind,
    answer: Option<ProbeResponse>,
    judged: oneshot::Sender<()>,
}

enum Event {
    Line(OutputLine),
    Probe(ProbeAnswer),
    Exited(Exit),
    Deadline,
    Command(Option<Command>),
}

/// A probe task, stopped when dropped.
struct Prober(JoinHandle<()>);

impl Drop for Prober {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Running<'_> {
    /// Probes `probe` every period from `first` on, posting each answer.
    fn prober(
        &self,
        kind: ProbeKind,
        probe: &Probe,
        first: Instant,
        answers: mpsc::Sender<ProbeAnswer>,
    ) -> Prober {
        let world = self.runner.shared.world.clone();
        let metrics = self.runner.shared.metrics.clone();
        let service = &self.runner.spec.service;
        let (name, host, port) = (service.name.clone(), service.host.clone(), service.port);
        let path = probe.path.clone();
        let period = Duration::from_millis(u64::from(probe.period_ms.max(10)));
        let timeout = Duration::from_millis(u64::from(probe.timeout_ms));
        Prober(tokio::spawn(async move {
            let mut ticker = interval_at(first, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let asked = Instant::now();
                let answer = world.probe(host.clone(), port, path.clone(), timeout).await;
                metrics.observe_probe(&name, asked.elapsed());
                let (judged, judgement) = oneshot::channel();
                let posted = ProbeAnswer {
                    kind,
                    answer,
                    judged,
                };
                if answers.send(posted).await.is_err() || judgement.await.is_err() {
                    return;
                }
            }
        }))
    }

    pub async fn watch(&mut self) -> Outcome {
        let startup_timeout = self.runner.spec.startup_timeout;
        let mut deadline = Instant::now() + startup_timeout;
        let (answers, mut probes) = mpsc::channel(1);
        let readiness = self.plan.readiness.clone();
        let mut _prober = (!readiness.path.is_empty()).then(|| {
            self.prober(
                ProbeKind::Readiness,
                &readiness,
                Instant::now(),
                answers.clone(),
            )
        });
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
                Some(answer) = probes.recv() => Event::Probe(answer),
                exit = self.process.wait() => match exit {
                    Ok(exit) => Event::Exited(exit),
                    Err(error) => return self.stop_for(Outcome::Down { reason: format!("lost track of the process: {error}"), clean: false }).await,
                },
                _ = sleep_until(deadline), if !ready => Event::Deadline,
                command = self.runner.commands.recv() => Event::Command(command),
            };
            let progress = match event {
                Event::Line(line) => self.on_line(line).await,
                Event::Probe(ProbeAnswer {
                    kind: ProbeKind::Readiness,
                    answer,
                    judged,
                }) => {
                    if ready {
                        continue;
                    }
                    let progress = match self.on_probe(answer).await {
                        Ok(Progress::Ready) => Ok(self.answered_by_this_launch().await),
                        other => other,
                    };
                    let _ = judged.send(());
                    progress
                }
                Event::Probe(ProbeAnswer {
                    kind: ProbeKind::Liveness,
                    answer,
                    judged,
                }) => {
                    let path = self.plan.liveness.as_ref().map(|probe| probe.path.clone());
                    match self.on_probe(answer).await {
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
                                    path.unwrap_or_default()
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
                    let _ = judged.send(());
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
                    // The first liveness probe comes one period after ready, not at once.
                    _prober = self.plan.liveness.clone().map(|probe| {
                        let period = Duration::from_millis(u64::from(probe.period_ms.max(10)));
                        let first = Instant::now() + period;
                        self.prober(ProbeKind::Liveness, &probe, first, answers.clone())
                    });
                    self.permit = None;
                    self.runner.backoff.ready();
                    // Before `ready`: whoever sees it ready can ask for its models.
                    self.discover_models().await;
                    self.runner.set(State::Ready);
                    self.runner.shared.metrics.observe_time_to_ready(
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
        self.session.on_output(source, line.text).await
    }

    /// What the plugin makes of a probe's answer; no answer is no progress.
    async fn on_probe(&mut self, answer: Option<ProbeResponse>) -> Result<Progress, String> {
        let Some(answer) = answer else {
            return Ok(Progress::Nothing);
        };
        self.session.on_probe(http_response(answer)).await
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
        let asked = self.runner.shared.world.probe(
            service.host.clone(),
            service.port,
            path.clone(),
            MODELS_TIMEOUT,
        );
        let Some(answer) = asked.await else {
            tracing::warn!(service = %name, "no answer from {path}; models unknown");
            return;
        };
        match self.session.models(http_response(answer)).await {
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
                status.last_models = status.models.iter().map(|m| m.id.clone()).collect();
            }),
            Ok(Err(reason)) | Err(reason) => {
                tracing::warn!(service = %name, "models unknown: {reason}")
            }
        }
    }

    async fn exited(&mut self, exit: Exit) -> Outcome {
        // The pipes close once the whole group is gone; take what it printed last.
        while let Ok(Some(line)) = tokio::time::timeout(LAST_LINES_TIMEOUT, self.lines.recv()).await
        {
            let _ = self.on_line(line).await;
        }
        self.process.clean_up().await;
        let last_lines: Vec<String> = self.tail.iter().cloned().collect();
        match self.session.on_exit(exit, last_lines).await {
            Ok(ExitAdvice::GiveUp(reason)) => Outcome::GaveUp(reason),
            Ok(ExitAdvice::Restart) => Outcome::Down {
                reason: format!("exited with {exit}"),
                clean: exit.code == Some(0),
            },
            Err(error) => Outcome::GaveUp(error),
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

fn http_response(answer: ProbeResponse) -> HttpResponse {
    HttpResponse {
        status: answer.status,
        content_type: answer.content_type,
        body: answer.body,
    }
}
