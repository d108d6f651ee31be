//! Tokens: fresh random ones, and comparisons that take the same time whatever
//! the guess.

use std::io::Read;

use sha2::{Digest, Sha256};

/// 32 random hex digits from the kernel's generator.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `given` is `expected`, in time that depends on neither. Hashing first
/// hides the length too.
pub fn same(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_compare_exactly() {
        let token = random_token();
        assert_eq!(token.len(), 32);
        assert_ne!(token, random_token());
        assert!(same(&token, &token.clone()));
        assert!(!same(&token, &token[1..]));
        assert!(!same("", &token));
    }
}
