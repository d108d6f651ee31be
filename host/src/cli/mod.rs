//! The `nanny` command line.

mod config;
mod plugins;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "nanny", version, about = "A supervisor for model servers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the backend plugins, or show one in full.
    Plugins {
        #[command(subcommand)]
        action: Option<PluginsAction>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Run the daemon in the foreground: launch every service, watch, restart;
    /// Ctrl-C stops them all.
    Up {
        #[arg(default_value = "nanny.toml")]
        config: PathBuf,
    },
    /// Check a configuration, or show it resolved.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Empties a daemon's cgroup once the daemon is gone (started by `nanny up`).
    #[command(hide = true)]
    Guardian { dir: PathBuf },
    /// A fake OpenAI-compatible server (what the `mock` backend runs).
    MockBackend(crate::mock_backend::MockOptions),
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the file and the services' settings against their plugins.
    Check {
        #[arg(default_value = "nanny.toml")]
        config: PathBuf,
    },
    /// Print the resolved configuration (defaults, overrides and ports filled in).
    Show {
        #[arg(default_value = "nanny.toml")]
        config: PathBuf,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// One line per plugin: name, version, source, WIT version, summary.
    List,
    /// Everything a plugin says about itself, its settings included.
    Inspect { name: String },
}

/// The plugin catalog as the CLI and the daemon see it: the engine caches compiled
/// components under `state_dir`; plugins that fail to load are printed as warnings.
fn load_catalog(
    state_dir: &std::path::Path,
    plugin_dirs: &[PathBuf],
) -> anyhow::Result<crate::plugin::Catalog> {
    use crate::plugin::{Catalog, Limits, PluginEngine};
    let cache = crate::paths::component_cache(state_dir);
    let engine = PluginEngine::new(Limits::default(), Some(cache))
        .map_err(|error| anyhow::anyhow!("cannot start the plugin engine: {error:#}"))?;
    let catalog = Catalog::load(&engine, plugin_dirs);
    for problem in catalog.problems() {
        eprintln!("warning: {problem}");
    }
    Ok(catalog)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugins { action, json } => {
            plugins::run(action.unwrap_or(PluginsAction::List), json)
        }
        Command::Up { config } => up::run(&config),
        Command::Config {
            action: ConfigAction::Check { config },
        } => Ok(config::check(&config)),
        Command::Config {
            action: ConfigAction::Show { config, json },
        } => Ok(config::show(&config, json)),
        Command::Guardian { dir } => up::guardian(&dir),
        Command::MockBackend(options) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::mock_backend::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
