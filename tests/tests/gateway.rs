//! The gateway through the real `openai` Python SDK (from PyPI, in a venv the
//! tests make): one address for every model, a stopped service started by its
//! first request, the client's model name rewritten to the backend's, streaming,
//! errors in OpenAI's shape, and an idle service stopped again.

use std::process::Command;

use nanny_tests::{agent, port_range_line, python_with, Daemon};

const OPENAI: &str = "openai==1.109.1";

const SCRIPT: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed-on-loopback", max_retries=0)
out = {}
out["models"] = sorted((m.id, m.owned_by) for m in client.models.list())
messages = [{"role": "user", "content": "hello"}]
reply = client.chat.completions.create(model="my-chat", messages=messages)
out["chat_model"] = reply.model
out["chat_text"] = reply.choices[0].message.content
stream = client.chat.completions.create(model="my-chat", messages=messages, stream=True)
out["streamed"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
out["completion"] = client.completions.create(model="my-chat", prompt="hi").choices[0].text
out["embeddings"] = len(client.embeddings.create(model="mock-embed", input=["a", "b"]).data)
try:
    client.chat.completions.create(model="my-chta", messages=messages)
    out["unknown"] = "answered"
except openai.NotFoundError as error:
    out["unknown"] = [error.code, error.message]
print(json.dumps(out))
"#;

#[test]
fn the_openai_sdk_reaches_every_model_through_one_address() {
    let python = python_with(OPENAI);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[daemon]
{}

[services.chat]
backend = "mock"
autostart = false
models = ["my-chat"]
idle_timeout = "2s"
settings = {{ models = ["mock-chat"] }}

[services.embed]
backend = "mock"
settings = {{ models = ["mock-embed"] }}
"#,
            port_range_line()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("[embed] ready"));

    let out = nanny_tests::run_python(&python, SCRIPT, &[&format!("{}/v1", daemon.url)]);

    // Listed while `chat` was still stopped: its configured name, and what the
    // running `embed` reported.
    assert_eq!(
        out["models"],
        serde_json::json!([["mock-embed", "embed"], ["my-chat", "chat"]])
    );
    assert_eq!(
        out["chat_model"], "mock-chat",
        "the name was rewritten to the backend's"
    );
    let text = out["chat_text"].as_str().unwrap();
    assert!(text.contains("mock reply from mock-chat"), "{text}");
    assert_eq!(out["streamed"], text, "the stream carries the same reply");
    assert!(out["completion"].as_str().unwrap().contains("mock-chat"));
    assert_eq!(out["embeddings"], 2);
    assert_eq!(out["unknown"][0], "model_not_found");
    let message = out["unknown"][1].as_str().unwrap();
    assert!(message.contains("did you mean `my-chat`?"), "{message}");

    // What went through, in /metrics: by service, model and answer, tokens from `usage`.
    let (_, metrics) = nanny_tests::call("GET", &format!("{}/metrics", daemon.url), None);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for line in [
        r#"nanny_gateway_requests_total{service="chat",model="my-chat",code="200"} 3"#,
        r#"nanny_gateway_requests_total{service="embed",model="mock-embed",code="200"} 1"#,
        r#"nanny_gateway_first_byte_seconds_count{service="chat",model="my-chat"} 3"#,
        r#"nanny_gateway_tokens_total{service="embed",model="mock-embed",direction="in"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains(
            r#"nanny_gateway_tokens_total{service="chat",model="my-chat",direction="out"}"#
        ),
        "{metrics}"
    );

    // Started by the first request, stopped once idle for its 2 s.
    daemon.expect(|line| line.starts_with("[chat] ready"));
    let stopped = daemon.expect(|line| line.starts_with("[chat] stopped"));
    assert_eq!(stopped, "[chat] stopped: idle for 2s", "the event says why");
    let (_, logs) = nanny_tests::call(
        "GET",
        &format!("{}/v1/services/chat/logs?tail=20", daemon.url),
        None,
    );
    assert!(
        logs.to_string()
            .contains("nanny: stopping `chat`: idle for 2s"),
        "{logs}"
    );
}

