//! Compiles the builtin plugins (`plugins/*`) for wasm32-wasip2 and embeds them, so
//! `cargo build` is the only build step.

#[path = "build/wasm.rs"]
mod wasm;

use std::path::{Path, PathBuf};

fn main() {
    let host_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let workspace = host_dir.parent().expect("host/ sits in the workspace");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in ["plugins", "sdk", "wit", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-changed=build/wasm.rs");

    let names = builtin_names(&workspace.join("plugins"));
    let packages: Vec<String> = names
        .iter()
        .map(|name| format!("nanny-plugin-{name}"))
        .collect();
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    // A target dir of its own: the outer build holds the lock on the usual one.
    let wasm_target = target_dir(&out_dir).join("nanny-plugins");
    let paths = wasm::build_plugins(&workspace.join("Cargo.toml"), &packages, &wasm_target)
        .unwrap_or_else(|error| panic!("{error}"));

    let mut table = String::from("/// The builtin plugins: (directory name, component bytes).\npub static BUILTIN_PLUGINS: &[(&str, &[u8])] = &[\n");
    for (name, path) in names.iter().zip(&paths) {
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), table).expect("write builtin_plugins.rs");
}

fn builtin_names(plugins: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(plugins)
        .expect("read plugins/")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `<target>/<profile>/build/<pkg>/out` → `<target>`.
fn target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is inside the target dir")
        .to_path_buf()
}
