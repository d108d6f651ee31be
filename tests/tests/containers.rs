//! Backends in containers on this machine's real Docker engine, through the
//! `container` plugin: the image is built locally (`docker import`), and the
//! container runs nanny's own mock backend, bind-mounted read-only.

use std::process::Command;
use std::time::Duration;

use nanny::plugin::{Catalog, Limits, PluginEngine, Service, Setting};
use nanny::supervise::{ServiceSpec, State, Supervisor, SupervisorOptions};
use nanny_tests::{call, docker_answers, nanny_bin, port_range_line, runtime_image, until, Daemon};

fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

fn mock_in_a_container(name: &str) -> ServiceSpec {
    let engine = PluginEngine::new(Limits::default(), None).unwrap();
    let catalog = Catalog::load(&engine, &[], &Default::default());
    let port = nanny_tests::free_port();
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

/// Removes an instance's containers when a test ends, passing or not: a failed
/// assertion must not leave containers running.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let label = format!("label=nanny.instance={}", self.0);
        let (_, ids) = docker(&["ps", "-aq", "--filter", &label]);
        for id in ids.split_whitespace() {
            docker(&["rm", "-f", id]);
        }
    }
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
    let _cleanup = RemoveOnDrop(supervisor.instance().to_string());
    let mut status = supervisor.watch("boxed").unwrap();
    let ready = until(&mut status, "ready", |s| s.state == State::Ready).await;
    let id = ready.container_id.clone().expect("a container id");
    assert_eq!(ready.pid, None);
    let models: Vec<&str> = ready.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(models, ["tiny"], "models through the mapped port");

    // Output reaches the log like a process's (Docker may deliver it after the
    // probe has already found the server ready).
    let book = supervisor.logs("boxed").unwrap();
    let mut feed = book.follow();
    let listening = |text: &str| text.starts_with("mock-backend listening on http://0.0.0.0:8000");
    if !book.tail(10).iter().any(|line| listening(&line.text)) {
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(line) = feed.recv().await {
                if listening(&line.text) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(arrived, Ok(true), "the container's output reached the log");
    }
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

/// A `[services.NAME]` table running the mock backend in a container.
fn container_service(name: &str, extra: &str) -> String {
    format!(
        r#"
[services.{name}]
backend = "container"
{extra}
[services.{name}.settings]
image = "{image}"
command = ["/nanny", "mock-backend", "--host", "{{host}}", "--port", "{{port}}"]
mounts = ["{bin}:/nanny:ro"]
"#,
        image = runtime_image(),
        bin = nanny_bin().display()
    )
}

fn write_config(dir: &std::path::Path, services: &str) -> std::path::PathBuf {
    let config = dir.join("nanny.toml");
    std::fs::write(
        &config,
        format!("[daemon]\n{}\n{services}", port_range_line()),
    )
    .unwrap();
    config
}

fn started_at(id: &str) -> String {
    docker(&["inspect", "--format", "{{.State.StartedAt}}", id]).1
}

#[test]
fn a_restarted_nanny_adopts_its_running_container_and_removes_the_rest() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A fixed port: one picked from port_range might be taken by the container
    // itself when the next daemon picks again.
    let port = nanny_tests::free_port();
    let config = write_config(
        dir.path(),
        &container_service("boxed", &format!("port = {port}")),
    );
    let first = Daemon::up(&config, dir.path());
    first.expect(|line| line.starts_with("[boxed] ready on "));
    let (_, boxed) = call("GET", &format!("{}/v1/services/boxed", first.url), None);
    let id = boxed["container_id"].as_str().unwrap().to_string();
    let (_, info) = call("GET", &format!("{}/v1/info", first.url), None);
    let instance = info["instance"].as_str().unwrap().to_string();
    let _cleanup = RemoveOnDrop(instance.clone());
    let began = started_at(&id);

    let mut first = first;
    first.signal(libc::SIGKILL);
    first.wait();
    // What a kill between create and start leaves: a container never started.
    let (created, stray) = docker(&[
        "create",
        "--label",
        &format!("nanny.instance={instance}"),
        "--label",
        "nanny.service=boxed",
        runtime_image(),
        "/nanny",
    ]);
    assert!(created, "docker create");

    let mut second = Daemon::up(&config, dir.path());
    second.expect(|line| line.starts_with("[boxed] ready on "));
    let (_, boxed) = call("GET", &format!("{}/v1/services/boxed", second.url), None);
    assert_eq!(boxed["container_id"].as_str(), Some(id.as_str()), "adopted");
    assert_eq!(boxed["restarts"], 0);
    assert_eq!(started_at(&id), began, "not restarted");
    assert!(
        !docker(&["inspect", &stray]).0,
        "the never-started container is gone"
    );

    second.signal(libc::SIGINT);
    second.expect(|line| line == "nanny: all services stopped");
    assert_eq!(second.wait(), Some(0));
    assert!(!docker(&["inspect", &id]).0, "stopped and removed");
}

