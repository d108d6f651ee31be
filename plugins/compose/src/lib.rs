//! `compose`: a Docker Compose project as one service. nanny brings it up with
//! `docker compose` (v2) in the service's folder; the compose service named by
//! `service` (or the project's only one) is the backend, probed and routed to
//! at the service's host and port.

use nanny_sdk::*;

#[derive(Default)]
struct ComposeProject;

impl Backend for ComposeProject {
    fn settings() -> Vec<SettingSpec> {
        vec![
            setting(
                "file",
                "The compose file, relative to the service's folder; unset: the one compose finds there (compose.yaml, docker-compose.yml, …).",
                None,
                false,
            ),
            setting("profiles", "Compose profiles to enable.", None, false),
            setting(
                "env_file",
                "Files of variables compose interpolates from, relative to the service's folder.",
                None,
                false,
            ),
            setting(
                "service",
                "The compose service that is the backend (probed, routed to; its exit is the backend's); unset: the project's only service.",
                None,
                false,
            ),
            setting(
                "container_port",
                "The port that service listens on in its container; nanny publishes the service's port to it. Unset: the file publishes it itself, e.g. \"${NANNY_HOST}:${NANNY_PORT}:8000\".",
                None,
                false,
            ),
            setting(
                "health_path",
                "The path that answers 2xx once the backend is ready.",
                Some(Value::Text("/health".into())),
                false,
            ),
            models_path_setting(),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let files: Vec<String> = settings.text("file").into_iter().collect();
        let profiles = settings.list("profiles").unwrap_or_default();
        let env_files = settings.list("env_file").unwrap_or_default();
        let target = settings.text("service");
        if target.as_deref().is_some_and(|name| name.trim().is_empty()) {
            settings.error("service", "must name a compose service, or be left out");
        }
        let container_port = settings.integer("container_port").and_then(|port| {
            let port = u16::try_from(port).ok().filter(|port| *port > 0);
            if port.is_none() {
                settings.error("container_port", "must be a port between 1 and 65535");
            }
            port
        });
        for (key, names) in [
            ("file", &files),
            ("profiles", &profiles),
            ("env_file", &env_files),
        ] {
            if names.iter().any(|name| name.trim().is_empty()) {
                settings.error(key, "must not be empty");
            }
        }
        // Relative files need a folder to be relative to: a manifest's, or `work_dir`.
        let relative = files
            .iter()
            .chain(&env_files)
            .any(|file| !file.starts_with('/'));
        if service.work_dir.is_none() && (relative || files.is_empty()) {
            settings.error(
                "file",
                "a compose service needs its folder: put its service.yaml beside the compose file under `services_dir`, or set `work_dir`",
            );
        }
        let (health_path, models_path) = settings.http_paths(false);
        settings.finish()?;
        let mut plan = process_plan(service, "", Vec::new());
        plan.launch = Launch::Compose(Compose {
            files,
            profiles,
            env_files,
            service: target,
            container_port,
            env: service.env.clone(),
            work_dir: service.work_dir.clone(),
        });
        probe_health(&mut plan, health_path);
        plan.models_path = models_path;
        // Pulling images and starting a project takes longer than a process.
        plan.grace_ms = Some(10_000);
        Ok(plan)
    }
}

export_backend!("compose", ComposeProject);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::{service, text_setting};

    fn in_folder(settings: Vec<Setting>) -> Service {
        let mut svc = service("stack");
        svc.work_dir = Some("/srv/stack".into());
        svc.settings = settings;
        svc
    }

    #[test]
    fn plans_the_project_in_the_services_folder() {
        let mut svc = in_folder(vec![
            text_setting("file", "compose.gpu.yaml"),
            text_setting("service", "api"),
            Setting {
                key: "container_port".into(),
                value: Value::Integer(8000),
            },
            Setting {
                key: "profiles".into(),
                value: Value::List(vec!["gpu".into()]),
            },
        ]);
        svc.env.push(("HF_TOKEN".into(), "t".into()));
        let plan = ComposeProject.plan(&svc).unwrap();
        let Launch::Compose(compose) = plan.launch else {
            panic!("not a compose project")
        };
        assert_eq!(compose.files, ["compose.gpu.yaml"]);
        assert_eq!(compose.profiles, ["gpu"]);
        assert_eq!(compose.service.as_deref(), Some("api"));
        assert_eq!(compose.container_port, Some(8000));
        assert_eq!(compose.work_dir.as_deref(), Some("/srv/stack"));
        assert_eq!(compose.env, [("HF_TOKEN".to_string(), "t".to_string())]);
        assert_eq!(plan.readiness.path, "/health");
    }

    #[test]
    fn defaults_leave_the_file_and_the_port_to_the_project() {
        let plan = ComposeProject.plan(&in_folder(Vec::new())).unwrap();
        let Launch::Compose(compose) = plan.launch else {
            panic!("not a compose project")
        };
        assert!(compose.files.is_empty() && compose.service.is_none());
        assert_eq!(compose.container_port, None);
    }

    #[test]
    fn bad_settings_name_their_keys() {
        let svc = in_folder(vec![
            Setting {
                key: "container_port".into(),
                value: Value::Integer(70_000),
            },
            text_setting("service", " "),
            text_setting("health_path", "health"),
        ]);
        let errors = ComposeProject.plan(&svc).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["service", "container_port", "health_path"],
            "{errors:?}"
        );
        let mut no_folder = service("stack");
        no_folder.work_dir = None;
        let errors = ComposeProject.plan(&no_folder).unwrap_err();
        assert_eq!(errors[0].key, "file");
    }
}
