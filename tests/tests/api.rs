//! The control API over real HTTP against a real daemon running mock services:
//! every route, SSE for logs and events, auth, the ready callback, and the CLI
//! verbs that talk to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use nanny_tests::{agent, call, nanny_bin, port_range_line, Daemon};
use serde_json::Value;

const TWO_MOCKS: &str = r#"
[services.embeddings]
backend = "mock"
settings = { models = ["tiny-embed"] }

[services.chat]
backend = "mock"
depends_on = ["embeddings"]
settings = { models = ["tiny-chat"] }
env = { HF_TOKEN = "hf-secret" }
api_key = "sk-backend-secret"
"#;

/// A daemon on `config`, with both services of TWO_MOCKS ready.
fn two_mocks(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    let config = dir.join("nanny.toml");
    let text = format!("[daemon]\n{}\n{TWO_MOCKS}", port_range_line());
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::up_with(&config, dir, env);
    daemon.expect(|line| line.starts_with("[chat] ready on "));
    daemon
}

fn get(daemon: &Daemon, path: &str) -> (u16, Value) {
    call("GET", &format!("{}{path}", daemon.url), None)
}

fn post(daemon: &Daemon, path: &str) -> (u16, Value) {
    call("POST", &format!("{}{path}", daemon.url), None)
}

/// The `data:` of each Server-Sent Event on `path`, as it arrives.
fn subscribe(daemon: &Daemon, path: &str) -> mpsc::Receiver<Value> {
    let response = agent().get(format!("{}{path}", daemon.url)).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (sender, events) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data:") {
                let value = serde_json::from_str(data.trim()).unwrap();
                if sender.send(value).is_err() {
                    return;
                }
            }
        }
    });
    events
}

/// The first event satisfying `check`, within a minute.
fn next(events: &mpsc::Receiver<Value>, check: impl Fn(&Value) -> bool) -> Value {
    let mut seen = Vec::new();
    while let Ok(event) = events.recv_timeout(Duration::from_secs(60)) {
        if check(&event) {
            return event;
        }
        seen.push(event);
    }
    panic!("no such event; saw {seen:#?}");
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an API error: {body}"))
}

