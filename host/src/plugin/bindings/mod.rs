//! One bindings module per contract version, each generated from its own WIT
//! (`wit/0.1.0/` frozen, `wit/` the newest) and converted at this edge to the
//! host's own types (`plugin::types`), as Zed's extension host does. Nothing
//! outside `plugin/` sees a generated type; the rest of nanny speaks every
//! version at once.

mod v0_1;
mod v0_2;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceAny};
use wasmtime::Store;

use super::sandbox::StoreState;
use super::types::{
    ConfigError, Described, ExitAdvice, HttpResponse, Model, Output, Plan, Progress, Service,
};

/// The newest contract version this host speaks (what the SDK builds for).
pub const WIT_VERSION: &str = "0.2.0";

/// Every contract version this host speaks, newest first.
pub const WIT_VERSIONS: [&str; 2] = ["0.2.0", "0.1.0"];

/// One instantiated plugin, whichever contract it was built for. Each method
/// is one export call, its arguments and answer converted at this edge.
pub(super) trait Contract: Send + Sync {
    fn describe(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Described>;
    fn construct(
        &self,
        store: &mut Store<StoreState>,
        service: &Service,
    ) -> wasmtime::Result<ResourceAny>;
    fn plan(
        &self,
        store: &mut Store<StoreState>,
        session: ResourceAny,
    ) -> wasmtime::Result<Result<Plan, Vec<ConfigError>>>;
    fn on_output(
        &self,
        store: &mut Store<StoreState>,
        session: ResourceAny,
        source: Output,
        line: &str,
    ) -> wasmtime::Result<Progress>;
    fn on_probe(
        &self,
        store: &mut Store<StoreState>,
        session: ResourceAny,
        response: &HttpResponse,
    ) -> wasmtime::Result<Progress>;
    fn models(
        &self,
        store: &mut Store<StoreState>,
        session: ResourceAny,
        response: &HttpResponse,
    ) -> wasmtime::Result<Result<Vec<Model>, String>>;
    fn on_exit(
        &self,
        store: &mut Store<StoreState>,
        session: ResourceAny,
        code: Option<i32>,
        signal: Option<i32>,
        last_lines: &[String],
    ) -> wasmtime::Result<ExitAdvice>;
}

/// A component linked for the contract version it was built for.
pub(super) enum Linked {
    V0_1(v0_1::BackendPre<StoreState>),
    V0_2(v0_2::BackendPre<StoreState>),
}

impl Linked {
    /// Links `component`, built for contract `version` (one of [`WIT_VERSIONS`]'
    /// minor series), against `linker`.
    pub(super) fn new(
        linker: &Linker<StoreState>,
        component: &Component,
        version: &str,
    ) -> wasmtime::Result<Self> {
        let pre: InstancePre<StoreState> = linker.instantiate_pre(component)?;
        if version.starts_with("0.1.") {
            Ok(Self::V0_1(v0_1::BackendPre::new(pre)?))
        } else {
            Ok(Self::V0_2(v0_2::BackendPre::new(pre)?))
        }
    }

