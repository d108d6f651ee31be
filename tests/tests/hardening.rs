//! The daemon against what a web page, a closed terminal, a second daemon or a
//! low descriptor limit can do: each test failed on the nanny before it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nanny_tests::{call, nanny, nanny_bin, port_range_line, Daemon};
use serde_json::Value;

const ONE_MOCK: &str = r#"
[services.chat]
backend = "mock"
settings = { models = ["tiny-chat"] }
"#;

fn write_config(dir: &Path, services: &str) -> std::path::PathBuf {
    let config = dir.join("nanny.toml");
    let text = format!("[daemon]\n{}\n{services}", port_range_line());
    std::fs::write(&config, text).unwrap();
    config
}

fn chat_ready(dir: &Path) -> Daemon {
    let daemon = Daemon::up(&write_config(dir, ONE_MOCK), dir);
    daemon.expect(|line| line.starts_with("[chat] ready on "));
    daemon
}

fn state_of(daemon: &Daemon, name: &str) -> Value {
    let (_, service) = call("GET", &format!("{}/v1/services/{name}", daemon.url), None);
    service["state"].clone()
}

/// The status line and body of one raw HTTP/1.1 exchange.
fn raw(daemon: &Daemon, request: &[u8]) -> (u16, String) {
    let address = daemon.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[test]
fn the_host_check_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = chat_ready(dir.path());
    let cases: [(&str, &[u8]); 4] = [
        ("no Host", b"GET /v1/info HTTP/1.1\r\nConnection: close\r\n\r\n"),
        (
            "two Hosts",
            b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "absolute-form elsewhere",
            b"GET http://evil.example/v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "non-ASCII Host",
            b"GET /v1/info HTTP/1.1\r\nHost: loc\xc3\xa1lhost\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let (status, body) = raw(&daemon, request);
        assert_eq!(status, 403, "{what}: {body}");
        assert!(body.contains("\"forbidden\""), "{what}: {body}");
    }
    let (status, _) = raw(
        &daemon,
        b"GET /v1/info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "a plain local request still passes");
}

#[test]
fn a_post_a_web_page_could_send_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = chat_ready(dir.path());
    let host = daemon.url.trim_start_matches("http://");
    let stop = format!("POST /v1/services/chat/stop?wait=true HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n");
    let refused = [
        ("simple, no header of ours", "", 415),
        ("form content type", "Content-Type: text/plain\r\n", 415),
        (
            "foreign Origin",
            "Origin: http://evil.example\r\nContent-Type: application/json\r\n",
            403,
        ),
        (
            "null Origin",
            "Origin: null\r\nContent-Type: application/json\r\n",
            403,
        ),
        (
            "cross-site fetch metadata",
            "Sec-Fetch-Site: cross-site\r\nX-Nanny-Client: x\r\n",
            403,
        ),
        (
            "same-site fetch metadata",
            "Sec-Fetch-Site: same-site\r\nX-Nanny-Client: x\r\n",
            403,
        ),
    ];
    for (what, headers, expected) in refused {
        let (status, body) = raw(&daemon, format!("{stop}{headers}\r\n").as_bytes());
        assert_eq!(status, expected, "{what}: {body}");
        assert_eq!(state_of(&daemon, "chat"), "ready", "{what}");
    }
    let same_origin = format!(
        "{stop}Origin: {}\r\nContent-Type: application/json\r\n\r\n",
        daemon.url
    );
    let (status, body) = raw(&daemon, same_origin.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&daemon, "chat"), "stopped");
}

/// A page on another origin (another port on this machine) fires every POST a
/// page may send without a preflight at the daemon, in real Chromium; it then
/// reports to its own server, and the service must still be up.
#[test]
fn a_page_in_a_real_browser_cannot_stop_a_service() {
    let Some(chromium) = nanny_tests::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = chat_ready(dir.path());
    let (_, before) = call("GET", &format!("{}/v1/services/chat", daemon.url), None);
    let page = format!(
        r#"<!doctype html><title>attack</title><script>
const daemon = "{url}";
const shots = [
  fetch(daemon + "/v1/services/chat/stop", {{method: "POST", mode: "no-cors"}}),
  fetch(daemon + "/v1/services/chat/stop?wait=true", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}),
  fetch(daemon + "/v1/services/chat/stop", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "application/x-www-form-urlencoded"}}, body: "a=b"}}),
  fetch(daemon + "/v1/services/chat/stop", {{method: "POST",
    headers: {{"Content-Type": "application/json"}}, body: "{{}}"}}),
];
Promise.allSettled(shots).then(results => {{
  const seen = results.map(r => r.status).join(",");
  new Image().src = "/done?" + seen;
}});
</script>"#,
        url = daemon.url.replace("127.0.0.1", "localhost")
    );
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page_url = format!("http://127.0.0.1:{}/", server.local_addr().unwrap().port());
    let (done_sender, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in server.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let read = stream.read(&mut request).unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..read]).into_owned();
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            if let Some(seen) = target.strip_prefix("/done?") {
                let _ = done_sender.send(seen.to_string());
            }
            let body = if target == "/" { page.as_str() } else { "" };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&page_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let seen = done.recv_timeout(Duration::from_secs(60));
    let _ = browser.kill();
    let _ = browser.wait();
    let seen = seen.expect("the page ran its attack and reported back");
    assert!(seen.contains("fulfilled"), "the requests went out: {seen}");
    assert_eq!(state_of(&daemon, "chat"), "ready", "after {seen}");
    let (_, after) = call("GET", &format!("{}/v1/services/chat", daemon.url), None);
    assert_eq!(after["pid"], before["pid"], "the same launch, untouched");
}

