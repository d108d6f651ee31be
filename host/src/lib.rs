//! nanny: a supervisor for model servers.
//!
//! `plugin` runs backend plugins; `config` reads nanny.toml and service manifests;
//! `runtime` spawns and contains processes; `supervise` drives each service's state
//! machine; `gpu` holds what services ask of the GPUs; `cli` is the command line;
//! `names` is the one naming rule.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod files;
pub mod gateway;
pub mod glob;
pub mod gpu;
pub mod locks;
pub mod mcp;
pub mod metrics;
pub mod mock_backend;
pub mod names;
pub mod paths;
pub mod plugin;
pub mod rate;
pub mod runtime;
pub mod secrets;
pub mod supervise;
