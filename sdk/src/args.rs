//! Command lines built from templates with `{host}`, `{port}`, `{model}` and `{name}`.

use crate::{ConfigError, Service};

/// Expands the placeholders in one template word. `{model}` without a configured
/// model is an error on the `model` key; an unknown placeholder is left as written.
pub fn expand(template: &str, service: &Service) -> Result<String, ConfigError> {
    let mut out = template
        .replace("{host}", &service.host)
        .replace("{port}", &service.port.to_string())
        .replace("{name}", &service.name);
    if out.contains("{model}") {
        let model = service.model.as_deref().ok_or_else(|| ConfigError {
            key: "model".to_string(),
            message: format!("`{template}` uses {{model}} but the service sets no model"),
        })?;
        out = out.replace("{model}", model);
    }
    Ok(out)
}

/// Builds an argument list, expanding placeholders and collecting every error.
pub struct Args<'a> {
    service: &'a Service,
    args: Vec<String>,
    errors: Vec<ConfigError>,
}

impl<'a> Args<'a> {
    pub fn new(service: &'a Service) -> Self {
        Self {
            service,
            args: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Appends the words of `template`, each expanded.
    pub fn template<S: AsRef<str>>(mut self, template: &[S]) -> Self {
        for word in template {
            match expand(word.as_ref(), self.service) {
                Ok(word) => self.args.push(word),
                Err(error) if self.errors.contains(&error) => {}
                Err(error) => self.errors.push(error),
            }
        }
        self
    }

    /// Appends `flag value` when `value` is present.
    pub fn option(mut self, flag: &str, value: Option<impl ToString>) -> Self {
        if let Some(value) = value {
            self.args.push(flag.to_string());
            self.args.push(value.to_string());
        }
        self
    }

    /// Appends words as they are, without expansion.
    pub fn literal<S: ToString>(mut self, words: &[S]) -> Self {
        self.args.extend(words.iter().map(ToString::to_string));
        self
    }

    /// The arguments, or every placeholder that could not be filled.
    pub fn finish(self) -> Result<Vec<String>, Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(self.args)
        } else {
            Err(self.errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::service;

    #[test]
    fn expands_every_placeholder() {
        let mut svc = service("chat");
        svc.model = Some("/models/q.gguf".into());
        let args = Args::new(&svc)
            .template(&[
                "-m", "{model}", "--host", "{host}", "--port", "{port}", "--alias", "{name}",
            ])
            .option("-c", Some(4096))
            .option("-t", None::<u32>)
            .finish()
            .unwrap();
        assert_eq!(
            args,
            [
                "-m",
                "/models/q.gguf",
                "--host",
                "127.0.0.1",
                "--port",
                "8000",
                "--alias",
                "chat",
                "-c",
                "4096"
            ]
        );
    }

    #[test]
    fn a_missing_model_names_the_model_key_once() {
        let svc = service("chat");
        let errors = Args::new(&svc)
            .template(&["{model}", "--m={model}"])
            .finish()
            .unwrap_err();
        assert_eq!(
            errors.len(),
            2,
            "two different templates, two messages: {errors:?}"
        );
        assert!(errors.iter().all(|error| error.key == "model"));
    }
}