#[test]
fn every_read_route_answers_in_its_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = two_mocks(dir.path(), &[]);

    let (status, services) = get(&daemon, "/v1/services");
    assert_eq!(status, 200);
    let names: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["embeddings", "chat"], "dependency order");

    let (status, chat) = get(&daemon, "/v1/services/chat");
    assert_eq!(status, 200);
    assert_eq!(chat["state"], "ready");
    assert_eq!(chat["backend"], "mock");
    assert!(chat["plugin_version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert!(chat["pid"].as_i64().is_some_and(|pid| pid > 0));
    assert!(chat["port"].as_u64().is_some_and(|port| port > 0));
    assert_eq!(chat["restarts"], 0);
    assert_eq!(chat["gpus"], serde_json::json!([]));

    let (_, models) = get(&daemon, "/v1/services/chat/models");
    assert_eq!(models[0]["id"], "tiny-chat");
    let (_, all) = get(&daemon, "/v1/models");
    assert_eq!(all["object"], "list");
    let owners: Vec<(&str, &str, &str)> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap(),
                m["owned_by"].as_str().unwrap(),
                m["status"].as_str().unwrap(),
            )
        })
        .collect();
    // By service name, each with its service's state.
    assert_eq!(
        owners,
        [
            ("tiny-chat", "chat", "ready"),
            ("tiny-embed", "embeddings", "ready")
        ]
    );

    let (_, tail) = get(&daemon, "/v1/services/chat/logs?tail=1");
    let lines = tail["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("mock-backend listening on"));

    let (_, plugins) = get(&daemon, "/v1/plugins");
    assert!(plugins
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "mock"));
    let (_, info) = get(&daemon, "/v1/info");
    assert_eq!(
        (info["services"].as_u64(), info["ready"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(info["wit_version"], "0.2.0");
    assert_eq!(
        get(&daemon, "/health"),
        (200, serde_json::json!({"status": "ok"}))
    );

    let (status, metrics) = get(&daemon, "/metrics");
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("nanny_services{state=\"ready\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("nanny_time_to_ready_seconds_count{service=\"chat\"} 1"));
    assert!(metrics.contains("nanny_plugin_call_duration_seconds_bucket{"));
    assert!(metrics.contains("process_resident_memory_bytes "));

    let (_, openapi) = get(&daemon, "/openapi.json");
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/v1/services/{name}/start", "/v1/events", "/metrics"] {
        assert!(openapi["paths"].get(path).is_some(), "{path} documented");
    }
}

#[test]
fn bad_requests_get_json_errors_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = two_mocks(dir.path(), &[]);
    let cases = [
        ("GET", "/v1/services/nope", 404, "not_found"),
        ("GET", "/v1/services/Bad..Name", 400, "bad_request"),
        ("POST", "/v1/services/nope/start", 404, "not_found"),
        (
            "GET",
            "/v1/services/chat/logs?tail=lots",
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/services/chat/logs?follow=maybe",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/services/chat/start?wait=perhaps",
            400,
            "bad_request",
        ),
        ("GET", "/v1/no-such-route", 404, "not_found"),
        ("POST", "/v1/services", 405, "method_not_allowed"),
    ];
    for (method, path, status, code) in cases {
        let (got, body) = call(method, &format!("{}{path}", daemon.url), None);
        assert_eq!(
            (got, error_code(&body)),
            (status, code),
            "{method} {path}: {body}"
        );
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // tail is capped, not refused.
    let (status, _) = get(&daemon, "/v1/services/chat/logs?tail=99999999");
    assert_eq!(status, 200);
    // A page elsewhere that re-pointed its DNS at 127.0.0.1.
    let response = agent()
        .get(format!("{}/v1/services", daemon.url))
        .header("Host", "attacker.example")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}

#[test]
fn actions_wait_for_their_target_and_events_and_logs_stream() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = two_mocks(dir.path(), &[]);
    let events = subscribe(&daemon, "/v1/events");
    let chat_log = subscribe(&daemon, "/v1/services/chat/logs?follow=true&tail=0");

    let (status, chat) = post(&daemon, "/v1/services/chat/restart?wait=true");
    assert_eq!((status, chat["state"].as_str()), (200, Some("ready")));
    let stopping = next(&events, |e| e["service"] == "chat" && e["to"] == "stopping");
    assert_eq!(stopping["from"], "ready");
    next(&events, |e| e["service"] == "chat" && e["to"] == "ready");
    let line = next(&chat_log, |l| {
        l["text"]
            .as_str()
            .unwrap()
            .starts_with("mock-backend listening on")
    });
    assert_eq!(line["stream"], "stdout");

    let (_, embeddings) = post(&daemon, "/v1/services/embeddings/stop?wait=true");
    assert_eq!(embeddings["state"], "stopped");
    assert!(embeddings["pid"].is_null());
    next(&events, |e| {
        e["service"] == "embeddings" && e["to"] == "stopped"
    });

    // Starting chat starts what it depends on first.
    post(&daemon, "/v1/services/chat/stop?wait=true");
    let (_, chat) = post(&daemon, "/v1/services/chat/start?wait=true");
    assert_eq!(chat["state"], "ready");
    let (_, embeddings) = get(&daemon, "/v1/services/embeddings");
    assert_eq!(embeddings["state"], "ready");

    // Without wait the answer comes at once and the work goes on.
    let (status, _) = post(&daemon, "/v1/services/chat/stop?wait=false");
    assert_eq!(status, 200);
    next(&events, |e| e["service"] == "chat" && e["to"] == "stopped");
}

#[test]
fn the_token_guards_every_route_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = two_mocks(dir.path(), &[("NANNY_TOKEN", "sesame")]);
    let url = |path: &str| format!("{}{path}", daemon.url);
    let (status, body) = call("GET", &url("/v1/services"), None);
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let (status, body) = call("GET", &url("/v1/services"), Some("sesame!"));
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    assert_eq!(call("GET", &url("/v1/services"), Some("sesame")).0, 200);
    assert_eq!(call("GET", &url("/metrics"), None).0, 401);
    assert_eq!(call("GET", &url("/health"), None).0, 200);

    // The CLI reads NANNY_TOKEN.
    let ps = |token: &str| {
        std::process::Command::new(nanny_bin())
            .args(["ps", "--json", "--url", &daemon.url])
            .env("NANNY_TOKEN", token)
            .output()
            .unwrap()
    };
    assert!(ps("sesame").status.success());
    let refused = ps("wrong");
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "nanny: wrong token"
    );
}

#[test]
fn beyond_loopback_the_daemon_refuses_to_run_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(&config, TWO_MOCKS).unwrap();
    let output = std::process::Command::new(nanny_bin())
        .arg("up")
        .arg(&config)
        .env("NANNY_STATE_DIR", dir.path())
        .env("NANNY_LISTEN", "0.0.0.0:0")
        .env_remove("NANNY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:"),
        "{stderr}"
    );
    assert!(stderr.contains("NANNY_TOKEN"), "{stderr}");
}

