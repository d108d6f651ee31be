//! `infinilm-rust`: InfiniLM-Rust's service, `cargo xtask service CONFIG`, run in
//! the checkout given as `work_dir`.
//!
//! `cargo xtask` may compile first; compiler output counts as loading progress so a
//! first build does not trip the start deadline.

use nanny_sdk::*;

#[derive(Default)]
struct InfiniLmRust {
    /// Its `{model}` is the service configuration file.
    seen: Seen,
}

/// How `cargo xtask service` reads: the build first, then the server.
const RULES: OutputRules = OutputRules {
    fatal: &[
        fatal(
            &[Needle::StartsWith("error: could not compile")],
            "building InfiniLM-Rust failed: {line}",
        ),
        fatal(
            &[
                Needle::Contains("No such file or directory"),
                Needle::Contains("NotFound"),
            ],
            "a file is missing (is `{model}` right?): {line}",
        ),
        fatal(
            &[Needle::Contains("out of memory")],
            "out of device memory: serve a smaller model or lease more devices",
        ),
    ],
    ready: &[],
    loading: &[
        Needle::StartsWith("Compiling "),
        Needle::StartsWith("Finished "),
        Needle::StartsWith("Running "),
        Needle::StartsWith("load "),
    ],
    percent_after: None,
};

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
        let program = settings.program_or("program", "cargo");
        if service.work_dir.is_none() {
            settings.error(
                "work_dir",
                "set it to the InfiniLM-Rust checkout that `cargo xtask` runs in",
            );
        }
        settings.finish()?;
        self.seen = Seen::about(&config.unwrap_or_default());
        let args = Args::new(service)
            .literal(&["xtask", "service", &self.seen.model])
            .template(&["--port", "{port}"])
            .finish()?;
        let mut plan = process_plan(service, &program, args);
        plan.readiness.path = "/".into();
        plan.liveness = None;
        Ok(plan)
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        RULES.on_output(&mut self.seen, line)
    }

    fn on_probe(&mut self, response: &HttpResponse) -> Progress {
        ready_when_answering(response)
    }

    fn on_exit(&mut self, exit: &Exit) -> ExitAdvice {
        RULES.on_exit(&self.seen, exit)
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
