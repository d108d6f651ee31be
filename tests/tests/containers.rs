//! Backends in containers on this machine's real Docker engine, through the
//! `container` plugin: the image is built locally (`docker import`), and the
//! container runs nanny's own mock backend, bind-mounted read-only.

use std::process::Command;
use std::time::Duration;

use nanny::plugin::{Catalog, Limits, PluginEngine, Service, Setting};
use nanny::supervise::{ServiceSpec, State, Supervisor, SupervisorOptions};
use nanny_tests::{docker_answers, nanny_bin, runtime_image, until};

fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

fn mock_in_a_container(name: &str) -> ServiceSpec {
    let engine = PluginEngine::new(Limits::default(), None).unwrap();
    let catalog = Catalog::load(&engine, &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mount = format!("{}:/nanny:ro", nanny_bin().display());
    let settings = vec![
        Setting::text("image", runtime_image()),
        Setting::list(
            "command",
            &[
                "/nanny",
                "mock-backend",
                "--host",
                "{host}",
                "--port",
                "{port}",
                "--model",
                "tiny",
            ],
        ),
        Setting::list("mounts", &[&mount]),
    ];
    let mut service = Service::local(name, port, settings);
    service.env.push(("GREETING".into(), "hello".into()));
    let mut spec = ServiceSpec::new(service, catalog.get("container").unwrap().clone());
    spec.startup_timeout = Duration::from_secs(60);
    spec.restart.backoff.initial = Duration::ZERO;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_backend_lives_restarts_and_leaves_nothing() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let supervisor = Supervisor::launch(
        vec![mock_in_a_container("boxed")],
        SupervisorOptions::in_memory(1),
    )
    .unwrap();
    let mut status = supervisor.watch("boxed").unwrap();
    let ready = until(&mut status, "ready", |s| s.state == State::Ready).await;
    let id = ready.container_id.clone().expect("a container id");
    assert_eq!(ready.pid, None);
    let models: Vec<&str> = ready.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(models, ["tiny"], "models through the mapped port");

    // Output reaches the plugin's pipeline and the log like a process's.
    let lines: Vec<String> = supervisor
        .logs("boxed")
        .unwrap()
        .tail(5)
        .into_iter()
        .map(|line| line.text)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("mock-backend listening on http://0.0.0.0:8000")),
        "{lines:?}"
    );
    let (_, env) = docker(&["inspect", "--format", "{{json .Config.Env}}", &id]);
    assert!(
        env.contains("\"GREETING=hello\"") && env.contains("\"NANNY_SERVICE=boxed\""),
        "{env}"
    );
    let (_, labels) = docker(&["inspect", "--format", "{{json .Config.Labels}}", &id]);
    assert!(labels.contains("\"nanny.service\":\"boxed\""), "{labels}");
    let (_, init) = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.Init}} {{.HostConfig.RestartPolicy.Name}}",
        &id,
    ]);
    assert!(
        init.starts_with("true"),
        "init on, and no Docker restart policy: {init}"
    );

    // A crash: nanny restarts it, in a new container; the dead one is removed.
    assert!(docker(&["kill", &id]).0);
    let back = until(&mut status, "ready again", |s| {
        s.restarts == 1 && s.state == State::Ready
    })
    .await;
    let second = back.container_id.clone().unwrap();
    assert_ne!(second, id);
    assert!(
        !docker(&["inspect", &id]).0,
        "the crashed container was removed"
    );

    supervisor.stop("boxed").await.unwrap();
    assert!(
        !docker(&["inspect", &second]).0,
        "stop removes the container"
    );
    supervisor.shutdown().await;
}
