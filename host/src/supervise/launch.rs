//! One launch of a service: a GPU lease when it asks for GPUs (given back only
//! once the launch's processes are gone), a start slot, the plugin's plan, and
//! the plan launched with nanny's environment on top.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::runner::{wait_for_stop, Outcome, Runner};
use super::running::Running;
use super::state::{unix_ms, State};
use crate::gpu::{GpuBroker, Lease};
use crate::plugin::{Launch, Plan};
use crate::runtime::{
    ComposeSpec, ContainerSpec, LaunchError, LaunchOrder, LaunchWhat, LineSink, OutputLine,
    ProcessSpec, ResourceLimits, Stream,
};

/// Output lines waiting for the plugin; beyond this they are dropped for the
/// plugin (never for the log) rather than block the backend.
const PLUGIN_LINE_BACKLOG: usize = 1024;

impl Runner {
    /// One launch under a GPU lease (when the service asks for GPUs), which is
    /// given back only once the launch's processes are gone.
    pub(super) async fn launch_once(&mut self) -> Outcome {
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
                interruption = wait_for_stop(&mut self.commands) => return Err(interruption.into()),
            }
        }
    }

    async fn launch_with(&mut self, lease: Option<&Lease>) -> Outcome {
        // Held while starting: at most `max_concurrent_starts` load at once.
        let permit = match self.start_slot().await {
            Ok(permit) => permit,
            Err(interruption) => return interruption.into(),
        };
        self.set(State::Starting {
            loading_percent: None,
        });
        let mut service = self.spec.service.clone();
        if let (Some(lease), Some(broker)) = (lease, &self.shared.gpus) {
            service.gpus = broker.devices_of(lease);
        }
        let session = match self.shared.world.session(&self.spec.plugin, service) {
            Ok(session) => session,
            Err(error) => {
                return Outcome::GaveUp(format!("cannot start the plugin's thread: {error}"))
            }
        };
        let mut plan = match session.plan().await {
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
            Err(error) => return Outcome::GaveUp(error),
        };
        // A plugin from a file runs only what the user granted it.
        if let Err(refusal) = self
            .spec
            .plugin
            .check_plan(&plan.launch, &self.spec.service.env)
        {
            return Outcome::GaveUp(refusal.to_string());
        }
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
        #[cfg(test)]
        if super::tests::PANIC_AT_NEXT_LAUNCH.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected by a test");
        }
        let order = self.order(&plan, &ready_token);
        let process = match self.shared.world.launch(order, lines_in).await {
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
        let container_id = process.container_id();
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
        let mut ended = None;
        self.status.send_modify(|status| {
            status.pid = None;
            status.launched_unix_ms = None;
            ended = status.container_id.take();
            status.models.clear();
        });
        self.shared.world.ended(&self.launch_id, ended.as_deref());
        outcome
    }

    /// The plan's launch with nanny's environment on top of the plan's (the
    /// service name, the launch id, the GPU lease, the ready callback): what
    /// nanny sets wins.
    fn order(&mut self, plan: &Plan, ready_token: &str) -> LaunchOrder {
        let name = self.spec.service.name.clone();
        self.launches += 1;
        // Unique among this daemon's launches, and across daemons by the pid.
        self.launch_id = format!("{name}.{}.{}", std::process::id(), self.launches);
        let mut extra = vec![
            ("NANNY_SERVICE".to_string(), name.clone()),
            ("NANNY_LAUNCH".to_string(), self.launch_id.clone()),
        ];
        let gpus = self.status.borrow().gpus.clone();
        if !gpus.is_empty() {
            extra.push(("CUDA_VISIBLE_DEVICES".into(), gpus.join(",")));
        }
        if let Some(base) = &self.shared.ready_url {
            extra.push((
                "NANNY_READY_URL".into(),
                format!("{base}/v1/services/{name}/ready"),
            ));
            extra.push(("NANNY_READY_TOKEN".into(), ready_token.to_string()));
        }
        let secret = BackendKey(self.spec.api_key.as_deref());
        let with_extra = |env: &[(String, String)]| {
            let mut env: Vec<(String, String)> = env
                .iter()
                .filter(|(key, _)| !extra.iter().any(|(ours, _)| ours == key))
                .map(|(key, value)| (key.clone(), secret.fill(value)))
                .collect();
            env.extend(extra.iter().cloned());
            env
        };
        let service = &self.spec.service;
        let what = match &plan.launch {
            Launch::Process(process) => LaunchWhat::Process(ProcessSpec {
                program: process.program.clone(),
                args: secret.fill_all(&process.args),
                env: with_extra(&process.env),
                work_dir: process.work_dir.as_ref().map(PathBuf::from),
            }),
            Launch::Container(container) => LaunchWhat::Container(ContainerSpec {
                // Name, instance and hash: the runtime's to fill in.
                name: String::new(),
                service: name.clone(),
                instance: String::new(),
                image: container.image.clone(),
                command: secret.fill_all(&container.command),
                env: with_extra(&container.env),
                host: service.host.clone(),
                host_port: service.port,
                container_port: container.port,
                mounts: container
                    .mounts
                    .iter()
                    .map(|m| (m.source.clone(), m.target.clone(), m.read_only))
                    .collect(),
                shm_size_mib: container.shm_size_mib,
                gpus,
                // The runtime's to fill in from the order.
                limits: ResourceLimits::default(),
                spec_hash: String::new(),
            }),
            Launch::Compose(compose) => {
                // Compose interpolates the files from this environment, so the
                // GPU lease and the address reach every service that asks;
                // nanny's values win over the plan's.
                let lease = gpus.join(",");
                let ours = [
                    // No lease: no GPU is visible (`all` would be every one).
                    (
                        "NVIDIA_VISIBLE_DEVICES",
                        if lease.is_empty() {
                            "none".into()
                        } else {
                            lease.clone()
                        },
                    ),
                    ("NANNY_GPUS", lease),
                    ("NANNY_HOST", service.host.clone()),
                    ("NANNY_PORT", service.port.to_string()),
                ];
                let mut env = with_extra(&compose.env);
                env.retain(|(key, _)| !ours.iter().any(|(name, _)| name == key));
                env.extend(ours.map(|(name, value)| (name.to_string(), value)));
                let folder = compose
                    .work_dir
                    .as_ref()
                    .or(service.work_dir.as_ref())
                    .map_or_else(|| PathBuf::from("."), PathBuf::from);
                LaunchWhat::Compose(ComposeSpec {
                    service: name.clone(),
                    project_dir: folder,
                    files: compose.files.iter().map(PathBuf::from).collect(),
                    profiles: compose.profiles.clone(),
                    env_files: compose.env_files.iter().map(PathBuf::from).collect(),
                    target: compose.service.clone(),
                    container_port: compose.container_port,
                    env,
                    host: service.host.clone(),
                    port: service.port,
                })
            }
        };
        LaunchOrder {
            service: name,
            launch_id: self.launch_id.clone(),
            number: self.launches,
            host: service.host.clone(),
            port: service.port,
            limits: self.spec.resources,
            what,
        }
    }
}