/// Malformed bodies are 400s in OpenAI's shape, a body over `max_body` is 413,
/// and none of them starts anything.
#[test]
fn bad_requests_get_openai_errors_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\n{}\n\n[gateway]\nmax_body = \"1MiB\"\n\n[services.chat]\nbackend = \"mock\"\nautostart = false\nmodels = [\"my-chat\"]\n",
            port_range_line()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    let url = format!("{}/v1/chat/completions", daemon.url);
    let post = |content_type: &str, body: Vec<u8>| {
        // As OpenAI clients do: a multipart form is a request a web page could
        // send too, so without `Authorization` the CSRF guard refuses it first.
        let mut response = agent()
            .post(&url)
            .header("Content-Type", content_type)
            .header("Authorization", "Bearer not-needed-on-loopback")
            .send(&body[..])
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
        )
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/json",
            b"not json".to_vec(),
            400,
            "not a JSON object",
        ),
        (
            "application/json",
            br#"{"messages": []}"#.to_vec(),
            400,
            "names no `model`",
        ),
        (
            "application/json",
            br#"{"model": 7}"#.to_vec(),
            400,
            "must be a string",
        ),
        (
            "application/json",
            br#"{"model": "nope"}"#.to_vec(),
            404,
            "does not exist",
        ),
        (
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nmy-ch".to_vec(),
            400,
            "no `model` field",
        ),
        (
            "application/json",
            format!(
                r#"{{"model": "my-chat", "pad": "{}"}}"#,
                "x".repeat(2 << 20)
            )
            .into_bytes(),
            413,
            "over the gateway's limit",
        ),
    ];
    for (content_type, body, status, says) in cases {
        let (got, error) = post(content_type, body);
        assert_eq!(got, status, "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{message}");
        assert!(error["error"]["type"].is_string(), "{error}");
    }
    let (_, chat) = nanny_tests::call("GET", &format!("{}/v1/services/chat", daemon.url), None);
    assert_eq!(chat["state"], "stopped", "no bad request started anything");
}

/// A name two services claim is a configuration error naming both.
#[test]
fn a_model_name_two_services_claim_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        "[services.a]\nbackend = \"mock\"\nmodels = [\"qwen\"]\n\n[services.b]\nbackend = \"mock\"\nmodel = \"qwen\"\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (ok, _, stderr) = nanny_tests::nanny(&["config", "check", path], &[], dir.path());
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!("{path}:5: `services.b.models`: model `qwen` is served by `a` already; a name routes to one service")
    );
}

const SWAPS: &str = r#"
import json, sys
from concurrent.futures import ThreadPoolExecutor
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed-on-loopback", max_retries=0, timeout=120)

def ask(model):
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return reply.model

with ThreadPoolExecutor(4) as pool:
    futures = []
    for model in ["model-a", "model-b", "model-a", "model-b"]:
        futures.append(pool.submit(ask, model))
    print(json.dumps([future.result() for future in futures]))
"#;

/// Two services on one (fake) GPU: requests A, B, A, B are all answered, with
/// two starts, not four — all A's, then all B's.
#[test]
fn requests_for_two_services_on_one_gpu_are_collated_into_two_swaps() {
    let python = python_with(OPENAI);
    let dir = tempfile::tempdir().unwrap();
    let service = |name: &str| {
        format!(
            "[services.{name}]\nbackend = \"mock\"\ngpus = [0]\nautostart = false\nmodels = [\"model-{name}\"]\nsettings = {{ models = [\"mock-{name}\"], startup_delay_ms = 500 }}\n"
        )
    };
    let daemon = nanny_tests::daemon_with_fake_gpus(
        dir.path(),
        &format!("{}\n{}", service("a"), service("b")),
    );
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    let answered = nanny_tests::run_python(&python, SWAPS, &[&format!("{}/v1", daemon.url)]);
    assert_eq!(
        answered,
        serde_json::json!(["mock-a", "mock-b", "mock-a", "mock-b"]),
        "every request answered by its own model"
    );
    let launches = |service: &str| {
        let (_, logs) = nanny_tests::call(
            "GET",
            &format!("{}/v1/services/{service}/logs?tail=1000", daemon.url),
            None,
        );
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|line| {
                line["text"]
                    .as_str()
                    .is_some_and(|text| text.starts_with("mock-backend listening"))
            })
            .count()
    };
    assert_eq!(
        (launches("a"), launches("b")),
        (1, 1),
        "two swaps, not four"
    );
    // The eviction's events say why.
    let evicted =
        daemon.expect(|line| line.starts_with("[a] stopped") || line.starts_with("[b] stopped"));
    assert!(
        evicted.ends_with("which a request needs on its GPUs")
            && (evicted.contains("evicted for `a`") || evicted.contains("evicted for `b`")),
        "{evicted}"
    );
    // Whichever came first was evicted for the other.
    let (_, a) = nanny_tests::call("GET", &format!("{}/v1/services/a", daemon.url), None);
    let (_, b) = nanny_tests::call("GET", &format!("{}/v1/services/b", daemon.url), None);
    let mut states = [a["state"].as_str().unwrap(), b["state"].as_str().unwrap()];
    states.sort();
    assert_eq!(states, ["ready", "stopped"], "{a} {b}");
}

