//! The conformance kit behind `nanny plugins test FILE.wasm`: a plugin, loaded
//! in the production sandbox, is walked through the calls the daemon makes —
//! with ordinary inputs and with the odd ones real backends produce — and
//! every answer is checked. A plugin author runs it before any user finds out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    Gpu, HttpResponse, Launch, Output, Plan, Plugin, PluginSession, Service, Setting, Value,
};

/// One check and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// Why it failed, or what was seen.
    pub detail: String,
}

/// Everything the kit found about one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plugin: String,
    pub version: String,
    pub wit_version: String,
    pub checks: Vec<Check>,
    /// The slowest call, against the sandbox's deadline per call.
    pub slowest_call_ms: f64,
    pub call_deadline_ms: f64,
    /// The most linear memory an instance grew to, against the cap.
    pub peak_memory_bytes: usize,
    pub memory_cap_bytes: usize,
}

impl Report {
    pub fn conforms(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }
}

/// The service keys a plan's config error may name, beside the plugin's settings.
const SERVICE_KEYS: [&str; 6] = ["model", "port", "host", "args", "env", "work_dir"];

/// Runs every scenario on `plugin` (twice, on fresh instances, to see that the
/// same inputs give the same answers).
pub fn test(plugin: &Arc<Plugin>) -> Report {
    let limits = plugin.engine.limits;
    let mut report = Report {
        plugin: plugin.info.name.clone(),
        version: plugin.info.version.clone(),
        wit_version: plugin.info.wit_version.clone(),
        checks: describe_checks(plugin),
        slowest_call_ms: 0.0,
        call_deadline_ms: limits.call_deadline.as_secs_f64() * 1000.0,
        peak_memory_bytes: 0,
        memory_cap_bytes: limits.memory_bytes,
    };
    let first = Run::through(plugin);
    let second = Run::through(plugin);
    report.slowest_call_ms = first.slowest.max(second.slowest).as_secs_f64() * 1000.0;
    report.peak_memory_bytes = first.peak_memory.max(second.peak_memory);
    let same = first.answers == second.answers;
    report.checks.extend(first.checks);
    let differing = first
        .answers
        .iter()
        .zip(&second.answers)
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("first {a}, then {b}"));
    report.checks.push(Check {
        name: "the same inputs give the same answers".into(),
        passed: same,
        detail: differing.unwrap_or_else(|| format!("{} answers compared", first.answers.len())),
    });
    report.checks.push(Check {
        name: "calls stay within the sandbox's limits".into(),
        passed: report.slowest_call_ms <= report.call_deadline_ms
            && report.peak_memory_bytes <= report.memory_cap_bytes,
        detail: format!(
            "slowest call {:.1} ms of {:.0} ms; memory {} KiB of {} KiB",
            report.slowest_call_ms,
            report.call_deadline_ms,
            report.peak_memory_bytes >> 10,
            report.memory_cap_bytes >> 10
        ),
    });
    report
}

/// `describe`: a valid name, a semantic version, a summary, settings with help.
fn describe_checks(plugin: &Plugin) -> Vec<Check> {
    let info = &plugin.info;
    let semver = info.version.split('.').count() == 3
        && info
            .version
            .split(['.', '-', '+'])
            .take(3)
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    let mut checks = vec![
        Check {
            name: "describe: a semantic version".into(),
            passed: semver,
            detail: format!("`{}`", info.version.escape_default()),
        },
        Check {
            name: "describe: a summary".into(),
            passed: !info.summary.trim().is_empty(),
            detail: format!("`{}`", info.summary.escape_default()),
        },
    ];
    let mut keys: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    for setting in &info.settings {
        let key = setting.key.as_str();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            problems.push(format!("`{}` is not snake_case", key.escape_default()));
        }
        if keys.contains(&key) {
            problems.push(format!("`{key}` is described twice"));
        }
        if setting.help.trim().is_empty() {
            problems.push(format!("`{key}` has no help"));
        }
        keys.push(key);
    }
    checks.push(Check {
        name: "describe: settings with snake_case keys, once each, with help".into(),
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{} setting(s)", info.settings.len())
        } else {
            problems.join("; ")
        },
    });
    checks
}

