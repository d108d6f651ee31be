//! Service manifests under `services_dir`, read through the real binary: TOML and
//! YAML, the fields people already write, and errors that name file, line and key.

use std::path::Path;

use nanny_tests::nanny;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `nanny config check|show` on `dir/nanny.toml`: success, stdout, stderr.
fn config(dir: &Path, verb: &[&str]) -> (bool, String, String) {
    let config = dir.join("nanny.toml");
    let mut args = vec!["config"];
    args.extend_from_slice(verb);
    args.push(config.to_str().unwrap());
    nanny(&args, &[], dir)
}

/// `nanny config show --json` on `dir/nanny.toml`, which must succeed.
fn shown(dir: &Path) -> serde_json::Value {
    let (ok, stdout, stderr) = config(dir, &["show", "--json"]);
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn service_named(shown: &serde_json::Value, name: &str) -> serde_json::Value {
    shown["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
        .clone()
}

fn names(shown: &serde_json::Value) -> Vec<&str> {
    shown["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

const MAIN: &str = "[daemon]\nservices_dir = \"services\"\n\n[services.base]\nbackend = \"mock\"\n";

#[test]
fn every_manifest_under_services_dir_becomes_a_service() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("nanny.toml"), MAIN);
    write(
        &dir.path().join("services/chat/service.yaml"),
        "name: chat\nbackend: mock\nport: 18431\nhealth_endpoint: /health\ngpu_required: true\nvram_gb: 24\ndepends_on: [base]\nsettings:\n  models: [tiny-chat]\n",
    );
    write(
        &dir.path().join("services/embed/service.toml"),
        "backend = \"mock\"\nwork_dir = \"data\"\ngpus = [0, \"GPU-8f2a\"]\nvram = \"1.5GiB\"\n",
    );
    // A folder without a manifest is not a service.
    std::fs::create_dir_all(dir.path().join("services/notes")).unwrap();

    let shown = shown(dir.path());
    let names = names(&shown);
    assert_eq!(names, ["base", "chat", "embed"]);
    let service = |name: &str| service_named(&shown, name);
    let chat = service("chat");
    assert_eq!(chat["port"], 18431);
    assert_eq!(chat["probes"]["path"], "/health");
    assert_eq!(chat["gpu"]["devices"]["count"], 1);
    assert_eq!(chat["gpu"]["vram_mib"], 24 * 1024);
    assert_eq!(chat["depends_on"][0]["service"], "base");
    assert_eq!(chat["settings"]["models"][0], "tiny-chat");
    assert_eq!(
        chat["work_dir"],
        dir.path().join("services/chat").display().to_string(),
        "a manifest's service runs in its own folder"
    );
    let embed = service("embed");
    assert_eq!(
        embed["work_dir"],
        dir.path().join("services/embed/data").display().to_string()
    );
    assert_eq!(
        embed["gpu"]["devices"]["named"],
        serde_json::json!(["0", "GPU-8f2a"])
    );
    assert_eq!(embed["gpu"]["vram_mib"], 1536);
}

#[test]
fn manifest_errors_name_the_manifest_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("nanny.toml"), MAIN);
    let yaml = dir.path().join("services/chat/service.yaml");

    write(&yaml, "name: chat\nbackend: mock\nprot: 8000\n");
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:3: `prot`: unknown key; did you mean `port`?",
            yaml.display()
        )
    );

    write(
        &yaml,
        "name: chat\nbackend: mock\nprot: 8000\nscheduling:\n  auto_strat: true\n",
    );
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim().lines().collect::<Vec<_>>(),
        [
            format!(
                "{}:3: `prot`: unknown key; did you mean `port`?",
                yaml.display()
            ),
            format!(
                "{}:5: `auto_strat`: unknown key; did you mean `auto_start`?",
                yaml.display()
            ),
        ],
        "every unknown key of a manifest"
    );

    write(&yaml, "name: chat\nbackend: mock\nsettings:\n  model: x\n");
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:4: `settings.model`: the mock backend has no setting `model`; did you mean `models`?",
            yaml.display()
        )),
        "{stderr}"
    );

    write(&yaml, "name: chat\nbackend: mock\nport: [unclosed\n");
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!("{}:4:", yaml.display())),
        "{stderr}"
    );

    write(&yaml, "name: base\nbackend: mock\n");
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:1: `name`: a service named `base` is already declared",
            yaml.display()
        )
    );

    std::fs::remove_file(&yaml).unwrap();
    let toml = dir.path().join("services/Chat Room/service.toml");
    write(&toml, "backend = \"mock\"\nhealth_endpoint = \"health\"\n");
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains("`Chat Room`: service names are lowercase"),
        "{stderr}"
    );

    write(
        &toml,
        "name = \"chat\"\nbackend = \"mock\"\nhealth_endpoint = \"health\"\n",
    );
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:3: `health_endpoint`: `health` must be an HTTP path starting with `/`",
            toml.display()
        )
    );
}

