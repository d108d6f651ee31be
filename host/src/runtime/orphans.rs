//! What keeps a backend's escaped descendants from outliving it when there is no
//! cgroup to hold them (non-root, or cgroup v2 not writable):
//!
//! - the daemon is a child subreaper, so a setsid, double-forked grandchild whose
//!   parent exits comes back to the daemon instead of to init; a reaper reaps
//!   those (and only those: the children nanny waits on itself are left alone);
//! - every process of a launch carries `NANNY_LAUNCH=<id>` in its environment, so
//!   a launch's leftovers are found however far they forked;
//! - each launch is recorded in `<state_dir>/launches` until it is gone, so the
//!   guardian (when the daemon dies) and the next daemon sweep what is left.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Pids of the daemon's own children that something in nanny waits on (tokio's
/// child handles): the reaper must not take their exit status away.
///
/// Process-wide on purpose: subreaping is an attribute of the whole process, and
/// every spawn anywhere in it must be seen by the one reaper.
static WAITED_ON: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Makes this process a child subreaper: orphaned descendants are re-parented to
/// it rather than to init.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Spawns a child that its caller will wait on, so that the reaper leaves it be.
/// The registry lock is held across the spawn: the reaper cannot see the child
/// between its birth and its registration.
pub fn spawn_waited<T>(spawn: impl FnOnce() -> io::Result<(T, i32)>) -> io::Result<(T, i32)> {
    let mut waited = crate::locks::lock(&WAITED_ON);
    let (child, pid) = spawn()?;
    waited.get_or_insert_with(HashSet::new).insert(pid);
    Ok((child, pid))
}

/// The caller has reaped `pid`.
pub fn waited(pid: i32) {
    if let Some(set) = crate::locks::lock(&WAITED_ON).as_mut() {
        set.remove(&pid);
    }
}

/// Reaps orphaned descendants that were re-parented to this process, whenever a
/// child changes state (and every few seconds, for signals that coalesced).
pub async fn reap_forever() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut children = match signal(SignalKind::child()) {
        Ok(children) => Some(children),
        Err(error) => {
            tracing::warn!("no SIGCHLD stream ({error}); reaping orphans by the clock only");
            None
        }
    };
    loop {
        let changed = async {
            match children.as_mut() {
                Some(children) => {
                    children.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let _ = tokio::task::spawn_blocking(reap_orphans).await;
    }
}

/// Reaps this process's zombie children that nobody waits on; how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    // SAFETY: getpgrp(2) cannot fail.
    let my_group = unsafe { libc::getpgrp() };
    let waited = crate::locks::lock(&WAITED_ON);
    let mut reaped = 0;
    for pid in live_pids() {
        let Some(stat) = ProcStat::read(pid) else {
            continue;
        };
        // Children in the daemon's own group are std's (`nvidia-smi`), which it waits on.
        let ours = waited.as_ref().is_some_and(|set| set.contains(&pid));
        if stat.parent != me || stat.state != 'Z' || ours || stat.group == my_group {
            continue;
        }
        // SAFETY: waitpid on a zombie child of ours that nothing else waits on.
        if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == pid {
            reaped += 1;
        }
    }
    reaped
}

/// Waits for each of `pids` that is an orphan re-parented to this process (not
/// a child something in nanny waits on itself) after SIGKILL: it is gone, not a
/// zombie, once this returns.
fn reap_killed(pids: &[i32]) {
    let me = std::process::id() as i32;
    let waited = crate::locks::lock(&WAITED_ON).clone().unwrap_or_default();
    for pid in pids {
        let ours = ProcStat::read(*pid).is_some_and(|stat| stat.parent == me);
        if ours && !waited.contains(pid) {
            // SAFETY: waitpid on a child of ours that was just sent SIGKILL;
            // the reaper may have taken it first (ECHILD), which is as good.
            unsafe { libc::waitpid(*pid, std::ptr::null_mut(), 0) };
        }
    }
}

/// The fields of `/proc/<pid>/stat` nanny needs.
struct ProcStat {
    state: char,
    parent: i32,
    group: i32,
}

impl ProcStat {
    fn read(pid: i32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields follow the last ") ".
        let mut fields = stat.rsplit_once(") ")?.1.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let parent = fields.next()?.parse().ok()?;
        let group = fields.next()?.parse().ok()?;
        Some(Self {
            state,
            parent,
            group,
        })
    }
}

fn live_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Whether `pid` is of the launch whose main process leads process group
/// `group` (and whose processes carry `NANNY_LAUNCH=<launch>`, which finds those
/// that left the group).
pub fn belongs_to_launch(pid: i32, group: i32, launch: Option<&str>) -> bool {
    if ProcStat::read(pid).is_some_and(|stat| stat.group == group) {
        return true;
    }
    launch.is_some_and(|launch| has_env(pid, &format!("NANNY_LAUNCH={launch}")))
}

/// Whether `pid`'s environment holds `variable` exactly (`KEY=value`).
fn has_env(pid: i32, variable: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|byte| *byte == 0)
            .any(|entry| entry == variable.as_bytes())
    })
}

/// Every live process whose environment holds `variable` exactly (`KEY=value`).
pub fn pids_with_env(variable: &str) -> Vec<i32> {
    live_pids()
        .into_iter()
        .filter(|pid| has_env(*pid, variable))
        .collect()
}

