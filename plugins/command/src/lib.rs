//! `command`: any program that serves HTTP.

use nanny_sdk::*;
use regex_lite::Regex;

#[derive(Default)]
struct Command {
    ready_line: Option<Regex>,
}

impl Backend for Command {
    fn settings() -> Vec<SettingSpec> {
        vec![
            setting(
                "command",
                "The program and its arguments; {host}, {port}, {model} and {name} are filled in.",
                None,
                true,
            ),
            setting(
                "health_path",
                "The path that answers 2xx once the program is ready; \"\" for a program that serves no HTTP (then set ready_line).",
                Some(Value::Text("/health".into())),
                false,
            ),
            models_path_setting(),
            setting(
                "ready_line",
                "A regular expression; an output line matching it means ready.",
                None,
                false,
            ),
        ]
    }

    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        let settings = Settings::new(&service.settings);
        let command = settings.list("command").unwrap_or_default();
        // An empty first word would launch nothing (the conformance kit found it).
        if command
            .first()
            .is_none_or(|program| program.trim().is_empty())
        {
            settings.error("command", "is required: the program and its arguments, e.g. [\"my-server\", \"--port\", \"{port}\"]");
        }
        let (health_path, models_path) = settings.http_paths(true);
        if let Some(pattern) = settings.text("ready_line") {
            match Regex::new(&pattern) {
                Ok(regex) => self.ready_line = Some(regex),
                Err(error) => settings.error(
                    "ready_line",
                    format!("is not a valid regular expression: {error}"),
                ),
            }
        }
        let words = Args::new(service).template(&command).finish();
        settings.finish()?;
        let mut words = words?.into_iter();
        let program = words.next().unwrap_or_default();
        let mut plan = process_plan(service, &program, words.collect());
        // An empty readiness path tells nanny not to probe at all.
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

export_backend!("command", Command);

#[cfg(test)]
mod tests {
    use super::*;
    use nanny_sdk::testing::{service, text_setting};

    fn with_command(words: &[&str]) -> Service {
        let mut svc = service("web");
        svc.settings.push(Setting {
            key: "command".into(),
            value: Value::List(words.iter().map(|w| w.to_string()).collect()),
        });
        svc
    }

    #[test]
    fn plans_the_command_with_placeholders_filled() {
        let mut svc = with_command(&["python3", "-m", "http.server", "{port}", "--bind", "{host}"]);
        svc.args.push("--directory=/srv".into());
        let plan = Command::default().plan(&svc).unwrap();
        let Launch::Process(process) = plan.launch else {
            panic!("not a process")
        };
        assert_eq!(process.program, "python3");
        assert_eq!(
            process.args,
            [
                "-m",
                "http.server",
                "8000",
                "--bind",
                "127.0.0.1",
                "--directory=/srv"
            ]
        );
        assert_eq!(plan.readiness.path, "/health");
        assert_eq!(plan.models_path, "/v1/models");
    }

    #[test]
    fn ready_line_decides_readiness_from_output() {
        let mut svc = with_command(&["python3", "-m", "http.server", "{port}"]);
        svc.settings
            .push(text_setting("ready_line", r"^Serving HTTP on \S+ port \d+"));
        let mut backend = Command::default();
        backend.plan(&svc).unwrap();
        assert_eq!(
            backend.on_output(Output::Stderr, "Traceback (most recent call last):"),
            Progress::Nothing
        );
        assert_eq!(
            backend.on_output(
                Output::Stdout,
                "Serving HTTP on 0.0.0.0 port 8000 (http://0.0.0.0:8000/) ..."
            ),
            Progress::Ready
        );
    }

    #[test]
    fn an_empty_health_path_means_no_http_probes() {
        let mut svc = with_command(&["worker"]);
        svc.settings.push(text_setting("health_path", ""));
        svc.settings.push(text_setting("ready_line", "^started"));
        let plan = Command::default().plan(&svc).unwrap();
        assert_eq!(plan.readiness.path, "");
        assert_eq!(plan.liveness, None);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut svc = service("web");
        svc.settings.push(text_setting("ready_line", "(unclosed"));
        svc.settings.push(text_setting("health_path", "health"));
        let errors = Command::default().plan(&svc).unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["command", "health_path", "ready_line"]);
    }
}