/// The service's `api_key`, filled in where a plan says `{api_key}`. It is the
/// host's to fill (plugins never see it), so a key in the configuration reaches
/// the backend's command line or environment, and the gateway sends the same.
struct BackendKey<'a>(Option<&'a str>);

impl BackendKey<'_> {
    const PLACEHOLDER: &'static str = "{api_key}";

    fn fill(&self, word: &str) -> String {
        match self.0 {
            Some(key) => word.replace(Self::PLACEHOLDER, key),
            None => word.to_string(),
        }
    }

    fn fill_all(&self, words: &[String]) -> Vec<String> {
        words.iter().map(|word| self.fill(word)).collect()
    }
}

#[cfg(test)]
mod key_tests {
    use super::BackendKey;

    #[test]
    fn the_key_fills_its_placeholder_and_nothing_else() {
        let key = BackendKey(Some("sk-backend"));
        assert_eq!(
            key.fill_all(&["--api-key".into(), "{api_key}".into(), "{port}".into()]),
            ["--api-key", "sk-backend", "{port}"]
        );
        assert_eq!(key.fill("Bearer {api_key}"), "Bearer sk-backend");
        // Without a key the word stays as written (the backend says what it lacks).
        assert_eq!(BackendKey(None).fill("{api_key}"), "{api_key}");
    }
}
