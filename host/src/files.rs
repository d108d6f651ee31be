//! One way to replace a file: write a temporary beside it, then rename, so a
//! reader (or a daemon killed halfway) never sees half a file.

use std::path::Path;

/// Writes `bytes` to `path` atomically, creating its directory first. The
/// temporary's name carries the pid, so two writers never share one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
    ));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}
