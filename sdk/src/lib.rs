//! Write a nanny backend plugin.
//!
//! A plugin *decides*; nanny does the I/O. Implement [`Backend`] (only
//! [`Backend::plan`] is required) and export it:
//!
//! ```no_run
//! use nanny_sdk::*;
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Backend for Hello {
//!     fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
//!         let args = Args::new(service).template(&["--port", "{port}"]).finish()?;
//!         Ok(process_plan(service, "hello-server", args))
//!     }
//! }
//!
//! export_backend!("hello", Hello);
//! ```
//!
//! The crate's `description` in Cargo.toml becomes the plugin's summary and its
//! `version` the plugin version. Build with `cargo build --target wasm32-wasip2`.
//!
//! A plan launches a process, a container, or a Docker Compose project
//! ([`Launch::Compose`], since contract 0.2.0). This SDK builds plugins for
//! `nanny:backend@0.2.0` ([`WIT_VERSION`]); nanny still runs plugins built
//! with the 0.1 SDK as they are.

mod args;
mod models;
mod rules;
mod settings;
pub mod testing;

pub use args::{expand, Args};
pub use models::openai_models;
pub use rules::{fatal, Fatal, Needle, OutputRules, Seen};
pub use settings::Settings;
/// Re-exported so a plugin crate depends on `nanny-sdk` alone.
pub use wit_bindgen;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "backend",
        pub_export_macro: true,
        export_macro_name: "__export_backend_world",
        default_bindings_module: "nanny_sdk::bindings",
        // Lets plugin tests compare plans and progress with `assert_eq!`.
        additional_derives: [PartialEq],
    });
}

pub use bindings::nanny::backend::host::Level;
pub use bindings::nanny::backend::types::{
    Compose, ConfigError, Container, ExitAdvice, Gpu, HttpResponse, Launch, Model, Mount, Output,
    Plan, PluginInfo, Probe, Process, Progress, Service, Setting, SettingSpec, Value,
};

/// The version of the WIT contract this SDK builds plugins for.
pub const WIT_VERSION: &str = "0.2.0";

/// How a backend process ended, as `on-exit` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, when the backend exited by itself.
    pub code: Option<i32>,
    /// The signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// Its final lines of output, oldest first.
    pub last_lines: Vec<String>,
}

impl Exit {
    /// The last line among `last_lines` that contains any of `needles`.
    pub fn line_containing(&self, needles: &[&str]) -> Option<&str> {
        self.last_lines
            .iter()
            .rev()
            .find(|line| needles.iter().any(|needle| line.contains(needle)))
            .map(String::as_str)
    }
}

/// One backend type. nanny creates one value per launch with `Default`, so a
/// backend may keep state between calls (the model path it planned, lines seen).
pub trait Backend: Default + 'static {
    /// Every setting the plugin reads, with help and defaults.
    fn settings() -> Vec<SettingSpec> {
        Vec::new()
    }

    /// How to run `service`, or every configuration problem found.
    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>>;

    /// One output line of the backend. Default: nothing to report.
    fn on_output(&mut self, _source: Output, _line: &str) -> Progress {
        Progress::Nothing
    }

    /// One readiness-probe answer. Default: ready on any 2xx.
    fn on_probe(&mut self, response: &HttpResponse) -> Progress {
        ready_on_success(response)
    }

    /// The answer to a GET of the plan's models path. Default: the OpenAI shape.
    fn models(&mut self, response: &HttpResponse) -> Result<Vec<Model>, String> {
        openai_models(response)
    }

    /// The backend exited. Default: restart (the service's policy still applies).
    fn on_exit(&mut self, _exit: &Exit) -> ExitAdvice {
        ExitAdvice::Restart
    }
}

/// `ready` for a 2xx answer, `nothing` otherwise.
pub fn ready_on_success(response: &HttpResponse) -> Progress {
    if (200..300).contains(&response.status) {
        Progress::Ready
    } else {
        Progress::Nothing
    }
}

/// `ready` for any answer but a server error: for servers that only listen once
/// their model is loaded and have no health route.
pub fn ready_when_answering(response: &HttpResponse) -> Progress {
    if response.status < 500 {
        Progress::Ready
    } else {
        Progress::Nothing
    }
}

/// Gives up with the first diagnosis among `seen` (found earlier in the output) and
/// the exit's last lines; restarts when there is none.
pub fn give_up_if_diagnosed(
    seen: Option<&str>,
    exit: &Exit,
    diagnose: impl Fn(&str) -> Option<String>,
) -> ExitAdvice {
    match seen
        .map(str::to_string)
        .or_else(|| exit.last_lines.iter().find_map(|line| diagnose(line)))
    {
        Some(reason) => ExitAdvice::GiveUp(reason),
        None => ExitAdvice::Restart,
    }
}

