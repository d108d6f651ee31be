//! cgroup v2 containment: every launch gets a cgroup of its own, so a backend's
//! whole tree — setsid and double-forked grandchildren included — can be found and
//! killed at once with `cgroup.kill`.
//!
//! Layout: `<cgroup2 mount>/nanny/<daemon pid>/<service>-<launch>`. The daemon's
//! directory is swept by the guardian when the daemon dies, and by the next daemon
//! at start-up if the guardian could not.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `nanny` directory under the cgroup2 mount, when this machine lets us write it.
pub fn nanny_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mount = mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(path))
    })?;
    let root = mount.join("nanny");
    std::fs::create_dir_all(&root).ok()?;
    Some(root)
}

/// CPU and memory caps for one launch (`resources.cpu_limit`, `memory_limit`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceLimits {
    /// CPUs' worth of time per period (`1.5`: one and a half cores).
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
}

impl ResourceLimits {
    pub fn is_empty(&self) -> bool {
        self.cpus.is_none() && self.memory_bytes.is_none()
    }
}

/// The CFS period nanny uses; a quota of `cpus` × this.
const CPU_PERIOD_US: u64 = 100_000;

/// One launch's cgroup, and the cgroup v1 groups it joins too where a
/// controller nanny needs is only mounted as v1 (hybrid hierarchies).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    v1: Vec<PathBuf>,
}

impl Cgroup {
    pub fn create(path: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        Ok(Self {
            path,
            v1: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files a child writes `0` to, to move itself in before exec.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        std::iter::once(&self.path)
            .chain(&self.v1)
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// Caps the launch at `limits`: through cgroup v2's `cpu.max` and
    /// `memory.max` where those controllers can be enabled, else through the
    /// cgroup v1 `cpu` and `memory` hierarchies. What could not be applied is
    /// returned, one sentence each.
    pub fn limit(&mut self, limits: &ResourceLimits) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(cpus) = limits.cpus {
            let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
            let v2 = format!("{quota} {CPU_PERIOD_US}");
            let v1 = [
                ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ];
            if let Err(problem) = self.apply("cpu", ("cpu.max", v2), &v1) {
                problems.push(format!("cpu_limit = {cpus} not applied: {problem}"));
            }
        }
        if let Some(bytes) = limits.memory_bytes {
            let v1 = [("memory.limit_in_bytes", bytes.to_string())];
            if let Err(problem) = self.apply("memory", ("memory.max", bytes.to_string()), &v1) {
                problems.push(format!(
                    "memory_limit = {bytes} bytes not applied: {problem}"
                ));
            }
        }
        problems
    }

    fn apply(
        &mut self,
        controller: &str,
        (v2_file, v2_value): (&str, String),
        v1_files: &[(&str, String)],
    ) -> Result<(), String> {
        if enable_v2(&self.path, controller) {
            return std::fs::write(self.path.join(v2_file), v2_value)
                .map_err(|error| format!("{v2_file}: {error}"));
        }
        let Some(mount) = v1_mount(controller) else {
            return Err(format!(
                "no `{controller}` controller (cgroup v2 does not delegate it and no cgroup v1 hierarchy has it)"
            ));
        };
        let dir = mount.join(self.relative());
        std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        if !self.v1.contains(&dir) {
            self.v1.push(dir.clone());
        }
        for (file, value) in v1_files {
            std::fs::write(dir.join(file), value)
                .map_err(|error| format!("{}: {error}", dir.join(file).display()))?;
        }
        Ok(())
    }

    /// `nanny/<daemon pid>/<launch>`: the same place under a v1 hierarchy.
    fn relative(&self) -> PathBuf {
        let parts: Vec<_> = self.path.components().collect();
        let start = parts.len().saturating_sub(3);
        parts[start..].iter().collect()
    }

    pub fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map_or(true, |procs| procs.trim().is_empty())
    }

    /// Kills every process in the cgroup and waits until it is empty, then removes it
    /// (and its v1 companions).
    pub async fn kill_all(&self) {
        kill_tree(&self.path).await;
        for dir in &self.v1 {
            kill_tree(dir).await;
        }
    }
}

/// SIGKILLs every process under `dir` (recursively), waits until none is left and
/// removes the directories. Falls back to killing the listed pids one by one where
/// `cgroup.kill` is missing (kernels before 5.14).
pub async fn kill_tree(dir: &Path) {
    for _ in 0..500 {
        let pids = pids_under(dir);
        if pids.is_empty() {
            break;
        }
        if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in pids {
                // SAFETY: kill(2) with a pid read from the cgroup; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    remove_tree(dir);
}

/// Whether `controller` is delegated to `dir`: enabled in every ancestor's
/// `cgroup.subtree_control` from the mount down (enabling it where it is not).
fn enable_v2(dir: &Path, controller: &str) -> bool {
    let Some(mount) = dir.ancestors().find(|a| {
        a.join("cgroup.controllers").exists()
            && !a
                .parent()
                .is_some_and(|p| p.join("cgroup.controllers").exists())
    }) else {
        return false;
    };
    let available = |at: &Path| {
        std::fs::read_to_string(at.join("cgroup.controllers"))
            .is_ok_and(|list| list.split_whitespace().any(|c| c == controller))
    };
    if !available(mount) {
        return false;
    }
    let mut ancestors: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(mount))
        .collect();
    ancestors.reverse();
    for ancestor in ancestors {
        let _ = std::fs::write(
            ancestor.join("cgroup.subtree_control"),
            format!("+{controller}"),
        );
    }
    available(dir)
}

/// Where the cgroup v1 hierarchy of `controller` is mounted, if one is.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (path, kind, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        (*kind == "cgroup" && options.split(',').any(|option| option == controller))
            .then(|| PathBuf::from(path))
    })
}

/// The `nanny` directories under cgroup v1 hierarchies, for the sweep.
pub fn v1_roots() -> Vec<PathBuf> {
    ["cpu", "memory"]
        .iter()
        .filter_map(|controller| v1_mount(controller))
        .map(|mount| mount.join("nanny"))
        .filter(|root| root.is_dir())
        .collect()
}

fn pids_under(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for child in subdirectories(dir) {
        pids.extend(pids_under(&child));
    }
    pids
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn remove_tree(dir: &Path) {
    for child in subdirectories(dir) {
        remove_tree(&child);
    }
    let _ = std::fs::remove_dir(dir);
}

/// Empties and removes a daemon's cgroup directory `dir` (`…/nanny/<pid>`) and
/// its companions under the cgroup v1 hierarchies.
pub async fn kill_daemon_tree(dir: &Path) {
    kill_tree(dir).await;
    if let Some(pid) = dir.file_name() {
        for root in v1_roots() {
            kill_tree(&root.join(pid)).await;
        }
    }
}

/// Kills what earlier daemons left behind: every `<root>/<pid>` whose daemon is gone.
pub async fn sweep_stale(root: &Path) -> usize {
    let mut swept = 0;
    for dir in subdirectories(root) {
        let owner: Option<i32> = dir
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.parse().ok());
        if owner.is_some_and(|pid| pid != std::process::id() as i32 && !alive(pid)) {
            kill_tree(&dir).await;
            swept += 1;
        }
    }
    swept
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}