const LIMITS: &str = r#"
import json, sys, threading
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed-on-loopback", max_retries=0)
messages = [{"role": "user", "content": "hi"}]
out = {}

def holding(model):
    """A slow stream that has begun: its request holds a slot until closed."""
    stream = client.chat.completions.create(model=model, messages=messages, stream=True)
    next(iter(stream))
    return stream

def refused(model):
    try:
        client.chat.completions.create(model=model, messages=messages)
        return "answered"
    except openai.APIStatusError as error:
        return [error.status_code, error.response.headers.get("retry-after"), error.code]

# queue = false: the second request is refused at once.
stream = holding("strict")
out["strict"] = refused("strict")
stream.close()

# queue = true, but [gateway] max_queue = 0: nobody may wait.
stream = holding("lined")
out["lined"] = refused("lined")
stream.close()

# queue = true on a gateway with room: the second waits for the first's slot.
client = openai.OpenAI(base_url=sys.argv[2], api_key="not-needed-on-loopback", max_retries=0)
stream = holding("patient")
answered = {}
waiter = threading.Thread(target=lambda: answered.update(model=client.chat.completions.create(model="patient", messages=messages).model))
waiter.start()
stream.close()
waiter.join()
out["patient"] = answered["model"]
print(json.dumps(out))
"#;

/// `max_concurrent` with `queue = false` answers 429, a full `max_queue` 503,
/// both with `Retry-After`; with room in the queue a request waits its turn.
#[test]
fn concurrency_limits_refuse_or_queue_before_any_byte_is_sent() {
    let python = python_with(OPENAI);
    let service = |name: &str, extra: &str| {
        format!(
            "[services.{name}]\nbackend = \"mock\"\nmodels = [\"{name}\"]\nargs = [\"--tokens-per-second\", \"2\"]\nmax_concurrent = 1\n{extra}settings = {{ models = [\"mock-{name}\"] }}\n"
        )
    };
    let run = |gateway: &str, services: String| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nanny.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\n{}\n\n[gateway]\n{gateway}\n{services}",
                port_range_line()
            ),
        )
        .unwrap();
        (dir, config)
    };
    // Two daemons: one whose queue has no room, one whose queue does.
    let (dir, config) = run(
        "max_queue = 0",
        format!(
            "{}{}",
            service("strict", "queue = false\n"),
            service("lined", "")
        ),
    );
    // Requests wait for their services to be ready: no need to watch for it.
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    let (roomy_dir, roomy_config) = run("", service("patient", ""));
    let roomy = Daemon::up(&roomy_config, roomy_dir.path());
    roomy.expect(|line| line.starts_with("nanny: supervising"));

    // The patient part runs against the roomy daemon (the second address).
    let out = nanny_tests::run_python(
        &python,
        LIMITS,
        &[&format!("{}/v1", daemon.url), &format!("{}/v1", roomy.url)],
    );
    assert_eq!(
        out["strict"],
        serde_json::json!([429, "1", "too_many_requests"])
    );
    assert_eq!(out["lined"], serde_json::json!([503, "1", "queue_full"]));
    assert_eq!(out["patient"], "mock-patient");
}

const LOADING: &str = r#"
import json, sys
import httpx, openai

base = sys.argv[1]
body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
lines = []
with httpx.stream("POST", base + "/chat/completions", json=body, headers={"Authorization": "Bearer x"}, timeout=60) as response:
    status = response.status_code
    for line in response.iter_lines():
        if line:
            lines.append(line)
failed = []
with httpx.stream("POST", base + "/chat/completions", json=dict(body, model="broken"), headers={"Authorization": "Bearer x"}, timeout=60) as response:
    for line in response.iter_lines():
        if line:
            failed.append(line)
print(json.dumps({"status": status, "lines": lines, "failed": failed}))
"#;

