//! Session and client ids: unguessable by default, replaceable by the embedding application.

/// Produces ids for new sessions. Replace it to choose your own naming scheme (for example
/// ids derived from an authenticated user); the registry still checks that each id is a
/// valid DNS label and not in use.
pub trait IdGenerator: Send {
    /// A fresh id candidate.
    fn generate(&mut self) -> Result<String, crate::EntropyError>;
}

/// The default generator: 128 bits from the operating system's CSPRNG, written as 25
/// lowercase base-36 characters (a valid DNS label and URL-safe).
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomIds;

impl IdGenerator for RandomIds {
    fn generate(&mut self) -> Result<String, crate::EntropyError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| crate::EntropyError(e.to_string()))?;
        Ok(format!("{:0>25}", base36(u128::from_le_bytes(bytes))))
    }
}

impl<F> IdGenerator for F
where
    F: FnMut() -> String + Send,
{
    fn generate(&mut self) -> Result<String, crate::EntropyError> {
        Ok(self())
    }
}

/// Lowercase base 36.
pub(crate) fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(25);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    out.into_iter().map(char::from).collect()
}

/// Whether `id` can serve both as a BrowserChannel session id and as the first label of a
/// hostname: 1 to 63 characters of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_valid_25_character_labels() {
        let mut g = RandomIds;
        let a = g.generate().expect("entropy");
        let b = g.generate().expect("entropy");
        assert_eq!(a.len(), 25);
        assert!(is_valid_id(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn base36_covers_the_full_range() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(u128::MAX).len(), 25);
    }

    #[test]
    fn id_validation_follows_dns_label_rules() {
        assert!(is_valid_id("abc-123"));
        for bad in ["", "-abc", "abc-", "ABC", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
