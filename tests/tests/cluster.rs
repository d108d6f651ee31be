//! Several machines, one endpoint: three real nanny nodes on three loopback
//! addresses, registered in a real etcd, each serving every model of the
//! cluster through its gateway (the real `openai` SDK asks). Nodes die with
//! `kill -9` and come back; etcd dies, comes back empty, and every node
//! registers again.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nanny_tests::{
    call, eventually, free_port, nanny_bin, port_range_line, python_with, Daemon, Etcd,
};
use serde_json::Value;

const OPENAI: &str = "openai==1.109.1";

/// Short, so that a node killed shows as gone soon; etcd keeps nothing shorter.
const LEASE_TTL: &str = "2s";
/// Longer than any wait the cluster needs: a lease to expire, a node to register.
const SETTLE: Duration = Duration::from_secs(20);

/// Asks `model` through `url` with the openai SDK, `times` times; the replies'
/// texts (or the error, as `error: CODE`).
const ASK: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=30)
out = []
for _ in range(int(sys.argv[3])):
    try:
        reply = client.chat.completions.create(model=sys.argv[2], messages=[{"role": "user", "content": "hi"}])
        out.append(reply.choices[0].message.content)
    except openai.APIStatusError as error:
        out.append(f"error: {error.status_code} {error.code}")
print(json.dumps(out))
"#;

fn ask(url: &str, model: &str, times: usize) -> Vec<String> {
    let python = python_with(OPENAI);
    let out = nanny_tests::run_python(
        &python,
        ASK,
        &[&format!("{url}/v1"), model, &times.to_string()],
    );
    serde_json::from_value(out).expect("a list of replies")
}

/// A node on its own loopback address, in the cluster at `etcd`.
fn node(dir: &Path, name: &str, address: &str, etcd: &str, services: &str) -> Daemon {
    node_with(dir, name, address, etcd, services, &[], LEASE_TTL)
}

/// As [`node`], with more environment (`NANNY_NODE` renames it).
fn node_with(
    dir: &Path,
    name: &str,
    address: &str,
    etcd: &str,
    services: &str,
    env: &[(&str, &str)],
    lease_ttl: &str,
) -> Daemon {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    let config = state.join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\n{}\n\n[cluster]\nnode = \"{name}\"\nlease_ttl = \"{lease_ttl}\"\n\n{services}",
            port_range_line()
        ),
    )
    .unwrap();
    let listen = format!("{address}:0");
    let mut all = vec![("NANNY_LISTEN", listen.as_str()), ("NANNY_ETCD", etcd)];
    all.extend_from_slice(env);
    Daemon::up_with(&config, &state, &all)
}

/// A mock service answering as `reply_as`, routed as `model`.
fn mock(service: &str, model: &str, reply_as: &str, autostart: bool) -> String {
    format!(
        "[services.{service}]\nbackend = \"mock\"\nautostart = {autostart}\nmodels = [\"{model}\"]\nsettings = {{ models = [\"{reply_as}\"] }}\n\n"
    )
}

