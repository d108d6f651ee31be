//! `resources.cpu_limit` and `memory_limit` for processes: applied through the
//! launch's cgroup (v2 where the controller is delegated, else the v1
//! hierarchy), and enforced: a backend over its memory limit is killed.

use std::path::PathBuf;

use nanny_tests::{call, Daemon};

/// The limit file `file_v1` / `file_v2` of `pid`'s `controller` cgroup.
fn limit_of(pid: i64, controller: &str, file_v1: &str, file_v2: &str) -> Option<String> {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mount_of = |kind: &str, option: Option<&str>| {
        mounts.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let matches = fields.get(2) == Some(&kind)
                && option
                    .is_none_or(|o| fields.get(3).is_some_and(|f| f.split(',').any(|x| x == o)));
            matches.then(|| PathBuf::from(fields[1]))
        })
    };
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == controller) {
            let file = mount_of("cgroup", Some(controller))?
                .join(path)
                .join(file_v1);
            return std::fs::read_to_string(file)
                .ok()
                .map(|v| v.trim().to_string());
        }
        if controllers.is_empty() {
            let file = mount_of("cgroup2", None)?.join(path).join(file_v2);
            if let Ok(value) = std::fs::read_to_string(file) {
                return Some(value.trim().to_string());
            }
        }
    }
    None
}

fn write_config(dir: &std::path::Path, text: &str) -> PathBuf {
    let path = dir.join("nanny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn cpu_and_memory_limits_are_applied_and_a_backend_over_its_memory_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[services.capped]
backend = "command"
resources = { cpu_limit = 0.5, memory_limit = "64MiB" }
settings = { command = ["sh", "-c", "echo READY; exec sleep 1000"], ready_line = "^READY", health_path = "" }

[services.hog]
backend = "command"
restart = "never"
resources = { memory_limit = "32MiB" }
settings = { command = ["python3", "-c", "x = b'x' * (256 * 1024 * 1024); print('survived')"], health_path = "" }
"#,
    );
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("[capped] ready"));
    let (_, logs) = call(
        "GET",
        &format!("{}/v1/services/capped/logs?tail=50", daemon.url),
        None,
    );
    if logs.to_string().contains("not applied") {
        // A machine whose kernel delegates neither cgroup v2 nor v1 controllers.
        eprintln!("SKIPPED: this machine cannot apply resource limits: {logs}");
        return;
    }
    let (_, capped) = call("GET", &format!("{}/v1/services/capped", daemon.url), None);
    let pid = capped["pid"].as_i64().expect("a pid");
    assert_eq!(
        limit_of(pid, "memory", "memory.limit_in_bytes", "memory.max").as_deref(),
        Some("67108864")
    );
    let cpu = limit_of(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").unwrap();
    assert!(cpu == "50000" || cpu == "50000 100000", "{cpu}");

    let hog =
        daemon.expect(|line| line.starts_with("[hog] failed") || line.starts_with("[hog] stopped"));
    assert!(
        hog.starts_with("[hog] failed") && hog.contains("signal 9"),
        "the kernel killed it at its limit: {hog}"
    );
    let (_, logs) = call(
        "GET",
        &format!("{}/v1/services/hog/logs?tail=50", daemon.url),
        None,
    );
    assert!(!logs.to_string().contains("survived"), "{logs}");
}