#[test]
fn a_second_daemon_on_one_state_directory_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = chat_ready(dir.path());
    let config = write_config(dir.path(), ONE_MOCK);
    let (ok, _, stderr) = nanny(&["up", config.to_str().unwrap()], &[], dir.path());
    assert!(!ok, "refused");
    assert!(
        stderr.contains(&format!("another nanny (pid {})", first.pid())),
        "{stderr}"
    );
    assert_eq!(state_of(&first, "chat"), "ready", "the first is untouched");
}

#[test]
fn sighup_leaves_the_daemon_and_its_services_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = chat_ready(dir.path());
    daemon.signal(libc::SIGHUP);
    daemon.expect(|line| line.starts_with("nanny: SIGHUP"));
    assert_eq!(state_of(&daemon, "chat"), "ready");
    daemon.signal(libc::SIGINT);
    daemon.expect(|line| line == "nanny: all services stopped");
    assert_eq!(daemon.wait(), Some(0));
}

/// The soft and hard "Max open files" of a process.
fn fd_limits(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let mut words = line["Max open files".len()..].split_whitespace();
    (
        words.next().unwrap().to_string(),
        words.next().unwrap().to_string(),
    )
}

#[test]
fn the_daemon_raises_its_descriptor_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), ONE_MOCK);
    let mut under_low_limit = Command::new("sh");
    under_low_limit
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" up \"$1\""])
        .arg(nanny_bin())
        .arg(&config);
    let daemon = Daemon::spawn(under_low_limit, dir.path(), &[]);
    daemon.expect(|line| line.starts_with("[chat] ready on "));
    let (soft, hard) = fd_limits(daemon.pid());
    assert_eq!(soft, hard, "soft limit raised from 256");
}

#[test]
fn start_on_a_service_whose_dependency_failed_answers_424_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let services = r#"
[services.broken]
backend = "command"
restart = "never"
settings = { command = ["sh", "-c", "echo bad config; exit 3"] }

[services.app]
backend = "mock"
depends_on = ["broken"]
"#;
    let daemon = Daemon::up(&write_config(dir.path(), services), dir.path());
    daemon.expect(|line| line.starts_with("[app] waiting: waiting for broken, which failed"));
    let (status, body) = call(
        "POST",
        &format!("{}/v1/services/app/start?wait=true", daemon.url),
        None,
    );
    assert_eq!(status, 424, "{body}");
    assert_eq!(body["error"]["code"], "dependency_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("waiting for broken, which failed: exited with exit code 3"),
        "{message}"
    );
    let cli = Command::new(nanny_bin())
        .args(["start", "app", "--url", &daemon.url])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    let said =
        String::from_utf8_lossy(&cli.stderr).into_owned() + &String::from_utf8_lossy(&cli.stdout);
    assert!(said.contains("broken, which failed"), "{said}");
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Idle sockets beyond `max_connections` wait in the kernel's backlog: they take
/// none of the daemon's descriptors, and once they go the API answers again.
#[test]
fn idle_sockets_cannot_exhaust_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    let text = format!(
        "[daemon]\nmax_connections = 8\n{}\n{ONE_MOCK}",
        port_range_line()
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("[chat] ready on "));
    let baseline = open_fds(daemon.pid());
    let address = daemon.url.trim_start_matches("http://").to_string();
    // 100: eight taken, the rest in the listen backlog (the kernel caps it at
    // `somaxconn`, 128 by default; past that, connect itself would wait).
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    // The daemon takes its eight; wait until it has (it polls no one: watch /proc).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open_fds(daemon.pid()) < baseline + 8 {
        assert!(std::time::Instant::now() < deadline, "never took eight");
        std::thread::yield_now();
    }
    // A request now waits for a slot: unanswered within a second.
    let mut waiting = TcpStream::connect(&address).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    waiting
        .write_all(
            format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut first = [0u8; 1];
    assert!(waiting.read(&mut first).is_err(), "served beyond the cap");
    let held = open_fds(daemon.pid());
    assert!(
        held < baseline + 8 + 20,
        "100 idle sockets took {} descriptors",
        held - baseline
    );
    drop(idle);
    waiting
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    let _ = waiting.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(state_of(&daemon, "chat"), "ready");
}

