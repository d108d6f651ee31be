//! Backend plugins: the only code in nanny that knows about WebAssembly.
//!
//! One [`PluginEngine`] per daemon; a [`Catalog`] of loaded plugins; one
//! [`PluginSession`] (one store) per service.

mod bindings;
mod cache;
mod catalog;
mod engine;
mod error;
mod reply;
mod sandbox;
mod session;

pub use bindings::exports::nanny::backend::session::{
    ConfigError, ExitAdvice, HttpResponse, Model, Output, Plan, Progress, Service,
};
pub use bindings::nanny::backend::types::{Gpu, Launch, Setting, Value};
pub use bindings::WIT_VERSION;
pub use catalog::{builtin_wasm, Catalog, Plugin, PluginInfo, PluginSource, SettingInfo};
pub use engine::{Limits, PluginEngine};
pub use error::PluginError;
pub use session::{PluginSession, SessionHandle};
