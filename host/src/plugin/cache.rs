//! Compiled components on disk, so a daemon start loads plugins in milliseconds
//! instead of compiling them again.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// A directory of precompiled components named by what they were compiled from.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
}

impl ComponentCache {
    /// A cache in `dir`, created on first use; `None` compiles every time.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The compiled form of `wasm`: from the cache when it is there and loads, else
    /// compiled now and stored. A cache that cannot be written only costs time.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        let Some(path) = self
            .dir
            .as_ref()
            .map(|dir| dir.join(cache_key(engine, wasm)))
        else {
            return Component::new(engine, wasm);
        };
        match trusted_bytes(&path) {
            Ok(Some(bytes)) => {
                // SAFETY: native code nanny compiled itself: the bytes match the
                // digest recorded when this cache wrote them, in a directory only
                // this user can write, under a key that includes the wasm hash and
                // the engine's compatibility hash. A file that fails the
                // deserialiser's own checks is compiled again below.
                match unsafe { Component::deserialize(engine, &bytes) } {
                    Ok(component) => return Ok(component),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), "recompiling a cached component that did not load: {error:#}")
                    }
                }
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(path = %path.display(), "recompiling a cached component: {why}")
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(error) = write_atomically(&path, &compiled)
            .and_then(|()| write_atomically(&digest_path(&path), digest(&compiled).as_bytes()))
        {
            tracing::warn!(path = %path.display(), "cannot cache a compiled plugin: {error}");
        }
        // SAFETY: these bytes came from `precompile_component` of this very engine.
        unsafe { Component::deserialize(engine, &compiled) }
    }
}

/// The cached bytes at `path` when they can be trusted as native code: the
/// directory is this user's alone and the bytes match the recorded digest.
/// `Ok(None)`: nothing cached yet; `Err`: something there must not be loaded.
fn trusted_bytes(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let meta = std::fs::metadata(dir).map_err(|error| error.to_string())?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by others (mode {:o}, owner {})",
            dir.display(),
            meta.mode() & 0o777,
            meta.uid()
        ));
    }
    let recorded =
        std::fs::read_to_string(digest_path(path)).map_err(|_| "no recorded digest".to_string())?;
    if recorded.trim() != digest(&bytes) {
        return Err("its bytes do not match the digest recorded when it was written".into());
    }
    Ok(Some(bytes))
}

fn digest_path(path: &Path) -> PathBuf {
    path.with_extension("sha256")
}

fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Hex SHA-256 over the engine's compatibility hash and the wasm bytes.
fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only written to")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.update(wasm);
    let digest = hasher.0.finalize();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{hex}.cwasm")
}

/// The shared atomic write, into a directory that only this user may write.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    // Native code is loaded from here: nobody else may write it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    crate::files::write_atomically(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    #[test]
    fn a_tampered_artifact_is_compiled_again_not_loaded() {
        let engine = engine();
        let wasm = crate::plugin::builtin_wasm("mock").expect("the mock builtin");
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("components");
        let cache = ComponentCache::new(Some(cache_dir.clone()));
        cache.load(&engine, wasm).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = cache_dir.join(cache_key(&engine, wasm));
        assert_eq!(
            trusted_bytes(&path).unwrap().map(|b| b.len()),
            Some(std::fs::metadata(&path).unwrap().len() as usize)
        );

        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let refused = trusted_bytes(&path).unwrap_err();
        assert!(refused.contains("do not match"), "{refused}");
        cache.load(&engine, wasm).expect("compiled again");
        assert!(trusted_bytes(&path).unwrap().is_some(), "and cached anew");

        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = trusted_bytes(&path).unwrap_err();
        assert!(refused.contains("writable by others"), "{refused}");
    }
}
