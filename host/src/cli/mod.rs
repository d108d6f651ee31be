//! The `nanny` command line.

mod plugins;

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
    /// A fake OpenAI-compatible server (what the `mock` backend runs).
    MockBackend(crate::mock_backend::MockOptions),
}

#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// One line per plugin: name, version, source, WIT version, summary.
    List,
    /// Everything a plugin says about itself, its settings included.
    Inspect { name: String },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugins { action, json } => {
            plugins::run(action.unwrap_or(PluginsAction::List), json)
        }
        Command::MockBackend(options) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::mock_backend::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
