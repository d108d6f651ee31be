//! `hello`: a complete nanny plugin. It runs `hello-server --port PORT`, is ready
//! when the server prints "hello: ready", and gives up when the port is taken.

use nanny_sdk::*;

#[derive(Default)]
struct Hello;

impl Backend for Hello {
    fn settings() -> Vec<SettingSpec> {
        vec![setting(
            "greeting",
            "What the server says on GET /.",
            Some(Value::Text("hello".into())),
            false,
        )]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let greeting = settings.text_or("greeting", "hello");
        settings.finish()?;
        let args = Args::new(service)
            .template(&["--port", "{port}"])
            .option("--greeting", Some(greeting))
            .finish()?;
        Ok(process_plan(service, "hello-server", args))
    }

    fn on_output(&mut self, _source: Output, line: &str) -> Progress {
        if line.contains("hello: ready") {
            Progress::Ready
        } else {
            Progress::Nothing
        }
    }

    fn on_exit(&mut self, exit: &Exit) -> ExitAdvice {
        match exit.line_containing(&["Address already in use"]) {
            Some(line) => ExitAdvice::GiveUp(format!("the port is taken: {line}")),
            None => ExitAdvice::Restart,
        }
    }
}

export_backend!("hello", Hello);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_the_port_and_greeting() {
        let plan = Hello.plan(&nanny_sdk::testing::service("hi")).unwrap();
        let Launch::Process(process) = plan.launch else { panic!("not a process") };
        assert_eq!(process.args, ["--port", "8000", "--greeting", "hello"]);
    }
}
