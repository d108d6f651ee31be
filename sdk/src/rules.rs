//! The usual reading of a backend's output, declared rather than written: the
//! lines that mean it will never come up (and what to do about it), its signs
//! of life, its ready line, and where a loading percentage is. A plugin keeps a
//! [`Seen`] and hands each line and the exit to its [`OutputRules`]:
//!
//! ```
//! use nanny_sdk::*;
//!
//! const RULES: OutputRules = OutputRules {
//!     fatal: &[fatal(&[Needle::Contains("out of memory")], "out of GPU memory loading `{model}`: {line}")],
//!     ready: &[Needle::Contains("listening on")],
//!     loading: &[Needle::Contains("loading model")],
//!     percent_after: None,
//! };
//!
//! let mut seen = Seen::about("tiny.gguf");
//! assert_eq!(RULES.on_output(&mut seen, "main: loading model"), Progress::Loading(None));
//! assert!(matches!(RULES.on_output(&mut seen, "CUDA: out of memory"), Progress::Failed(_)));
//! ```

use crate::{Exit, ExitAdvice, Progress};

/// What a rule looks for in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needle {
    /// Anywhere in the line.
    Contains(&'static str),
    /// At the line's start (after leading blanks).
    StartsWith(&'static str),
    /// Both, anywhere.
    Both(&'static str, &'static str),
}

impl Needle {
    pub fn is_in(self, line: &str) -> bool {
        match self {
            Needle::Contains(text) => line.contains(text),
            Needle::StartsWith(text) => line.trim_start().starts_with(text),
            Needle::Both(one, other) => line.contains(one) && line.contains(other),
        }
    }
}

/// Lines after which waiting cannot help, and the advice given then.
#[derive(Debug, Clone, Copy)]
pub struct Fatal {
    pub needles: &'static [Needle],
    /// What the user should do; `{model}` is what the plugin said it serves
    /// ([`Seen::about`]), `{line}` the line itself, trimmed.
    pub advice: &'static str,
}

/// A [`Fatal`] rule, for a `const` table.
pub const fn fatal(needles: &'static [Needle], advice: &'static str) -> Fatal {
    Fatal { needles, advice }
}

/// How a backend's output reads.
#[derive(Debug, Clone, Copy)]
pub struct OutputRules {
    /// Checked first, in order: the first that matches fails the start.
    pub fatal: &'static [Fatal],
    /// The backend serves now.
    pub ready: &'static [Needle],
    /// It is alive and loading.
    pub loading: &'static [Needle],
    /// Where a loading line carries `NN%` after this text (vLLM's
    /// `checkpoint shards:  50%`): loading, with that percentage.
    pub percent_after: Option<&'static str>,
}

/// What one launch's output said so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// What `{model}` stands for in the advice.
    pub model: String,
    /// The first fatal diagnosis, kept for the exit.
    pub fatal: Option<String>,
}

impl Seen {
    /// A launch serving `model` (a path, a hub id, a config file).
    pub fn about(model: &str) -> Self {
        Self {
            model: model.to_string(),
            fatal: None,
        }
    }
}

impl OutputRules {
    /// The advice for `line`, when a fatal rule matches it.
    pub fn diagnose(&self, seen: &Seen, line: &str) -> Option<String> {
        let rule = self
            .fatal
            .iter()
            .find(|rule| rule.needles.iter().any(|needle| needle.is_in(line)))?;
        Some(
            rule.advice
                .replace("{model}", &seen.model)
                .replace("{line}", line.trim()),
        )
    }

    /// One output line: failed (and remembered), ready, loading (with a
    /// percentage when there is one), or nothing.
    pub fn on_output(&self, seen: &mut Seen, line: &str) -> Progress {
        if let Some(reason) = self.diagnose(seen, line) {
            seen.fatal.get_or_insert_with(|| reason.clone());
            return Progress::Failed(reason);
        }
        if self.ready.iter().any(|needle| needle.is_in(line)) {
            return Progress::Ready;
        }
        if let Some(rest) = self
            .percent_after
            .and_then(|marker| line.split(marker).nth(1))
        {
            let percent = rest
                .trim_start()
                .split('%')
                .next()
                .and_then(|number| number.trim().parse().ok());
            return Progress::Loading(percent);
        }
        if self.loading.iter().any(|needle| needle.is_in(line)) {
            return Progress::Loading(None);
        }
        Progress::Nothing
    }

    /// The backend exited: give up with what was diagnosed (during the run or
    /// in its last lines), else restart.
    pub fn on_exit(&self, seen: &Seen, exit: &Exit) -> ExitAdvice {
        crate::give_up_if_diagnosed(seen.fatal.as_deref(), exit, |line| {
            self.diagnose(seen, line)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: OutputRules = OutputRules {
        fatal: &[
            fatal(
                &[Needle::Both("libfoo", "cannot open")],
                "install foo: {line}",
            ),
            fatal(
                &[Needle::StartsWith("error:"), Needle::Contains("OOM")],
                "`{model}` does not fit",
            ),
        ],
        ready: &[Needle::Contains("serving")],
        loading: &[Needle::Contains("load")],
        percent_after: Some("shards:"),
    };

    #[test]
    fn lines_read_as_declared_and_the_first_diagnosis_is_kept_for_the_exit() {
        let mut seen = Seen::about("m.gguf");
        assert_eq!(
            RULES.on_output(&mut seen, "loading"),
            Progress::Loading(None)
        );
        assert_eq!(
            RULES.on_output(&mut seen, "shards:  40% | 2/5"),
            Progress::Loading(Some(40))
        );
        assert_eq!(
            RULES.on_output(&mut seen, "shards: ?%"),
            Progress::Loading(None)
        );
        assert_eq!(
            RULES.on_output(&mut seen, "serving on :80"),
            Progress::Ready
        );
        assert_eq!(
            RULES.on_output(&mut seen, "libfoo loaded"),
            Progress::Loading(None),
            "both needles needed"
        );
        assert_eq!(
            RULES.on_output(&mut seen, "  libfoo.so: cannot open  "),
            Progress::Failed("install foo: libfoo.so: cannot open".into())
        );
        assert_eq!(
            RULES.on_output(&mut seen, "  error: x"),
            Progress::Failed("`m.gguf` does not fit".into())
        );
        let exit = Exit {
            code: Some(1),
            signal: None,
            last_lines: Vec::new(),
        };
        assert_eq!(
            RULES.on_exit(&seen, &exit),
            ExitAdvice::GiveUp("install foo: libfoo.so: cannot open".into())
        );
        let fresh = Seen::about("m.gguf");
        let diagnosed_at_exit = Exit {
            last_lines: vec!["OOM killer".into()],
            ..exit.clone()
        };
        assert_eq!(
            RULES.on_exit(&fresh, &diagnosed_at_exit),
            ExitAdvice::GiveUp("`m.gguf` does not fit".into())
        );
        assert_eq!(RULES.on_exit(&fresh, &exit), ExitAdvice::Restart);
    }
}