/// A container that is ready by an output line (no HTTP probe): the next
/// daemon adopts it and must see that line again, or it would wait for a line
/// the backend printed long ago.
#[test]
fn an_adopted_container_that_is_ready_by_a_line_is_ready_at_once() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = nanny_tests::free_port();
    let service = container_service("lined", &format!("port = {port}"))
        + "health_path = \"\"\nready_line = \"mock-backend listening on\"\n";
    let config = write_config(dir.path(), &service);
    let mut first = Daemon::up(&config, dir.path());
    first.expect(|line| line.starts_with("[lined] ready on "));
    let (_, lined) = call("GET", &format!("{}/v1/services/lined", first.url), None);
    let id = lined["container_id"].as_str().unwrap().to_string();
    let (_, info) = call("GET", &format!("{}/v1/info", first.url), None);
    let _cleanup = RemoveOnDrop(info["instance"].as_str().unwrap().to_string());
    first.signal(libc::SIGKILL);
    first.wait();

    let second = Daemon::up(&config, dir.path());
    second.expect(|line| line.starts_with("[lined] ready on "));
    let (_, lined) = call("GET", &format!("{}/v1/services/lined", second.url), None);
    assert_eq!(lined["container_id"].as_str(), Some(id.as_str()), "adopted");
    assert_eq!(lined["state"], "ready");
}

#[test]
fn an_infrastructure_stack_starts_in_order_and_stops_in_reverse() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let services = format!(
        "{}{}{}",
        container_service("cache", ""),
        container_service("broker", ""),
        container_service("app", "depends_on = [\"cache\", \"broker\"]"),
    );
    let config = write_config(dir.path(), &services);
    let mut daemon = Daemon::up(&config, dir.path());
    let (_, info) = call("GET", &format!("{}/v1/info", daemon.url), None);
    let _cleanup = RemoveOnDrop(info["instance"].as_str().unwrap().to_string());
    daemon.expect_each(&["[cache] ready on ", "[broker] ready on "]);
    daemon.expect(|line| line.starts_with("[app] ready on "));
    let (_, all) = call("GET", &format!("{}/v1/services", daemon.url), None);
    let ids: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["container_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);

    daemon.signal(libc::SIGINT);
    daemon.expect(|line| line.starts_with("[app] stopped"));
    daemon.expect_each(&["[cache] stopped", "[broker] stopped"]);
    assert_eq!(daemon.wait(), Some(0));
    for id in ids {
        assert!(!docker(&["inspect", &id]).0, "{id} removed");
    }
}

#[test]
fn without_docker_container_services_fail_clearly_and_processes_run() {
    let dir = tempfile::tempdir().unwrap();
    let services = format!(
        "{}\n[services.plain]\nbackend = \"mock\"\n",
        container_service("boxed", "")
    );
    let config = write_config(dir.path(), &services);
    let socket = format!("unix://{}", dir.path().join("no-docker.sock").display());
    let daemon = Daemon::up_with(&config, dir.path(), &[("DOCKER_HOST", socket.as_str())]);
    let lines = daemon.expect_each(&["[plain] ready on ", "[boxed] failed"]);
    assert!(
        lines[1].contains("no Docker engine answers"),
        "{}",
        lines[1]
    );
}

/// `resources` reach Docker as `NanoCpus` and `Memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_reach_the_container() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let mut spec = mock_in_a_container("capped");
    spec.resources = nanny::runtime::ResourceLimits {
        cpus: Some(0.5),
        memory_bytes: Some(256 * 1024 * 1024),
    };
    let supervisor = Supervisor::launch(vec![spec], SupervisorOptions::in_memory(1)).unwrap();
    let _cleanup = RemoveOnDrop(supervisor.instance().to_string());
    let mut status = supervisor.watch("capped").unwrap();
    let ready = until(&mut status, "ready", |s| s.state == State::Ready).await;
    let id = ready.container_id.clone().expect("a container id");
    let (_, limits) = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
        &id,
    ]);
    assert_eq!(limits, "500000000 268435456");
    supervisor.shutdown().await;
}
