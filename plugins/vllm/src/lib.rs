//! `vllm`: vLLM's OpenAI-compatible server.
//!
//! vLLM's `/health` answers 200 as soon as the API server is up, which (depending on
//! the version) can be before the engine has the model loaded; so readiness here is
//! the model list answering with at least one model.

use nanny_sdk::*;

#[derive(Default)]
struct Vllm {
    seen: Seen,
}

const MODEL_NOT_FOUND: &str =
    "model `{model}` not found: check the path or the hub id (and HF_TOKEN for gated models)";

/// How vLLM's output reads: what means waiting cannot help (and what the user
/// should do), the shard-loading percentage, and signs of life.
const RULES: OutputRules = OutputRules {
    fatal: &[
        fatal(
            &[Needle::Contains("CUDA out of memory")],
            "CUDA out of memory while loading the model: lower `--gpu-memory-utilization` or `--max-model-len`, or lease more GPUs",
        ),
        fatal(
            &[Needle::Contains("No available memory for the cache blocks")],
            "no GPU memory left for the KV cache: raise `gpu_memory_utilization` or lower `max_model_len`",
        ),
        fatal(
            &[Needle::Contains("is larger than the maximum number of tokens that can be stored in KV cache")],
            "the model's context does not fit in the KV cache: lower `max_model_len` or lease more GPUs",
        ),
        fatal(
            &[
                Needle::Contains("is not a local folder and is not a valid model identifier"),
                Needle::Contains("Invalid repository ID or local directory specified"),
                Needle::Contains("does not appear to have a file named config.json"),
                Needle::Contains("RepositoryNotFoundError"),
                Needle::Contains("HFValidationError"),
            ],
            MODEL_NOT_FOUND,
        ),
    ],
    ready: &[],
    // "Loading safetensors checkpoint shards:  50% Completed | 1/2 [...]"
    percent_after: Some("checkpoint shards:"),
    loading: &[
        Needle::Contains("Loading weights"),
        Needle::Contains("Model loading took"),
        Needle::Contains("Capturing CUDA graph"),
        Needle::Contains("Starting vLLM"),
        Needle::Contains("Initializing"),
    ],
};

impl Backend for Vllm {
    fn settings() -> Vec<SettingSpec> {
        vec![
            setting(
                "launcher",
                "`vllm` runs `vllm serve`; `python` runs `python -m vllm.entrypoints.openai.api_server`.",
                Some(Value::Text("vllm".into())),
                false,
            ),
            setting("python", "The Python interpreter for the `python` launcher.", Some(Value::Text("python3".into())), false),
            setting("served_model_name", "The model id clients ask for (default: the model).", None, false),
            setting("gpu_memory_utilization", "The share of each GPU's memory vLLM may take, 0 to 1.", None, false),
            setting("max_model_len", "The context length to serve.", None, false),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let launcher = settings.text_or("launcher", "vllm");
        let python = settings.program_or("python", "python3");
        let served_name = settings.text("served_model_name");
        let utilization = settings
            .float("gpu_memory_utilization", Some(0.0..=1.0))
            .map(|share| share.to_string());
        let max_len = settings.integer("max_model_len");
        let (program, prefix): (&str, &[&str]) = match launcher.as_str() {
            "vllm" => ("vllm", &["serve", "{model}"]),
            "python" => (
                &python,
                &[
                    "-m",
                    "vllm.entrypoints.openai.api_server",
                    "--model",
                    "{model}",
                ],
            ),
            other => {
                settings.error(
                    "launcher",
                    format!("`{other}` is neither `vllm` nor `python`"),
                );
                ("vllm", &["serve", "{model}"])
            }
        };
        let model =
            settings.required_model(service, "vLLM needs a model: a local directory or a hub id");
        settings.finish()?;
        self.seen = Seen::about(&model.unwrap_or_default());
        let tensor_parallel = (service.gpus.len() > 1).then_some(service.gpus.len());
        let args = Args::new(service)
            .template(prefix)
            .template(&["--host", "{host}", "--port", "{port}"])
            .option("--tensor-parallel-size", tensor_parallel)
            .option("--served-model-name", served_name)
            .option("--gpu-memory-utilization", utilization)
            .option("--max-model-len", max_len)
            .finish()?;
        let mut plan = process_plan(service, program, args);
        plan.readiness.path = plan.models_path.clone();
        // Freeing GPU memory and joining the engine workers takes a while.
        plan.grace_ms = Some(30_000);
        Ok(plan)
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        RULES.on_output(&mut self.seen, line)
    }

    fn on_probe(&mut self, response: &HttpResponse) -> Progress {
        match openai_models(response) {
            Ok(models) if !models.is_empty() => Progress::Ready,
            _ => Progress::Nothing,
        }
    }

    fn on_exit(&mut self, exit: &Exit) -> ExitAdvice {
        RULES.on_exit(&self.seen, exit)
    }
}

export_backend!("vllm", Vllm);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::{gpus, json_response, service};