#[test]
fn a_backend_announces_itself_with_its_launch_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    let env_file = dir.path().join("callback.env");
    // No HTTP, no ready line: only the callback can make it ready.
    std::fs::write(
        &config,
        format!(
            r#"
[services.quiet]
backend = "command"
settings = {{ health_path = "", command = ["sh", "-c", "echo \"$NANNY_READY_URL $NANNY_READY_TOKEN\" > {}.tmp && mv {0}.tmp {0} && exec sleep 1000"] }}
"#,
            env_file.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("[quiet] starting"));
    let written = loop {
        match std::fs::read_to_string(&env_file) {
            Ok(text) => break text,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let (url, token) = written.trim().split_once(' ').unwrap();
    assert_eq!(url, format!("{}/v1/services/quiet/ready", daemon.url));
    let (status, body) = call("POST", url, Some("not-the-token"));
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    let (_, quiet) = get(&daemon, "/v1/services/quiet");
    assert_eq!(quiet["state"], "starting");
    let (status, _) = call("POST", url, None);
    assert_eq!(status, 401);
    // An unknown service answers as a wrong token does: nothing to enumerate.
    let unknown = format!("{}/v1/services/nobody/ready", daemon.url);
    let (status, unknown_body) = call("POST", &unknown, Some("not-the-token"));
    assert_eq!(status, 403);
    assert_eq!(unknown_body, body);
    let (status, _) = call("POST", url, Some(token));
    assert_eq!(status, 204);
    let (_, quiet) = get(&daemon, "/v1/services/quiet");
    assert_eq!(quiet["state"], "ready");
    // A flood of callbacks is cut off: each would otherwise queue a command.
    let statuses: Vec<u16> = (0..200)
        .map(|_| call("POST", &unknown, Some("guess")).0)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// `nanny ARGS --url URL`: success, stdout, stderr.
fn cli(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(nanny_bin())
        .args(args)
        .args(["--url", url])
        .env_remove("NANNY_TOKEN")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_cli_verbs_talk_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = two_mocks(dir.path(), &[]);
    let url = daemon.url.as_str();

    let (code, table, _) = cli(url, &["ps"]);
    assert_eq!(code, Some(0));
    let mut rows = table.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "BACKEND", "STATE", "UPTIME", "PORT", "GPUS", "RESTARTS", "MODELS", "REASON"]
    );
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|row| row.split_whitespace().next())
        .collect();
    assert_eq!(names, ["chat", "embeddings"], "sorted by name");
    let chat: Vec<&str> = rows
        .find(|row| row.starts_with("chat "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!((chat[1], chat[2], chat[7]), ("mock", "ready", "tiny-chat"));

    let (_, json, _) = cli(url, &["ps", "--json"]);
    let services: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(services[1]["name"], "chat");
    assert_eq!(services[1]["state"], "ready");

    let (code, out, _) = cli(url, &["stop", "chat", "embeddings"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "chat: stopped ok\nembeddings: stopped ok\n");
    let (code, json, _) = cli(url, &["start", "chat", "--json"]);
    assert_eq!(code, Some(0));
    let started: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(started[0]["state"], "ready");

    let (code, out, _) = cli(url, &["logs", "chat", "-n", "1"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("mock-backend listening on"), "{out}");
    let (_, json, _) = cli(url, &["logs", "chat", "-n", "2", "--json"]);
    let logs: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(logs["lines"].as_array().unwrap().len(), 2);

    let (_, json, _) = cli(url, &["info", "--json"]);
    let info: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["services"], 2);

    let (code, _, stderr) = cli(url, &["restart", "no-such"]);
    assert_eq!(code, Some(1));
    assert_eq!(stderr.trim(), "nanny: no service named `no-such`");
    let (code, _, stderr) = cli(url, &["logs", "../etc"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not a service name"), "{stderr}");
}

#[test]
fn without_a_daemon_the_cli_says_where_it_looked() {
    // A port nothing listens on: bound, then released.
    let port = nanny_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, stdout, stderr) = cli(&url, &["ps"]);
    assert_eq!(code, Some(3));
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&url) && stderr.contains("`nanny up` starts one"),
        "{stderr}"
    );
}

/// A service's configuration as resolved, with what may be secret hidden.
#[test]
fn a_service_config_is_resolved_and_keeps_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = two_mocks(dir.path(), &[]);
    let (status, config) = get(&daemon, "/v1/services/chat/config");
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["backend"], "mock");
    assert_eq!(config["depends_on"][0]["service"], "embeddings");
    assert!(
        config["port"].as_u64().is_some_and(|port| port > 0),
        "{config}"
    );
    assert_eq!(config["env"]["HF_TOKEN"], "(hidden)");
    assert_eq!(config["api_key"], "(hidden)");
    assert!(!config.to_string().contains("secret"), "{config}");
    let (status, _) = get(&daemon, "/v1/services/nobody/config");
    assert_eq!(status, 404);
}
