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
        if path.is_file() {
            // SAFETY: the file is one this cache wrote under a key that includes the
            // wasm hash and the engine's compatibility hash, in a directory that
            // belongs to the user running nanny; a file that fails the deserialiser's
            // own checks is compiled again below.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %path.display(), "recompiling a cached component that did not load: {error:#}")
                }
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(error) = write_atomically(&path, &compiled) {
            tracing::warn!(path = %path.display(), "cannot cache a compiled plugin: {error}");
        }
        // SAFETY: these bytes came from `precompile_component` of this very engine.
        unsafe { Component::deserialize(engine, &compiled) }
    }
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

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in a directory");
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}
