//! Wildcards as users write them in nanny.toml: `*` any run of characters,
//! `?` one, the rest as written. Paths match part by part, so that a `*` in a
//! grant like `/opt/venvs/*/bin/python` never reaches across a `/`.

/// `*` any run of characters, `?` one; the rest as written.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == '?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((at, matched)) => {
                    p = at + 1;
                    n = matched + 1;
                    star = Some((at, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// `pattern` against `path`, one `/`-separated part against one.
pub fn matches_path(pattern: &str, path: &str) -> bool {
    let (patterns, parts): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), path.split('/').collect());
    patterns.len() == parts.len()
        && patterns
            .iter()
            .zip(&parts)
            .all(|(pattern, part)| matches(pattern, part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_stay_within_one_part_of_a_path() {
        assert!(matches("HF_*", "HF_TOKEN") && !matches("HF_*", "XHF_TOKEN"));
        assert!(matches("vllm/vllm-openai:*", "vllm/vllm-openai:v0.6"));
        assert!(matches_path(
            "/opt/venvs/*/bin/python",
            "/opt/venvs/a/bin/python"
        ));
        assert!(!matches_path(
            "/opt/venvs/*/bin/python",
            "/opt/venvs/a/b/bin/python"
        ));
        assert!(!matches_path(
            "/opt/venvs/*/bin/python",
            "/opt/venvs/a/bin/python3"
        ));
    }
}