#[test]
fn a_missing_services_dir_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("nanny.toml"), MAIN);
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    let config = dir.path().join("nanny.toml");
    assert!(
        stderr.starts_with(&format!(
            "{}:2: `daemon.services_dir`: cannot read",
            config.display()
        )),
        "{stderr}"
    );
}

#[test]
fn template_and_hidden_folders_hold_no_service() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("nanny.toml"), MAIN);
    write(
        &dir.path().join("services/chat/service.toml"),
        "backend = \"mock\"\n",
    );
    // A template people copy from, with keys a real service would reject.
    write(
        &dir.path().join("services/_template/service.toml"),
        "backend = \"no-such-backend\"\nport = \"not a port\"\n",
    );
    write(
        &dir.path().join("services/.hidden/service.yaml"),
        "backend: mock\n",
    );
    let shown = shown(dir.path());
    let names = names(&shown);
    assert_eq!(names, ["base", "chat"]);
}

#[test]
fn keys_people_already_write_in_manifests_are_read() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("nanny.toml"), MAIN);
    write(
        &dir.path().join("services/chat/service.yaml"),
        "backend: mock\ndescription: The chat model\nscheduling:\n  auto_start: false\n  auto_stop_after: 10m\ndependencies:\n  - service: base\n    required: true\nresources:\n  cpu_limit: \"500m\"\n  memory_limit: 2GiB\n",
    );
    write(
        &dir.path().join("services/tools/service.yaml"),
        "backend: mock\ndependencies:\n  - service: base\n    required: false\n",
    );
    let shown = shown(dir.path());
    let service = |name: &str| service_named(&shown, name);
    let chat = service("chat");
    assert_eq!(chat["description"], "The chat model");
    assert_eq!(chat["autostart"], false);
    assert_eq!(chat["idle_stop_s"], 600.0);
    assert_eq!(chat["cpu_limit"], 0.5);
    assert_eq!(chat["memory_limit_bytes"], 2u64 << 30);
    assert_eq!(chat["depends_on"][0]["service"], "base");
    assert_eq!(chat["depends_on"][0]["condition"], "ready");
    assert_eq!(service("tools")["depends_on"][0]["condition"], "started");

    write(
        &dir.path().join("services/tools/service.yaml"),
        "backend: mock\ndependencies:\n  - service: base\n    needed: yes\n",
    );
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown key `needed` in the dependency on `base`"),
        "{stderr}"
    );
}

/// A manifest beside a compose file that names no backend is a compose
/// service run in its folder; without a compose file the missing key is an
/// error naming the manifest and the key; in `nanny.toml` it always is.
#[test]
fn a_manifest_beside_a_compose_file_needs_no_backend() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("nanny.toml"), MAIN);
    let stack = dir.path().join("services/stack");
    write(&stack.join("service.yaml"), "settings:\n  service: web\n");
    write(
        &stack.join("compose.yaml"),
        "services:\n  web:\n    image: x\n",
    );
    let shown = shown(dir.path());
    let service = service_named(&shown, "stack");
    assert_eq!(service["backend"], "compose", "{service}");
    assert_eq!(service["work_dir"], stack.display().to_string());

    let bare = dir.path().join("services/bare/service.yaml");
    write(&bare, "port: 9000\n");
    let (ok, _, stderr) = config(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{}", bare.display()))
            && stderr.contains("`backend`")
            && stderr.contains("missing key `backend`"),
        "{stderr}"
    );
}
