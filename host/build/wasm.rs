//! Builds plugin crates for wasm32-wasip2. Shared by `host/build.rs` (the builtin
//! plugins) and the end-to-end tests (hostile and example plugins) via `#[path]`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every nanny plugin is built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Builds `packages` of the workspace at `manifest` in release mode into
/// `target_dir` and returns each package's `.wasm` path, in order.
pub fn build_plugins(
    manifest: &Path,
    packages: &[&str],
    target_dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    // The outer build's flags are for the host target, not for wasm; and under
    // `cargo clippy` the plugins are linted natively, as workspace members.
    for variable in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
    ] {
        command.env_remove(variable);
    }
    let status = command
        .status()
        .map_err(|error| format!("could not run cargo: {error}"))?;
    if !status.success() {
        return Err(format!(
            "building {} for {WASM_TARGET} failed ({status}); is the target installed? `rustup target add {WASM_TARGET}`",
            packages.join(", ")
        ));
    }
    Ok(packages
        .iter()
        .map(|package| {
            target_dir
                .join(WASM_TARGET)
                .join("release")
                .join(format!("{}.wasm", package.replace('-', "_")))
        })
        .collect())
}
