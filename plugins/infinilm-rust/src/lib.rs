//! `infinilm-rust`: InfiniLM-Rust's service, `cargo xtask service CONFIG`, run in
//! the checkout given as `work_dir`.
//!
//! `cargo xtask` may compile first; compiler output counts as loading progress so a
//! first build does not trip the start deadline.

use nanny_sdk::*;

#[derive(Default)]
struct InfiniLmRust {
    config: String,
    fatal: Option<String>,
}

impl InfiniLmRust {
    fn diagnose(&self, line: &str) -> Option<String> {
        if line.starts_with("error: could not compile") {
            return Some(format!("building InfiniLM-Rust failed: {}", line.trim()));
        }
        if line.contains("No such file or directory") || line.contains("NotFound") {
            return Some(format!(
                "a file is missing (is `{}` right?): {}",
                self.config,
                line.trim()
            ));
        }
        if line.contains("out of memory") {
            return Some(
                "out of device memory: serve a smaller model or lease more devices".into(),
            );
        }
        None
    }
}

impl Backend for InfiniLmRust {
    fn settings() -> Vec<SettingSpec> {
        vec![
            setting(
                "config",
                "The service configuration file passed to `xtask service`.",
                None,
                true,
            ),
            setting(
                "program",
                "The program that runs xtask.",
                Some(Value::Text("cargo".into())),
                false,
            ),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let config = settings.required_text("config");
        let program = settings.text_or("program", "cargo");
        if service.work_dir.is_none() {
            settings.error(
                "work_dir",
                "set it to the InfiniLM-Rust checkout that `cargo xtask` runs in",
            );
        }
        settings.finish()?;
        self.config = config.unwrap_or_default();
        let args = Args::new(service)
            .literal(&["xtask", "service", &self.config])
            .template(&["--port", "{port}"])
            .finish()?;
        let mut plan = process_plan(service, &program, args);
        plan.readiness.path = "/".into();
        plan.liveness = None;
        Ok(plan)
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        if let Some(reason) = self.diagnose(line) {
            self.fatal = Some(reason.clone());
            return Progress::Failed(reason);
        }
        let trimmed = line.trim_start();
        if ["Compiling ", "Finished ", "Running ", "load "]
            .iter()
            .any(|word| trimmed.starts_with(word))
        {
            return Progress::Loading(None);
        }
        Progress::Nothing
    }

    fn on_probe(&mut self, response: &HttpResponse) -> Progress {
        ready_when_answering(response)
    }

    fn on_exit(&mut self, exit: &Exit) -> ExitAdvice {
        give_up_if_diagnosed(self.fatal.as_deref(), exit, |line| self.diagnose(line))
    }
}

export_backend!("infinilm-rust", InfiniLmRust);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::{service, text_setting};

    fn configured() -> Service {
        let mut svc = service("rs");
        svc.work_dir = Some("/opt/InfiniLM-Rust".into());
        svc.settings
            .push(text_setting("config", "/etc/infinilm/service.toml"));
        svc
    }

    #[test]
    fn runs_xtask_service_with_the_config_in_the_checkout() {
        let plan = InfiniLmRust::default().plan(&configured()).unwrap();
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        assert_eq!(process.program, "cargo");
        assert_eq!(
            process.args,
            [
                "xtask",
                "service",
                "/etc/infinilm/service.toml",
                "--port",
                "8000"
            ]
        );
        assert_eq!(process.work_dir.as_deref(), Some("/opt/InfiniLM-Rust"));
    }

    #[test]
    fn config_and_work_dir_are_required() {
        let errors = InfiniLmRust::default().plan(&service("rs")).unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["config", "work_dir"]);
    }

    #[test]
    fn compiling_is_loading_and_a_failed_build_gives_up() {
        let mut rs = InfiniLmRust::default();
        rs.plan(&configured()).unwrap();
        assert_eq!(
            rs.on_output(
                Output::Stderr,
                "   Compiling llama v0.0.0 (/opt/InfiniLM-Rust/models/llama)"
            ),
            Progress::Loading(None)
        );
        assert!(matches!(
            rs.on_output(
                Output::Stderr,
                "error: could not compile `xtask` (bin \"xtask\") due to 2 previous errors"
            ),
            Progress::Failed(_)
        ));
        assert!(matches!(
            rs.on_exit(&Exit {
                code: Some(101),
                signal: None,
                last_lines: vec![]
            }),
            ExitAdvice::GiveUp(_)
        ));
    }
}
