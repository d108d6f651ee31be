//! `mock`: runs `nanny mock-backend`, the fake OpenAI server, so nanny can be tried
//! and tested without a GPU.

use nanny_sdk::*;

#[derive(Default)]
struct Mock;

impl Backend for Mock {
    fn settings() -> Vec<SettingSpec> {
        vec![
            setting(
                "models",
                "The model ids the fake server lists and answers for.",
                Some(Value::List(vec!["mock".into()])),
                false,
            ),
            setting(
                "startup_delay_ms",
                "How long the fake server pretends to load before it listens.",
                Some(Value::Integer(0)),
                false,
            ),
            setting(
                "vram_estimate_mib",
                "The GPU memory the plan claims to need, as a real backend's plugin estimates it.",
                None,
                false,
            ),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let models = settings
            .list("models")
            .or_else(|| service.model.clone().map(|model| vec![model]))
            .unwrap_or_else(|| vec!["mock".to_string()]);
        let delay = settings.integer("startup_delay_ms").unwrap_or(0);
        let vram_estimate = settings.integer("vram_estimate_mib");
        if delay < 0 {
            settings.error("startup_delay_ms", "must not be negative");
        }
        settings.finish()?;
        let mut args =
            Args::new(service).template(&["mock-backend", "--host", "{host}", "--port", "{port}"]);
        for model in &models {
            args = args.literal(&["--model", model]);
        }
        let args = args
            .option("--startup-delay-ms", (delay > 0).then_some(delay))
            .finish()?;
        let mut plan = process_plan(service, "nanny", args);
        plan.grace_ms = Some(2_000);
        plan.vram_mib = vram_estimate.and_then(|mib| u64::try_from(mib).ok());
        Ok(plan)
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        if line.starts_with("mock-backend listening on ") {
            Progress::Ready
        } else if let Some(percent) = line.strip_prefix("mock-backend loading ") {
            Progress::Loading(percent.trim_end_matches('%').parse().ok())
        } else {
            Progress::Nothing
        }
    }
}

export_backend!("mock", Mock);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::service;

    #[test]
    fn runs_nanny_mock_backend_with_the_configured_models() {
        let mut svc = service("fake");
        svc.settings.push(Setting {
            key: "models".into(),
            value: Value::List(vec!["a".into(), "b".into()]),
        });
        let plan = Mock.plan(&svc).unwrap();
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        assert_eq!(process.program, "nanny");
        assert_eq!(
            process.args,
            [
                "mock-backend",
                "--host",
                "127.0.0.1",
                "--port",
                "8000",
                "--model",
                "a",
                "--model",
                "b"
            ]
        );
    }

    #[test]
    fn reads_loading_and_ready_lines() {
        assert_eq!(
            Mock.on_output(Output::Stdout, "mock-backend loading 40%"),
            Progress::Loading(Some(40))
        );
        assert_eq!(
            Mock.on_output(
                Output::Stdout,
                "mock-backend listening on http://127.0.0.1:8000"
            ),
            Progress::Ready
        );
        assert_eq!(
            Mock.on_output(Output::Stderr, "GET /health 200"),
            Progress::Nothing
        );
    }
}
