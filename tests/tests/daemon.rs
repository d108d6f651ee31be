//! `nanny up` as a user runs it: the quickstart comes up and Ctrl-C leaves
//! nothing; `kill -9` of the daemon leaves nothing either, setsid grandchildren
//! included; bad configs are refused with file, line and key.

use std::time::{Duration, Instant};

use nanny_tests::{is_running, nanny, workspace, Daemon};

/// Waits up to `limit` for all of `pids` to be gone; returns the survivors.
fn survivors(pids: &[i32], limit: Duration) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| is_running(*pid))
            .collect();
        if alive.is_empty() || start.elapsed() > limit {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_quickstart_comes_up_and_ctrl_c_leaves_nothing() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::up(&workspace().join("examples/quickstart.toml"), state.path());
    daemon.expect(|line| line.starts_with("[embeddings] ready on "));
    let ready = daemon.expect(|line| line.starts_with("[chat] ready on "));
    let port: u16 = ready.rsplit(' ').next().unwrap().parse().unwrap();
    let answer = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(answer.is_ok(), "chat listens on {port}");
    let backends: Vec<i32> = mock_backend_pids(port);
    assert_eq!(backends.len(), 1);

    daemon.signal(libc::SIGINT);
    assert_eq!(
        daemon
            .expect(|line| line.starts_with("[chat] stopped")
                || line.starts_with("[embeddings] stopped")),
        "[chat] stopped"
    );
    daemon.expect(|line| line == "nanny: all services stopped");
    let mut daemon = daemon;
    assert_eq!(daemon.wait(), Some(0), "exit 0 after Ctrl-C");
    assert!(survivors(&backends, Duration::ZERO).is_empty());
    let log = std::fs::read_to_string(state.path().join("logs/chat.log")).unwrap();
    assert!(
        log.contains("mock-backend loading 50%") && log.contains("mock-backend listening on"),
        "{log}"
    );
}

fn mock_backend_pids(port: u16) -> Vec<i32> {
    let needle = format!("--port {port}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    String::from_utf8_lossy(&cmdline)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn kill_9_of_the_daemon_leaves_no_process_ten_times_over() {
    kill_9_leaves_nothing(10, &[]);
}

/// Without cgroups (non-root, or cgroup v2 not writable), the launch records, the
/// guardian and the subreaper do the cgroup's work: setsid grandchildren go too.
#[test]
fn kill_9_without_cgroups_leaves_no_process_either() {
    kill_9_leaves_nothing(5, &[("NANNY_CGROUPS", "off")]);
}

fn kill_9_leaves_nothing(rounds: u32, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let config = dir.path().join("nanny.toml");
    let script = format!(
        "setsid sh -c 'echo $$ >> {pids}; exec sleep 1000' & sh -c 'echo $$ >> {pids}; exec sleep 1000' & echo $$ >> {pids}; \
         until [ $(wc -l < {pids}) -ge 3 ]; do sleep 0.01; done; echo READY; wait",
        pids = pids_file.display()
    );
    std::fs::write(
        &config,
        format!("[services.tree]\nbackend = \"command\"\nsettings = {{ command = [\"sh\", \"-c\", {script:?}], ready_line = \"^READY\", health_path = \"\" }}\n"),
    )
    .unwrap();
    for round in 1..=rounds {
        let _ = std::fs::remove_file(&pids_file);
        let daemon = Daemon::up_with(&config, dir.path(), env);
        daemon.expect(|line| line.starts_with("[tree] ready"));
        let pids: Vec<i32> = std::fs::read_to_string(&pids_file)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(
            pids.len(),
            3,
            "round {round}: the tree's three processes wrote their pids"
        );
        daemon.signal(libc::SIGKILL);
        let mut daemon = daemon;
        daemon.wait();
        let left = survivors(&pids, Duration::from_secs(2));
        assert!(
            left.is_empty(),
            "round {round}: {left:?} outlived the daemon by 2 s"
        );
    }
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Without cgroups, a setsid grandchild that outlives its parent comes back to
/// the daemon (a child subreaper), and goes with its launch, reaped, not a zombie.
#[test]
fn an_escaped_grandchild_comes_back_to_the_daemon_and_goes_with_its_launch() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("escapee");
    let config = dir.path().join("nanny.toml");
    // The middle shell exits at once: the grandchild is an orphan from the start.
    let script = format!(
        "sh -c \"setsid sh -c 'echo \\$\\$ > {pid}; exec sleep 1000' &\"; \
         until [ -s {pid} ]; do sleep 0.01; done; echo READY; exec sleep 1000",
        pid = pid_file.display()
    );
    std::fs::write(
        &config,
        format!("[services.tree]\nbackend = \"command\"\nrestart = {{ policy = \"never\" }}\nsettings = {{ command = [\"sh\", \"-c\", {script:?}], ready_line = \"^READY\", health_path = \"\" }}\n"),
    )
    .unwrap();
    let daemon = Daemon::up_with(&config, dir.path(), &[("NANNY_CGROUPS", "off")]);
    daemon.expect(|line| line.starts_with("[tree] ready"));
    let escapee: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        parent_of(escapee),
        Some(daemon.pid()),
        "re-parented to the daemon"
    );
    // Answered once the launch is gone: its escapee killed and reaped.
    let (status, _) = nanny_tests::call(
        "POST",
        &format!("{}/v1/services/tree/stop?wait=true", daemon.url),
        None,
    );
    assert_eq!(status, 200);
    assert!(
        !std::path::Path::new(&format!("/proc/{escapee}")).exists(),
        "the escapee outlived its launch, or stayed a zombie nobody reaped"
    );
}

