//! GPU leases end to end, through the real daemon and its API, with a fake
//! `nvidia-smi` first on PATH (the same code path as the real one) driven by
//! files this test writes.

use nanny_tests::{call, daemon_with_fake_gpus, nanny_bin, Daemon};
use serde_json::Value;

const TWO_ON_ONE_GPU: &str = r#"
[services.first]
backend = "mock"
gpus = [0]

[services.second]
backend = "mock"
gpus = [0]
autostart = false
"#;

fn get(daemon: &Daemon, path: &str) -> (u16, Value) {
    call("GET", &format!("{}{path}", daemon.url), None)
}

fn post(daemon: &Daemon, path: &str) -> (u16, Value) {
    call("POST", &format!("{}{path}", daemon.url), None)
}

fn environ(pid: i64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|byte| *byte == 0)
        .map(|variable| String::from_utf8_lossy(variable).into_owned())
        .collect()
}

#[test]
fn one_exclusive_gpu_two_services_conflict_then_force_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_fake_gpus(dir.path(), TWO_ON_ONE_GPU);
    daemon.expect(|line| line.starts_with("[first] ready on "));

    let (_, gpus) = get(&daemon, "/v1/gpus");
    assert_eq!(gpus["source"], "nvidia_smi");
    assert_eq!(gpus["devices"].as_array().unwrap().len(), 2);
    assert_eq!(gpus["devices"][0]["leases"][0]["service"], "first");
    assert_eq!(gpus["devices"][0]["leases"][0]["mode"], "exclusive");
    assert_eq!(gpus["devices"][1]["leases"], serde_json::json!([]));

    let (_, first) = get(&daemon, "/v1/services/first");
    assert_eq!(first["gpus"], serde_json::json!(["GPU-fake-0"]));
    let pid = first["pid"].as_i64().unwrap();
    assert!(
        environ(pid).contains(&"CUDA_VISIBLE_DEVICES=GPU-fake-0".to_string()),
        "the backend sees exactly its lease"
    );

    let (status, refused) = post(&daemon, "/v1/services/second/start?wait=true");
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("GPU 0 (GPU-fake-0) is held by `first`"),
        "{message}"
    );

    let (status, second) = post(&daemon, "/v1/services/second/start?wait=true&force=true");
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["state"], "ready");
    assert_eq!(second["gpus"], serde_json::json!(["GPU-fake-0"]));
    let (_, first) = get(&daemon, "/v1/services/first");
    assert_eq!(first["state"], "stopped", "evicted");
    assert_eq!(first["gpus"], serde_json::json!([]));
    let (_, gpus) = get(&daemon, "/v1/gpus");
    let holders: Vec<&str> = gpus["devices"][0]["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lease| lease["service"].as_str().unwrap())
        .collect();
    assert_eq!(holders, ["second"]);

    let output = std::process::Command::new(nanny_bin())
        .args(["gpus", "--url", &daemon.url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("GPU  NAME"), "{table}");
    assert!(table.contains("second (exclusive, 0 MiB)"), "{table}");
}

#[test]
fn memory_that_lingers_after_a_stop_blocks_the_next_lease_until_freed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_fake_gpus(dir.path(), TWO_ON_ONE_GPU);
    daemon.expect(|line| line.starts_with("[first] ready on "));
    let (_, first) = get(&daemon, "/v1/services/first");
    let pid = first["pid"].as_i64().unwrap();

    // The driver still counts the process's memory after it is gone.
    std::fs::write(dir.path().join("apps.csv"), format!("{pid}, 30000\n")).unwrap();
    let (_, stopped) = post(&daemon, "/v1/services/first/stop?wait=true");
    assert_eq!(stopped["state"], "stopped");
    let (_, gpus) = get(&daemon, "/v1/gpus");
    assert_eq!(gpus["devices"][0]["leases"], serde_json::json!([]));
    assert_eq!(
        gpus["devices"][0]["held_by_stopped_pids"],
        serde_json::json!([pid])
    );

    let (status, refused) = post(&daemon, "/v1/services/second/start");
    assert_eq!(status, 409);
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("still holds memory"), "{message}");
    // Nobody holds a lease to evict: force cannot help either.
    let (status, _) = post(&daemon, "/v1/services/second/start?force=true");
    assert_eq!(status, 409);

    // The stop answered once the release check gave up waiting (the release
    // belongs to the stop), so the report is in the service's log already.
    let (_, log) = get(&daemon, "/v1/services/first/logs?tail=20");
    let report = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|line| line["text"].as_str())
        .find(|text| text.contains("GPU memory of `first` still held by pid(s)"))
        .map(str::to_string);
    assert!(report.is_some_and(|line| line.contains(&pid.to_string())));

    std::fs::write(dir.path().join("apps.csv"), "").unwrap();
    let (status, second) = post(&daemon, "/v1/services/second/start?wait=true");
    assert_eq!((status, second["state"].as_str()), (200, Some("ready")));
}

