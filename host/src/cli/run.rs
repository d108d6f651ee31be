//! `nanny run BACKEND [--model M] [--port P] [--name N] [--set key=value]… [-- ARGS…]`:
//! one backend supervised in the foreground without a config file, as the old
//! babysitter scripts did with flags. The flags become a one-service
//! configuration (kept in the state directory, so errors can name its lines),
//! and the daemon runs it as `nanny up` would.

use std::path::PathBuf;
use std::process::ExitCode;

/// What `nanny run` was given.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The backend plugin (`nanny plugins` lists them).
    pub backend: String,
    /// The model the backend serves.
    #[arg(long)]
    pub model: Option<String>,
    /// The port it listens on (else one from the default range).
    #[arg(long)]
    pub port: Option<u16>,
    /// The service's name (default: the backend's).
    #[arg(long)]
    pub name: Option<String>,
    /// A plugin setting, `key=value`; the value is read as TOML when it parses
    /// (`[…]`, numbers, booleans), else as text.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Arguments appended to the backend's command line.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The configuration the flags describe, as TOML text.
pub fn config_text(run: &RunArgs) -> Result<String, String> {
    let name = run.name.clone().unwrap_or_else(|| run.backend.clone());
    if !crate::names::is_valid(&name) {
        return Err(format!(
            "`{}` is not a service name (lowercase letters, digits and `_.-`); pass --name",
            name.escape_default()
        ));
    }
    let mut service = toml::Table::new();
    service.insert("backend".into(), run.backend.clone().into());
    if let Some(model) = &run.model {
        service.insert("model".into(), model.clone().into());
    }
    if let Some(port) = run.port {
        service.insert("port".into(), i64::from(port).into());
    }
    if !run.args.is_empty() {
        service.insert("args".into(), run.args.clone().into());
    }
    let mut settings = toml::Table::new();
    for pair in &run.settings {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("--set `{pair}`: write it as key=value"));
        };
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut table| table.remove("v"))
            .unwrap_or_else(|| value.to_string().into());
        settings.insert(key.trim().to_string(), value);
    }
    if !settings.is_empty() {
        service.insert("settings".into(), settings.into());
    }
    let mut services = toml::Table::new();
    services.insert(name, service.into());
    let mut config = toml::Table::new();
    config.insert("services".into(), services.into());
    toml::to_string(&config).map_err(|error| error.to_string())
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let text = match config_text(args) {
        Ok(text) => text,
        Err(message) => {
            eprintln!("nanny: {message}");
            return Ok(ExitCode::from(2));
        }
    };
    let dir: PathBuf = crate::paths::default_state_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("nanny-run.toml");
    std::fs::write(&path, text)?;
    super::up::run(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(words: &[&str]) -> RunArgs {
        Wrapper::parse_from(std::iter::once("nanny").chain(words.iter().copied())).run
    }

    #[test]
    fn flags_become_one_service() {
        let run = parse(&[
            "command",
            "--port",
            "8000",
            "--set",
            r#"command=["python3","-m","http.server","{port}"]"#,
            "--set",
            "ready_line=Serving",
            "--",
            "--extra",
        ]);
        let text = config_text(&run).unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        let service = &config["services"]["command"];
        assert_eq!(service["port"].as_integer(), Some(8000));
        assert_eq!(
            service["args"].as_array().unwrap()[0].as_str(),
            Some("--extra")
        );
        let command = service["settings"]["command"].as_array().unwrap();
        assert_eq!(command.len(), 4);
        assert_eq!(service["settings"]["ready_line"].as_str(), Some("Serving"));
    }

    #[test]
    fn a_bad_name_or_setting_is_refused_clearly() {
        let error = config_text(&parse(&["vllm", "--name", "Bad Name"])).unwrap_err();
        assert!(error.contains("pass --name"), "{error}");
        let error = config_text(&parse(&["vllm", "--set", "oops"])).unwrap_err();
        assert!(error.contains("key=value"), "{error}");
    }
}