#[test]
fn a_bad_config_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        "[services.chat]\nbackend = \"mock\"\nprot = 8000\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (ok, _, stderr) = nanny(&["config", "check", path], &[], dir.path());
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!("{path}:3: `prot`: unknown key; did you mean `port`?")
    );

    // Every unknown key at once, in the order written, each on its own line.
    std::fs::write(
        &config,
        "[daemon]\nlisen = \"127.0.0.1:0\"\n\n[services.chat]\nbackend = \"mock\"\nprot = 8000\nrestart = { policy = \"always\", max_restart = 3 }\n",
    )
    .unwrap();
    let (ok, _, stderr) = nanny(&["config", "check", path], &[], dir.path());
    assert!(!ok);
    assert_eq!(
        stderr.trim().lines().collect::<Vec<_>>(),
        [
            format!("{path}:2: `lisen`: unknown key; did you mean `listen`?"),
            format!("{path}:6: `prot`: unknown key; did you mean `port`?"),
            format!("{path}:7: `max_restart`: unknown key; did you mean `max_restarts`?"),
        ]
    );

    std::fs::write(&config, "[services.a]\nbackend = \"mock\"\ndepends_on = [\"b\"]\n\n[services.b]\nbackend = \"mock\"\ndepends_on = { a = \"started\" }\n").unwrap();
    let (ok, _, stderr) = nanny(&["up", path], &[], dir.path());
    assert!(!ok, "nanny up refuses a cycle");
    assert_eq!(
        stderr.trim(),
        format!("{path}:1: `services.a.depends_on`: dependency cycle: a → b → a")
    );

    std::fs::write(&config, "[services.web]\nbackend = \"command\"\n[services.web.settings]\nhealth_path = \"/health\"\nready = \"x\"\n").unwrap();
    let (ok, _, stderr) = nanny(&["config", "check", path], &[], dir.path());
    assert!(!ok);
    assert!(stderr.contains(":5: `services.web.settings.ready`: the command backend has no setting `ready`; did you mean `ready_line`?"), "{stderr}");
    assert!(
        stderr.contains("`services.web.settings.command`: required by the command backend"),
        "{stderr}"
    );
}

