//! The one rule for names of services and plugins: `^[a-z0-9][a-z0-9_.-]{0,62}$`.

/// Whether `name` may name a service or a plugin.
pub fn is_valid(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    name.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// `name`, when it may name a service; else why not, in the words every
/// surface (API, gateway, MCP) answers with.
pub fn checked(name: &str) -> Result<&str, String> {
    if is_valid(name) {
        Ok(name)
    } else {
        Err(format!(
            "`{}` is not a service name (lowercase letters, digits and `_.-`, at most 63)",
            name.escape_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn accepts_the_documented_pattern_only() {
        for good in ["vllm", "llama-cpp", "0", "a.b_c-d", &"x".repeat(63)] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "X",
            "a/b",
            "a b",
            "../etc",
            &"x".repeat(64),
            "é",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
