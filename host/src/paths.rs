//! Where nanny keeps things when the config does not say.

use std::path::PathBuf;

/// `NANNY_STATE_DIR`, else `$XDG_STATE_HOME/nanny`, else `~/.local/state/nanny`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NANNY_STATE_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("nanny");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".local/state/nanny")
}

/// The compiled-plugin cache under a state directory.
pub fn component_cache(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("cache").join("components")
}

/// Plugin directories from `NANNY_PLUGIN_DIRS` (colon-separated).
pub fn env_plugin_dirs() -> Vec<PathBuf> {
    std::env::var_os("NANNY_PLUGIN_DIRS")
        .map(|dirs| {
            std::env::split_paths(&dirs)
                .filter(|dir| !dir.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}
