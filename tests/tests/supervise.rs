//! The supervisor with real plugins and real processes: readiness from output,
//! deadlines extended by progress, liveness, give-up, restarts, dependency order.

use std::path::Path;
use std::time::Duration;

use nanny::plugin::{Setting, Value};
use nanny::supervise::{
    BackoffPolicy, Condition, ProbeOverrides, RestartMode, RestartPolicy, State, SuperviseError,
    Supervisor, SupervisorOptions,
};
use nanny_tests::{is_running, script_spec as script, service_spec as spec, until};

fn list(items: &[&str]) -> Value {
    Value::List(items.iter().map(|s| s.to_string()).collect())
}

fn setting(key: &str, value: Value) -> Setting {
    Setting {
        key: key.into(),
        value,
    }
}

fn options() -> SupervisorOptions {
    SupervisorOptions::in_memory(4)
}

#[tokio::test]
async fn ready_from_an_output_line_and_stopped_with_nothing_left() {
    let supervisor = Supervisor::launch(
        vec![script(
            "lines",
            "echo booting; echo READY to serve; exec sleep 1000",
        )],
        options(),
    )
    .unwrap();
    let mut status = supervisor.watch("lines").unwrap();
    let ready = until(&mut status, "ready", |s| s.state == State::Ready).await;
    let pid = ready.pid.expect("a ready service has a pid");
    let logged: Vec<String> = supervisor
        .logs("lines")
        .unwrap()
        .tail(10)
        .into_iter()
        .map(|line| line.text.to_string())
        .collect();
    assert_eq!(logged, ["booting", "READY to serve"]);
    supervisor.stop("lines").await.unwrap();
    assert_eq!(status.borrow().state, State::Stopped);
    assert!(!is_running(pid), "stop returned while the backend ran on");
    supervisor.shutdown().await;
}

