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

/// One launch's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn create(path: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a child writes `0` to, to move itself in before exec.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.procs_file()).map_or(true, |procs| procs.trim().is_empty())
    }

    /// Kills every process in the cgroup and waits until it is empty, then removes it.
    pub async fn kill_all(&self) {
        kill_tree(&self.path).await;
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