#[test]
fn config_show_resolves_ports_and_defaults() {
    let state = tempfile::tempdir().unwrap();
    let quickstart = workspace().join("examples/quickstart.toml");
    let (ok, stdout, stderr) = nanny(
        &["config", "show", "--json", quickstart.to_str().unwrap()],
        &[],
        state.path(),
    );
    assert!(ok, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let services = shown["services"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    for service in services {
        let port = service["port"].as_u64().unwrap();
        assert!((21000..=21999).contains(&port), "{port} from port_range");
        assert_eq!(service["startup_timeout_s"], 600.0);
    }
    let chat = services.iter().find(|s| s["name"] == "chat").unwrap();
    assert_eq!(chat["depends_on"][0]["service"], "embeddings");
    assert_eq!(chat["depends_on"][0]["condition"], "ready");
    assert_eq!(chat["restart"]["max_restarts"], 10);
}

#[test]
fn the_restart_total_and_the_last_failure_survive_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let launches = dir.path().join("launch-log");
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            "[services.crashy]\nbackend = \"command\"\nrestart = {{ policy = \"on-failure\", max_restarts = 3, backoff = \"0s\", max_backoff = \"0s\" }}\n\
             settings = {{ command = [\"sh\", \"-c\", \"echo x >> {}; exit 3\"], health_path = \"\" }}\n",
            launches.display()
        ),
    )
    .unwrap();
    let give_up = "[crashy] failed: gave up after 3 restarts in a row (none stayed ready for 600s); last: exited with exit code 3";
    let first = Daemon::up(&config, dir.path());
    first.expect(|line| line == give_up);
    first.signal(libc::SIGINT);
    first.expect(|line| line == "nanny: all services stopped");
    drop(first);
    assert_eq!(
        std::fs::read_to_string(&launches).unwrap().lines().count(),
        4,
        "one launch and three restarts"
    );
    let remembered: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("services.json")).unwrap()).unwrap();
    assert_eq!(remembered["crashy"]["restarts"], 3);

    // A new daemon is a new start, as after `systemctl restart`: a fresh window
    // of three restarts, while the lifetime total keeps counting.
    let second = Daemon::up(&config, dir.path());
    second.expect(|line| line == give_up);
    assert_eq!(
        std::fs::read_to_string(&launches).unwrap().lines().count(),
        8,
        "a fresh window: one launch and three restarts more"
    );
    let (_, crashy) = nanny_tests::call("GET", &format!("{}/v1/services/crashy", second.url), None);
    assert_eq!(crashy["restarts"], 6, "the lifetime total survived");
}

#[test]
fn nanny_run_supervises_one_backend_from_flags_alone() {
    let state = tempfile::tempdir().unwrap();
    let port = nanny_tests::free_port();
    let mut command = std::process::Command::new(nanny_tests::nanny_bin());
    command.args([
        "run",
        "mock",
        "--name",
        "solo",
        "--port",
        &port.to_string(),
        "--set",
        r#"models=["tiny-solo"]"#,
    ]);
    let daemon = Daemon::spawn(command, state.path(), &[]);
    daemon.expect(|line| line == format!("[solo] ready on {port}"));
    let (_, models) = nanny_tests::call("GET", &format!("{}/v1/models", daemon.url), None);
    assert_eq!(models["data"][0]["id"], "tiny-solo");
}

#[test]
fn up_without_a_file_says_what_to_pass() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("nanny.toml");
    let (ok, _, stderr) = nanny(&["up", missing.to_str().unwrap()], &[], state.path());
    assert!(!ok);
    assert!(
        stderr.contains("examples/quickstart.toml") && stderr.contains("nanny run BACKEND"),
        "{stderr}"
    );
}

#[test]
fn config_check_finds_what_only_a_launch_would() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let free = nanny_tests::free_port();
    std::fs::write(
        &config,
        format!(
            "[services.llm]\nbackend = \"llama-cpp\"\nport = {free}\n\n\
             [services.twin]\nbackend = \"mock\"\nport = {free}\n\n\
             [services.squatted]\nbackend = \"mock\"\nport = {taken}\n"
        ),
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (ok, _, stderr) = nanny(&["config", "check", path], &[], dir.path());
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{path}:5: `services.twin.port`: port {free} is `llm`'s already"
        )),
        "{stderr}"
    );
    // Fixed, the plugin's own refusal and the foreign listener come out, all of them.
    std::fs::write(
        &config,
        format!(
            "[services.llm]\nbackend = \"llama-cpp\"\nport = {free}\n\n\
             [services.squatted]\nbackend = \"mock\"\nport = {taken}\n"
        ),
    )
    .unwrap();
    let (ok, _, stderr) = nanny(&["config", "check", path], &[], dir.path());
    assert!(!ok);
    assert!(
        stderr.contains("`services.llm.model`: llama-server needs a model"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "`services.squatted.port`: port {taken} is in use by pid {}",
            std::process::id()
        )),
        "{stderr}"
    );
}

