//! Turning what a call did into a value or a [`PluginError`]: traps, deadlines, the
//! memory cap, and replies too large to accept.

use wasmtime::{Store, Trap};

use super::bindings::exports::nanny::backend::session::{
    ConfigError, ExitAdvice, Model, Plan, Progress,
};
use super::bindings::nanny::backend::types::{Launch, PluginInfo};
use super::error::PluginError;
use super::sandbox::StoreState;

/// Names which failure a call's error was.
pub(super) fn classify(
    plugin: &str,
    call: &'static str,
    error: wasmtime::Error,
    store: &Store<StoreState>,
) -> PluginError {
    let plugin = plugin.to_string();
    let memory = &store.data().memory;
    if memory.hit {
        return PluginError::MemoryCap {
            plugin,
            call,
            cap_bytes: memory.cap_bytes,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout {
            plugin,
            call,
            deadline: store_deadline(store),
        },
        Some(trap) => PluginError::Trap {
            plugin,
            call,
            message: trap.to_string(),
        },
        None => PluginError::Trap {
            plugin,
            call,
            message: format!("{error:#}"),
        },
    }
}

fn store_deadline(store: &Store<StoreState>) -> std::time::Duration {
    store.data().call_deadline
}

/// Refuses a reply that carries more text than `limit` bytes.
pub(super) fn check_reply<R: ReplySize>(
    plugin: &str,
    call: &'static str,
    reply: &R,
    limit: usize,
) -> Result<(), PluginError> {
    let size = reply.text_bytes();
    if size > limit {
        return Err(PluginError::OversizedReply {
            plugin: plugin.to_string(),
            call,
            size,
            limit,
        });
    }
    Ok(())
}

/// The bytes of text a reply carries.
pub(super) trait ReplySize {
    fn text_bytes(&self) -> usize;
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> usize {
    items.into_iter().map(String::len).sum()
}

impl ReplySize for Progress {
    fn text_bytes(&self) -> usize {
        match self {
            Progress::Failed(reason) => reason.len(),
            _ => 0,
        }
    }
}

impl ReplySize for ExitAdvice {
    fn text_bytes(&self) -> usize {
        match self {
            ExitAdvice::GiveUp(reason) => reason.len(),
            ExitAdvice::Restart => 0,
        }
    }
}

impl ReplySize for Result<Vec<Model>, String> {
    fn text_bytes(&self) -> usize {
        match self {
            Ok(models) => models
                .iter()
                .map(|m| m.id.len() + m.owned_by.as_ref().map_or(0, String::len))
                .sum(),
            Err(message) => message.len(),
        }
    }
}

impl ReplySize for Result<Plan, Vec<ConfigError>> {
    fn text_bytes(&self) -> usize {
        match self {
            Ok(plan) => {
                let launch = match &plan.launch {
                    Launch::Process(p) => {
                        p.program.len()
                            + strings(&p.args)
                            + p.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                    }
                    Launch::Container(c) => {
                        c.image.len()
                            + strings(&c.command)
                            + c.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                    }
                };
                launch + plan.models_path.len() + plan.readiness.path.len()
            }
            Err(errors) => errors.iter().map(|e| e.key.len() + e.message.len()).sum(),
        }
    }
}

impl ReplySize for PluginInfo {
    fn text_bytes(&self) -> usize {
        self.name.len()
            + self.version.len()
            + self.summary.len()
            + self
                .settings
                .iter()
                .map(|s| s.key.len() + s.help.len())
                .sum::<usize>()
    }
}

impl ReplySize for () {
    fn text_bytes(&self) -> usize {
        0
    }
}