/// Every live process of one launch, however far it forked.
pub fn pids_of_launch(launch: &str) -> Vec<i32> {
    pids_with_env(&format!("NANNY_LAUNCH={launch}"))
}

/// SIGKILLs every process of `launch` and waits (briefly) until they are gone;
/// the pids that would not go, with why.
pub async fn kill_launch(launch: &str) -> Vec<(i32, String)> {
    // Reading every process's environment is slow work: off the async workers.
    let scan = || {
        let launch = launch.to_string();
        async move {
            tokio::task::spawn_blocking(move || pids_of_launch(&launch))
                .await
                .unwrap_or_default()
        }
    };
    let mut refused = Vec::new();
    for _ in 0..200 {
        let pids = scan().await;
        if pids.is_empty() {
            return Vec::new();
        }
        refused.clear();
        let mut killed = Vec::new();
        for pid in pids {
            // SAFETY: kill(2) on a pid that carries this launch's id.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                refused.push((pid, io::Error::last_os_error().to_string()));
            } else {
                killed.push(pid);
            }
        }
        // A killed orphan of ours is a zombie until reaped: reap it before
        // saying the launch is gone, so no zombie outlives the stop.
        let _ = tokio::task::spawn_blocking(move || reap_killed(&killed)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = scan().await;
    if refused.is_empty() {
        refused = left
            .into_iter()
            .map(|pid| (pid, "still alive after SIGKILL".to_string()))
            .collect();
    }
    refused
}

/// The launches of this state directory that may still have processes:
/// `<state_dir>/launches/<launch id>`, holding the launch's process group.
#[derive(Debug, Clone)]
pub struct LaunchRecords {
    dir: PathBuf,
}

impl LaunchRecords {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("launches"),
        }
    }

    /// The records in `dir` (what [`LaunchRecords::dir`] gave).
    pub fn from_dir(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Notes that `launch` runs in process group `group`.
    pub fn record(&self, launch: &str, group: i32) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        crate::files::write_atomically(&self.dir.join(launch), group.to_string().as_bytes())
    }

    /// `launch` left nothing behind.
    pub fn forget(&self, launch: &str) {
        let _ = std::fs::remove_file(self.dir.join(launch));
    }

    /// Kills what every recorded launch left running, forgets the launches that
    /// are gone, and says what it did: (processes removed, processes that could
    /// not be removed with why).
    pub async fn sweep(&self) -> Sweep {
        let mut sweep = Sweep::default();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return sweep;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(launch) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // Launch ids are service names and numbers; anything else is not ours.
            if !launch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                continue;
            }
            let found = pids_of_launch(&launch).len();
            let refused = kill_launch(&launch).await;
            sweep.removed += found.saturating_sub(refused.len());
            if refused.is_empty() {
                self.forget(&launch);
            }
            sweep.refused.extend(refused);
        }
        sweep
    }
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    pub removed: usize,
    pub refused: Vec<(i32, String)>,
}

impl Sweep {
    /// A line for people, when there is anything to say.
    pub fn report(&self) -> Option<String> {
        if self.removed == 0 && self.refused.is_empty() {
            return None;
        }
        let mut text = format!(
            "removed {} process(es) that earlier launches left running",
            self.removed
        );
        if !self.refused.is_empty() {
            let refused: Vec<String> = self
                .refused
                .iter()
                .map(|(pid, why)| format!("pid {pid}: {why}"))
                .collect();
            text.push_str(&format!("; could not remove {}", refused.join(", ")));
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_name_with_parentheses() {
        let me = ProcStat::read(std::process::id() as i32).unwrap();
        assert!("RSD".contains(me.state), "{}", me.state);
        assert!(me.parent > 0);
    }

    #[tokio::test]
    async fn a_sweep_kills_a_recorded_launch_however_it_forked_and_forgets_it() {
        let state = tempfile::tempdir().unwrap();
        let records = LaunchRecords::new(state.path());
        let launch = format!("sweep-test.{}.1", std::process::id());
        // The shell exits at once; its setsid grandchild is an orphan that keeps the id.
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                "setsid sh -c 'trap \"\" TERM; sleep 1000' </dev/null >/dev/null 2>&1 &",
            ])
            .env("NANNY_LAUNCH", &launch)
            .status()
            .unwrap();
        assert!(status.success());
        // Settled once `sleep` runs: before that the shells on the way fork and
        // exec, and a process in the middle of exec shows no environment.
        let is_sleep = |pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "sleep")
        };
        let orphan = loop {
            if let Some(pid) = pids_of_launch(&launch).into_iter().find(is_sleep) {
                break pid;
            }
            tokio::task::yield_now().await;
        };
        records.record(&launch, orphan).unwrap();
        // The shell that waits for `sleep`, and `sleep`.
        let settled = pids_of_launch(&launch).len();
        let sweep = records.sweep().await;
        assert_eq!(sweep.removed, settled, "{sweep:?}");
        assert!(sweep.refused.is_empty(), "{sweep:?}");
        assert!(pids_of_launch(&launch).is_empty());
        assert!(!records.dir().join(&launch).exists());
        assert!(sweep
            .report()
            .unwrap()
            .contains(&format!("removed {settled} process(es)")));
    }
}