#[test]
fn a_picked_port_stays_with_its_service_when_another_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    let range = nanny_tests::port_range_line();
    std::fs::write(
        &config,
        format!("[daemon]\n{range}\n\n[services.web]\nbackend = \"mock\"\n"),
    )
    .unwrap();
    let mut daemon = Daemon::up(&config, dir.path());
    let ready = daemon.expect(|line| line.starts_with("[web] ready on "));
    let port: u64 = ready.rsplit(' ').next().unwrap().parse().unwrap();
    daemon.signal(libc::SIGINT);
    daemon.expect(|line| line == "nanny: all services stopped");
    assert_eq!(daemon.wait(), Some(0));

    // `api` sorts first and would have taken the first free port of the range.
    std::fs::write(
        &config,
        format!(
            "[daemon]\n{range}\n\n[services.api]\nbackend = \"mock\"\n\n[services.web]\nbackend = \"mock\"\n"
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = nanny(
        &["config", "show", "--json", config.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let port_of = |name: &str| {
        shown["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["port"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port_of("web"), port, "web keeps its port");
    assert_ne!(port_of("api"), port);
}

#[test]
fn reload_adds_removes_and_restarts_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    let range = nanny_tests::port_range_line();
    let write =
        |services: &str| std::fs::write(&config, format!("[daemon]\n{range}\n{services}")).unwrap();
    let mock = |name: &str, model: &str| {
        format!(
            "\n[services.{name}]\nbackend = \"mock\"\nsettings = {{ models = [\"{model}\"] }}\n"
        )
    };
    write(&(mock("gone", "g") + &mock("kept", "k") + &mock("edited", "e1")));
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect_each(&["[gone] ready on ", "[kept] ready on ", "[edited] ready on "]);
    let service =
        |name: &str| nanny_tests::call("GET", &format!("{}/v1/services/{name}", daemon.url), None);
    let kept_pid = service("kept").1["pid"].clone();
    let edited_pid = service("edited").1["pid"].clone();

    // A broken configuration is refused whole: nothing changes.
    write(&(mock("kept", "k") + "\n[services.broken]\nbackend = \"no-such\"\n"));
    let (status, body) = nanny_tests::call("POST", &format!("{}/v1/reload", daemon.url), None);
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no backend named `no-such`"));
    assert_eq!(service("gone").1["state"], "ready");

    write(&(mock("kept", "k") + &mock("edited", "e2") + &mock("added", "a")));
    let cli = std::process::Command::new(nanny_tests::nanny_bin())
        .args(["reload", "--json", "--url", &daemon.url])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(report["added"], serde_json::json!(["added"]));
    assert_eq!(report["removed"], serde_json::json!(["gone"]));
    assert_eq!(report["changed"], serde_json::json!(["edited"]));
    assert_eq!(report["unchanged"], serde_json::json!(["kept"]));

    daemon.expect_each(&["[added] ready on ", "[edited] ready on "]);
    assert_eq!(service("gone").0, 404);
    assert_eq!(service("kept").1["pid"], kept_pid, "untouched");
    let edited = service("edited").1;
    assert_ne!(edited["pid"], edited_pid, "restarted from its new spec");
    assert_eq!(edited["models"][0]["id"], "e2");

    // SIGHUP does the same.
    write(&mock("kept", "k"));
    daemon.signal(libc::SIGHUP);
    daemon.expect(|line| line.starts_with("nanny: reloaded: added none; removed added, edited"));
    assert_eq!(service("added").0, 404);
    assert_eq!(service("kept").1["pid"], kept_pid);
}