/// A streaming request for a model that is loading hears `: nanny: loading …`
/// comments until the backend answers; a start that fails ends the stream with
/// one OpenAI-shaped error event.
#[test]
fn a_stream_waiting_for_its_model_hears_it_load_and_a_failed_start_is_an_error_event() {
    let python = python_with(OPENAI);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[daemon]
{}

[services.slow]
backend = "mock"
autostart = false
models = ["slow"]
settings = {{ models = ["mock-slow"], startup_delay_ms = 2500 }}

[services.broken]
backend = "command"
autostart = false
models = ["broken"]
restart = "never"
settings = {{ command = ["sh", "-c", "echo cannot load the weights; exit 1"], health_path = "/health" }}
"#,
            port_range_line()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    let out = nanny_tests::run_python(&python, LOADING, &[&format!("{}/v1", daemon.url)]);
    assert_eq!(out["status"], 200);
    let lines: Vec<&str> = out["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap())
        .collect();
    let first_data = lines
        .iter()
        .position(|line| line.starts_with("data:"))
        .unwrap();
    assert!(first_data > 0, "{lines:?}");
    assert!(
        lines[..first_data]
            .iter()
            .all(|line| line.starts_with(": nanny: loading slow")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains(r#""model":"mock-slow""#)),
        "then the backend's own events: {lines:?}"
    );
    assert_eq!(lines.last(), Some(&"data: [DONE]"));
    let failed = out["failed"].as_array().unwrap();
    let error = failed
        .iter()
        .filter_map(|line| line.as_str()?.strip_prefix("data: "))
        .find_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "service_unavailable");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("`broken` could not start"), "{message}");
}

/// `nanny infer`: starts the model's service (saying so), streams the answer,
/// ends with its figures; `--json` gives the whole answer; `-` reads stdin.
#[test]
fn nanny_infer_starts_the_model_and_streams_the_answer() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\n{}\n\n[services.chat]\nbackend = \"mock\"\nautostart = false\nmodels = [\"my-chat\"]\nsettings = {{ models = [\"mock-chat\"], startup_delay_ms = 1500 }}\n",
            port_range_line()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    let infer = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(nanny_tests::nanny_bin())
            .arg("infer")
            .args(args)
            .env("NANNY_URL", &daemon.url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        drop(input);
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = infer(&["my-chat", "hello"], None);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "This is a mock reply from mock-chat, served by nanny mock-backend."
    );
    assert!(stderr.contains("starting chat…"), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|line| line.contains(" tokens in ") && line.contains("first after")),
        "{stderr}"
    );
    let (ok, stdout, stderr) = infer(&["my-chat", "-", "--json"], Some("from stdin"));
    assert!(ok, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["model"], "mock-chat");
    let (ok, _, stderr) = infer(&["no-such-model", "hello"], None);
    assert!(!ok);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// A tiny OpenAI-shaped backend that answers with the `Authorization` it saw,