/// A plan that runs `program` with `args`, the service's own args, env and working
/// directory appended, probing `/health` for readiness and liveness and listing
/// models at `/v1/models`. Adjust the fields that differ for your backend.
pub fn process_plan(service: &Service, program: &str, mut args: Vec<String>) -> Plan {
    args.extend(service.args.iter().cloned());
    Plan {
        launch: Launch::Process(Process {
            program: program.to_string(),
            args,
            env: service.env.clone(),
            work_dir: service.work_dir.clone(),
        }),
        readiness: Probe {
            path: "/health".to_string(),
            period_ms: 500,
            timeout_ms: 1_000,
        },
        liveness: Some(Probe {
            path: "/health".to_string(),
            period_ms: 10_000,
            timeout_ms: 1_000,
        }),
        models_path: "/v1/models".to_string(),
        stop_signal: None,
        grace_ms: None,
        vram_mib: None,
    }
}

/// Probes `health_path` for readiness and, every 10 s once ready, for liveness;
/// `""` means the backend serves no health path (readiness must come from output).
pub fn probe_health(plan: &mut Plan, health_path: String) {
    plan.liveness = (!health_path.is_empty()).then(|| Probe {
        path: health_path.clone(),
        period_ms: 10_000,
        timeout_ms: plan.readiness.timeout_ms,
    });
    plan.readiness.path = health_path;
}

/// The `models_path` setting of a backend that lists models in the OpenAI
/// shape (read with [`Settings::http_paths`]).
pub fn models_path_setting() -> SettingSpec {
    setting(
        "models_path",
        "The path that lists models in the OpenAI shape.",
        Some(Value::Text("/v1/models".into())),
        false,
    )
}

/// A setting description, for [`Backend::settings`].
pub fn setting(key: &str, help: &str, default: Option<Value>, required: bool) -> SettingSpec {
    SettingSpec {
        key: key.to_string(),
        help: help.to_string(),
        default,
        required,
    }
}

/// Writes to nanny's log (to stderr when the plugin runs natively, as in tests).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::nanny::backend::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Adapts a [`Backend`] to the generated session resource.
#[doc(hidden)]
pub struct Session<B> {
    service: Service,
    backend: std::cell::RefCell<B>,
}

impl<B: Backend> bindings::exports::nanny::backend::session::GuestSession for Session<B> {
    fn new(service: Service) -> Self {
        Self {
            service,
            backend: Default::default(),
        }
    }

    fn plan(&self) -> Result<Plan, Vec<ConfigError>> {
        self.backend.borrow_mut().plan(&self.service)
    }

    fn on_output(&self, source: Output, line: String) -> Progress {
        self.backend.borrow_mut().on_output(source, &line)
    }

    fn on_probe(&self, response: HttpResponse) -> Progress {
        self.backend.borrow_mut().on_probe(&response)
    }

    fn models(&self, response: HttpResponse) -> Result<Vec<Model>, String> {
        self.backend.borrow_mut().models(&response)
    }

    fn on_exit(
        &self,
        code: Option<i32>,
        signal: Option<i32>,
        last_lines: Vec<String>,
    ) -> ExitAdvice {
        let exit = Exit {
            code,
            signal,
            last_lines,
        };
        self.backend.borrow_mut().on_exit(&exit)
    }
}

/// Exports a [`Backend`] as the plugin named `$name`.
///
/// The plugin's version and summary come from the calling crate's Cargo.toml.
#[macro_export]
macro_rules! export_backend {
    ($name:literal, $backend:ty) => {
        struct __NannyPlugin;

        /// Native builds (a plugin's unit tests) cannot carry component export
        /// names; this keeps the exported pieces in use there.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __nanny_plugin_info() -> $crate::PluginInfo {
            let _ = <$crate::Session<$backend> as $crate::bindings::exports::nanny::backend::session::GuestSession>::new;
            <__NannyPlugin as $crate::bindings::Guest>::describe()
        }

        impl $crate::bindings::Guest for __NannyPlugin {
            fn describe() -> $crate::PluginInfo {
                $crate::PluginInfo {
                    name: $name.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    summary: env!("CARGO_PKG_DESCRIPTION").to_string(),
                    settings: <$backend as $crate::Backend>::settings(),
                }
            }
        }

        impl $crate::bindings::exports::nanny::backend::session::Guest for __NannyPlugin {
            type Session = $crate::Session<$backend>;
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_backend_world!(__NannyPlugin with_types_in $crate::bindings);
    };
}
