//! What happens to GPU memory after a stop, and after a daemon restart: the
//! supervisor and the GPU broker with real processes and the fake `nvidia-smi`
//! (first on this test process's PATH, so this file holds a single test).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanny::gpu::{GpuBroker, GpuDevices, GpuRequest, Inventory};
use nanny::plugin::{Service, Setting};
use nanny::supervise::{ServiceSpec, State, Supervisor, SupervisorOptions};
use nanny_tests::{is_running, until, workspace};

fn gpu_zero() -> GpuRequest {
    GpuRequest {
        devices: GpuDevices::Named(vec!["0".into()]),
        ..GpuRequest::default()
    }
}

/// Waits up to 30 s for `done`, checking every 50 ms: the broker polls
/// nvidia-smi, so there is no event to await.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A supervisor of one `command` service running `script` on GPU 0, leased
/// through `broker`.
fn on_gpu_zero(name: &str, script: &str, broker: &Arc<GpuBroker>) -> Supervisor {
    let settings = vec![
        Setting::list("command", &["sh", "-c", script]),
        Setting::text("ready_line", "^READY"),
        Setting::text("health_path", ""),
    ];
    let mut spec = ServiceSpec::new(
        Service::local(name, 1, settings),
        nanny_tests::builtin("command"),
    );
    spec.gpu = gpu_zero();
    let options = SupervisorOptions {
        gpus: Some(broker.clone()),
        ..SupervisorOptions::in_memory(1)
    };
    Supervisor::launch(vec![spec], options).unwrap()
}

fn held_on_gpu_zero(broker: &GpuBroker) -> Vec<i32> {
    broker.snapshot().devices[0].held_by_stopped_pids.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_gpu_processes_are_killed_and_a_restarted_daemon_honours_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gpus.csv"),
        "0, GPU-fake-0, Fake H100, 81559, 0\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        workspace().join("tests/fake-gpu").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // SAFETY: set before this test starts any thread of its own; it is the only
    // test in this binary.
    unsafe {
        std::env::set_var("PATH", path);
        std::env::set_var("NANNY_FAKE_GPU_DIR", dir.path());
        std::env::set_var("NANNY_NO_NVML", "1");
    }
    let checkpoint = dir.path().join("gpu-leases.json");
    escapees_are_killed_after_a_stop(dir.path(), &checkpoint).await;
    a_crash_with_a_lingering_child_restarts_on_its_own_gpu(dir.path()).await;
    a_restarted_broker_keeps_devices_of_live_services_blocked(dir.path(), &checkpoint);
}

/// The first launch leaves a setsid child holding GPU memory and crashes; the
/// release check of that launch must end before the restart asks for the GPU
/// (else the service conflicts with itself and fails), and kill only that
/// launch's leftovers.
async fn a_crash_with_a_lingering_child_restarts_on_its_own_gpu(dir: &Path) {
    let broker = Arc::new(GpuBroker::new(Inventory::discover(&[]), None));
    let script = format!(
        r#"cd {dir}
if [ -e crashed-once ]; then echo READY; exec sleep 1000; fi
touch crashed-once
setsid sleep 1000 & echo "$!, 2048" > apps-alive.csv
echo READY; sleep 0.3; exit 1"#,
        dir = dir.display()
    );
    let supervisor = on_gpu_zero("crashy", &script, &broker);
    let mut status = supervisor.watch("crashy").unwrap();
    let settled = until(&mut status, "ready after a restart, or failed", |s| {
        (s.state == State::Ready && s.restarts == 1) || matches!(s.state, State::Failed { .. })
    })
    .await;
    assert_eq!(settled.state, State::Ready, "{settled:?}");
    assert_eq!(settled.gpus, ["GPU-fake-0"]);
    let lingering: Vec<i32> = std::fs::read_to_string(dir.join("apps-alive.csv"))
        .unwrap()
        .lines()
        .filter_map(|line| line.split(',').next()?.trim().parse().ok())
        .collect();
    assert!(
        lingering.iter().all(|pid| !is_running(*pid)),
        "{lingering:?}"
    );
    assert!(
        is_running(settled.pid.unwrap()),
        "the new launch lives on: only the old launch's leftovers were killed"
    );
    supervisor.shutdown().await;
}

async fn escapees_are_killed_after_a_stop(dir: &Path, checkpoint: &Path) {
    let broker = Arc::new(GpuBroker::new(
        Inventory::discover(&[]),
        Some(checkpoint.to_path_buf()),
    ));
    // The setsid child leaves the process group: a group kill misses it.
    let script = "setsid sleep 1000 & echo READY; exec sleep 1000";
    let supervisor = on_gpu_zero("escapee", script, &broker);
    let mut status = supervisor.watch("escapee").unwrap();
    let ready = until(&mut status, "ready", |s| s.state == State::Ready).await;
    assert_eq!(ready.gpus, ["GPU-fake-0"]);
    let main = ready.pid.unwrap();
    let mut escapee = None;
    eventually("the setsid child appears", || {
        escapee = nanny::gpu::broker::pids_of_service("escapee")
            .into_iter()
            .find(|pid| *pid != main);
        escapee.is_some()
    });
    let escapee = escapee.unwrap();
    std::fs::write(dir.join("apps-alive.csv"), format!("{escapee}, 2048\n")).unwrap();

    supervisor.stop("escapee").await.unwrap();
    eventually("the escapee killed", || !is_running(escapee));
    eventually("its memory back", || held_on_gpu_zero(&broker).is_empty());
    assert!(broker.acquire("next", &gpu_zero()).is_ok());
    supervisor.shutdown().await;
}

fn a_restarted_broker_keeps_devices_of_live_services_blocked(dir: &Path, checkpoint: &Path) {
    // What an earlier daemon left: a lease for `ghost`, whose process lives on.
    std::fs::write(
        checkpoint,
        r#"{"leases": {"ghost": {"service": "ghost", "devices": ["GPU-fake-0"], "mode": "exclusive", "vram_mib": 0}}}"#,
    )
    .unwrap();
    let mut ghost = Command::new("sleep")
        .arg("1000")
        .env("NANNY_SERVICE", "ghost")
        .spawn()
        .unwrap();
    let pid = ghost.id() as i32;
    std::fs::write(dir.join("apps-alive.csv"), format!("{pid}, 4096\n")).unwrap();

    let broker = GpuBroker::new(Inventory::discover(&[]), Some(checkpoint.to_path_buf()));
    assert_eq!(held_on_gpu_zero(&broker), [pid]);
    let refused = broker.acquire("other", &gpu_zero()).unwrap_err();
    assert!(
        refused.message.contains("still holds memory"),
        "{}",
        refused.message
    );

    ghost.kill().unwrap();
    ghost.wait().unwrap();
    assert!(broker.acquire("other", &gpu_zero()).is_ok());
    let saved = std::fs::read_to_string(checkpoint).unwrap();
    assert!(
        saved.contains("\"other\"") && !saved.contains("\"ghost\""),
        "{saved}"
    );
}
