//! Plugins of both contract versions side by side. `tests/fixtures/hello-wit-0.1.0.wasm`
//! is `examples/plugin-hello` as built with the 0.1 SDK before the contract
//! moved to 0.2.0 (see `tests/fixtures/README.md`): what a user who built a
//! plugin last release has on disk. It must keep loading and running services.

use std::path::PathBuf;

use nanny_tests::{call, hello_wasm, nanny, plugin_dir, port_range_line, workspace, Daemon};
use serde_json::Value;

fn frozen_hello() -> PathBuf {
    workspace().join("tests/fixtures/hello-wit-0.1.0.wasm")
}

#[test]
fn plugins_list_shows_each_plugins_contract_version() {
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(frozen_hello(), old.path().join("hello.wasm")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = nanny(&["plugins", "list", "--json"], &[old.path()], state.path());
    assert!(ok, "{stderr}");
    let plugins: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let version_of = |name: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["wit_version"].clone())
    };
    assert_eq!(version_of("hello"), Some("0.1.0".into()), "{stdout}");
    assert_eq!(version_of("compose"), Some("0.2.0".into()));

    // The conformance kit takes it as it is.
    let fixture = frozen_hello();
    let (ok, report, stderr) = nanny(
        &["plugins", "test", fixture.to_str().unwrap()],
        &[],
        state.path(),
    );
    assert!(ok, "{report}{stderr}");
    assert!(report.contains("conforms"), "{report}");

    // The same plugin built from today's SDK speaks 0.2.0.
    let new = plugin_dir(&[&hello_wasm()]);
    let (ok, text, _) = nanny(&["plugins", "list"], &[new.path()], state.path());
    assert!(ok);
    let line = text.lines().find(|l| l.starts_with("hello ")).unwrap();
    assert!(line.contains("0.2.0"), "{text}");
}

/// A `hello-server` for the `hello` plugin: answers every GET with the
/// greeting and prints "hello: ready" once it listens.
const HELLO_SERVER: &str = r#"#!/usr/bin/env python3
import argparse, http.server
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--greeting", default="hello")
args = parser.parse_args()
class Greeter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = args.greeting.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("127.0.0.1", args.port), Greeter)
print("hello: ready", flush=True)
server.serve_forever()
"#;

#[test]
fn a_plugin_built_with_the_0_1_sdk_still_runs_services() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let bin = dir.path().join("bin");
    for folder in [&plugins, &bin] {
        std::fs::create_dir_all(folder).unwrap();
    }
    std::fs::copy(frozen_hello(), plugins.join("hello.wasm")).unwrap();
    let server = bin.join("hello-server");
    std::fs::write(&server, HELLO_SERVER).unwrap();
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
{}
plugin_dirs = ["{}"]

[plugins.hello]
programs = ["hello-server"]

[services.hi]
backend = "hello"
[services.hi.settings]
greeting = "hi from 0.1"
"#,
            port_range_line(),
            plugins.display()
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let daemon = Daemon::up_with(&config, dir.path(), &[("PATH", &path)]);
    let ready = daemon.expect(|line| line.starts_with("[hi] ready on "));
    let port = ready.rsplit(' ').next().unwrap();
    let agent = nanny_tests::agent();
    let greeting = agent
        .get(format!("http://127.0.0.1:{port}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(greeting, "hi from 0.1");
    let (_, service) = call("GET", &format!("{}/v1/services/hi", daemon.url), None);
    assert_eq!(service["backend"], "hello");
    assert_eq!(service["state"], "ready");
}
