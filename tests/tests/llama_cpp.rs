//! A real backend: llama.cpp's `llama-server`, built from the sources in the
//! llama-cpp-python sdist, serving a tiny random-weight GGUF, supervised through the
//! `llama-cpp` plugin. `tests/real-backends/llama-server.sh` builds both once and
//! caches them outside the clone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nanny::plugin::{Catalog, Limits, PluginEngine, Service, Setting, Value};
use nanny::supervise::{ServiceSpec, State, Supervisor, SupervisorOptions};
use nanny_tests::{is_running, llama_cpp, until_within};

/// Loading the tiny model takes a second; the first run also builds llama-server.
const LIMIT: Duration = Duration::from_secs(120);

fn spec(name: &str, model: &str) -> ServiceSpec {
    let engine = PluginEngine::new(Limits::default(), None).unwrap();
    let catalog = Catalog::load(&engine, &[], &Default::default());
    let port = nanny_tests::free_port();
    let text = |key: &str, value: &str| Setting {
        key: key.into(),
        value: Value::Text(value.into()),
    };
    let settings = vec![
        text("program", llama_cpp().server.to_str().unwrap()),
        text("alias", "tiny"),
    ];
    let mut service = Service::local(name, port, settings);
    service.model = Some(model.into());
    // One thread: the model is tiny and the machine has two cores.
    service.args = vec!["-t".into(), "1".into(), "-c".into(), "256".into()];
    let mut spec = ServiceSpec::new(service, catalog.get("llama-cpp").unwrap().clone());
    spec.startup_timeout = Duration::from_secs(120);
    spec
}

/// A completion over plain HTTP/1.1: the status line and the body.
fn complete(port: u16) -> (String, String) {
    let body = r#"{"prompt": "hello", "max_tokens": 4}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[tokio::test]
async fn llama_server_is_ready_lists_its_model_and_comes_back_after_a_kill() {
    let model = llama_cpp().model.to_str().unwrap();
    let supervisor =
        Supervisor::launch(vec![spec("llama", model)], SupervisorOptions::in_memory(1)).unwrap();
    let mut status = supervisor.watch("llama").unwrap();
    let ready = until_within(&mut status, "ready with models", LIMIT, |s| {
        s.state == State::Ready && !s.models.is_empty()
    })
    .await;
    let ids: Vec<&str> = ready.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["tiny"]);
    let (status_line, body) = complete(ready.port);
    assert!(status_line.contains(" 200 "), "{status_line}: {body}");
    assert!(body.contains("\"choices\""), "{body}");

    let pid = ready.pid.unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let back = until_within(&mut status, "ready again", LIMIT, |s| {
        s.restarts == 1 && s.state == State::Ready
    })
    .await;
    assert_ne!(back.pid, Some(pid));
    assert!(
        back.last_failure
            .as_deref()
            .unwrap_or_default()
            .contains("signal 9"),
        "{back:?}"
    );
    supervisor.stop("llama").await.unwrap();
    assert!(!is_running(back.pid.unwrap()));
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_bad_model_path_fails_with_the_plugins_reason() {
    let missing = llama_cpp().model.with_file_name("no-such-model.gguf");
    let supervisor = Supervisor::launch(
        vec![spec("broken", missing.to_str().unwrap())],
        SupervisorOptions::in_memory(1),
    )
    .unwrap();
    let mut status = supervisor.watch("broken").unwrap();
    let failed = until_within(&mut status, "failed", LIMIT, |s| {
        matches!(s.state, State::Failed { .. })
    })
    .await;
    let State::Failed { reason } = failed.state else {
        unreachable!()
    };
    assert!(
        reason.contains("failed to load model") && reason.contains("no-such-model.gguf"),
        "{reason}"
    );
    assert_eq!(failed.restarts, 0, "a diagnosed failure is not retried");
    supervisor.shutdown().await;
}

const THROUGH_THE_GATEWAY: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed-on-loopback", max_retries=0, timeout=180)
messages = [{"role": "user", "content": "hello"}]
out = {}
stream = client.chat.completions.create(model="left", messages=messages, max_tokens=8, stream=True)
chunks = [c for c in stream if c.choices]
out["left_chunks"] = len(chunks)
out["left_model"] = chunks[0].model
out["right_model"] = client.chat.completions.create(model="right", messages=messages, max_tokens=4).model
print(json.dumps(out))
"#;

/// The real llama-server through the gateway: a streamed chat asked for by the
/// service's own name (rewritten to llama-server's alias), then a request for
/// a second llama-server on the same (fake) GPU, which swaps them.
#[test]
fn llama_server_streams_through_the_gateway_and_swaps_on_one_gpu() {
    let llama = llama_cpp();
    let python = nanny_tests::python_with("openai==1.109.1");
    let dir = tempfile::tempdir().unwrap();
    let service = |name: &str| {
        format!(
            "[services.{name}]\nbackend = \"llama-cpp\"\nmodel = {:?}\nmodels = [\"{name}\"]\ngpus = [0]\nautostart = false\nargs = [\"-t\", \"1\", \"-c\", \"256\"]\nstartup_timeout = \"120s\"\nsettings = {{ program = {:?}, alias = \"tiny\" }}\n",
            llama.model.display().to_string(),
            llama.server.display().to_string(),
        )
    };
    let daemon = nanny_tests::daemon_with_fake_gpus(
        dir.path(),
        &format!("{}\n{}", service("left"), service("right")),
    );
    daemon.expect(|line| line.starts_with("nanny: supervising"));
    let out = nanny_tests::run_python(
        &python,
        THROUGH_THE_GATEWAY,
        &[&format!("{}/v1", daemon.url)],
    );
    assert!(out["left_chunks"].as_u64().unwrap() >= 1, "{out}");
    assert_eq!(
        out["left_model"], "tiny",
        "asked as `left`, answered by llama-server's alias"
    );
    assert_eq!(out["right_model"], "tiny");
    let evicted = daemon.expect(|line| line.starts_with("[left] stopped"));
    assert!(evicted.contains("evicted for `right`"), "{evicted}");
    let state = |name: &str| {
        nanny_tests::call("GET", &format!("{}/v1/services/{name}", daemon.url), None).1["state"]
            .clone()
    };
    assert_eq!(
        (state("left"), state("right")),
        ("stopped".into(), "ready".into())
    );
}