fn get(url: &str) -> Value {
    let (status, body) = call("GET", url, None);
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// The nodes `daemon` sees (itself included), by name, with their services' states.
fn seen(daemon: &Daemon) -> Vec<(String, Vec<(String, String)>)> {
    let nodes = get(&format!("{}/v1/nodes", daemon.url));
    let mut seen: Vec<(String, Vec<(String, String)>)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let services = node["services"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap().to_string(),
                        s["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (node["node"].as_str().unwrap().to_string(), services)
        })
        .collect();
    seen.sort();
    seen
}

fn node_names(daemon: &Daemon) -> Vec<String> {
    seen(daemon).into_iter().map(|(name, _)| name).collect()
}

fn link_state(daemon: &Daemon) -> String {
    let info = get(&format!("{}/v1/info", daemon.url));
    info["cluster"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn nanny_cli(daemon: &Daemon, args: &[&str]) -> String {
    let output = Command::new(nanny_bin())
        .args(args)
        .env("NANNY_URL", &daemon.url)
        .output()
        .expect("run nanny");
    assert!(
        output.status.success(),
        "nanny {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn every_node_serves_every_model_and_the_cluster_heals() {
    let dir = tempfile::tempdir().unwrap();
    let etcd_port = free_port();
    let mut etcd = Etcd::start(&dir.path().join("etcd-1"), etcd_port);
    let a_services =
        mock("alpha", "alpha", "mock-alpha", true) + &mock("shared", "shared", "mock-a", true);
    let b_services =
        mock("beta", "beta", "mock-beta", false) + &mock("shared", "shared", "mock-b", true);
    let a = node(dir.path(), "a", "127.0.0.2", &etcd.url, &a_services);
    let mut b = node(dir.path(), "b", "127.0.0.3", &etcd.url, &b_services);
    let c = node(dir.path(), "c", "127.0.0.4", &etcd.url, "");
    assert!(a.url.starts_with("http://127.0.0.2:"), "{}", a.url);

    // Every node sees the three, and the services' states as their nodes say.
    eventually(
        "c sees a and b with their shared services ready",
        SETTLE,
        || {
            let seen = seen(&c);
            seen.len() == 3
                && seen
                    .iter()
                    .filter(|(node, _)| node != "c")
                    .all(|(_, services)| {
                        services
                            .iter()
                            .any(|(name, state)| name == "shared" && state == "ready")
                    })
        },
    );
    assert_eq!(
        seen(&c)[1],
        (
            "b".to_string(),
            vec![
                ("beta".into(), "stopped".into()),
                ("shared".into(), "ready".into())
            ]
        )
    );

    // A second daemon that claims a's name is refused, says why, and a stays.
    let impostor = node_with(
        dir.path(),
        "impostor",
        "127.0.0.5",
        &etcd.url,
        "",
        &[("NANNY_NODE", "a")],
        LEASE_TTL,
    );
    eventually("the impostor says the name is taken", SETTLE, || {
        let info = get(&format!("{}/v1/info", impostor.url));
        info["cluster"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("is taken by another nanny at http://127.0.0.2:")
    });
    drop(impostor);
    assert!(seen(&c)
        .iter()
        .any(|(name, services)| name == "a" && services.len() == 2));

    // A node that stops cleanly leaves at once: its lease (a minute long
    // here) is revoked, not left to run out.
    let mut d = node_with(dir.path(), "d", "127.0.0.6", &etcd.url, "", &[], "60s");
    eventually("a sees d", SETTLE, || {
        node_names(&a).contains(&"d".to_string())
    });
    d.signal(libc::SIGINT);
    assert_eq!(d.wait(), Some(0));
    eventually(
        "a drops d long before its lease would run out",
        SETTLE,
        || !node_names(&a).contains(&"d".to_string()),
    );

    // A model served only on b, stopped there, through a's gateway: b starts it.
    let replies = ask(&a.url, "beta", 1);
    assert!(
        replies[0].contains("mock reply from mock-beta"),
        "{replies:?}"
    );
    let models = get(&format!("{}/v1/models", a.url));
    let beta = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|model| model["id"] == "beta")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(beta["node"], "b", "{models}");
    assert_eq!(beta["owned_by"], "beta");

    // Two replicas on two nodes: a hundred requests through c are split.
    let replies = ask(&c.url, "shared", 100);
    let from_a = replies
        .iter()
        .filter(|r| r.contains("from mock-a,"))
        .count();
    let from_b = replies
        .iter()
        .filter(|r| r.contains("from mock-b,"))
        .count();
    assert_eq!(from_a + from_b, 100, "{replies:?}");
    assert!(from_a >= 20 && from_b >= 20, "a: {from_a}, b: {from_b}");

    // The CLI: nodes, every service with its node, and a start on another node.
    let nodes = nanny_cli(&c, &["nodes"]);
    for name in ["a ", "b ", "c "] {
        assert!(nodes.lines().any(|line| line.starts_with(name)), "{nodes}");
    }
    let ps = nanny_cli(&c, &["ps", "--all"]);
    assert!(ps.starts_with("NODE"), "{ps}");
    assert!(
        ps.lines()
            .any(|line| line.starts_with("b ") && line.contains("beta")),
        "{ps}"
    );
    let stopped = nanny_cli(&c, &["stop", "beta", "--node", "b"]);
    assert!(stopped.contains("beta: stopped ok"), "{stopped}");
    let (_, beta_on_b) = call("GET", &format!("{}/v1/services/beta", b.url), None);
    assert_eq!(beta_on_b["state"], "stopped");
    let (status, body) = call(
        "POST",
        &format!("{}/v1/nodes/nowhere/services/beta/start", c.url),
        None,
    );
    assert_eq!(status, 404, "{body}");

    // b dies without a word: a request for its model gets an answer (no
    // hang) at once, and b leaves the view when its lease runs out.
    b.signal(libc::SIGKILL);
    b.wait();
    let replies = ask(&a.url, "beta", 1);
    assert!(replies[0].starts_with("error: "), "{replies:?}");
    eventually("a drops b", SETTLE, || node_names(&a) == ["a", "c"]);
    let replies = ask(&a.url, "beta", 1);
    assert_eq!(replies, ["error: 404 model_not_found"]);
    // The shared model is still served, by a alone.
    let replies = ask(&c.url, "shared", 4);
    assert!(
        replies.iter().all(|r| r.contains("from mock-a,")),
        "{replies:?}"
    );

    // b comes back.
    let b = node(dir.path(), "b", "127.0.0.3", &etcd.url, &b_services);
    eventually("a sees b again", SETTLE, || {
        node_names(&a) == ["a", "b", "c"]
    });

    // etcd dies: every node says so and goes on serving its own models.
    etcd.kill();
    eventually("a reports the lost link", SETTLE, || {
        link_state(&a) == "disconnected"
    });
    let replies = ask(&a.url, "alpha", 1);
    assert!(replies[0].contains("mock-alpha"), "{replies:?}");
    let info = nanny_cli(&a, &["info"]);
    assert!(
        info.contains("cluster: node `a` disconnected since"),
        "{info}"
    );
    let metrics = call("GET", &format!("{}/metrics", a.url), None).1;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("nanny_cluster_connected 0"),
        "{metrics}"
    );

    // A new, empty etcd at the same address: everyone registers again.
    let _etcd = Etcd::start(&dir.path().join("etcd-2"), etcd_port);
    for daemon in [&a, &b, &c] {
        eventually("every node sees all three again", SETTLE, || {
            node_names(daemon) == ["a", "b", "c"] && link_state(daemon) == "connected"
        });
    }
    let replies = ask(&a.url, "shared", 1);
    assert!(replies[0].contains("mock reply"), "{replies:?}");
}