/// and whether that is the key it was started with (`{api_key}` on its command line).
const ECHO_BACKEND: &str = r#"
import http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def answer(self, reply):
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.answer({"status": "ok"})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        seen = self.headers.get("Authorization", "none")
        if seen == "Bearer " + sys.argv[2]:
            seen += " (its own)"
        self.answer({"id": "echo", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": seen}}]})
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"#;

const KEYS: &str = r#"
import json, sys
import openai

base = sys.argv[1]
messages = [{"role": "user", "content": "hi"}]
out = {}
team = openai.OpenAI(base_url=base, api_key="sk-team", max_retries=0)
out["seen"] = team.chat.completions.create(model="echo", messages=messages).choices[0].message.content
hashed = openai.OpenAI(base_url=base, api_key="sk-hashed", max_retries=0)
out["hashed"] = hashed.chat.completions.create(model="echo", messages=messages).model
try:
    openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).chat.completions.create(model="echo", messages=messages)
    out["wrong"] = "answered"
except openai.PermissionDeniedError as error:
    out["wrong"] = error.status_code
print(json.dumps(out))
"#;

/// `[gateway] api_keys` open the gateway's routes (plain or as a SHA-256
/// digest); a service's `api_key` goes to its backend, never the client's key.
#[test]
fn api_keys_open_the_gateway_and_a_backend_gets_its_own_key() {
    use sha2::{Digest, Sha256};
    let python = python_with(OPENAI);
    let dir = tempfile::tempdir().unwrap();
    let hashed: String = Sha256::digest(b"sk-hashed")
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    std::fs::write(
        dir.path().join("keys"),
        format!("# the team's keys\nsha256:{hashed}\n"),
    )
    .unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[daemon]
{}

[gateway]
api_keys = ["sk-team"]
api_keys_file = "keys"

[services.echo]
backend = "command"
models = ["echo"]
api_key = "sk-backend"
settings = {{ command = ["python3", "-c", {:?}, "{{port}}", "{{api_key}}"], health_path = "/health" }}
"#,
            port_range_line(),
            ECHO_BACKEND
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("[echo] ready"));
    let out = nanny_tests::run_python(&python, KEYS, &[&format!("{}/v1", daemon.url)]);
    assert_eq!(
        out["seen"], "Bearer sk-backend (its own)",
        "the backend saw its own key only, the one `{{api_key}}` gave it"
    );
    assert_eq!(out["hashed"], "echo");
    assert_eq!(out["wrong"], 403);
    // Without a key: 401 on the gateway; control routes stay as they were (open on loopback).
    let mut response = agent()
        .post(&format!("{}/v1/chat/completions", daemon.url))
        .header("Content-Type", "application/json")
        .send(r#"{"model": "echo"}"#)
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let _ = response.body_mut().read_to_string();
    let (status, _) = nanny_tests::call("GET", &format!("{}/v1/services", daemon.url), None);
    assert_eq!(status, 200);
}

const DISCONNECT: &str = r#"
import sys
import httpx

body = {"model": sys.argv[2], "messages": [{"role": "user", "content": "hi"}], "stream": True}
with httpx.stream("POST", sys.argv[1] + "/chat/completions", json=body, headers={"Authorization": "Bearer x"}, timeout=60) as response:
    for line in response.iter_lines():
        if line.startswith("data:"):
            break
# Leaving the block closes the connection mid-stream.
print("left")
"#;

/// A client that goes away mid-stream cancels the upstream request (the mock
/// backend counts the stream it could not finish), and counts as a 499; with
/// `on_disconnect = "drain"` the backend finishes it instead.
#[test]
fn a_client_that_goes_away_cancels_the_upstream_request() {
    let python = python_with(OPENAI);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\n{}\n\n[services.slow]\nbackend = \"mock\"\nmodels = [\"slow\"]\nargs = [\"--tokens-per-second\", \"1\"]\nsettings = {{ models = [\"mock-slow\"] }}\n\n[services.batch]\nbackend = \"mock\"\nmodels = [\"batch\"]\non_disconnect = \"drain\"\nargs = [\"--tokens-per-second\", \"20\"]\nsettings = {{ models = [\"mock-batch\"] }}\n",
            port_range_line()
        ),
    )
    .unwrap();
    let daemon = Daemon::up(&config, dir.path());
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    let leave = |model: &str| {
        nanny_tests::run_python(&python, DISCONNECT, &[&format!("{}/v1", daemon.url), model]);
    };
    leave("slow");
    // The backend learns of it when its next token cannot be sent (1 a second);
    // its /stats, through the proxy route, answers once it has.
    let stats = |service: &str, wait: &str| {
        let url = format!("{}/v1/services/{service}/proxy/stats?{wait}", daemon.url);
        let (status, seen) = nanny_tests::call("GET", &url, None);
        assert_eq!(status, 200, "{seen}");
        seen
    };
    let seen = stats("slow", "cancelled=1");
    assert_eq!(seen["cancelled"], 1, "the upstream stream ran on: {seen}");
    let (_, metrics) = nanny_tests::call("GET", &format!("{}/metrics", daemon.url), None);
    assert!(
        metrics.as_str().unwrap_or_default().lines().any(|line| line
            == r#"nanny_gateway_requests_total{service="slow",model="slow",code="499"} 1"#),
        "{metrics}"
    );
    // `on_disconnect = "drain"`: the backend finishes what it began, and the
    // request counts in flight until it has.
    leave("batch");
    let seen = stats("batch", "completed=1");
    assert_eq!(seen["completed"], 1, "drained to its end, not cut: {seen}");
    assert_eq!(seen["cancelled"], 0, "drained, not cut: {seen}");
}

/// The models a backend reported are remembered in the state directory: after
/// a daemon restart, its service is routable by them while still stopped.
#[test]
fn reported_models_stay_routable_across_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nanny.toml");
    let write = |autostart: bool| {
        std::fs::write(
            &config,
            format!(
                "[daemon]\n{}\n\n[services.embed]\nbackend = \"mock\"\nautostart = {autostart}\nsettings = {{ models = [\"mock-embed\"] }}\n",
                port_range_line()
            ),
        )
        .unwrap();
    };
    write(true);
    let first = Daemon::up(&config, dir.path());
    first.expect(|line| line.starts_with("[embed] ready"));
    first.signal(libc::SIGINT);
    first.expect(|line| line == "nanny: all services stopped");
    drop(first);

    write(false);
    let second = Daemon::up(&config, dir.path());
    second.expect(|line| line.starts_with("nanny: supervising"));
    let (_, models) = nanny_tests::call("GET", &format!("{}/v1/models", second.url), None);
    assert_eq!(models["data"][0]["id"], "mock-embed", "{models}");
    assert_eq!(models["data"][0]["status"], "stopped");
    let mut response = agent()
        .post(&format!("{}/v1/embeddings", second.url))
        .header("Content-Type", "application/json")
        .send(r#"{"model": "mock-embed", "input": ["a"]}"#)
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["model"], "mock-embed");
    second.expect(|line| line.starts_with("[embed] ready"));
}
