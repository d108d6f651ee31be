//! `container`: any image. nanny maps the service's port to `container_port`,
//! probes `health_path` there, lists models at `models_path`, and may take readiness
//! from an output line instead.

use nanny_sdk::*;
use regex_lite::Regex;

#[derive(Default)]
struct ContainerBackend {
    ready_line: Option<Regex>,
}

/// `/models:/models:ro` → a read-only mount; `src:dst` → read-write.
fn mount(text: &str) -> Option<Mount> {
    let mut parts = text.split(':');
    let (source, target) = (parts.next()?, parts.next()?);
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    (source.starts_with('/') && target.starts_with('/') && parts.next().is_none()).then(|| Mount {
        source: source.into(),
        target: target.into(),
        read_only,
    })
}

impl Backend for ContainerBackend {
    fn settings() -> Vec<SettingSpec> {
        vec![
            setting("image", "The image, present on this machine (nanny does not pull).", None, true),
            setting(
                "command",
                "Replaces the image's command; {host}, {port}, {model} and {name} are filled in ({port} is the container port).",
                None,
                false,
            ),
            setting("container_port", "The port the server listens on inside the container.", Some(Value::Integer(8000)), false),
            setting("health_path", "The path that answers 2xx once ready; \"\" for none (then set ready_line).", Some(Value::Text("/health".into())), false),
            models_path_setting(),
            setting("ready_line", "A regular expression; an output line matching it means ready.", None, false),
            setting("mounts", "Bind mounts as \"/host/path:/container/path[:ro]\"; model folders usually read-only.", None, false),
            setting("shm_size", "Shared memory for the container, in MiB.", None, false),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let image = settings.required_text("image").unwrap_or_default();
        let port = settings.integer("container_port").unwrap_or(8000);
        let Ok(port) = u16::try_from(port) else {
            settings.error("container_port", format!("{port} is not a port"));
            return Err(settings.finish().err().unwrap_or_default());
        };
        let (health_path, models_path) = settings.http_paths(true);
        let mut mounts = Vec::new();
        for text in settings.list("mounts").unwrap_or_default() {
            match mount(&text) {
                Some(parsed) => mounts.push(parsed),
                None => settings.error(
                    "mounts",
                    format!("`{text}` is not /host/path:/container/path[:ro]"),
                ),
            }
        }
        let shm_size_mib = settings
            .integer("shm_size")
            .and_then(|mib| u64::try_from(mib).ok());
        if let Some(pattern) = settings.text("ready_line") {
            match Regex::new(&pattern) {
                Ok(regex) => self.ready_line = Some(regex),
                Err(error) => settings.error(
                    "ready_line",
                    format!("is not a valid regular expression: {error}"),
                ),
            }
        }
        // Inside the container the server listens on its own port, on every address.
        let mut inside = service.clone();
        inside.port = port;
        inside.host = "0.0.0.0".into();
        let command = Args::new(&inside)
            .template(&settings.list("command").unwrap_or_default())
            .finish();
        settings.finish()?;
        let mut command = command?;
        command.extend(service.args.iter().cloned());
        let mut plan = process_plan(service, &image, Vec::new());
        plan.launch = Launch::Container(Container {
            image,
            command,
            env: service.env.clone(),
            port,
            mounts,
            shm_size_mib,
        });
        probe_health(&mut plan, health_path);
        plan.models_path = models_path;
        Ok(plan)
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        match &self.ready_line {
            Some(regex) if regex.is_match(line) => Progress::Ready,
            _ => Progress::Nothing,
        }
    }
}

export_backend!("container", ContainerBackend);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::{service, text_setting};

    #[test]
    fn plans_a_container_with_its_port_mounts_and_command() {
        let mut svc = service("cache");
        svc.settings.push(text_setting("image", "redis:7"));
        svc.settings.push(Setting {
            key: "command".into(),
            value: Value::List(vec![
                "redis-server".into(),
                "--port".into(),
                "{port}".into(),
            ]),
        });
        svc.settings.push(Setting {
            key: "container_port".into(),
            value: Value::Integer(6379),
        });
        svc.settings.push(Setting {
            key: "mounts".into(),
            value: Value::List(vec!["/srv/models:/models:ro".into()]),
        });
        svc.settings.push(text_setting("health_path", ""));
        let plan = ContainerBackend::default().plan(&svc).unwrap();
        let Launch::Container(container) = plan.launch else {
            panic!("not a container")
        };
        assert_eq!(container.image, "redis:7");
        assert_eq!(container.command, ["redis-server", "--port", "6379"]);
        assert_eq!(container.port, 6379);
        assert_eq!(container.mounts[0].target, "/models");
        assert!(container.mounts[0].read_only);
        assert_eq!(plan.liveness, None);
    }

    #[test]
    fn bad_settings_are_named() {
        let mut svc = service("broken");
        svc.settings.push(Setting {
            key: "mounts".into(),
            value: Value::List(vec!["relative:/x".into()]),
        });
        let errors = ContainerBackend::default().plan(&svc).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains(&"image") && keys.contains(&"mounts"),
            "{keys:?}"
        );
    }
}
