//! Backends as processes: each in its own process group (and cgroup, where the
//! machine allows), output read line by line, stopped with the plan's signal, a
//! grace period, then SIGKILL — and a stop returns only once nothing is left.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::LineSink;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::cgroup::Cgroup;

/// Lines longer than this are cut; a backend must not make the daemon hoard memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a backend's output, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: Stream,
    pub text: String,
}

/// How a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl From<std::process::ExitStatus> for Exit {
    fn from(status: std::process::ExitStatus) -> Self {
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "signal {signal}"),
            (None, None) => f.write_str("an unknown exit"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub work_dir: Option<PathBuf>,
}

/// A running backend process and its group.
#[derive(Debug)]
pub struct ProcessHandle {
    child: Child,
    pid: i32,
    cgroup: Option<Cgroup>,
    /// The launch's `NANNY_LAUNCH`, which finds descendants that left the group.
    launch: Option<String>,
    exit: Option<Exit>,
}

/// A bare program name resolves next to the nanny binary first, then on PATH.
pub fn resolve_program(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let beside_nanny = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(program)));
    match beside_nanny {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from(program),
    }
}

/// Starts `spec` in a new process group (and in `cgroup`, when given), sending its
/// output lines to `lines`.
pub fn spawn(
    spec: &ProcessSpec,
    cgroup: Option<Cgroup>,
    lines: LineSink,
) -> io::Result<ProcessHandle> {
    let mut command = Command::new(resolve_program(&spec.program));
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.work_dir {
        command.current_dir(dir);
    }
    let procs: Vec<CString> = match &cgroup {
        Some(cgroup) => cgroup
            .procs_files()
            .iter()
            .map(|file| CString::new(file.as_os_str().as_bytes()).map_err(io::Error::other))
            .collect::<io::Result<_>>()?,
        None => Vec::new(),
    };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, open, write, close) on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            // Dies with the thread that spawned it: a daemon killed with -9 takes
            // its direct children along even without cgroups.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            for procs in &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    let (mut child, pid) = super::orphans::spawn_waited(|| {
        let child = command.spawn()?;
        let pid = child
            .id()
            .map(|pid| pid as i32)
            .ok_or_else(|| io::Error::other("the child exited before it had a pid"))?;
        Ok((child, pid))
    })?;
    let launch = spec
        .env
        .iter()
        .find(|(key, _)| key == "NANNY_LAUNCH")
        .map(|(_, id)| id.clone());
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(stdout, Stream::Stdout, lines.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(stderr, Stream::Stderr, lines));
    }
    Ok(ProcessHandle {
        child,
        pid,
        cgroup,
        launch,
        exit: None,
    })
}

/// Reads the pipe to its end, whatever happens to the lines: a backend never
/// blocks on its own output.
async fn forward_lines(pipe: impl AsyncRead + Unpin, stream: Stream, lines: LineSink) {
    let mut reader = BufReader::new(pipe);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match read_line_capped(&mut reader, &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buffer.pop();
                }
                let text = String::from_utf8_lossy(&buffer).into_owned();
                lines.deliver(OutputLine { stream, text });
            }
        }
    }
}

/// Reads one line, keeping at most [`MAX_LINE_BYTES`] of it and skipping the rest.
async fn read_line_capped<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (&available[..=end], true),
            None => (available, false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        total += used;
        reader.consume(used);
        if done {
            return Ok(total);
        }
    }
}

impl ProcessHandle {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The launch's `NANNY_LAUNCH`, when its environment has one.
    pub fn launch(&self) -> Option<&str> {
        self.launch.as_deref()
    }

    /// Waits for the main process to exit by itself, then removes whatever it left
    /// in its group: nothing of a backend outlives its main process.
    pub async fn wait(&mut self) -> io::Result<Exit> {
        let exit = match self.exit {
            Some(exit) => exit,
            None => self.reap().await?,
        };
        self.exit = Some(exit);
        self.kill_leftovers().await;
        Ok(exit)
    }

    /// Sends `signal` to the whole group, waits up to `grace`, then SIGKILLs it; returns
    /// once the main process is reaped and the group (or cgroup) is empty.
    pub async fn stop(&mut self, signal: i32, grace: Duration) -> io::Result<Exit> {
        if self.exit.is_none() {
            signal_group(self.pid, signal);
            match tokio::time::timeout(grace, self.reap()).await {
                Ok(exit) => self.exit = Some(exit?),
                Err(_) => {
                    signal_group(self.pid, libc::SIGKILL);
                    self.exit = Some(self.reap().await?);
                }
            }
        }
        self.wait().await
    }

    /// Waits for the main process and tells the orphan reaper it is reaped.
    async fn reap(&mut self) -> io::Result<Exit> {
        let status = self.child.wait().await?;
        super::orphans::waited(self.pid);
        Ok(Exit::from(status))
    }

    async fn kill_leftovers(&mut self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all().await;
            return;
        }
        // Without a cgroup: the process group, then whatever of the launch left
        // it (setsid), found by its NANNY_LAUNCH.
        for _ in 0..500 {
            if !signal_group(self.pid, libc::SIGKILL) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(launch) = &self.launch {
            for (pid, why) in super::orphans::kill_launch(launch).await {
                tracing::warn!("cannot remove pid {pid} of launch {launch}: {why}");
            }
        }
    }
}

/// Signals every process in the group led by `pgid`; false when the group is empty.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: killpg(2) on a group we created; no memory involved.
    unsafe { libc::killpg(pgid, signal) == 0 }
}