#[test]
fn gpu_metrics_come_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with_fake_gpus(dir.path(), TWO_ON_ONE_GPU);
    daemon.expect(|line| line.starts_with("[first] ready on "));
    let (_, metrics) = get(&daemon, "/metrics");
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("nanny_gpu_leases{gpu=\"0\",uuid=\"GPU-fake-0\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "nanny_gpu_memory_total_bytes{{gpu=\"1\",uuid=\"GPU-fake-1\"}} {}",
        81559u64 * 1024 * 1024
    )));
}

#[test]
fn shared_gpus_are_budgeted_by_vram_or_the_plugins_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[services.big]
backend = "mock"
gpus = [1]
gpu_mode = "shared"
vram = "60GiB"

[services.small]
backend = "mock"
gpus = [1]
gpu_mode = "shared"
settings = { vram_estimate_mib = 20000 }
autostart = false

[services.tiny]
backend = "mock"
gpus = [1]
gpu_mode = "shared"
vram = "10GiB"
"#;
    let daemon = daemon_with_fake_gpus(dir.path(), config);
    daemon.expect_each(&["[big] ready on ", "[tiny] ready on "]);
    // 81559 MiB: 61440 + 10240 leased, 9879 left; the estimate asks 20000.
    let (status, refused) = post(&daemon, "/v1/services/small/start");
    assert_eq!(status, 409, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("9879 MiB of 81559 MiB left"), "{message}");
    assert!(message.contains("20000 MiB needed"), "{message}");
    post(&daemon, "/v1/services/tiny/stop?wait=true");
    let (status, small) = post(&daemon, "/v1/services/small/start?wait=true");
    assert_eq!((status, small["state"].as_str()), (200, Some("ready")));
    let (_, gpus) = get(&daemon, "/v1/gpus");
    let leases: Vec<(String, u64)> = gpus["devices"][1]["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["service"].as_str().unwrap().to_string(),
                l["vram_mib"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        leases,
        [("big".to_string(), 61440), ("small".to_string(), 20000)]
    );
}

#[test]
fn of_two_services_wanting_one_exclusive_gpu_the_second_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let services = r#"
[services.first]
backend = "mock"
gpus = [0]

[services.second]
backend = "mock"
gpus = [0]
"#;
    let daemon = daemon_with_fake_gpus(dir.path(), services);
    let ready = daemon.expect(|line| line.contains("] ready on "));
    let (winner, loser) = if ready.starts_with("[first]") {
        ("first", "second")
    } else {
        ("second", "first")
    };
    let (_, waiting) = get(&daemon, &format!("/v1/services/{loser}"));
    assert_eq!(waiting["state"], "waiting", "{waiting}");
    let reason = waiting["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("waiting for GPUs held by {winner}")),
        "{reason}"
    );
    let (status, _) = post(&daemon, &format!("/v1/services/{winner}/stop?wait=true"));
    assert_eq!(status, 200);
    daemon.expect(|line| line.starts_with(&format!("[{loser}] ready on ")));
}

/// A shared-GPU service whose VRAM comes from its plugin's estimate is, on a
/// reload of the same file, unchanged: the estimate is not part of what it
/// was configured with.
#[test]
fn a_reload_leaves_a_service_with_an_estimated_vram_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[services.estimated]
backend = "mock"
gpus = [1]
gpu_mode = "shared"
settings = { vram_estimate_mib = 20000 }
"#;
    let daemon = daemon_with_fake_gpus(dir.path(), config);
    daemon.expect(|line| line.starts_with("[estimated] ready on "));
    let (status, report) = post(&daemon, "/v1/reload");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["unchanged"], serde_json::json!(["estimated"]));
}
