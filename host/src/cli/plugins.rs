//! `nanny plugins list` and `nanny plugins inspect NAME`.

use std::process::ExitCode;

use super::table::table;
use super::PluginsAction;
use crate::paths;
use crate::plugin::PluginInfo;

pub fn run(action: PluginsAction, json: bool) -> anyhow::Result<ExitCode> {
    let catalog = super::load_catalog(
        &paths::default_state_dir(),
        &paths::env_plugin_dirs(),
        crate::metrics::Metrics::default(),
    )?;
    let infos: Vec<&PluginInfo> = catalog.plugins().map(|plugin| &plugin.info).collect();
    match action {
        PluginsAction::List if json => println!("{}", serde_json::to_string_pretty(&infos)?),
        PluginsAction::List => print!("{}", list_table(&infos)),
        PluginsAction::Inspect { name } => {
            let Some(plugin) = catalog.get(&name) else {
                eprintln!("error: no plugin named `{name}`; `nanny plugins list` shows the ones there are");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&plugin.info)?);
            } else {
                print!("{}", inspect_text(&plugin.info));
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
