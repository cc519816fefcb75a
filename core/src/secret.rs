//! Secrets: session ids and resume tokens are 128 bits from the operating system's CSPRNG,
//! and are compared in constant time.

use subtle::ConstantTimeEq;

/// A fresh secret: 128 bits from the CSPRNG as 25 lowercase base-36 characters.
pub fn generate() -> Result<String, crate::EntropyError> {
    crate::id::IdGenerator::generate(&mut crate::id::RandomIds)
}

/// Whether `presented` equals `expected`, in time that does not depend on where they differ.
pub fn equal(presented: &str, expected: &str) -> bool {
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_128_bit_values() {
        let a = generate().expect("entropy");
        let b = generate().expect("entropy");
        assert_eq!(a.len(), 25);
        assert_ne!(a, b);
    }

    #[test]
    fn equal_compares_whole_values() {
        assert!(equal("abc", "abc"));
        assert!(!equal("abd", "abc"));
        assert!(!equal("ab", "abc"));
        assert!(!equal("", "abc"));
    }
}
