//! nanny: a supervisor for model servers.
//!
//! `plugin` runs backend plugins; `cli` is the command line; `names` is the one
//! naming rule. The daemon's other rooms (config, runtime, supervise, gpu, api)
//! come with their issues.

pub mod cli;
pub mod config;
pub mod mock_backend;
pub mod names;
pub mod paths;
pub mod plugin;
pub mod runtime;
pub mod supervise;