    pub(super) fn instantiate(
        &self,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<Box<dyn Contract>> {
        Ok(match self {
            Self::V0_1(pre) => Box::new(pre.instantiate(store)?),
            Self::V0_2(pre) => Box::new(pre.instantiate(store)?),
        })
    }
}

/// Adds the host's imports of every contract version to `linker` (their names
/// carry the version, so they sit side by side).
pub(super) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    v0_1::Backend::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    v0_2::Backend::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    Ok(())
}

/// What every version's bindings module holds beside its generated code: the
/// conversions of the types all versions share and the [`Contract`] calls.
/// A macro rather than a generic, because each version's generated types are
/// distinct types with the same shape. The invoking module adds the launch
/// kinds its version has beyond 0.1.0's process and container.
macro_rules! contract_edge {
    ($($newer_launch:tt)*) => {
        use self::nanny::backend::{host as generated_host, types as generated};
        use wasmtime::component::ResourceAny;
        use wasmtime::Store;
        use $crate::plugin::bindings::Contract;
        use $crate::plugin::sandbox::StoreState;
        use $crate::plugin::types as ours;

        impl From<&ours::Value> for generated::Value {
            fn from(value: &ours::Value) -> Self {
                match value {
                    ours::Value::Text(text) => Self::Text(text.clone()),
                    ours::Value::Integer(number) => Self::Integer(*number),
                    ours::Value::Float(number) => Self::Float(*number),
                    ours::Value::Boolean(flag) => Self::Boolean(*flag),
                    ours::Value::List(items) => Self::List(items.clone()),
                }
            }
        }

        impl From<generated::Value> for ours::Value {
            fn from(value: generated::Value) -> Self {
                match value {
                    generated::Value::Text(text) => Self::Text(text),
                    generated::Value::Integer(number) => Self::Integer(number),
                    generated::Value::Float(number) => Self::Float(number),
                    generated::Value::Boolean(flag) => Self::Boolean(flag),
                    generated::Value::List(items) => Self::List(items),
                }
            }
        }

        impl From<&ours::Service> for generated::Service {
            fn from(service: &ours::Service) -> Self {
                Self {
                    name: service.name.clone(),
                    host: service.host.clone(),
                    port: service.port,
                    model: service.model.clone(),
                    args: service.args.clone(),
                    env: service.env.clone(),
                    work_dir: service.work_dir.clone(),
                    gpus: service
                        .gpus
                        .iter()
                        .map(|gpu| generated::Gpu {
                            index: gpu.index,
                            uuid: gpu.uuid.clone(),
                            memory_mib: gpu.memory_mib,
                        })
                        .collect(),
                    settings: service
                        .settings
                        .iter()
                        .map(|setting| generated::Setting {
                            key: setting.key.clone(),
                            value: (&setting.value).into(),
                        })
                        .collect(),
                }
            }
        }

        impl From<&ours::HttpResponse> for generated::HttpResponse {
            fn from(response: &ours::HttpResponse) -> Self {
                Self {
                    status: response.status,
                    content_type: response.content_type.clone(),
                    body: response.body.clone(),
                }
            }
        }

        impl From<generated::PluginInfo> for ours::Described {
            fn from(info: generated::PluginInfo) -> Self {
                Self {
                    name: info.name,
                    version: info.version,
                    summary: info.summary,
                    settings: info
                        .settings
                        .into_iter()
                        .map(|spec| ours::SettingSpec {
                            key: spec.key,
                            help: spec.help,
                            default: spec.default.map(Into::into),
                            required: spec.required,
                        })
                        .collect(),
                }
            }
        }

        impl From<generated::Process> for ours::Process {
            fn from(process: generated::Process) -> Self {
                Self {
                    program: process.program,
                    args: process.args,
                    env: process.env,
                    work_dir: process.work_dir,
                }
            }
        }

        impl From<generated::Container> for ours::Container {
            fn from(container: generated::Container) -> Self {
                Self {
                    image: container.image,
                    command: container.command,
                    env: container.env,
                    port: container.port,
                    mounts: container
                        .mounts
                        .into_iter()
                        .map(|mount| ours::Mount {
                            source: mount.source,
                            target: mount.target,
                            read_only: mount.read_only,
                        })
                        .collect(),
                    shm_size_mib: container.shm_size_mib,
                }
            }
        }

        impl From<generated::Launch> for ours::Launch {
            fn from(launch: generated::Launch) -> Self {
                match launch {
                    generated::Launch::Process(process) => Self::Process(process.into()),
                    generated::Launch::Container(container) => Self::Container(container.into()),
                    $($newer_launch)*
                }
            }
        }

        impl From<generated::Probe> for ours::Probe {
            fn from(probe: generated::Probe) -> Self {
                Self {
                    path: probe.path,
                    period_ms: probe.period_ms,
                    timeout_ms: probe.timeout_ms,
                }
            }
        }

        impl From<generated::Plan> for ours::Plan {
            fn from(plan: generated::Plan) -> Self {
                Self {
                    launch: plan.launch.into(),
                    readiness: plan.readiness.into(),
                    liveness: plan.liveness.map(Into::into),
                    models_path: plan.models_path,
                    stop_signal: plan.stop_signal,
                    grace_ms: plan.grace_ms,
                    vram_mib: plan.vram_mib,
                }
            }
        }

        impl From<generated::Progress> for ours::Progress {
            fn from(progress: generated::Progress) -> Self {
                match progress {
                    generated::Progress::Nothing => Self::Nothing,
                    generated::Progress::Loading(percent) => Self::Loading(percent),
                    generated::Progress::Ready => Self::Ready,
                    generated::Progress::Failed(reason) => Self::Failed(reason),
                }
            }
        }

        impl From<generated::ExitAdvice> for ours::ExitAdvice {
            fn from(advice: generated::ExitAdvice) -> Self {
                match advice {
                    generated::ExitAdvice::Restart => Self::Restart,
                    generated::ExitAdvice::GiveUp(reason) => Self::GiveUp(reason),
                }
            }
        }

        fn config_errors(errors: Vec<generated::ConfigError>) -> Vec<ours::ConfigError> {
            errors
                .into_iter()
                .map(|error| ours::ConfigError {
                    key: error.key,
                    message: error.message,
                })
                .collect()
        }

        fn models(models: Vec<generated::Model>) -> Vec<ours::Model> {
            models
                .into_iter()
                .map(|model| ours::Model {
                    id: model.id,
                    owned_by: model.owned_by,
                    context_length: model.context_length,
                })
                .collect()
        }

        impl generated::Host for StoreState {}

        impl generated_host::Host for StoreState {
            fn log(&mut self, level: generated_host::Level, message: String) {
                let level = match level {
                    generated_host::Level::Debug => ours::Level::Debug,
                    generated_host::Level::Info => ours::Level::Info,
                    generated_host::Level::Warn => ours::Level::Warn,
                    generated_host::Level::Error => ours::Level::Error,
                };
                self.log_from_plugin(level, message);
            }
        }

        impl Contract for Backend {
            fn describe(&self, store: &mut Store<StoreState>) -> wasmtime::Result<ours::Described> {
                Ok(self.call_describe(store)?.into())
            }

            fn construct(
                &self,
                store: &mut Store<StoreState>,
                service: &ours::Service,
            ) -> wasmtime::Result<ResourceAny> {
                self.nanny_backend_session()
                    .session()
                    .call_constructor(store, &service.into())
            }

            fn plan(
                &self,
                store: &mut Store<StoreState>,
                session: ResourceAny,
            ) -> wasmtime::Result<Result<ours::Plan, Vec<ours::ConfigError>>> {
                let planned = self
                    .nanny_backend_session()
                    .session()
                    .call_plan(store, session)?;
                Ok(planned.map(Into::into).map_err(config_errors))
            }

            fn on_output(
                &self,
                store: &mut Store<StoreState>,
                session: ResourceAny,
                source: ours::Output,
                line: &str,
            ) -> wasmtime::Result<ours::Progress> {
                let source = match source {
                    ours::Output::Stdout => generated::Output::Stdout,
                    ours::Output::Stderr => generated::Output::Stderr,
                };
                let progress = self
                    .nanny_backend_session()
                    .session()
                    .call_on_output(store, session, source, line)?;
                Ok(progress.into())
            }

            fn on_probe(
                &self,
                store: &mut Store<StoreState>,
                session: ResourceAny,
                response: &ours::HttpResponse,
            ) -> wasmtime::Result<ours::Progress> {
                let progress = self.nanny_backend_session().session().call_on_probe(
                    store,
                    session,
                    &response.into(),
                )?;
                Ok(progress.into())
            }

            fn models(
                &self,
                store: &mut Store<StoreState>,
                session: ResourceAny,
                response: &ours::HttpResponse,
            ) -> wasmtime::Result<Result<Vec<ours::Model>, String>> {
                let listed = self.nanny_backend_session().session().call_models(
                    store,
                    session,
                    &response.into(),
                )?;
                Ok(listed.map(models))
            }

            fn on_exit(
                &self,
                store: &mut Store<StoreState>,
                session: ResourceAny,
                code: Option<i32>,
                signal: Option<i32>,
                last_lines: &[String],
            ) -> wasmtime::Result<ours::ExitAdvice> {
                let advice = self
                    .nanny_backend_session()
                    .session()
                    .call_on_exit(store, session, code, signal, last_lines)?;
                Ok(advice.into())
            }
        }
    };
}
use contract_edge;
