//! `nanny plugins` as a user runs it: the builtins, a dropped-in plugin, an
//! override, and broken files that must not hide the rest.

use nanny_tests::{hello_wasm, nanny, plugin_dir, plugin_wasm, BUILTINS};
use serde_json::Value;

fn list_json(plugin_dirs: &[&std::path::Path]) -> (Vec<Value>, String) {
    let state = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = nanny(&["plugins", "list", "--json"], plugin_dirs, state.path());
    assert!(ok, "nanny plugins list failed: {stderr}");
    let list: Value = serde_json::from_str(&stdout).expect("JSON out");
    (list.as_array().expect("a JSON array").clone(), stderr)
}

#[test]
fn lists_the_builtins_with_their_wit_version() {
    let (plugins, stderr) = list_json(&[]);
    let names: Vec<&str> = plugins
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BUILTINS, "{stderr}");
    for plugin in &plugins {
        assert_eq!(plugin["wit_version"], "0.2.0");
        assert_eq!(plugin["source"], "builtin");
        assert!(!plugin["summary"].as_str().unwrap().is_empty());
    }
    let command = &plugins[0];
    let command_setting = &command["settings"][0];
    assert_eq!(command_setting["key"], "command");
    assert_eq!(command_setting["required"], true);
}

#[test]
fn the_table_has_a_line_per_plugin() {
    let state = tempfile::tempdir().unwrap();
    let (ok, stdout, _) = nanny(&["plugins", "list"], &[], state.path());
    assert!(ok);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{stdout}");
    assert_eq!(lines.len(), 1 + BUILTINS.len(), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("vllm ") && l.contains("builtin") && l.contains("0.2.0")),
        "{stdout}"
    );
}

#[test]
fn a_dropped_in_plugin_is_inspected_from_its_file() {
    let hello = hello_wasm();
    let dir = plugin_dir(&[&hello]);
    let state = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = nanny(
        &["plugins", "inspect", "hello", "--json"],
        &[dir.path()],
        state.path(),
    );
    assert!(ok, "{stderr}");
    let info: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(info["name"], "hello");
    assert_eq!(info["wit_version"], "0.2.0");
    assert_eq!(
        info["source"],
        dir.path()
            .join("nanny_plugin_hello.wasm")
            .display()
            .to_string()
    );
    assert_eq!(info["settings"][0]["default"], "hello");

    let (ok, text, _) = nanny(
        &["plugins", "inspect", "hello"],
        &[dir.path()],
        state.path(),
    );
    assert!(ok);
    assert!(
        text.contains("wit:      nanny:backend@0.2.0") && text.contains("greeting"),
        "{text}"
    );
}

#[test]
fn a_plugin_file_replaces_a_builtin_only_where_the_user_says_so() {
    let shadow = plugin_wasm("nanny-test-plugin-shadow-mock");
    let dir = plugin_dir(&[&shadow]);
    let (plugins, stderr) = list_json(&[dir.path()]);
    let mock = plugins.iter().find(|p| p["name"] == "mock").unwrap();
    assert_eq!(
        mock["source"], "builtin",
        "no `override = true`: the builtin stays"
    );
    assert!(
        stderr.contains("would replace the builtin plugin `mock`")
            && stderr.contains("`override = true` under `[plugins.mock]`"),
        "{stderr}"
    );

    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("nanny.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nplugin_dirs = [\"{}\"]\n\n[plugins.mock]\noverride = true\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let config_arg = config.display().to_string();
    let (ok, stdout, stderr) = nanny(
        &["plugins", "list", "--json", "--config", &config_arg],
        &[],
        state.path(),
    );
    assert!(ok, "{stderr}");
    let plugins: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let mock = plugins.iter().find(|p| p["name"] == "mock").unwrap();
    assert_eq!(mock["version"], "9.9.9");
    assert_ne!(mock["source"], "builtin");
    assert_eq!(plugins.len(), BUILTINS.len());
}

#[test]
fn broken_plugins_are_reported_and_the_rest_still_load() {
    let future = plugin_wasm("nanny-test-plugin-future-wit");
    let hello = hello_wasm();
    let dir = plugin_dir(&[&future, &hello]);
    std::fs::write(dir.path().join("garbage.wasm"), b"not wasm at all").unwrap();
    let (plugins, stderr) = list_json(&[dir.path()]);
    assert_eq!(
        plugins.len(),
        BUILTINS.len() + 1,
        "hello loads beside the broken ones"
    );
    assert!(
        stderr
            .contains("built for nanny:backend@0.3.0, but this nanny supports nanny:backend@0.2.0, nanny:backend@0.1.0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("garbage.wasm") && stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );
}

/// A broken file's name (and whatever the engine quotes of it) cannot break the
/// daemon's output into lines of its own, nor forge one.
#[test]
fn a_load_warning_is_one_line_whatever_the_file_is_called() {
    let dir = tempfile::tempdir().unwrap();
    let forged = "evil\nwarning: forged by a file name\r\u{1b}[31m.wasm";
    std::fs::write(
        dir.path().join(forged),
        b"\0asm\n\n\x0d\x00\x01\x00\nmore\n",
    )
    .unwrap();
    let (plugins, stderr) = list_json(&[dir.path()]);
    assert_eq!(plugins.len(), BUILTINS.len(), "the builtins still load");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("evil\\nwarning: forged"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "{stderr:?}"
    );
}

#[test]
fn inspecting_an_unknown_plugin_fails_with_a_hint() {
    let state = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = nanny(&["plugins", "inspect", "nope"], &[], state.path());
    assert!(!ok);
    assert!(
        stderr.contains("no plugin named `nope`") && stderr.contains("nanny plugins list"),
        "{stderr}"
    );
}
