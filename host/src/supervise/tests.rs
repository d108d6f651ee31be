//! The state machine's unit tests.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::plugin::Service;
use crate::plugin::{Catalog, Limits, PluginEngine, Setting};
use crate::supervise::spec::ServiceSpec;
use crate::supervise::State;
use crate::supervise::{Supervisor, SupervisorOptions};

/// Makes the next launch (of any service in this test binary) panic.
pub static PANIC_AT_NEXT_LAUNCH: AtomicBool = AtomicBool::new(false);

#[tokio::test]
async fn a_panic_in_supervision_fails_the_service_and_start_works_again() {
    let engine = PluginEngine::new(Limits::default(), None).unwrap();
    let catalog = Catalog::load(&engine, &[], &Default::default());
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

/// The state machine against a scripted world, under paused time: every delay
/// below is exact, and nothing sleeps for real.
mod scripted {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;
    use tokio::sync::{broadcast, mpsc, watch};
    use tokio::time::Instant;

    use crate::plugin::{
        builtin_wasm, ConfigError, ExitAdvice, HttpResponse, Launch, Limits, Model, Output, Plan,
        Plugin, PluginEngine, PluginSource, Probe, Process, Progress, Service,
    };
    use crate::runtime::ports::Listener;
    use crate::runtime::{
        Exit, LaunchError, LaunchOrder, LaunchWhat, LineSink, OutputLine, Stream,
    };
    use crate::supervise::probe::ProbeResponse;
    use crate::supervise::{
        Backend, Condition, RestartMode, ServiceSpec, ServiceStatus, Session, State, StateChange,
        Supervisor, SupervisorOptions, World,
    };

    /// Any plugin will do: the scripted world never asks it anything.
    fn plugin() -> Arc<Plugin> {
        static PLUGIN: OnceLock<Arc<Plugin>> = OnceLock::new();
        PLUGIN
            .get_or_init(|| {
                let engine = PluginEngine::new(Limits::default(), None).unwrap();
                let wasm = builtin_wasm("mock").unwrap();
                Arc::new(Plugin::load(&engine, PluginSource::Builtin, wasm).unwrap())
            })
            .clone()
    }

    /// One scripted launch, as the test drives it.
    struct Launched {
        order: LaunchOrder,
        lines: LineSink,
        exit: watch::Sender<Option<Exit>>,
        /// The signal the supervisor stopped it with.
        stopped_with: Arc<Mutex<Option<i32>>>,
    }

    impl Launched {
        fn say(&self, text: &str) {
            self.lines.deliver(OutputLine {
                stream: Stream::Stdout,
                text: text.into(),
            });
        }

        fn exit(&self, code: i32) {
            let _ = self.exit.send(Some(Exit {
                code: Some(code),
                signal: None,
            }));
        }
    }

    struct FakeBackend {
        exit: watch::Receiver<Option<Exit>>,
        stopped_with: Arc<Mutex<Option<i32>>>,
    }

    impl Backend for FakeBackend {
        fn pid(&self) -> Option<i32> {
            Some(4242)
        }

        fn container_id(&self) -> Option<String> {
            None
        }

        fn wait(&mut self) -> BoxFuture<'_, std::io::Result<Exit>> {
            async move {
                let exit = self.exit.wait_for(Option::is_some).await;
                Ok(exit.ok().and_then(|exit| *exit).unwrap_or(Exit {
                    code: None,
                    signal: Some(libc::SIGKILL),
                }))
            }
            .boxed()
        }

        fn stop(&mut self, signal: i32, _grace: Duration) -> BoxFuture<'_, std::io::Result<Exit>> {
            *self.stopped_with.lock().unwrap() = Some(signal);
            let exit = Exit {
                code: None,
                signal: Some(signal),
            };
            async move { Ok(exit) }.boxed()
        }

        fn listener(&self, _port: u16) -> BoxFuture<'_, Listener> {
            async { Listener::Ours }.boxed()
        }

        fn clean_up(&mut self) -> BoxFuture<'_, ()> {
            async {}.boxed()
        }
    }

    /// A plugin as the tests want it: `READY` is ready, `LOADING n` is progress,
    /// `FATAL …` gives up; a probe answering 200 is ready; exit code 3 gives up.
    struct FakeSession {
        plan: Plan,
    }

    impl Session for FakeSession {
        fn plan(&self) -> BoxFuture<'_, Result<Result<Plan, Vec<ConfigError>>, String>> {
            let plan = self.plan.clone();
            async move { Ok(Ok(plan)) }.boxed()
        }

        fn on_output(&self, _: Output, line: String) -> BoxFuture<'_, Result<Progress, String>> {
            let progress = if line == "READY" {
                Progress::Ready
            } else if let Some(percent) = line.strip_prefix("LOADING ") {
                Progress::Loading(percent.parse().ok())
            } else if let Some(reason) = line.strip_prefix("FATAL ") {
                Progress::Failed(reason.into())
            } else {
                Progress::Nothing
            };
            async move { Ok(progress) }.boxed()
        }

        fn on_probe(&self, response: HttpResponse) -> BoxFuture<'_, Result<Progress, String>> {
            let progress = if response.status == 200 {
                Progress::Ready
            } else {
                Progress::Nothing
            };
            async move { Ok(progress) }.boxed()
        }

        fn models(
            &self,
            _: HttpResponse,
        ) -> BoxFuture<'_, Result<Result<Vec<Model>, String>, String>> {
            async { Ok(Ok(Vec::new())) }.boxed()
        }

        fn on_exit(&self, exit: Exit, _: Vec<String>) -> BoxFuture<'_, Result<ExitAdvice, String>> {
            let advice = if exit.code == Some(3) {
                ExitAdvice::GiveUp("the backend says it cannot run".into())
            } else {
                ExitAdvice::Restart
            };
            async move { Ok(advice) }.boxed()
        }
    }

    /// What probes answer: a status, or `None` to never answer within the timeout.
    type ProbeScript = Arc<Mutex<Box<dyn FnMut() -> Option<u16> + Send>>>;

    struct ScriptedWorld {
        plan: Plan,
        launches: mpsc::UnboundedSender<Launched>,
        /// Errors the next launches meet instead of running.
        refusals: Mutex<VecDeque<LaunchError>>,
        probes: ProbeScript,
    }

    impl World for ScriptedWorld {
        fn session(&self, _: &Arc<Plugin>, _: Service) -> std::io::Result<Box<dyn Session>> {
            Ok(Box::new(FakeSession {
                plan: self.plan.clone(),
            }))
        }

        fn launch(
            &self,
            order: LaunchOrder,
            lines: LineSink,
        ) -> BoxFuture<'_, Result<Box<dyn Backend>, LaunchError>> {
            let refused = self.refusals.lock().unwrap().pop_front();
            async move {
                if let Some(refusal) = refused {
                    return Err(refusal);
                }
                let (exit, exit_seen) = watch::channel(None);
                let stopped_with = Arc::new(Mutex::new(None));
                let _ = self.launches.send(Launched {
                    order,
                    lines,
                    exit,
                    stopped_with: stopped_with.clone(),
                });
                Ok(Box::new(FakeBackend {
                    exit: exit_seen,
                    stopped_with,
                }) as Box<dyn Backend>)
            }
            .boxed()
        }

        fn probe(
            &self,
            _host: String,
            _port: u16,
            _path: String,
            timeout: Duration,
        ) -> BoxFuture<'static, Option<ProbeResponse>> {
            let status = (self.probes.lock().unwrap())();
            async move {
                match status {
                    Some(status) => Some(ProbeResponse {
                        status,
                        content_type: None,
                        body: Vec::new(),
                    }),
                    None => {
                        tokio::time::sleep(timeout).await;
                        None
                    }
                }
            }
            .boxed()
        }

        fn ended(&self, _: &str, _: Option<&str>) {}
    }

    fn probe(path: &str, period_s: u32) -> Probe {
        Probe {
            path: path.into(),
            period_ms: period_s * 1000,
            timeout_ms: 1000,
        }
    }

    /// Ready by output line, no probes.
    fn plan() -> Plan {
        Plan {
            launch: Launch::Process(Process {
                program: "backend".into(),
                args: Vec::new(),
                env: Vec::new(),
                work_dir: None,
            }),
            readiness: probe("", 1),
            liveness: None,
            models_path: String::new(),
            stop_signal: None,
            grace_ms: Some(1000),
            vram_mib: None,
        }
    }

    fn spec(name: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(Service::local(name, 9000, Vec::new()), plugin());
        spec.autostart = false;
        spec
    }

    struct Harness {
        supervisor: Supervisor,
        launches: mpsc::UnboundedReceiver<Launched>,
        events: broadcast::Receiver<StateChange>,
        began: Instant,
    }

    impl Harness {
        fn new(plan: Plan, specs: Vec<ServiceSpec>) -> Self {
            Self::scripted(plan, specs, Vec::new(), Box::new(|| Some(200)))
        }

        fn scripted(
            plan: Plan,
            specs: Vec<ServiceSpec>,
            refusals: Vec<LaunchError>,
            probes: Box<dyn FnMut() -> Option<u16> + Send>,
        ) -> Self {
            Self::with_options(
                plan,
                specs,
                refusals,
                probes,
                SupervisorOptions::in_memory(4),
            )
        }

        fn with_options(
            plan: Plan,
            specs: Vec<ServiceSpec>,
            refusals: Vec<LaunchError>,
            probes: Box<dyn FnMut() -> Option<u16> + Send>,
            options: SupervisorOptions,
        ) -> Self {
            let _ = plugin();
            let (launched, launches) = mpsc::unbounded_channel();
            let world = ScriptedWorld {
                plan,
                launches: launched,
                refusals: Mutex::new(refusals.into()),
                probes: Arc::new(Mutex::new(probes)),
            };
            let supervisor = Supervisor::launch_in(Arc::new(world), specs, options).unwrap();
            let events = supervisor.subscribe();
            Self {
                supervisor,
                launches,
                events,
                began: Instant::now(),
            }
        }

        async fn next_launch(&mut self) -> Launched {
            self.launches.recv().await.expect("a launch")
        }

        /// The next state `service` enters, and when (since the harness began).
        async fn next_state(&mut self, service: &str) -> (State, Duration) {
            loop {
                let change = self.events.recv().await.expect("the event stream");
                if change.service == service {
                    return (change.to, self.began.elapsed());
                }
            }
        }

        /// Skips states until one `matches`; returns it and when it came.
        async fn until(
            &mut self,
            service: &str,
            matches: impl Fn(&State) -> bool,
        ) -> (State, Duration) {
            loop {
                let (state, at) = self.next_state(service).await;
                if matches(&state) {
                    return (state, at);
                }
            }
        }

        fn status(&self, service: &str) -> ServiceStatus {
            self.supervisor.watch(service).unwrap().borrow().clone()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_backs_off_immediately_then_10s_doubling_and_gives_up_in_its_window() {
        let mut service = spec("crashy");
        service.restart.max_restarts = Some(3);
        let mut h = Harness::new(plan(), vec![service]);
        h.supervisor.start("crashy").await.unwrap();
        let mut launched_at = Vec::new();
        for _ in 0..4 {
            let launch = h.next_launch().await;
            launched_at.push(h.began.elapsed());
            launch.exit(1);
        }
        assert_eq!(launched_at, [secs(0), secs(0), secs(10), secs(30)]);
        let (state, at) = h
            .until("crashy", |s| matches!(s, State::Failed { .. }))
            .await;
        assert_eq!(at, secs(30));
        let State::Failed { reason } = state else {
            unreachable!()
        };
        assert_eq!(
            reason,
            "gave up after 3 restarts in a row (none stayed ready for 600s); last: exited with exit code 1"
        );
        assert_eq!(h.status("crashy").restarts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_ready_for_reset_after_opens_a_new_window() {
        let mut service = spec("daily");
        service.restart.max_restarts = Some(1);
        let mut h = Harness::new(plan(), vec![service]);
        h.supervisor.start("daily").await.unwrap();
        for day in 0..5u64 {
            let launch = h.next_launch().await;
            launch.say("READY");
            h.until("daily", |s| *s == State::Ready).await;
            // A day of service, then a crash: each is the first in its window.
            tokio::time::sleep(secs(86_400)).await;
            launch.exit(1);
            let (state, _) = h.until("daily", |s| !matches!(s, State::Stopping)).await;
            assert!(
                matches!(state, State::Backoff { .. }),
                "crash {day}: {state:?}"
            );
        }
        assert_eq!(
            h.status("daily").restarts,
            5,
            "the lifetime total still counts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_dependency_is_named_and_a_stop_is_answered_at_once() {
        let mut h = Harness::new(
            plan(),
            vec![
                {
                    let mut cache = spec("cache");
                    cache.restart.mode = RestartMode::Never;
                    cache
                },
                {
                    let mut router = spec("router");
                    router.depends_on = vec![("cache".into(), Condition::Ready)];
                    router
                },
            ],
        );
        // Starting the router pulls its dependency in, which gives up.
        h.supervisor.start("router").await.unwrap();
        let cache = h.next_launch().await;
        assert_eq!(cache.order.service, "cache");
        cache.exit(3);
        let (state, _) = h
            .until(
                "router",
                |s| matches!(s, State::Waiting { reason } if reason.contains("failed")),
            )
            .await;
        assert_eq!(
            state,
            State::Waiting {
                reason: "waiting for cache, which failed: the backend says it cannot run".into()
            }
        );
        let asked = Instant::now();
        h.supervisor.stop("router").await.unwrap();
        assert_eq!(asked.elapsed(), Duration::ZERO);
        assert_eq!(h.status("router").state, State::Stopped);
        assert!(h.launches.try_recv().is_err(), "router never launched");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_start_stops_the_launch_with_the_plans_signal() {
        let mut h = Harness::new(plan(), vec![spec("slow")]);
        h.supervisor.start("slow").await.unwrap();
        let launch = h.next_launch().await;
        launch.say("LOADING 40");
        let (state, _) = h
            .until("slow", |s| {
                matches!(
                    s,
                    State::Starting {
                        loading_percent: Some(_)
                    }
                )
            })
            .await;
        assert_eq!(
            state,
            State::Starting {
                loading_percent: Some(40)
            }
        );
        h.supervisor.stop("slow").await.unwrap();
        assert_eq!(*launch.stopped_with.lock().unwrap(), Some(libc::SIGTERM));
        assert_eq!(h.next_state("slow").await.0, State::Stopping);
        assert_eq!(h.next_state("slow").await.0, State::Stopped);
        assert!(
            launch.order.launch_id.starts_with("slow."),
            "{}",
            launch.order.launch_id
        );
    }

    /// A compose plan reaches the runtime with the folder, the backend's
    /// service and port, and the variables the files are interpolated from:
    /// no lease is `NVIDIA_VISIBLE_DEVICES=none`, never every GPU.
    #[tokio::test(start_paused = true)]
    async fn a_compose_plan_is_launched_in_its_folder_with_the_address_and_no_gpus() {
        let mut compose = plan();
        compose.launch = Launch::Compose(crate::plugin::Compose {
            files: vec!["compose.gpu.yaml".into()],
            profiles: vec!["gpu".into()],
            env_files: Vec::new(),
            service: Some("api".into()),
            container_port: Some(8000),
            // What the plugin copied from the service's `env`, and one nanny owns.
            env: vec![
                ("HF_HOME".into(), "/hf".into()),
                ("NANNY_PORT".into(), "1".into()),
            ],
            work_dir: None,
        });
        let mut stack = spec("stack");
        stack.service.work_dir = Some("/srv/stack".into());
        let mut h = Harness::new(compose, vec![stack]);
        h.supervisor.start("stack").await.unwrap();
        let launch = h.next_launch().await;
        let LaunchWhat::Compose(project) = &launch.order.what else {
            panic!("not a compose launch: {:?}", launch.order.what)
        };
        assert_eq!(project.project_dir, std::path::Path::new("/srv/stack"));
        assert_eq!(project.target.as_deref(), Some("api"));
        assert_eq!((project.host.as_str(), project.port), ("127.0.0.1", 9000));
        let env: std::collections::HashMap<&str, &str> = project
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env["HF_HOME"], "/hf");
        assert_eq!(env["NANNY_PORT"], "9000", "nanny's own wins");
        assert_eq!(env["NANNY_HOST"], "127.0.0.1");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "none");
        assert_eq!(env["NANNY_GPUS"], "");
        assert_eq!(env["NANNY_SERVICE"], "stack");
        assert_eq!(
            project
                .env
                .iter()
                .filter(|(k, _)| k == "NANNY_PORT")
                .count(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn progress_extends_the_start_deadline_and_silence_ends_it() {
        let mut service = spec("loader");
        service.startup_timeout = secs(10);
        let mut h = Harness::new(plan(), vec![service]);
        h.supervisor.start("loader").await.unwrap();
        let launch = h.next_launch().await;
        for _ in 0..3 {
            tokio::time::sleep(secs(8)).await;
            launch.say("LOADING 50");
        }
        // 24 s after the launch, still starting: each line bought 10 s more.
        assert!(matches!(h.status("loader").state, State::Starting { .. }));
        let (state, at) = h.until("loader", |s| *s == State::Stopping).await;
        assert_eq!(state, State::Stopping);
        assert_eq!(at, secs(34), "10 s after the last sign of progress");
        let (state, _) = h
            .until("loader", |s| matches!(s, State::Backoff { .. }))
            .await;
        assert!(matches!(state, State::Backoff { .. }));
        assert_eq!(
            h.status("loader").last_failure.as_deref(),
            Some("not ready within 10s of its last sign of progress")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn three_failed_liveness_probes_in_a_row_restart_and_one_success_forgives() {
        let mut live = plan();
        live.liveness = Some(probe("/health", 5));
        // Answers: fail, fail, ok, fail, fail, fail.
        let mut script = vec![500, 500, 200, 500, 500, 500].into_iter();
        let mut h = Harness::scripted(
            live,
            vec![spec("api")],
            Vec::new(),
            Box::new(move || Some(script.next().unwrap_or(200))),
        );
        h.supervisor.start("api").await.unwrap();
        let launch = h.next_launch().await;
        launch.say("READY");
        let (_, ready_at) = h.until("api", |s| *s == State::Ready).await;
        let mut seen = Vec::new();
        loop {
            let (state, at) = h.next_state("api").await;
            seen.push((state.clone(), (at - ready_at).as_secs()));
            if state == State::Stopping {
                break;
            }
        }
        assert_eq!(
            seen,
            [
                (State::Unhealthy { failed_probes: 1 }, 5),
                (State::Unhealthy { failed_probes: 2 }, 10),
                (State::Ready, 15),
                (State::Unhealthy { failed_probes: 1 }, 20),
                (State::Unhealthy { failed_probes: 2 }, 25),
                (State::Stopping, 30),
            ]
        );
        assert_eq!(*launch.stopped_with.lock().unwrap(), Some(libc::SIGTERM));
        assert_eq!(h.next_launch().await.order.number, 2, "restarted at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_holds_up_neither_a_line_nor_a_stop() {
        let mut probed = plan();
        probed.readiness = Probe {
            path: "/health".into(),
            period_ms: 1000,
            timeout_ms: 3_600_000,
        };
        let mut h = Harness::scripted(probed, vec![spec("stuck")], Vec::new(), Box::new(|| None));
        h.supervisor.start("stuck").await.unwrap();
        let launch = h.next_launch().await;
        // The first probe is out now, for an hour.
        tokio::time::sleep(secs(5)).await;
        launch.say("LOADING 10");
        let (_, at) = h
            .until("stuck", |s| {
                matches!(
                    s,
                    State::Starting {
                        loading_percent: Some(10)
                    }
                )
            })
            .await;
        assert_eq!(at, secs(5));
        h.supervisor.stop("stuck").await.unwrap();
        assert_eq!(
            h.began.elapsed(),
            secs(5),
            "the stop did not wait for the probe"
        );
        assert_eq!(h.status("stuck").state, State::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_launch_failure_backs_off_and_a_fatal_one_fails() {
        let short = "cannot start `backend`: Too many open files (os error 24)";
        let fatal = "cannot start `backend`: No such file or directory (os error 2)";
        let mut h = Harness::scripted(
            plan(),
            vec![spec("fds")],
            vec![
                LaunchError::Transient(short.into()),
                LaunchError::Fatal(fatal.into()),
            ],
            Box::new(|| Some(200)),
        );
        h.supervisor.start("fds").await.unwrap();
        let backoff = loop {
            let change = h.events.recv().await.unwrap();
            if !matches!(change.to, State::Waiting { .. } | State::Starting { .. }) {
                break change;
            }
        };
        assert!(matches!(backoff.to, State::Backoff { .. }), "{backoff:?}");
        assert_eq!(backoff.last_failure.as_deref(), Some(short));
        // The first back-off is immediate; the next try meets the fatal error.
        let (state, _) = h.until("fds", |s| matches!(s, State::Failed { .. })).await;
        assert_eq!(
            state,
            State::Failed {
                reason: fatal.into()
            }
        );
        tokio::time::sleep(secs(3600)).await;
        assert!(
            h.launches.try_recv().is_err(),
            "no launch after a fatal error"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_plugin_that_gives_up_on_a_line_fails_the_service_without_a_restart() {
        let mut h = Harness::new(plan(), vec![spec("model")]);
        h.supervisor.start("model").await.unwrap();
        let launch = h.next_launch().await;
        launch.say("FATAL model file missing");
        let (state, _) = h
            .until("model", |s| matches!(s, State::Failed { .. }))
            .await;
        assert_eq!(
            state,
            State::Failed {
                reason: "model file missing".into()
            }
        );
        assert_eq!(*launch.stopped_with.lock().unwrap(), Some(libc::SIGTERM));
        tokio::time::sleep(secs(3600)).await;
        assert!(h.launches.try_recv().is_err(), "no restart after giving up");
    }

    /// Who holds GPU memory, as the scripted driver says (pid, MiB).
    static GPU_MEMORY: Mutex<Vec<(i32, u64)>> = Mutex::new(Vec::new());

    fn gpu_memory() -> Option<Vec<(i32, u64)>> {
        Some(GPU_MEMORY.lock().unwrap().clone())
    }

    #[tokio::test(start_paused = true)]
    async fn memory_that_is_not_given_back_keeps_the_service_stopping_until_the_release_times_out()
    {
        use crate::gpu::{Device, GpuBroker, GpuDevices, GpuRequest, Inventory, InventorySource};
        let inventory = Inventory {
            source: InventorySource::Declared,
            devices: vec![Device {
                index: 0,
                uuid: "GPU-scripted".into(),
                name: "scripted".into(),
                memory_total_mib: 1000,
                memory_used_mib: 0,
            }],
        };
        let broker = Arc::new(GpuBroker::new(inventory, None).with_memory_users(gpu_memory));
        let mut options = SupervisorOptions::in_memory(4);
        options.gpus = Some(broker.clone());
        let mut service = spec("gpu");
        service.gpu = GpuRequest {
            devices: GpuDevices::Count(1),
            ..GpuRequest::default()
        };
        let mut h = Harness::with_options(
            plan(),
            vec![service],
            Vec::new(),
            Box::new(|| Some(200)),
            options,
        );
        h.supervisor.start("gpu").await.unwrap();
        let launch = h.next_launch().await;
        launch.say("READY");
        h.until("gpu", |s| *s == State::Ready).await;
        assert_eq!(h.status("gpu").gpus, ["GPU-scripted"]);
        // The backend's main process keeps 500 MiB after it is told to stop.
        *GPU_MEMORY.lock().unwrap() = vec![(4242, 500)];
        let stop = {
            let supervisor = &h.supervisor;
            async move { supervisor.stop("gpu").await.unwrap() }
        };
        let ((_, stopping_at), _) = tokio::join!(
            async {
                let mut events = h.supervisor.subscribe();
                loop {
                    let change = events.recv().await.unwrap();
                    if change.service == "gpu" && change.to == State::Stopping {
                        break (change.to, h.began.elapsed());
                    }
                }
            },
            stop
        );
        let stopped_after = h.began.elapsed() - stopping_at;
        assert_eq!(
            stopped_after,
            crate::gpu::RELEASE_TIMEOUT,
            "stopping until the release check gave up"
        );
        let log: Vec<String> = h
            .supervisor
            .logs("gpu")
            .unwrap()
            .tail(5)
            .iter()
            .map(|line| line.text.to_string())
            .collect();
        assert!(
            log.iter().any(|line| line.starts_with(
                "nanny: GPU memory of `gpu` still held by pid(s) {4242} 10s after it stopped"
            )),
            "{log:?}"
        );
        assert!(
            broker
                .check(
                    "other",
                    &GpuRequest {
                        devices: GpuDevices::Count(1),
                        ..GpuRequest::default()
                    }
                )
                .is_err(),
            "the device takes no new lease while the memory is held"
        );
        // Once the memory is back, the device leases again.
        GPU_MEMORY.lock().unwrap().clear();
        assert!(broker
            .check(
                "other",
                &GpuRequest {
                    devices: GpuDevices::Count(1),
                    ..GpuRequest::default()
                }
            )
            .is_ok());
    }
}
