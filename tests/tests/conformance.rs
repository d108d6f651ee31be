//! The conformance kit, `nanny plugins test`, as a plugin author runs it: every
//! builtin conforms, the example plugin conforms, and the hostile test plugins
//! do not (each failure named).

use nanny_tests::{hello_wasm, nanny, plugin_wasm, BUILTINS};
use serde_json::Value;

fn test(plugin: &str) -> (bool, Value, String) {
    let state = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = nanny(&["plugins", "test", plugin, "--json"], &[], state.path());
    (
        ok,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .filter(|check| check["passed"] == false)
                .map(|check| format!("{}: {}", check["name"], check["detail"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_builtin_and_the_example_plugin_conform() {
    let hello = hello_wasm();
    for plugin in BUILTINS
        .iter()
        .map(|name| name.to_string())
        .chain([hello.display().to_string()])
    {
        let (ok, report, stderr) = test(&plugin);
        assert!(ok, "{plugin}: {:?} {stderr}", failed(&report));
        let checks = report["checks"].as_array().map_or(0, Vec::len);
        assert!(checks > 30, "{plugin}: only {checks} checks");
        assert!(
            report["peak_memory_bytes"].as_u64().unwrap_or(0) > 0,
            "{report}"
        );
    }
}

#[test]
fn the_hostile_plugins_do_not() {
    let hostile = plugin_wasm("nanny-test-plugin-hostile");
    let (ok, report, _) = test(&hostile.display().to_string());
    assert!(!ok);
    let failures = failed(&report);
    assert!(
        failures
            .iter()
            .any(|f| f.contains("on-output: an empty line") && f.contains("crashed")),
        "{failures:?}"
    );

    let future = plugin_wasm("nanny-test-plugin-future-wit");
    let (ok, _, stderr) = test(&future.display().to_string());
    assert!(!ok);
    assert!(
        stderr.contains("does not load") && stderr.contains("nanny:backend@0.2.0"),
        "{stderr}"
    );

    let (ok, _, stderr) = test("no-such-plugin");
    assert!(
        !ok && stderr.contains("neither a plugin file nor a builtin"),
        "{stderr}"
    );
}
