//! Backend plugins: the only code in nanny that knows about WebAssembly.
//!
//! One [`PluginEngine`] per daemon; a [`Catalog`] of loaded plugins; one
//! [`PluginSession`] (one store) per service.

mod bindings;
mod cache;
mod catalog;
pub mod conformance;
mod engine;
mod error;
mod grants;
mod reply;
mod sandbox;
mod session;
mod types;

pub use types::{
    Compose, ConfigError, Container, ExitAdvice, Gpu, HttpResponse, Launch, Model, Mount, Output,
    Plan, Probe, Process, Progress, Service, Setting, Value,
};

/// A setting's value as JSON, for people and the API.
pub fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Text(text) => serde_json::Value::from(text.as_str()),
        Value::Integer(number) => serde_json::Value::from(*number),
        Value::Float(number) => serde_json::Value::from(*number),
        Value::Boolean(flag) => serde_json::Value::from(*flag),
        Value::List(items) => serde_json::Value::from(items.clone()),
    }
}
pub use bindings::{WIT_VERSION, WIT_VERSIONS};
pub use catalog::{
    builtin_wasm, Catalog, Plugin, PluginInfo, PluginSource, Policies, Policy, SettingInfo,
};
pub use engine::{Limits, PluginEngine};
pub use error::PluginError;
pub use grants::{never_grantable, Grants, MountGrant, Refusal};
pub use session::{PluginSession, SessionHandle};

/// `text` on one line: newlines, tabs and other control characters escaped, so
/// whatever a plugin (or a broken plugin file) says cannot forge or break up the
/// daemon's own log lines.
pub fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

impl Service {
    /// A service named `name` on 127.0.0.1:`port` with `settings` and nothing else.
    pub fn local(name: &str, port: u16, settings: Vec<Setting>) -> Self {
        Self {
            name: name.to_string(),
            host: "127.0.0.1".to_string(),
            port,
            model: None,
            args: Vec::new(),
            env: Vec::new(),
            work_dir: None,
            gpus: Vec::new(),
            settings,
        }
    }
}

impl Setting {
    pub fn text(key: &str, value: &str) -> Self {
        Self {
            key: key.to_string(),
            value: Value::Text(value.to_string()),
        }
    }

    pub fn list(key: &str, items: &[&str]) -> Self {
        Self {
            key: key.to_string(),
            value: Value::List(items.iter().map(|item| item.to_string()).collect()),
        }
    }
}
