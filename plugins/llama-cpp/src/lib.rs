//! `llama-cpp`: llama.cpp's `llama-server`.
//!
//! llama-server listens before the model is loaded and answers `/health` with 503
//! "Loading model" until it is, then prints "server is listening on … starting the
//! main loop"; either that line or a 200 from `/health` means ready.

use nanny_sdk::*;

#[derive(Default)]
struct LlamaCpp {
    seen: Seen,
}

/// How llama-server's output reads.
const RULES: OutputRules = OutputRules {
    fatal: &[
        fatal(
            &[
                Needle::Contains("failed to load model"),
                Needle::Contains("error loading model"),
                Needle::Contains("failed to open GGUF file"),
            ],
            "failed to load model `{model}`: {line}",
        ),
        fatal(
            &[Needle::Contains("out of memory"), Needle::Contains("unable to allocate")],
            "out of GPU memory loading `{model}`: set `gpu_layers` lower or `ctx_size` smaller ({line})",
        ),
    ],
    // Older builds: "main: server is listening on … - starting the main loop";
    // newer ones: "llama_server: listening on http://…", after "model loaded".
    ready: &[
        Needle::Both("server is listening on", "starting the main loop"),
        Needle::Contains("llama_server: listening on"),
    ],
    loading: &[
        Needle::Contains("loading model"),
        Needle::Contains("llama_model_loader:"),
        Needle::Contains("load_tensors:"),
        Needle::Contains("llama_context:"),
    ],
    percent_after: None,
};

impl Backend for LlamaCpp {
    fn settings() -> Vec<SettingSpec> {
        vec![
            setting(
                "program",
                "The llama-server binary.",
                Some(Value::Text("llama-server".into())),
                false,
            ),
            setting(
                "gpu_layers",
                "Layers to offload (-ngl); default: all of them with a GPU lease, none without.",
                None,
                false,
            ),
            setting(
                "ctx_size",
                "The context size (-c); default: the model's.",
                None,
                false,
            ),
            setting(
                "alias",
                "The model id clients ask for (default: the file name).",
                None,
                false,
            ),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let program = settings.program_or("program", "llama-server");
        let default_layers = if service.gpus.is_empty() { 0 } else { 999 };
        let gpu_layers = settings.integer("gpu_layers").unwrap_or(default_layers);
        let ctx_size = settings.integer("ctx_size");
        let alias = settings.text("alias");
        let model = settings.required_model(
            service,
            "llama-server needs a model: the path of a .gguf file",
        );
        settings.finish()?;
        self.seen = Seen::about(&model.unwrap_or_default());
        let args = Args::new(service)
            .template(&["-m", "{model}", "--host", "{host}", "--port", "{port}"])
            .option("-ngl", Some(gpu_layers))
            .option("-c", ctx_size)
            .option("--alias", alias)
            .finish()?;
        Ok(process_plan(service, &program, args))
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        RULES.on_output(&mut self.seen, line)
    }

    fn on_probe(&mut self, response: &HttpResponse) -> Progress {
        match response.status {
            200 => Progress::Ready,
            503 => Progress::Loading(None),
            _ => Progress::Nothing,
        }
    }

    fn on_exit(&mut self, exit: &Exit) -> ExitAdvice {
        RULES.on_exit(&self.seen, exit)
    }
}

export_backend!("llama-cpp", LlamaCpp);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::{gpus, json_response, service};

    fn tiny() -> Service {
        let mut svc = service("tiny");
        svc.model = Some("/models/tiny.gguf".into());
        svc
    }

    fn args_of(plan: Plan) -> Vec<String> {
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        process.args
    }

    #[test]
    fn gpu_layers_follow_the_lease() {
        let cpu = args_of(LlamaCpp::default().plan(&tiny()).unwrap());
        assert_eq!(
            cpu,
            [
                "-m",
                "/models/tiny.gguf",
                "--host",
                "127.0.0.1",
                "--port",
                "8000",
                "-ngl",
                "0"
            ]
        );
        let mut svc = tiny();
        svc.gpus = gpus(1);
        let gpu = args_of(LlamaCpp::default().plan(&svc).unwrap());
        assert_eq!(&gpu[6..], ["-ngl", "999"]);
    }

    #[test]
    fn ready_on_the_main_loop_line_loading_before() {
        let mut llama = LlamaCpp::default();
        let lines = [
            ("main: HTTP server is listening, hostname: 127.0.0.1, port: 8080, http threads: 3", Progress::Nothing),
            ("main: loading model", Progress::Loading(None)),
            (
                "llama_model_loader: loaded meta data with 23 key-value pairs and 201 tensors from /models/tiny.gguf (version GGUF V3 (latest))",
                Progress::Loading(None),
            ),
            ("main: server is listening on http://127.0.0.1:8080 - starting the main loop", Progress::Ready),
            ("0.00.012.055 I srv  llama_server: listening on http://127.0.0.1:18999", Progress::Ready),
            ("0.00.005.275 I srv    load_model: loading model '/m/tiny.gguf'", Progress::Loading(None)),
        ];
        for (line, expected) in lines {
            assert_eq!(llama.on_output(Output::Stderr, line), expected, "{line}");
        }
    }

    #[test]
    fn health_503_is_loading_200_is_ready() {
        let mut llama = LlamaCpp::default();
        let loading =
            r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;
        assert_eq!(
            llama.on_probe(&json_response(503, loading)),
            Progress::Loading(None)
        );
        assert_eq!(
            llama.on_probe(&json_response(200, r#"{"status":"ok"}"#)),
            Progress::Ready
        );
    }

    #[test]
    fn gives_up_when_the_model_fails_to_load() {
        let mut llama = LlamaCpp::default();
        llama.plan(&tiny()).unwrap();
        let exit = Exit {
            code: Some(1),
            signal: None,
            last_lines: vec![
                "gguf_init_from_file: failed to open GGUF file '/models/tiny.gguf'".into(),
                "llama_model_load: error loading model: llama_model_loader: failed to load model from /models/tiny.gguf".into(),
                "main: exiting due to model loading error".into(),
            ],
        };
        let ExitAdvice::GiveUp(reason) = llama.on_exit(&exit) else {
            panic!("restarted a hopeless model")
        };
        assert!(
            reason.starts_with("failed to load model `/models/tiny.gguf`"),
            "{reason}"
        );
        assert_eq!(
            LlamaCpp::default().on_exit(&Exit {
                code: None,
                signal: Some(9),
                last_lines: vec![]
            }),
            ExitAdvice::Restart
        );
    }
}