#[test]
fn oversized_requests_get_json_errors_too() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = chat_ready(dir.path());
    let host = daemon.url.trim_start_matches("http://").to_string();
    let long_target = format!(
        "GET /v1/services?{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        "a".repeat(10_000)
    );
    let (status, body) = raw(&daemon, long_target.as_bytes());
    assert_eq!(status, 414);
    assert!(body.contains("\"uri_too_long\""), "{body}");
    let many_headers: String = (0..150).map(|n| format!("X-Filler-{n}: x\r\n")).collect();
    let request =
        format!("GET /v1/info HTTP/1.1\r\nHost: {host}\r\n{many_headers}Connection: close\r\n\r\n");
    let (status, body) = raw(&daemon, request.as_bytes());
    assert_eq!(status, 431);
    assert!(body.contains("\"headers_too_large\""), "{body}");
}

/// A program that grabs the service's port after the launch (an orphan of an
/// earlier run, say) answers the readiness probe: that must not make the
/// service ready, and its log says who holds the port.
#[test]
fn a_probe_answered_by_another_program_is_not_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[services.web]
backend = "command"
port = {port}
probes = {{ path = "/health", readiness_period = "50ms" }}
settings = {{ command = ["sh", "-c", "echo launched; exec sleep 1000"] }}
"#
        ),
    );
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("[web] starting"));
    // The launch runs (it printed); now the impostor takes the port.
    let log = |daemon: &Daemon| {
        call(
            "GET",
            &format!("{}/v1/services/web/logs?tail=20", daemon.url),
            None,
        )
        .1
    };
    while !log(&daemon).to_string().contains("launched") {
        std::thread::yield_now();
    }
    let impostor = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (answered, answers) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for probe in impostor.incoming() {
            let Ok(mut probe) = probe else { return };
            let mut request = [0u8; 1024];
            let _ = probe.read(&mut request);
            let _ = probe
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            if answered.send(()).is_err() {
                return;
            }
        }
    });
    // Each probe comes after the last answer was judged: the state then is that judgement.
    for answer in 1..=5 {
        answers
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no probe {answer}; state {}", state_of(&daemon, "web")));
        assert_eq!(
            state_of(&daemon, "web"),
            "starting",
            "after {answer} answer(s) from another program"
        );
    }
    let text = log(&daemon).to_string();
    assert!(
        text.contains(&format!(
            "port {port} answered, but pid {}",
            std::process::id()
        )),
        "{text}"
    );
}

/// Sets `pid`'s soft descriptor limit, keeping its hard one (raising a hard
/// limit again needs a capability the test may not have).
fn set_fd_limit(pid: i32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reading our own child's limits into a live struct.
    let read = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(read, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit(2) on our own child, with a limit struct that outlives the call.
    let done = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A launch that finds the daemon out of descriptors backs off and tries again;
/// once descriptors are back, it comes up: never `failed` for good.
#[test]
fn a_launch_out_of_descriptors_is_retried_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[services.app]
backend = "command"
autostart = false
restart = { policy = "on-failure", max_restarts = 1000, backoff = "200ms", max_backoff = "200ms" }
settings = { command = ["sh", "-c", "echo READY; exec sleep 1000"], ready_line = "^READY", health_path = "" }
"#,
    );
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    // Room for the request's own socket and not much more: the launch's pipes fail.
    let tight = open_fds(daemon.pid()) as u64 + 3;
    set_fd_limit(daemon.pid(), tight);
    let (status, body) = call(
        "POST",
        &format!("{}/v1/services/app/start?wait=false", daemon.url),
        None,
    );
    assert!(status < 300, "{status} {body}");
    let backoff =
        daemon.expect(|line| line.starts_with("[app] ") && !line.starts_with("[app] starting"));
    assert!(
        backoff.starts_with("[app] backoff after cannot start `sh`")
            && backoff.contains("os error 24"),
        "{backoff}"
    );
    set_fd_limit(daemon.pid(), 4096);
    let next =
        daemon.expect(|line| line.starts_with("[app] ready") || line.starts_with("[app] failed"));
    assert!(next.starts_with("[app] ready"), "{next}");
}
