//! Typed reads of a service's `settings` table that collect every problem, so one
//! `plan` reports all of them at once.

use std::cell::RefCell;

use crate::{ConfigError, Setting, Value};

/// Reads settings by key; wrong types and missing required keys become
/// [`ConfigError`]s returned by [`Settings::finish`].
pub struct Settings<'a> {
    items: &'a [Setting],
    errors: RefCell<Vec<ConfigError>>,
}

impl<'a> Settings<'a> {
    pub fn new(items: &'a [Setting]) -> Self {
        Self {
            items,
            errors: RefCell::new(Vec::new()),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.items
            .iter()
            .find(|setting| setting.key == key)
            .map(|setting| &setting.value)
    }

    /// Records a problem with `key`; it is returned by [`Settings::finish`].
    pub fn error(&self, key: &str, message: impl Into<String>) {
        self.errors.borrow_mut().push(ConfigError {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn typed<T>(&self, key: &str, want: &str, pick: impl Fn(&'a Value) -> Option<T>) -> Option<T> {
        let value = self.get(key)?;
        let picked = pick(value);
        if picked.is_none() {
            self.error(key, format!("expected {want}, found {}", kind(value)));
        }
        picked
    }

    /// A text setting.
    pub fn text(&self, key: &str) -> Option<String> {
        self.typed(key, "text", |value| match value {
            Value::Text(text) => Some(text.clone()),
            _ => None,
        })
    }

    /// A text setting, or `default` when absent.
    pub fn text_or(&self, key: &str, default: &str) -> String {
        self.text(key).unwrap_or_else(|| default.to_string())
    }

    /// A text setting naming the program to run, or `default` when absent;
    /// an empty one is an error (it would launch nothing).
    pub fn program_or(&self, key: &str, default: &str) -> String {
        let program = self.text_or(key, default);
        if program.trim().is_empty() {
            self.error(key, format!("must name a program, e.g. `{default}`"));
            return default.to_string();
        }
        program
    }

    /// A text setting that must be present and not empty.
    pub fn required_text(&self, key: &str) -> Option<String> {
        if self.get(key).is_none() {
            self.error(key, "is required");
            return None;
        }
        let text = self.text(key)?;
        if text.is_empty() {
            self.error(key, "must not be empty");
            return None;
        }
        Some(text)
    }

    /// A whole number.
    pub fn integer(&self, key: &str) -> Option<i64> {
        self.typed(key, "an integer", |value| match value {
            Value::Integer(number) => Some(*number),
            _ => None,
        })
    }

    /// A number (an integer counts), within `range` when one is given: else
    /// an error saying so, e.g. `must be between 0 and 1`.
    pub fn float(&self, key: &str, range: Option<std::ops::RangeInclusive<f64>>) -> Option<f64> {
        let number = self.typed(key, "a number", |value| match value {
            Value::Float(number) => Some(*number),
            Value::Integer(number) => Some(*number as f64),
            _ => None,
        })?;
        match range {
            Some(range) if !range.contains(&number) => {
                self.error(
                    key,
                    format!(
                        "must be between {} and {}, e.g. {}",
                        range.start(),
                        range.end(),
                        range.end() * 0.9
                    ),
                );
                None
            }
            _ => Some(number),
        }
    }

    /// The service's `model`, which this backend cannot do without: else an
    /// error on `model` saying `missing` ("llama-server needs a model: the
    /// path of a .gguf file").
    pub fn required_model(&self, service: &crate::Service, missing: &str) -> Option<String> {
        match service.model.as_deref().map(str::trim) {
            Some(model) if !model.is_empty() => Some(model.to_string()),
            _ => {
                self.error("model", missing);
                None
            }
        }
    }

    /// A true/false flag.
    pub fn boolean(&self, key: &str) -> Option<bool> {
        self.typed(key, "true or false", |value| match value {
            Value::Boolean(flag) => Some(*flag),
            _ => None,
        })
    }

    /// A list of strings; a single string counts as a list of one.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        self.typed(key, "a list of strings", |value| match value {
            Value::List(items) => Some(items.clone()),
            Value::Text(text) => Some(vec![text.clone()]),
            _ => None,
        })
    }

    /// Where a backend that serves HTTP is probed and asked for its models:
    /// `health_path` (default `/health`; `""` for no HTTP probe where
    /// `may_skip_health`) and `models_path` (default `/v1/models`), each a path
    /// starting with `/`, else an error on its key.
    pub fn http_paths(&self, may_skip_health: bool) -> (String, String) {
        let health_path = self.text_or("health_path", "/health");
        let models_path = self.text_or("models_path", "/v1/models");
        for (key, path) in [("health_path", &health_path), ("models_path", &models_path)] {
            let skipped = may_skip_health && key == "health_path" && path.is_empty();
            if !(path.starts_with('/') || skipped) {
                self.error(key, format!("`{path}` must start with `/`"));
            }
        }
        (health_path, models_path)
    }

    /// `Ok(())` when every read went well, else every problem found.
    pub fn finish(self) -> Result<(), Vec<ConfigError>> {
        let errors = self.errors.into_inner();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Text(_) => "text",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::List(_) => "a list",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(key: &str, value: Value) -> Setting {
        Setting {
            key: key.into(),
            value,
        }
    }

    #[test]
    fn reads_typed_values_and_collects_every_error() {
        let items = vec![
            setting("name", Value::Text("x".into())),
            setting("layers", Value::Text("many".into())),
            setting("flag", Value::Boolean(true)),
        ];
        let settings = Settings::new(&items);
        assert_eq!(settings.text("name").as_deref(), Some("x"));
        assert_eq!(settings.boolean("flag"), Some(true));
        assert_eq!(settings.integer("layers"), None);
        assert_eq!(settings.required_text("config"), None);
        let errors = settings.finish().unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].key, "layers");
        assert_eq!(errors[0].message, "expected an integer, found text");
        assert_eq!(errors[1].key, "config");
        assert_eq!(errors[1].message, "is required");
    }

    #[test]
    fn a_single_string_is_a_list_of_one() {
        let items = vec![setting("command", Value::Text("serve".into()))];
        let settings = Settings::new(&items);
        assert_eq!(settings.list("command"), Some(vec!["serve".to_string()]));
        assert!(settings.finish().is_ok());
    }
}
