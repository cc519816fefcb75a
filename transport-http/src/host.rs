//! The host pattern: exactly one `*`, matched case-insensitively against the `Host` header
//! with its port ignored.

/// A pattern such as `*.localhost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    prefix: String,
    suffix: String,
}

/// A pattern without exactly one `*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "host pattern {0:?} must contain exactly one '*' and otherwise only letters, digits, '.' and '-'"
)]
pub struct PatternError(pub String);

impl HostPattern {
    /// Parses `pattern` (for example `*.localhost` or `*.example.com`): exactly one `*`,
    /// otherwise only letters, digits, `.` and `-`.
    pub fn parse(pattern: &str) -> Result<HostPattern, PatternError> {
        let lower = pattern.to_ascii_lowercase();
        let hostname_chars = lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"*.-".contains(&b));
        if !hostname_chars {
            return Err(PatternError(pattern.to_string()));
        }
        match lower.split_once('*') {
            Some((prefix, suffix)) if !suffix.contains('*') => Ok(HostPattern {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            }),
            _ => Err(PatternError(pattern.to_string())),
        }
    }

    /// The client name a `Host` header names, if it matches (a DNS label in place of `*`).
    pub fn client_id(&self, host: &str) -> Option<String> {
        let host = strip_port(host).to_ascii_lowercase();
        let id = host
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        browserver_core::is_valid_id(id).then(|| id.to_string())
    }

    /// The hostname of client `id`.
    pub fn hostname(&self, id: &str) -> String {
        format!("{}{id}{}", self.prefix, self.suffix)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal is never a client hostname
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_case_insensitively_ignoring_the_port() {
        let p = HostPattern::parse("*.localhost").expect("pattern");
        assert_eq!(
            p.client_id("abc123.localhost:3572").as_deref(),
            Some("abc123")
        );
        assert_eq!(p.client_id("ABC123.LocalHost").as_deref(), Some("abc123"));
        assert_eq!(p.client_id("localhost:3572"), None);
        assert_eq!(p.client_id("a.b.localhost"), None, "one label only");
        assert_eq!(p.client_id("-x.localhost"), None);
        assert_eq!(p.client_id("[::1]:3572"), None);
        assert_eq!(p.hostname("abc"), "abc.localhost");
    }

    #[test]
    fn a_pattern_needs_exactly_one_star() {
        assert!(HostPattern::parse("localhost").is_err());
        assert!(HostPattern::parse("*.*.localhost").is_err());
        assert!(HostPattern::parse("app-*.example.com").is_ok());
    }
}
