//! The built binary answers. (Being an integration test of this package also makes
//! `cargo test` build `nanny` with the test run's features, which the end-to-end
//! tests in `tests/` then drive.)

use std::process::Command;

#[test]
fn version_and_help_name_the_commands() {
    let nanny = env!("CARGO_BIN_EXE_nanny");
    let version = Command::new(nanny).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("nanny {}", env!("CARGO_PKG_VERSION"))
    );
    let help =
        String::from_utf8(Command::new(nanny).arg("--help").output().unwrap().stdout).unwrap();
    for verb in ["up", "config", "plugins", "mock-backend"] {
        assert!(
            help.lines().any(|line| line.trim_start().starts_with(verb)),
            "`{verb}` missing from:\n{help}"
        );
    }
    assert!(!help.contains("guardian"), "the guardian is internal");
}
