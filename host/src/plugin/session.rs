//! One plugin instance per service: [`PluginSession`] owns the store and calls it
//! under the sandbox's limits; [`SessionHandle`] puts a session on a thread of its
//! own so async code reaches it through a channel and never blocks on a plugin.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceAny;
use wasmtime::Store;

use super::bindings::Contract;
use super::catalog::{new_store, Plugin};
use super::error::PluginError;
use super::reply::{check_reply, classify, ReplySize};
use super::sandbox::StoreState;
use super::types::{ConfigError, ExitAdvice, HttpResponse, Model, Output, Plan, Progress, Service};

struct Live {
    store: Store<StoreState>,
    backend: Box<dyn Contract>,
    session: ResourceAny,
}

/// The plugin's view of one service. A call that traps, times out or hits the
/// memory cap fails with a [`PluginError`] and drops the instance; the next call
/// builds a fresh one from the pre-instantiated component.
pub struct PluginSession {
    plugin: Arc<Plugin>,
    service: Service,
    live: Option<Live>,
}

impl PluginSession {
    pub fn new(plugin: Arc<Plugin>, service: Service) -> Self {
        Self {
            plugin,
            service,
            live: None,
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Instantiates the plugin and constructs the session now rather than on the
    /// first call, so a broken plugin shows before the backend is launched.
    pub fn warm(&mut self) -> Result<(), PluginError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        Ok(())
    }

    /// The most linear memory the live instance has grown to (0 when none is live).
    pub fn peak_memory(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, |live| live.store.data().memory.peak_bytes)
    }

    /// How to run the service, or the configuration problems the plugin found.
    pub fn plan(&mut self) -> Result<Result<Plan, Vec<ConfigError>>, PluginError> {
        self.call("plan", |backend, store, session| {
            backend.plan(store, session)
        })
    }

    pub fn on_output(&mut self, source: Output, line: &str) -> Result<Progress, PluginError> {
        self.call("on-output", |backend, store, session| {
            backend.on_output(store, session, source, line)
        })
    }

    pub fn on_probe(&mut self, response: &HttpResponse) -> Result<Progress, PluginError> {
        self.call("on-probe", |backend, store, session| {
            backend.on_probe(store, session, response)
        })
    }

    pub fn models(
        &mut self,
        response: &HttpResponse,
    ) -> Result<Result<Vec<Model>, String>, PluginError> {
        self.call("models", |backend, store, session| {
            backend.models(store, session, response)
        })
    }

    pub fn on_exit(
        &mut self,
        code: Option<i32>,
        signal: Option<i32>,
        last_lines: &[String],
    ) -> Result<ExitAdvice, PluginError> {
        self.call("on-exit", |backend, store, session| {
            backend.on_exit(store, session, code, signal, last_lines)
        })
    }

    fn call<R: ReplySize>(
        &mut self,
        call: &'static str,
        invoke: impl FnOnce(&dyn Contract, &mut Store<StoreState>, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let limits = self.plugin.engine.limits;
        let live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate()?,
        };
        let Live {
            mut store,
            backend,
            session,
        } = live;
        store.set_epoch_deadline(limits.deadline_ticks());
        match invoke(backend.as_ref(), &mut store, session) {
            Ok(reply) => {
                self.live = Some(Live {
                    store,
                    backend,
                    session,
                });
                check_reply(self.plugin.name(), call, &reply, limits.reply_bytes)?;
                Ok(reply)
            }
            // The store may be mid-way through anything: drop it, start afresh next time.
            Err(error) => Err(classify(self.plugin.name(), call, error, &store)),
        }
    }

    fn instantiate(&self) -> Result<Live, PluginError> {
        let plugin = self.plugin.name();
        let mut store = new_store(&self.plugin.engine, plugin, &self.service.name);
        let backend = self
            .plugin
            .linked
            .instantiate(&mut store)
            .map_err(|error| PluginError::Instantiate {
                plugin: plugin.to_string(),
                message: format!("{error:#}"),
            })?;
        let session = backend
            .construct(&mut store, &self.service)
            .map_err(|error| classify(plugin, "session constructor", error, &store))?;
        Ok(Live {
            store,
            backend,
            session,
        })
    }
}

type Job = Box<dyn FnOnce(&mut PluginSession) + Send>;

/// A [`PluginSession`] on its own thread. Cloning shares the same session.
#[derive(Clone)]
pub struct SessionHandle {
    jobs: std::sync::mpsc::Sender<Job>,
    plugin: String,
    patience: Duration,
}

impl SessionHandle {
    /// Moves `session` onto a thread that serves calls until every handle is gone.
    pub fn spawn(session: PluginSession) -> std::io::Result<Self> {
        let plugin = session.plugin.name().to_string();
        // The epoch deadline is the real bound; this one only guards against a
        // thread that stopped answering at all.
        let patience = session.plugin.engine.limits.call_deadline * 2 + Duration::from_millis(100);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("plugin-{}", session.service.name))
            .spawn(move || {
                let mut session = session;
                for job in queue {
                    job(&mut session);
                }
            })?;
        Ok(Self {
            jobs,
            plugin,
            patience,
        })
    }

    /// Runs `work` on the session's thread.
    pub async fn call<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PluginSession) -> Result<R, PluginError> + Send + 'static,
    ) -> Result<R, PluginError> {
        let gone = || PluginError::Gone {
            plugin: self.plugin.clone(),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |session| {
            let began = std::time::Instant::now();
            let result = work(session);
            session
                .plugin
                .engine
                .metrics
                .observe_plugin_call(session.plugin.name(), began.elapsed());
            let _ = reply.send(result);
        });
        self.jobs.send(job).map_err(|_| gone())?;
        match tokio::time::timeout(self.patience, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(PluginError::Timeout {
                plugin: self.plugin.clone(),
                call: "a call",
                deadline: self.patience,
            }),
        }
    }
}
