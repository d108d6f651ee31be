//! The `nanny` command line.

mod client;
mod config;
mod infer;
mod mcp;
mod node;
mod plugins;
mod remote;
mod run;
mod table;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "nanny", version, about = "A supervisor for model servers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The daemon's address, for the verbs that talk to it.
    #[arg(long, global = true, env = "NANNY_URL", default_value = client::DEFAULT_URL)]
    pub url: String,
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
        /// The configuration whose `plugin_dirs` and `[plugins.NAME]` grants
        /// apply (default: ./nanny.toml when there is one).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// An MCP server on standard input and output, for assistants that start
    /// MCP servers as commands: its tools talk to the daemon at `--url`.
    Mcp,
    /// Run the daemon in the foreground: launch every service, watch, restart;
    /// Ctrl-C stops them all.
    Up {
        #[arg(default_value = "nanny.toml")]
        config: PathBuf,
    },
    /// Supervise one backend in the foreground without a config file:
    /// `nanny run vllm --model Qwen/Qwen2.5-0.5B --port 8000`.
    Run(run::RunArgs),
    /// Re-read the daemon's configuration and apply it: new services added,
    /// removed ones stopped, changed ones restarted, the rest untouched.
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// The services: name, backend, state, uptime, port, GPUs, restarts, models, reason.
    Ps {
        #[arg(long)]
        json: bool,
        /// Every node's services too, with a NODE column (in a cluster).
        #[arg(long)]
        all: bool,
    },
    /// The cluster's nodes: address, GPUs, services, when last heard of.
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Start services and wait until they are ready.
    Start {
        #[command(flatten)]
        action: Action,
        /// Stop the services whose GPU leases stand in the way first.
        #[arg(long)]
        force: bool,
    },
    /// Ask a model something through the gateway, streaming the answer (its
    /// service is started first if it is not running).
    Infer(infer::InferArgs),
    /// Stop services and wait until their processes are gone.
    Stop(Action),
    /// Restart services and wait until they are ready again.
    Restart(Action),
    /// A service's output.
    Logs {
        name: String,
        /// Keep printing lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines (at most 10,000).
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: u64,
        #[arg(long)]
        json: bool,
    },
    /// Every state change as it happens; first the last N (`-n`) or those since
    /// a while ago (`--since 10m`), from the daemon's memory of the last 1000.
    Events {
        #[arg(short = 'n', long = "last")]
        last: Option<u32>,
        /// How far back, as `30s`, `10m`, `2h`.
        #[arg(long, value_parser = crate::config::duration::parse)]
        since: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// The models on this machine's disks (`[catalog]`): id, size, template,
    /// what their GGUF headers say, the VRAM they would need.
    Models {
        #[arg(long)]
        json: bool,
        /// What the catalog found and could not read, one line each.
        #[arg(long)]
        errors: bool,
    },
    /// The GPUs: memory, leases and their holders.
    Gpus {
        #[arg(long)]
        json: bool,
    },
    /// The daemon's version, uptime and counts.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration, or show it resolved.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Removes what a daemon's launches left once the daemon is gone (started by
    /// `nanny up`): its recorded launches, and its cgroup when it has one.
    #[command(hide = true)]
    Guardian {
        launches: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// A fake OpenAI-compatible server (what the `mock` backend runs).
    MockBackend(crate::mock_backend::MockOptions),
}

#[derive(Debug, clap::Args)]
pub struct Action {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// The node the services are on (in a cluster); this one by default.
    #[arg(long)]
    pub node: Option<String>,
    /// Ask, and do not wait.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
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
    /// The conformance kit: a plugin file (or a builtin, by name) walked
    /// through the daemon's calls with ordinary and odd inputs; exit 0 when
    /// it conforms.
    Test { plugin: String },
}

/// The production sandbox, caching compiled components under `state_dir`.
fn plugin_engine(
    state_dir: &std::path::Path,
    metrics: crate::metrics::Metrics,
) -> anyhow::Result<std::sync::Arc<crate::plugin::PluginEngine>> {
    use crate::plugin::{Limits, PluginEngine};
    let cache = crate::paths::component_cache(state_dir);
    PluginEngine::with_metrics(Limits::default(), Some(cache), metrics)
        .map_err(|error| anyhow::anyhow!("cannot start the plugin engine: {error:#}"))
}

/// The plugin catalog as the CLI and the daemon see it: the engine caches compiled
/// components under `state_dir`; plugins that fail to load are printed as warnings.
fn load_catalog(
    state_dir: &std::path::Path,
    plugin_dirs: &[PathBuf],
    policies: &crate::plugin::Policies,
    metrics: crate::metrics::Metrics,
) -> anyhow::Result<crate::plugin::Catalog> {
    let engine = plugin_engine(state_dir, metrics)?;
    let catalog = crate::plugin::Catalog::load(&engine, plugin_dirs, policies);
    for problem in catalog.problems() {
        // One line each, whatever bytes the broken file put in the message.
        eprintln!("warning: {}", crate::plugin::one_line(&problem.to_string()));
    }
    Ok(catalog)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = client::Client::new(&cli.url);
    let remote = |result: Result<ExitCode, client::ClientError>| {
        Ok(result.unwrap_or_else(|error| {
            eprintln!("nanny: {error}");
            error.exit_code()
        }))
    };
    match cli.command {
        Command::Ps { json, all } => remote(remote::ps(&client, json, all)),
        Command::Nodes { json } => remote(remote::nodes(&client, json)),
        Command::Infer(args) => remote(infer::infer(&client, &args)),
        Command::Reload { json } => remote(remote::reload(&client, json)),
        Command::Start { action, force } => {
            let verb = if force {
                remote::Verb::ForceStart
            } else {
                remote::Verb::Start
            };
            remote(act(&client, verb, action))
        }
        Command::Gpus { json } => remote(remote::gpus(&client, json)),
        Command::Models { json, errors } => remote(remote::models(&client, json, errors)),
        Command::Stop(action) => remote(act(&client, remote::Verb::Stop, action)),
        Command::Restart(action) => remote(act(&client, remote::Verb::Restart, action)),
        Command::Logs {
            name,
            follow,
            lines,
            json,
        } => remote(remote::logs(&client, &name, follow, lines, json)),
        Command::Events { last, since, json } => remote(remote::events(&client, last, since, json)),
        Command::Info { json } => remote(remote::info(&client, json)),
        Command::Plugins {
            action,
            json,
            config,
        } => plugins::run(action.unwrap_or(PluginsAction::List), json, config),
        Command::Mcp => mcp::run(client),
        Command::Up { config } => up::run(&config),
        Command::Run(args) => run::run(&args),
        Command::Config {
            action: ConfigAction::Check { config },
        } => Ok(config::check(&config)),
        Command::Config {
            action: ConfigAction::Show { config, json },
        } => Ok(config::show(&config, json)),
        Command::Guardian { launches, cgroup } => up::guardian(&launches, cgroup.as_deref()),
        Command::MockBackend(options) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::mock_backend::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn act(
    client: &client::Client,
    verb: remote::Verb,
    action: Action,
) -> Result<ExitCode, client::ClientError> {
    let on = remote::On {
        node: action.node.as_deref(),
        wait: !action.no_wait,
        json: action.json,
    };
    remote::act(client, verb, &action.names, on)
}
