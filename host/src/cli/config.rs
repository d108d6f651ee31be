//! `nanny config check [CONFIG]` and `nanny config show [CONFIG]`.

use crate::metrics::Metrics;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::config::Config;
use crate::plugin::Catalog;
use crate::supervise::ServiceSpec;

/// A configuration checked against the plugins it names.
pub struct Checked {
    pub config: Config,
    pub catalog: Catalog,
    pub specs: Vec<ServiceSpec>,
}

/// Loads `path` and checks it against the plugins, or prints every error and
/// returns the exit code.
pub fn load_checked(path: &Path, metrics: &Metrics) -> Result<Checked, ExitCode> {
    load(path, metrics).map_err(|(message, code)| {
        eprintln!("{message}");
        code
    })
}

/// `load_checked` for a reload: every error, as text.
pub fn load_for_reload(path: &Path, metrics: &Metrics) -> Result<Checked, String> {
    load(path, metrics).map_err(|(message, _)| message)
}

fn load(path: &Path, metrics: &Metrics) -> Result<Checked, (String, ExitCode)> {
    let config = Config::load(path).map_err(|errors| (errors.to_string(), ExitCode::from(2)))?;
    let catalog = super::load_catalog(
        &config.daemon.state_dir,
        &config.daemon.plugin_dirs,
        &config.plugins,
        metrics.clone(),
    )
    .map_err(|error| (format!("error: {error:#}"), ExitCode::FAILURE))?;
    let specs = config
        .service_specs(&catalog)
        .map_err(|errors| (errors.to_string(), ExitCode::from(2)))?;
    Ok(Checked {
        config,
        catalog,
        specs,
    })
}

pub fn check(path: &Path) -> ExitCode {
    match load_checked(path, &Metrics::default()) {
        Ok(checked) => {
            let errors = checked.config.launch_errors(&checked.specs);
            if !errors.is_empty() {
                eprintln!("{}", crate::config::ConfigErrors(errors));
                return ExitCode::from(2);
            }
            println!("{}: ok, {} service(s)", path.display(), checked.specs.len());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn show(path: &Path, as_json: bool) -> ExitCode {
    let Checked { config, specs, .. } = match load_checked(path, &Metrics::default()) {
        Ok(checked) => checked,
        Err(code) => return code,
    };
    let services: Vec<_> = specs.iter().map(|spec| spec.resolved(false)).collect();
    let resolved = json!({"file": config.path, "daemon": config.daemon, "services": services});
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resolved).unwrap_or_default()
        );
    } else {
        match toml::to_string_pretty(&resolved) {
            Ok(text) => print!("{text}"),
            Err(_) => println!(
                "{}",
                serde_json::to_string_pretty(&resolved).unwrap_or_default()
            ),
        }
    }
    ExitCode::SUCCESS
}