#[tokio::test]
async fn loading_progress_extends_the_start_deadline() {
    // 2 s of loading against a 1 s deadline: only progress lines keep it alive.
    let mut mock = spec(
        "slow",
        "mock",
        vec![setting("startup_delay_ms", Value::Integer(2_000))],
    );
    mock.startup_timeout = Duration::from_secs(1);
    let supervisor = Supervisor::launch(vec![mock], options()).unwrap();
    let mut status = supervisor.watch("slow").unwrap();
    until(&mut status, "loading", |s| {
        matches!(
            s.state,
            State::Starting {
                loading_percent: Some(_)
            }
        )
    })
    .await;
    let ready = until(&mut status, "ready or down", |s| {
        !matches!(s.state, State::Starting { .. } | State::Waiting { .. })
    })
    .await;
    assert_eq!(ready.state, State::Ready, "{ready:?}");
    assert_eq!(ready.restarts, 0);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn without_progress_the_deadline_restarts_it() {
    let mut silent = script("silent", "exec sleep 1000");
    silent.startup_timeout = Duration::from_millis(300);
    silent.restart.backoff = BackoffPolicy {
        initial: Duration::from_secs(60),
        ..BackoffPolicy::default()
    };
    let supervisor = Supervisor::launch(vec![silent], options()).unwrap();
    let mut status = supervisor.watch("silent").unwrap();
    let restarted = until(&mut status, "restarted", |s| s.restarts >= 1).await;
    assert!(
        restarted
            .last_failure
            .as_deref()
            .unwrap_or_default()
            .contains("not ready within"),
        "{restarted:?}"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_backend_is_ready_with_its_models_listed_until_it_stops() {
    let mock = spec(
        "lister",
        "mock",
        vec![setting("models", list(&["tiny-chat", "tiny-embed"]))],
    );
    let supervisor = Supervisor::launch(vec![mock], options()).unwrap();
    let mut status = supervisor.watch("lister").unwrap();
    let listed = until(&mut status, "ready", |s| s.state == State::Ready).await;
    let ids: Vec<&str> = listed.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["tiny-chat", "tiny-embed"]);
    assert_eq!(listed.state, State::Ready);
    supervisor.stop("lister").await.unwrap();
    assert!(
        status.borrow().models.is_empty(),
        "a stopped service serves nothing"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_configured_probe_path_replaces_the_plugins() {
    // /health answers 503 from the start, /v1/models answers 200: only the
    // configured path can make this service ready.
    let server = |name: &str| {
        let command = [
            "nanny",
            "mock-backend",
            "--port",
            "{port}",
            "--unhealthy-after-secs",
            "0",
        ];
        let mut spec = spec(name, "command", vec![setting("command", list(&command))]);
        spec.probes.readiness_period = Some(Duration::from_millis(50));
        spec
    };
    let mut overridden = server("models-probed");
    overridden.probes.path = Some("/v1/models".into());
    let mut plain = server("health-probed");
    plain.startup_timeout = Duration::from_secs(2);
    plain.restart.mode = RestartMode::Never;
    let supervisor = Supervisor::launch(vec![overridden, plain], options()).unwrap();
    let mut status = supervisor.watch("models-probed").unwrap();
    until(&mut status, "ready", |s| s.state == State::Ready).await;
    let mut status = supervisor.watch("health-probed").unwrap();
    let down = until(&mut status, "given up", |s| {
        matches!(s.state, State::Failed { .. } | State::Stopped)
    })
    .await;
    assert!(
        down.last_failure
            .unwrap_or_default()
            .contains("not ready within"),
        "the plugin's /health path was not the one probed"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn failing_liveness_probes_restart_a_ready_backend() {
    let mut mock = spec("flaky", "mock", vec![]);
    mock.service.args = vec!["--unhealthy-after-secs".into(), "0.5".into()];
    mock.probes = ProbeOverrides {
        liveness_period: Some(Duration::from_millis(100)),
        ..ProbeOverrides::default()
    };
    mock.restart.backoff = BackoffPolicy {
        initial: Duration::from_secs(60),
        ..BackoffPolicy::default()
    };
    let supervisor = Supervisor::launch(vec![mock], options()).unwrap();
    let mut status = supervisor.watch("flaky").unwrap();
    until(&mut status, "ready", |s| s.state == State::Ready).await;
    until(&mut status, "unhealthy", |s| {
        matches!(s.state, State::Unhealthy { .. })
    })
    .await;
    let restarted = until(&mut status, "restarted", |s| s.restarts == 1).await;
    assert!(restarted
        .last_failure
        .unwrap()
        .contains("liveness probes of /health failed"));
    until(&mut status, "ready again", |s| s.state == State::Ready).await;
    supervisor.shutdown().await;
}

#[tokio::test]
async fn the_plugins_give_up_becomes_failed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake_server = dir.path().join("llama-server");
    std::fs::write(
        &fake_server,
        "#!/bin/sh\necho \"llama_model_load: error loading model: llama_model_loader: failed to load model from $2\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &fake_server,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut llama = spec(
        "llama",
        "llama-cpp",
        vec![setting(
            "program",
            Value::Text(fake_server.display().to_string()),
        )],
    );
    llama.service.model = Some("/models/missing.gguf".into());
    let supervisor = Supervisor::launch(vec![llama], options()).unwrap();
    let mut status = supervisor.watch("llama").unwrap();
    let failed = until(&mut status, "failed", |s| {
        matches!(s.state, State::Failed { .. })
    })
    .await;
    let State::Failed { reason } = failed.state else {
        unreachable!()
    };
    assert!(
        reason.starts_with("failed to load model `/models/missing.gguf`"),
        "{reason}"
    );
    assert_eq!(failed.restarts, 0, "no crash loop");
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_crash_loop_stops_at_max_restarts() {
    let mut crashy = script("crashy", "echo oops; exit 2");
    crashy.restart = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_restarts: Some(5),
        backoff: BackoffPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            reset_after: Duration::from_secs(600),
        },
    };
    let supervisor = Supervisor::launch(vec![crashy], options()).unwrap();
    let mut status = supervisor.watch("crashy").unwrap();
    let failed = until(&mut status, "failed", |s| {
        matches!(s.state, State::Failed { .. })
    })
    .await;
    assert_eq!(failed.restarts, 5);
    assert!(
        matches!(&failed.state, State::Failed { reason } if reason.contains("gave up after 5 restarts in a row (none stayed ready for 600s); last: exited with exit code 2")),
        "{failed:?}"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn dependencies_start_first_and_stop_last() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("order.log");
    let body = |name: &str| {
        format!(
            r#"echo start {name} >> {log}; trap "echo stop {name} >> {log}; exit 0" TERM; echo READY; while true; do sleep 0.05; done"#,
            log = log.display()
        )
    };
    let cache = script("cache", &body("cache"));
    let mut llm = script("llm", &body("llm"));
    llm.depends_on = vec![("cache".into(), Condition::Ready)];
    let mut api = script("api", &body("api"));
    api.depends_on = vec![
        ("llm".into(), Condition::Ready),
        ("cache".into(), Condition::Started),
    ];
    let supervisor = Supervisor::launch(vec![api, llm, cache], options()).unwrap();
    let mut status = supervisor.watch("api").unwrap();
    until(&mut status, "ready", |s| s.state == State::Ready).await;
    supervisor.shutdown().await;
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        order,
        "start cache\nstart llm\nstart api\nstop api\nstop llm\nstop cache\n"
    );
}

#[tokio::test]
async fn a_dependency_cycle_is_refused_naming_it() {
    let mut a = script("a", "true");
    a.depends_on = vec![("b".into(), Condition::Ready)];
    let mut b = script("b", "true");
    b.depends_on = vec![("a".into(), Condition::Started)];
    let error = Supervisor::launch(vec![a, b], options())
        .err()
        .expect("a cycle");
    assert!(matches!(error, SuperviseError::Cycle(_)));
    assert_eq!(
        error.to_string(),
        "services depend on each other in a cycle: a → b → a"
    );
}

#[tokio::test]
async fn every_launch_gets_nanny_service_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let supervisor = Supervisor::launch(
        vec![script(
            "envy",
            &format!(
                "echo $NANNY_SERVICE > {}; echo READY; exec sleep 1000",
                out.display()
            ),
        )],
        options(),
    )
    .unwrap();
    let mut status = supervisor.watch("envy").unwrap();
    until(&mut status, "ready", |s| s.state == State::Ready).await;
    assert_eq!(std::fs::read_to_string(Path::new(&out)).unwrap(), "envy\n");
    supervisor.shutdown().await;
}
