//! `nanny config check [CONFIG]` and `nanny config show [CONFIG]`.

use crate::metrics::Metrics;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::config::Config;
use crate::plugin::{Catalog, Value};
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
    let services: Vec<_> = specs
        .iter()
        .map(|spec| {
            let settings: serde_json::Map<String, serde_json::Value> =
                spec.service.settings.iter().map(|setting| (setting.key.clone(), value_json(&setting.value))).collect();
            json!({
                "name": spec.service.name,
                "backend": spec.plugin.name(),
                "host": spec.service.host,
                "port": spec.service.port,
                "model": spec.service.model,
                "args": spec.service.args,
                "env": spec.service.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "work_dir": spec.service.work_dir,
                "description": spec.description,
                "autostart": spec.autostart,
                "idle_stop_s": spec.idle_stop.map(|d| d.as_secs_f64()),
                "cpu_limit": spec.resources.cpus,
                "memory_limit_bytes": spec.resources.memory_bytes,
                "depends_on": spec.depends_on.iter().map(|(name, condition)| json!({"service": name, "condition": condition})).collect::<Vec<_>>(),
                "restart": {
                    "policy": spec.restart.mode,
                    "max_restarts": spec.restart.max_restarts,
                    "backoff_s": spec.restart.backoff.initial.as_secs_f64(),
                    "max_backoff_s": spec.restart.backoff.max.as_secs_f64(),
                    "reset_after_s": spec.restart.backoff.reset_after.as_secs_f64(),
                },
                "startup_timeout_s": spec.startup_timeout.as_secs_f64(),
                "probes": {
                    "path": spec.probes.path,
                    "readiness_period_s": spec.probes.readiness_period.map(|d| d.as_secs_f64()),
                    "liveness_period_s": spec.probes.liveness_period.map(|d| d.as_secs_f64()),
                    "liveness_timeout_s": spec.probes.liveness_timeout.map(|d| d.as_secs_f64()),
                },
                "gpu": spec.gpu,
                "settings": settings,
            })
        })
        .collect();
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

fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Text(text) => json!(text),
        Value::Integer(number) => json!(number),
        Value::Float(number) => json!(number),
        Value::Boolean(flag) => json!(flag),
        Value::List(items) => json!(items),
    }
}