/// One pass through every scenario on fresh instances.
struct Run {
    checks: Vec<Check>,
    /// Each answer, written out, in order: compared between passes.
    answers: Vec<String>,
    slowest: Duration,
    peak_memory: usize,
}

impl Run {
    fn through(plugin: &Arc<Plugin>) -> Self {
        let mut run = Self {
            checks: Vec::new(),
            answers: Vec::new(),
            slowest: Duration::ZERO,
            peak_memory: 0,
        };
        run.plans(plugin);
        run.reading(plugin);
        run
    }

    /// Times one call, keeps its answer and the instance's memory.
    fn call<R: std::fmt::Debug>(
        &mut self,
        session: &mut PluginSession,
        call: impl FnOnce(&mut PluginSession) -> Result<R, super::PluginError>,
    ) -> Result<R, String> {
        let began = Instant::now();
        let answer = call(session);
        self.slowest = self.slowest.max(began.elapsed());
        self.peak_memory = self.peak_memory.max(session.peak_memory());
        let answer = answer.map_err(|error| error.to_string());
        self.answers.push(format!("{answer:?}"));
        answer
    }

    fn check(&mut self, name: String, outcome: Result<String, String>) {
        let (passed, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
    }

    /// `plan` for sample services: it plans, or names real keys in its refusal.
    fn plans(&mut self, plugin: &Arc<Plugin>) {
        let settable: Vec<&str> = plugin
            .info
            .settings
            .iter()
            .map(|s| s.key.as_str())
            .collect();
        for (label, service) in sample_services(plugin) {
            let mut session = PluginSession::new(plugin.clone(), service);
            let outcome = match self.call(&mut session, PluginSession::plan) {
                Err(error) => Err(format!("the call failed: {error}")),
                Ok(Ok(plan)) => check_plan(&plan),
                Ok(Err(errors)) => {
                    let strangers: Vec<String> = errors
                        .iter()
                        .filter(|e| {
                            !SERVICE_KEYS.contains(&e.key.as_str())
                                && !settable.contains(&e.key.as_str())
                        })
                        .map(|e| format!("`{}`", e.key.escape_default()))
                        .collect();
                    if errors.is_empty() {
                        Err("refused with no config error to show".into())
                    } else if strangers.is_empty() {
                        Ok(format!(
                            "refused, naming {}",
                            errors
                                .iter()
                                .map(|e| e.key.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    } else {
                        Err(format!(
                            "refused naming unknown key(s) {}",
                            strangers.join(", ")
                        ))
                    }
                }
            };
            self.check(format!("plan: {label}"), outcome);
        }
    }

    /// Output lines, probe answers, model lists and exits, ordinary and odd.
    fn reading(&mut self, plugin: &Arc<Plugin>) {
        let service = sample_services(plugin).swap_remove(0).1;
        let mut session = PluginSession::new(plugin.clone(), service);
        let lines: [(&str, String); 6] = [
            ("an empty line", String::new()),
            ("a 64 KiB line", "x".repeat(64 << 10)),
            (
                "control characters",
                "\u{0}\u{1}\u{7}\u{1b}[31mred\u{1b}[0m\r".into(),
            ),
            (
                "replacement characters (bytes that were not UTF-8)",
                "\u{fffd}\u{fffd}abc\u{fffd}".into(),
            ),
            (
                "a log line",
                "INFO 12-02 10:00:00 Loading model weights took 1.2 GB".into(),
            ),
            (
                "a traceback line",
                "Traceback (most recent call last):".into(),
            ),
        ];
        for (label, line) in &lines {
            for source in [Output::Stdout, Output::Stderr] {
                let outcome = self
                    .call(&mut session, |s| s.on_output(source, line))
                    .map(|progress| format!("{progress:?}"));
                self.check(format!("on-output: {label} on {source:?}"), outcome);
            }
        }
        let garbage: Vec<u8> = (0u8..=255).rev().cycle().take(4096).collect();
        let answers: [(&str, u16, Vec<u8>); 5] = [
            ("200 with JSON", 200, br#"{"status":"ok"}"#.to_vec()),
            ("404", 404, b"Not Found".to_vec()),
            ("503 while loading", 503, br#"{"error":"loading"}"#.to_vec()),
            ("200 with garbage bytes", 200, garbage.clone()),
            ("200 with no body", 200, Vec::new()),
        ];
        for (label, status, body) in &answers {
            let response = HttpResponse {
                status: *status,
                content_type: Some("application/json".into()),
                body: body.clone(),
            };
            let outcome = self
                .call(&mut session, |s| s.on_probe(&response))
                .map(|progress| format!("{progress:?}"));
            self.check(format!("on-probe: {label}"), outcome);
        }
        let lists: [(&str, Vec<u8>); 5] = [
            ("not JSON", b"not json".to_vec()),
            ("cut short", br#"{"data": [{"id": "#.to_vec()),
            ("the wrong shape", br#"{"data": 5}"#.to_vec()),
            ("garbage bytes", garbage),
            (
                "an OpenAI list",
                br#"{"object":"list","data":[{"id":"m","object":"model"}]}"#.to_vec(),
            ),
        ];
        for (label, body) in &lists {
            let response = HttpResponse {
                status: 200,
                content_type: Some("application/json".into()),
                body: body.clone(),
            };
            let outcome =
                self.call(&mut session, |s| s.models(&response))
                    .map(|models| match models {
                        Ok(models) => format!("{} model(s)", models.len()),
                        Err(reason) => format!("refused: {reason}"),
                    });
            self.check(format!("models: {label}"), outcome);
        }
        let many: Vec<String> = (0..1000).map(|n| format!("line {n}")).collect();
        /// (what, exit code, signal, last lines)
        type Ending<'a> = (&'a str, Option<i32>, Option<i32>, Vec<String>);
        let exits: [Ending; 4] = [
            ("exit 0, no lines", Some(0), None, Vec::new()),
            (
                "exit 1 with an error line",
                Some(1),
                None,
                vec!["error: out of memory".into()],
            ),
            ("killed by signal 9", None, Some(9), Vec::new()),
            ("no code, 1000 lines", None, None, many),
        ];
        for (label, code, signal, last) in &exits {
            let outcome = self
                .call(&mut session, |s| s.on_exit(*code, *signal, last))
                .map(|advice| format!("{advice:?}"));
            self.check(format!("on-exit: {label}"), outcome);
        }
    }
}

/// What a plan must hold for the host to run it.
fn check_plan(plan: &Plan) -> Result<String, String> {
    let mut problems = Vec::new();
    match &plan.launch {
        Launch::Process(process) if process.program.trim().is_empty() => {
            problems.push("the process has no program".to_string())
        }
        Launch::Container(container) if container.image.trim().is_empty() => {
            problems.push("the container has no image".to_string())
        }
        Launch::Compose(compose) if compose.service.as_deref().is_some_and(str::is_empty) => {
            problems.push("the compose project names an empty service".to_string())
        }
        _ => {}
    }
    for (what, probe) in std::iter::once(("readiness", &plan.readiness))
        .chain(plan.liveness.as_ref().map(|p| ("liveness", p)))
    {
        if !probe.path.starts_with('/') {
            problems.push(format!(
                "the {what} probe's path `{}` does not start with `/`",
                probe.path.escape_default()
            ));
        }
        if probe.period_ms == 0 || probe.timeout_ms == 0 {
            problems.push(format!("the {what} probe has a zero period or timeout"));
        }
    }
    if !plan.models_path.starts_with('/') {
        problems.push(format!(
            "`models-path` `{}` does not start with `/`",
            plan.models_path.escape_default()
        ));
    }
    if problems.is_empty() {
        Ok(match &plan.launch {
            Launch::Process(process) => format!("runs `{}`", process.program.escape_default()),
            Launch::Container(container) => {
                format!("runs the image `{}`", container.image.escape_default())
            }
            Launch::Compose(compose) => format!(
                "brings up the compose project in `{}`",
                compose.work_dir.as_deref().unwrap_or(".").escape_default()
            ),
        })
    } else {
        Err(problems.join("; "))
    }
}

/// Services to plan: ordinary, with GPUs and extras, and with each setting at
/// odd values of its type.
fn sample_services(plugin: &Plugin) -> Vec<(String, Service)> {
    let defaults: Vec<Setting> = plugin
        .info
        .settings
        .iter()
        .filter_map(|spec| {
            Some(Setting {
                key: spec.key.clone(),
                value: from_json(spec.default.as_ref()?)?,
            })
        })
        .collect();
    let base = Service {
        name: "conformance".into(),
        host: "127.0.0.1".into(),
        port: 18_080,
        model: Some("org/model".into()),
        args: Vec::new(),
        env: Vec::new(),
        work_dir: None,
        gpus: Vec::new(),
        settings: defaults.clone(),
    };
    let mut services = vec![(
        "a model, settings at their defaults".to_string(),
        base.clone(),
    )];
    services.push((
        "two GPUs, no model, extra args and env".into(),
        Service {
            model: None,
            args: vec!["--extra".into(), "1".into()],
            env: vec![("HF_HOME".into(), "/tmp/hf".into())],
            work_dir: Some("/tmp".into()),
            gpus: (0..2)
                .map(|index| Gpu {
                    index,
                    uuid: format!("GPU-conformance-{index}"),
                    memory_mib: 81_559,
                })
                .collect(),
            ..base.clone()
        },
    ));
    for spec in &plugin.info.settings {
        let odd: Vec<Value> = match spec.default.as_ref().and_then(from_json) {
            Some(Value::Integer(_)) => vec![
                Value::Integer(0),
                Value::Integer(-1),
                Value::Integer(i64::MAX),
            ],
            Some(Value::Float(_)) => vec![
                Value::Float(0.0),
                Value::Float(-1.0),
                Value::Float(f64::MAX),
            ],
            Some(Value::Boolean(flag)) => vec![Value::Boolean(!flag)],
            Some(Value::List(_)) => vec![
                Value::List(Vec::new()),
                Value::List(vec!["x".repeat(4096); 100]),
            ],
            _ => vec![
                Value::Text(String::new()),
                Value::Text("é\u{0}\"'$(rm -rf /)".into()),
            ],
        };
        for value in odd {
            let mut settings: Vec<Setting> = defaults
                .iter()
                .filter(|s| s.key != spec.key)
                .cloned()
                .collect();
            settings.push(Setting {
                key: spec.key.clone(),
                value: value.clone(),
            });
            services.push((
                format!(
                    "`{}` = {}",
                    spec.key,
                    short(&super::value_json(&value).to_string())
                ),
                Service {
                    settings,
                    ..base.clone()
                },
            ));
        }
    }
    services
}

fn short(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text.to_string()
    }
}

fn from_json(value: &serde_json::Value) -> Option<Value> {
    Some(match value {
        serde_json::Value::String(text) => Value::Text(text.clone()),
        serde_json::Value::Bool(flag) => Value::Boolean(*flag),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(integer) => Value::Integer(integer),
            None => Value::Float(number.as_f64()?),
        },
        serde_json::Value::Array(items) => Value::List(
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_string)
                })
                .collect(),
        ),
        _ => return None,
    })
}
