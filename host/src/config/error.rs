use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file, pointing at the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0 is the whole file (or the environment); an empty key, no key.
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns byte offsets into line numbers for one file.
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    /// A YAML manifest is read through its TOML translation, whose offsets mean
    /// nothing in the file the user wrote; lines are found by key there instead.
    pub yaml: Option<&'a str>,
}

impl Source<'_> {
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub fn error(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let key = key.into();
        let line = match self.yaml {
            Some(yaml) => yaml_line(yaml, &key),
            None => self.line_of(offset),
        };
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            key,
            message: message.into(),
        }
    }
}

/// The first line that sets the last part of `key` (`settings.model` → `model:`).
fn yaml_line(yaml: &str, key: &str) -> usize {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    yaml.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches("- ");
            let line = line.trim_start_matches(['"', '\'']);
            line.strip_prefix(leaf)
                .is_some_and(|rest| rest.trim_start_matches(['"', '\'']).starts_with(':'))
        })
        .map_or(1, |index| index + 1)
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    // `ready` for `ready_line`: a word the user shortened.
    if word.len() >= 3 {
        if let Some(longer) = candidates
            .iter()
            .find(|candidate| candidate.starts_with(word))
        {
            return Some(longer);
        }
    }
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= candidate.len().max(word.len()).div_ceil(3))
        .min()
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::{did_you_mean, yaml_line};

    #[test]
    fn finds_a_yaml_key_by_its_last_part() {
        let yaml = "name: chat\nbackend: mock\nsettings:\n  \"model\": x\n";
        assert_eq!(yaml_line(yaml, "backend"), 2);
        assert_eq!(yaml_line(yaml, "settings.model"), 4);
        assert_eq!(yaml_line(yaml, "absent"), 1);
    }

    #[test]
    fn suggests_near_misses_only() {
        let keys = ["backend", "port", "depends_on", "startup_timeout"];
        assert_eq!(did_you_mean("prot", keys), Some("port"));
        assert_eq!(did_you_mean("depends-on", keys), Some("depends_on"));
        assert_eq!(did_you_mean("backned", keys), Some("backend"));
        assert_eq!(did_you_mean("zzzzzz", keys), None);
        assert_eq!(did_you_mean("startup", keys), Some("startup_timeout"));
    }
}
