//! Turning what a call did into a value or a [`PluginError`]: traps, deadlines, the
//! memory cap, and replies too large to accept.

use wasmtime::{Store, Trap};

use super::error::PluginError;
use super::sandbox::StoreState;
use super::types::{ConfigError, Described, ExitAdvice, Launch, Model, Plan, Progress};

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

/// What each item of a list in a reply counts for, over its text: a list of
/// 100,000 one-letter models costs the host far more than 100 KB.
const ITEM_BYTES: usize = 64;

/// The bytes of text a reply carries, each list item counting [`ITEM_BYTES`] more.
pub(super) trait ReplySize {
    fn text_bytes(&self) -> usize;
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> usize {
    items.into_iter().map(|item| item.len() + ITEM_BYTES).sum()
}

fn pairs(items: &[(String, String)]) -> usize {
    items
        .iter()
        .map(|(k, v)| k.len() + v.len() + ITEM_BYTES)
        .sum()
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
                .map(|m| m.id.len() + m.owned_by.as_ref().map_or(0, String::len) + ITEM_BYTES)
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
                    Launch::Process(p) => p.program.len() + strings(&p.args) + pairs(&p.env),
                    Launch::Container(c) => {
                        c.image.len()
                            + strings(&c.command)
                            + pairs(&c.env)
                            + c.mounts
                                .iter()
                                .map(|m| m.source.len() + m.target.len() + ITEM_BYTES)
                                .sum::<usize>()
                    }
                    Launch::Compose(c) => {
                        strings(&c.files)
                            + strings(&c.profiles)
                            + strings(&c.env_files)
                            + c.service.as_ref().map_or(0, String::len)
                            + pairs(&c.env)
                            + c.work_dir.as_ref().map_or(0, String::len)
                    }
                };
                launch + plan.models_path.len() + plan.readiness.path.len()
            }
            Err(errors) => errors
                .iter()
                .map(|e| e.key.len() + e.message.len() + ITEM_BYTES)
                .sum(),
        }
    }
}

impl ReplySize for Described {
    fn text_bytes(&self) -> usize {
        self.name.len()
            + self.version.len()
            + self.summary.len()
            + self
                .settings
                .iter()
                .map(|s| s.key.len() + s.help.len() + ITEM_BYTES)
                .sum::<usize>()
    }
}

impl ReplySize for () {
    fn text_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_thousand_tiny_models_are_too_big_a_reply() {
        let models: Result<Vec<Model>, String> = Ok((0..100_000)
            .map(|n| Model {
                id: (n % 10).to_string(),
                owned_by: None,
                context_length: None,
            })
            .collect());
        let refused = check_reply("p", "models", &models, 1 << 20).unwrap_err();
        assert!(
            matches!(refused, PluginError::OversizedReply { .. }),
            "{refused}"
        );
        let few: Result<Vec<Model>, String> = Ok(vec![Model {
            id: "tiny".into(),
            owned_by: None,
            context_length: None,
        }]);
        assert!(check_reply("p", "models", &few, 1 << 20).is_ok());
    }
}
