//! `nanny plugins list` and `nanny plugins inspect NAME`.

use std::process::ExitCode;

use super::table::table;
use super::PluginsAction;
use crate::paths;
use crate::plugin::PluginInfo;

pub fn run(
    action: PluginsAction,
    json: bool,
    config: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    // The plugin directories and grants of the configuration, when there is one.
    let config = config.or_else(|| {
        let here = std::path::PathBuf::from("nanny.toml");
        here.exists().then_some(here)
    });
    let (state_dir, plugin_dirs, policies) = match config {
        Some(path) => match crate::config::Config::load(&path) {
            Ok(config) => (
                config.daemon.state_dir,
                config.daemon.plugin_dirs,
                config.plugins,
            ),
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(2));
            }
        },
        None => (
            paths::default_state_dir(),
            paths::env_plugin_dirs(),
            Default::default(),
        ),
    };
    if let PluginsAction::Test { plugin } = &action {
        return test(plugin, &state_dir, json);
    }
    let catalog = super::load_catalog(
        &state_dir,
        &plugin_dirs,
        &policies,
        crate::metrics::Metrics::default(),
    )?;
    let infos: Vec<&PluginInfo> = catalog.plugins().map(|plugin| &plugin.info).collect();
    match action {
        PluginsAction::List if json => println!("{}", serde_json::to_string_pretty(&infos)?),
        PluginsAction::List => print!("{}", list_table(&infos)),
        PluginsAction::Test { .. } => {}
        PluginsAction::Inspect { name } => {
            let Some(plugin) = catalog.get(&name) else {
                eprintln!("error: no plugin named `{name}`; `nanny plugins list` shows the ones there are");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                let mut shown = serde_json::to_value(&plugin.info)?;
                shown["grants"] = serde_json::to_value(&plugin.grants)?;
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{}", inspect_text(&plugin.info));
                print!("{}", grants_text(&plugin.info.name, plugin.grants.as_ref()));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_table(infos: &[&PluginInfo]) -> String {
    let rows: Vec<[String; 5]> = infos
        .iter()
        .map(|info| {
            [
                info.name.clone(),
                info.version.clone(),
                info.source.to_string(),
                info.wit_version.clone(),
                info.summary.clone(),
            ]
        })
        .collect();
    table(["NAME", "VERSION", "SOURCE", "WIT", "SUMMARY"], &rows)
}

fn inspect_text(info: &PluginInfo) -> String {
    let mut out = format!(
        "name:     {}\nversion:  {}\nsource:   {}\nwit:      nanny:backend@{}\nsummary:  {}\n\nsettings:\n",
        info.name, info.version, info.source, info.wit_version, info.summary
    );
    let rows: Vec<[String; 4]> = info
        .settings
        .iter()
        .map(|setting| {
            let default = setting
                .default
                .as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string);
            let required = if setting.required { "yes" } else { "no" };
            [
                setting.key.clone(),
                required.to_string(),
                default,
                setting.help.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(["KEY", "REQUIRED", "DEFAULT", "HELP"], &rows));
    }
    out
}

/// What a plugin's plans may launch, as `plugins inspect` shows it.
fn grants_text(name: &str, grants: Option<&crate::plugin::Grants>) -> String {
    let Some(grants) = grants else {
        return "\ngrants:   builtin: trusted, not checked\n".into();
    };
    let mounts: Vec<String> = grants
        .mounts
        .iter()
        .map(|mount| {
            let how = if mount.rw { "rw" } else { "ro" };
            format!("{} ({how})", mount.path.display())
        })
        .collect();
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    let mut out = format!(
        "\ngrants (`[plugins.{name}]`):\n  programs: {}\n  images:   {}\n  mounts:   {}\n  env:      {}\n  compose:  {}\n",
        list(&grants.programs),
        list(&grants.images),
        list(&mounts),
        list(&grants.env),
        list(&grants.compose)
    );
    if grants.programs.is_empty() && grants.images.is_empty() && grants.compose.is_empty() {
        out.push_str(
            "  (it may launch nothing until you grant it a program, an image or a compose folder)\n",
        );
    }
    out
}

/// `nanny plugins test FILE.wasm|BUILTIN`: the conformance kit's report.
fn test(plugin: &str, state_dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    use crate::plugin::{Plugin, PluginSource};
    let engine = super::plugin_engine(state_dir, crate::metrics::Metrics::default())?;
    let path = std::path::PathBuf::from(plugin);
    let loaded = if path.is_file() {
        std::fs::read(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))
            .and_then(|wasm| {
                Plugin::load(&engine, PluginSource::File(path.clone()), &wasm)
                    .map_err(|error| error.to_string())
            })
    } else {
        match crate::plugin::builtin_wasm(plugin) {
            Some(wasm) => Plugin::load(&engine, PluginSource::Builtin, wasm)
                .map_err(|error| error.to_string()),
            None => Err(format!(
                "`{}` is neither a plugin file nor a builtin plugin",
                plugin.escape_default()
            )),
        }
    };
    let plugin = match loaded {
        Ok(plugin) => std::sync::Arc::new(plugin),
        Err(message) => {
            eprintln!(
                "nanny plugins test: does not load: {}",
                crate::plugin::one_line(&message)
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let report = crate::plugin::conformance::test(&plugin);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} {} (nanny:backend@{})",
            report.plugin, report.version, report.wit_version
        );
        for check in &report.checks {
            let mark = if check.passed { "PASS" } else { "FAIL" };
            println!(
                "  {mark}  {}: {}",
                check.name,
                crate::plugin::one_line(&check.detail)
            );
        }
        let failed = report.checks.iter().filter(|check| !check.passed).count();
        if failed == 0 {
            println!("conforms: {} checks passed", report.checks.len());
        } else {
            println!(
                "does not conform: {failed} of {} checks failed",
                report.checks.len()
            );
        }
    }
    Ok(if report.conforms() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