    fn qwen_on(gpu_count: u32) -> Service {
        let mut svc = service("qwen");
        svc.model = Some("Qwen/Qwen2.5-7B-Instruct".into());
        svc.gpus = gpus(gpu_count);
        svc
    }

    #[test]
    fn tensor_parallel_follows_the_lease() {
        let plan = Vllm::default().plan(&qwen_on(4)).unwrap();
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        assert_eq!(process.program, "vllm");
        assert_eq!(
            process.args,
            [
                "serve",
                "Qwen/Qwen2.5-7B-Instruct",
                "--host",
                "127.0.0.1",
                "--port",
                "8000",
                "--tensor-parallel-size",
                "4"
            ]
        );
        let plan = Vllm::default().plan(&qwen_on(1)).unwrap();
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        assert!(!process.args.contains(&"--tensor-parallel-size".to_string()));
    }

    #[test]
    fn the_python_launcher_runs_the_api_server_module() {
        let mut svc = qwen_on(1);
        svc.settings
            .push(nanny_sdk::testing::text_setting("launcher", "python"));
        let plan = Vllm::default().plan(&svc).unwrap();
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        assert_eq!(process.program, "python3");
        assert_eq!(
            &process.args[..4],
            [
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                "Qwen/Qwen2.5-7B-Instruct"
            ]
        );
    }

    #[test]
    fn a_model_is_required() {
        let errors = Vllm::default().plan(&service("x")).unwrap_err();
        assert_eq!(errors[0].key, "model");
    }

    #[test]
    fn health_alone_is_not_ready_the_model_list_is() {
        let mut vllm = Vllm::default();
        assert_eq!(vllm.on_probe(&json_response(200, "")), Progress::Nothing);
        assert_eq!(
            vllm.on_probe(&json_response(200, r#"{"object":"list","data":[]}"#)),
            Progress::Nothing
        );
        let listed = r#"{"object":"list","data":[{"id":"Qwen/Qwen2.5-7B-Instruct","object":"model","owned_by":"vllm","max_model_len":32768}]}"#;
        assert_eq!(vllm.on_probe(&json_response(200, listed)), Progress::Ready);
    }

    #[test]
    fn loading_progress_from_real_lines() {
        let mut vllm = Vllm::default();
        assert_eq!(
            vllm.on_output(Output::Stderr, "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:03<00:03,  1.52s/it]"),
            Progress::Loading(Some(50))
        );
        assert_eq!(
            vllm.on_output(Output::Stdout, "INFO 11-20 10:00:05 [gpu_model_runner.py:1329] Model loading took 14.9889 GiB and 5.403107 seconds"),
            Progress::Loading(None)
        );
        assert_eq!(
            vllm.on_output(Output::Stdout, "INFO:     Application startup complete."),
            Progress::Nothing
        );
    }

    #[test]
    fn gives_up_on_cuda_out_of_memory() {
        let mut vllm = Vllm::default();
        vllm.plan(&qwen_on(1)).unwrap();
        let line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 224.00 MiB. GPU 0 has a total capacity of 23.55 GiB of which 100.06 MiB is free.";
        assert!(
            matches!(vllm.on_output(Output::Stderr, line), Progress::Failed(reason) if reason.contains("out of memory"))
        );
        let exit = Exit {
            code: Some(1),
            signal: None,
            last_lines: vec![],
        };
        assert!(
            matches!(vllm.on_exit(&exit), ExitAdvice::GiveUp(reason) if reason.contains("gpu-memory-utilization"))
        );
    }

    #[test]
    fn gives_up_on_a_missing_model_seen_only_at_exit() {
        let mut vllm = Vllm::default();
        let mut svc = qwen_on(1);
        svc.model = Some("/models/nope".into());
        vllm.plan(&svc).unwrap();
        let exit = Exit {
            code: Some(1),
            signal: None,
            last_lines: vec![
                "Traceback (most recent call last):".into(),
                "ValueError: Invalid repository ID or local directory specified: '/models/nope'."
                    .into(),
            ],
        };
        assert_eq!(
            vllm.on_exit(&exit),
            ExitAdvice::GiveUp("model `/models/nope` not found: check the path or the hub id (and HF_TOKEN for gated models)".into())
        );
        let crash = Exit {
            code: None,
            signal: Some(11),
            last_lines: vec!["Segmentation fault".into()],
        };
        assert_eq!(Vllm::default().on_exit(&crash), ExitAdvice::Restart);
    }
}
