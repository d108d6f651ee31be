//! Capability grants: a plugin from a file launches only what the user wrote
//! under `[plugins.NAME]`. Its plan is checked before anything runs — by
//! `nanny config check` and by the daemon — and a refusal names the plugin,
//! what it asked for and the line that would allow it.

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use nanny_tests::{
    call, eventually, nanny, nanny_bin, plugin_dir, plugin_wasm, port_range_line, Daemon,
};

/// A config running `probe` on the shadow `mock` plugin (whose plan runs
/// `true`), with `grants` under `[plugins.mock]`.
fn config(dir: &Path, plugins: &Path, grants: &str) -> std::path::PathBuf {
    // One file per set of grants: each stays as it was written.
    let path = dir.join(format!("nanny-{}.toml", grants.len()));
    std::fs::write(
        &path,
        format!(
            "[daemon]\n{}\nplugin_dirs = [\"{}\"]\n\n[plugins.mock]\noverride = true\n{grants}\n\n[services.probe]\nbackend = \"mock\"\nenv = {{ MINE = \"1\" }}\n",
            port_range_line(),
            plugins.display()
        ),
    )
    .unwrap();
    path
}

fn check(config: &Path) -> (bool, String) {
    let state = config.parent().unwrap();
    let (ok, _, stderr) = nanny(
        &["config", "check", &config.display().to_string()],
        &[],
        state,
    );
    (ok, stderr)
}

#[test]
fn a_plan_beyond_its_grants_is_refused_with_the_line_to_add() {
    let shadow = plugin_wasm("nanny-test-plugin-shadow-mock");
    let plugins = plugin_dir(&[&shadow]);
    let dir = tempfile::tempdir().unwrap();

    // No grants: the plugin may launch nothing.
    let bare = config(dir.path(), plugins.path(), "");
    let (ok, stderr) = check(&bare);
    assert!(!ok);
    assert!(
        stderr.contains("`services.probe.backend`")
            && stderr.contains("the plugin `mock` asked to run `true`")
            && stderr.contains("programs = [\"true\"]"),
        "{stderr}"
    );
    // The daemon fails that service, and only it, with the same words.
    let daemon = Daemon::up(&bare, dir.path());
    let service = format!("{}/v1/services/probe", daemon.url);
    eventually("probe fails", Duration::from_secs(30), || {
        call("GET", &service, None).1["state"] == "failed"
    });
    let failed = call("GET", &service, None).1;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("programs = [\"true\"]"), "{failed}");
    let (status, _) = call("GET", &format!("{}/health", daemon.url), None);
    assert_eq!(status, 200, "the daemon goes on");
    drop(daemon);

    // Granted: the same plan passes.
    let granted = config(dir.path(), plugins.path(), "programs = [\"true\"]");
    let (ok, stderr) = check(&granted);
    assert!(ok, "{stderr}");

    // Loader variables are never granted, even by a pattern that says all.
    let greedy = config(
        dir.path(),
        plugins.path(),
        "programs = [\"true\"]\nenv = [\"LD_PRELOAD\"]",
    );
    let (ok, stderr) = check(&greedy);
    assert!(
        !ok && stderr.contains("`plugins.mock.env`") && stderr.contains("never granted"),
        "{stderr}"
    );

    // `plugins inspect` shows the grants.
    let output = Command::new(nanny_bin())
        .args(["plugins", "inspect", "mock", "--config"])
        .arg(&granted)
        .env("NANNY_STATE_DIR", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("grants (`[plugins.mock]`)") && text.contains("programs: true"),
        "{text}"
    );
}
