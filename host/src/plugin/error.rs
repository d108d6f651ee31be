use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong with a plugin. Each names the plugin, so a message
/// in a service's status says whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ignoring {}: it would replace the builtin plugin `{name}`; to let it, add `override = true` under `[plugins.{name}]` in nanny.toml", path.display())]
    ShadowsBuiltin { path: PathBuf, name: String },
    #[error("`{origin}` is not a valid WebAssembly component: {message}")]
    Compile { origin: String, message: String },
    #[error("`{origin}` is not a nanny backend plugin: it exports no `nanny:backend` interface")]
    NotABackend { origin: String },
    #[error("`{origin}` was built for nanny:backend@{found}, but this nanny supports nanny:backend@{supported}; rebuild it against a matching nanny-sdk")]
    IncompatibleWit {
        origin: String,
        found: String,
        supported: String,
    },
    #[error("plugin `{plugin}` could not be instantiated: {message}")]
    Instantiate { plugin: String, message: String },
    #[error("plugin `{plugin}` ran past its {}ms deadline in {call}", deadline.as_millis())]
    Timeout {
        plugin: String,
        call: &'static str,
        deadline: Duration,
    },
    #[error("plugin `{plugin}` reached its memory cap of {} MiB in {call}", cap_bytes >> 20)]
    MemoryCap {
        plugin: String,
        call: &'static str,
        cap_bytes: usize,
    },
    #[error("plugin `{plugin}` crashed in {call}: {message}")]
    Trap {
        plugin: String,
        call: &'static str,
        message: String,
    },
    #[error("plugin `{plugin}` returned {size} bytes of text from {call}; the limit is {limit}")]
    OversizedReply {
        plugin: String,
        call: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("plugin `{plugin}` describes itself as `{name}`, which is not a valid name (lowercase letters, digits, `_.-`, at most 63)")]
    BadName { plugin: String, name: String },
    #[error("plugin `{plugin}`'s session has stopped")]
    Gone { plugin: String },
}
