//! The seams between a service's state machine and the world it acts on: the
//! runtime that launches a plan and probes a port, and the plugin session that
//! says what a line, an answer or an exit means. The daemon plugs in the real
//! ones (`runtime::Launcher`, `plugin::SessionHandle`); the state machine's unit
//! tests plug in scripted ones and run under `tokio::time::pause`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::probe::{self, ProbeResponse};
use crate::plugin::{
    ConfigError, ExitAdvice, HttpResponse, Model, Output, Plan, Plugin, PluginError, PluginSession,
    Progress, Service, SessionHandle,
};
use crate::runtime::ports::Listener;
use crate::runtime::{Exit, LaunchError, LaunchOrder, Launched, Launcher, LineSink};

/// One launched backend, as the runner drives it.
pub trait Backend: Send {
    fn pid(&self) -> Option<i32>;
    fn container_id(&self) -> Option<String>;
    /// Waits for the end (cancel-safe).
    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<Exit>>;
    /// `signal` (or the runtime's own stop), `grace`, then a kill; returns once
    /// nothing of it is left.
    fn stop(&mut self, signal: i32, grace: Duration) -> BoxFuture<'_, std::io::Result<Exit>>;
    /// Who holds the socket listening on `port`.
    fn listener(&self, port: u16) -> BoxFuture<'_, Listener>;
    /// After it exited by itself: whatever the runtime keeps of it goes.
    fn clean_up(&mut self) -> BoxFuture<'_, ()>;
}

/// The plugin's side of one launch. Errors are the plugin's failures (a trap, a
/// timeout), as text.
pub trait Session: Send + Sync {
    fn plan(&self) -> BoxFuture<'_, Result<Result<Plan, Vec<ConfigError>>, String>>;
    fn on_output(&self, source: Output, line: String) -> BoxFuture<'_, Result<Progress, String>>;
    fn on_probe(&self, response: HttpResponse) -> BoxFuture<'_, Result<Progress, String>>;
    fn models(
        &self,
        response: HttpResponse,
    ) -> BoxFuture<'_, Result<Result<Vec<Model>, String>, String>>;
    fn on_exit(
        &self,
        exit: Exit,
        last_lines: Vec<String>,
    ) -> BoxFuture<'_, Result<ExitAdvice, String>>;
}

/// What the runners act on.
pub trait World: Send + Sync {
    /// A session of `plugin` for one launch of `service`.
    fn session(&self, plugin: &Arc<Plugin>, service: Service) -> std::io::Result<Box<dyn Session>>;
    /// Starts what `order` says; its output goes to `lines`.
    fn launch(
        &self,
        order: LaunchOrder,
        lines: LineSink,
    ) -> BoxFuture<'_, Result<Box<dyn Backend>, LaunchError>>;
    /// GETs `path` from `host:port`; `None` when nothing answered in `timeout`.
    fn probe(
        &self,
        host: String,
        port: u16,
        path: String,
        timeout: Duration,
    ) -> BoxFuture<'static, Option<ProbeResponse>>;
    /// The launch `launch_id` is over and nothing of it is left.
    fn ended(&self, launch_id: &str, container_id: Option<&str>);
}

impl World for Launcher {
    fn session(&self, plugin: &Arc<Plugin>, service: Service) -> std::io::Result<Box<dyn Session>> {
        let handle = SessionHandle::spawn(PluginSession::new(plugin.clone(), service))?;
        Ok(Box::new(handle))
    }

    fn launch(
        &self,
        order: LaunchOrder,
        lines: LineSink,
    ) -> BoxFuture<'_, Result<Box<dyn Backend>, LaunchError>> {
        async move {
            let launched = Launcher::launch(self, order, lines).await?;
            Ok(Box::new(launched) as Box<dyn Backend>)
        }
        .boxed()
    }

    fn probe(
        &self,
        host: String,
        port: u16,
        path: String,
        timeout: Duration,
    ) -> BoxFuture<'static, Option<ProbeResponse>> {
        async move { probe::get(&host, port, &path, timeout).await }.boxed()
    }

    fn ended(&self, launch_id: &str, container_id: Option<&str>) {
        Launcher::ended(self, launch_id, container_id);
    }
}

impl Backend for Launched {
    fn pid(&self) -> Option<i32> {
        Launched::pid(self)
    }

    fn container_id(&self) -> Option<String> {
        Launched::container_id(self).map(str::to_string)
    }

    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<Exit>> {
        Launched::wait(self).boxed()
    }

    fn stop(&mut self, signal: i32, grace: Duration) -> BoxFuture<'_, std::io::Result<Exit>> {
        Launched::stop(self, signal, grace).boxed()
    }

    fn listener(&self, port: u16) -> BoxFuture<'_, Listener> {
        Launched::listener(self, port).boxed()
    }

    fn clean_up(&mut self) -> BoxFuture<'_, ()> {
        async move { Launched::clean_up(self).await }.boxed()
    }
}

impl Session for SessionHandle {
    fn plan(&self) -> BoxFuture<'_, Result<Result<Plan, Vec<ConfigError>>, String>> {
        ask(self, |session| session.plan())
    }

    fn on_output(&self, source: Output, line: String) -> BoxFuture<'_, Result<Progress, String>> {
        ask(self, move |session| session.on_output(source, &line))
    }

    fn on_probe(&self, response: HttpResponse) -> BoxFuture<'_, Result<Progress, String>> {
        ask(self, move |session| session.on_probe(&response))
    }

    fn models(
        &self,
        response: HttpResponse,
    ) -> BoxFuture<'_, Result<Result<Vec<Model>, String>, String>> {
        ask(self, move |session| session.models(&response))
    }

    fn on_exit(
        &self,
        exit: Exit,
        last_lines: Vec<String>,
    ) -> BoxFuture<'_, Result<ExitAdvice, String>> {
        ask(self, move |session| {
            session.on_exit(exit.code, exit.signal, &last_lines)
        })
    }
}

/// One call on the session's thread, its failure as text.
fn ask<R: Send + 'static>(
    handle: &SessionHandle,
    work: impl FnOnce(&mut PluginSession) -> Result<R, PluginError> + Send + 'static,
) -> BoxFuture<'_, Result<R, String>> {
    async move { handle.call(work).await.map_err(|error| error.to_string()) }.boxed()
}
