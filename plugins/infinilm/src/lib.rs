//! `infinilm`: InfiniLM's Python server, `scripts/launch_server.py`.
//!
//! The script loads the model in its FastAPI lifespan hook, so uvicorn only accepts
//! connections once the model is in memory: any HTTP answer means ready. It has no
//! health or model-list route, so the model list falls back to the model directory.

use nanny_sdk::*;

#[derive(Default)]
struct InfiniLm {
    seen: Seen,
}

/// How InfiniLM's server reads. Not a bare "out of memory": the start-up
/// banner says "Try reduce this value if out of memory error occurs".
const RULES: OutputRules = OutputRules {
    fatal: &[
        fatal(
            &[
                Needle::Contains("CUDA out of memory"),
                Needle::Contains("OutOfMemoryError"),
                Needle::Contains("error: out of memory"),
            ],
            "out of device memory: lower `max_batch` or `max_tokens`, or lease more devices",
        ),
        fatal(
            &[Needle::Contains("FileNotFoundError"), Needle::Contains("No such file or directory")],
            "model directory `{model}` or one of its files is missing: {line}",
        ),
        fatal(
            &[Needle::Contains("ModuleNotFoundError"), Needle::Both("libinfinicore_infer", "cannot open")],
            "InfiniLM is not installed for this Python (run `xmake install` and check INFINI_ROOT): {line}",
        ),
    ],
    ready: &[
        Needle::Contains("Application startup complete"),
        Needle::Contains("Uvicorn running on"),
    ],
    loading: &[
        Needle::Contains("Using MAX_BATCH"),
        Needle::Contains("Waiting for application startup"),
    ],
    percent_after: None,
};

impl Backend for InfiniLm {
    fn settings() -> Vec<SettingSpec> {
        let text = |s: &str| Some(Value::Text(s.into()));
        vec![
            setting("python", "The Python interpreter.", text("python3"), false),
            setting(
                "script",
                "The server script, relative to `work_dir` (the InfiniLM checkout).",
                text("scripts/launch_server.py"),
                false,
            ),
            setting(
                "device",
                "The --dev device type; default `nvidia` with a GPU lease, `cpu` without.",
                None,
                false,
            ),
            setting(
                "max_batch",
                "Requests batched together (--max-batch).",
                None,
                false,
            ),
            setting(
                "max_tokens",
                "Longest sequence served (--max-tokens).",
                None,
                false,
            ),
            setting(
                "awq",
                "Load an AWQ-quantised model (--awq).",
                Some(Value::Boolean(false)),
                false,
            ),
            setting(
                "port_flag",
                "The flag that sets the port; empty for scripts that always listen on 8000.",
                text("--port"),
                false,
            ),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let python = settings.program_or("python", "python3");
        let script = settings.text_or("script", "scripts/launch_server.py");
        let device = settings.text("device").unwrap_or_else(|| {
            if service.gpus.is_empty() {
                "cpu"
            } else {
                "nvidia"
            }
            .into()
        });
        let max_batch = settings.integer("max_batch");
        let max_tokens = settings.integer("max_tokens");
        let awq = settings.boolean("awq").unwrap_or(false);
        let port_flag = settings.text_or("port_flag", "--port");
        let model = settings.required_model(
            service,
            "InfiniLM needs a model: the path of the model directory",
        );
        settings.finish()?;
        self.seen = Seen::about(&model.unwrap_or_default());
        let mut args = Args::new(service)
            .literal(&[script])
            .template(&["--model-path", "{model}"])
            .option("--dev", Some(device))
            .option("--ndev", Some(service.gpus.len().max(1)))
            .option("--max-batch", max_batch)
            .option("--max-tokens", max_tokens);
        if awq {
            args = args.literal(&["--awq"]);
        }
        let args = args
            .option(&port_flag, (!port_flag.is_empty()).then_some(service.port))
            .finish()?;
        let mut plan = process_plan(service, &python, args);
        plan.readiness.path = "/".into();
        plan.liveness = None;
        plan.models_path = "/models".into();
        Ok(plan)
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        RULES.on_output(&mut self.seen, line)
    }

    fn on_probe(&mut self, response: &HttpResponse) -> Progress {
        ready_when_answering(response)
    }

    fn models(&mut self, response: &HttpResponse) -> Result<Vec<Model>, String> {
        openai_models(response).or_else(|_| {
            let id = self
                .seen
                .model
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            Ok(vec![Model {
                id: id.to_string(),
                owned_by: Some("infinilm".into()),
                context_length: None,
            }])
        })
    }

    fn on_exit(&mut self, exit: &Exit) -> ExitAdvice {
        RULES.on_exit(&self.seen, exit)
    }
}

export_backend!("infinilm", InfiniLm);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::{gpus, json_response, service};

    fn jiuge() -> Service {
        let mut svc = service("jiuge");
        svc.model = Some("/models/9G7B_MHA/".into());
        svc.work_dir = Some("/opt/InfiniLM".into());
        svc.gpus = gpus(2);
        svc
    }

    #[test]
    fn launches_the_script_on_the_leased_devices() {
        let plan = InfiniLm::default().plan(&jiuge()).unwrap();
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        assert_eq!(process.program, "python3");
        assert_eq!(process.work_dir.as_deref(), Some("/opt/InfiniLM"));
        assert_eq!(
            process.args,
            [
                "scripts/launch_server.py",
                "--model-path",
                "/models/9G7B_MHA/",
                "--dev",
                "nvidia",
                "--ndev",
                "2",
                "--port",
                "8000"
            ]
        );
    }

    #[test]
    fn ready_once_uvicorn_runs() {
        let mut lm = InfiniLm::default();
        assert_eq!(
            lm.on_output(
                Output::Stdout,
                "Using MAX_BATCH=3. Try reduce this value if out of memory error occurs."
            ),
            Progress::Loading(None)
        );
        assert_eq!(
            lm.on_output(Output::Stderr, "INFO:     Application startup complete."),
            Progress::Ready
        );
        assert!(matches!(
            lm.on_output(Output::Stderr, "RuntimeError: CUDA error: out of memory"),
            Progress::Failed(_)
        ));
        assert_eq!(
            lm.on_probe(&json_response(405, r#"{"detail":"Method Not Allowed"}"#)),
            Progress::Ready
        );
    }

    #[test]
    fn the_model_list_falls_back_to_the_model_directory() {
        let mut lm = InfiniLm::default();
        lm.plan(&jiuge()).unwrap();
        let models = lm
            .models(&json_response(404, r#"{"detail":"Not Found"}"#))
            .unwrap();
        assert_eq!(models[0].id, "9G7B_MHA");
    }

    #[test]
    fn gives_up_when_the_model_directory_is_missing() {
        let mut lm = InfiniLm::default();
        lm.plan(&jiuge()).unwrap();
        let line = "FileNotFoundError: [Errno 2] No such file or directory: '/models/9G7B_MHA/config.json'";
        assert!(matches!(
            lm.on_output(Output::Stderr, line),
            Progress::Failed(_)
        ));
        let exit = Exit {
            code: Some(1),
            signal: None,
            last_lines: vec![],
        };
        assert!(
            matches!(lm.on_exit(&exit), ExitAdvice::GiveUp(reason) if reason.contains("/models/9G7B_MHA/"))
        );
    }
}
