//! Which web origins may open sessions: a browser attaches `Origin` to a WebSocket upgrade and
//! to a cross-site request, so a page elsewhere cannot open sessions in its visitors' names
//! unless the server allows it. Non-browser clients send no `Origin` and are admitted.
//!
//! ```
//! use browserver_core::OriginPolicy;
//!
//! let policy = OriginPolicy::allow(["https://app.example"]);
//! let host = Some("tunnel.example:443");
//! assert!(policy.admits(None, host)); // not a browser
//! assert!(policy.admits(Some("https://tunnel.example"), host)); // the server's own page
//! assert!(policy.admits(Some("https://app.example"), host)); // listed
//! assert!(!policy.admits(Some("https://evil.example"), host));
//! ```

/// The origins admitted besides the server's own. Default: none (own origin and requests
/// without `Origin` only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// Admits every origin (`*`).
    pub fn any() -> OriginPolicy {
        OriginPolicy {
            any: true,
            allowed: Vec::new(),
        }
    }

    /// Admits these origins (`https://app.example`, exactly as browsers send them, case
    /// ignored; `*` admits all) besides the server's own.
    pub fn allow<I, S>(origins: I) -> OriginPolicy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut policy = OriginPolicy::default();
        for o in origins {
            let o = o.as_ref().trim().trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                policy.any = true;
            } else if !o.is_empty() {
                policy.allowed.push(o);
            }
        }
        policy
    }

    /// Whether a request with this `Origin` (if any) and this `Host` header is admitted: no
    /// `Origin`, the server's own origin (its host and port equal `Host`), or a listed one.
    pub fn admits(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            return true;
        }
        match (same_origin_authority(&origin), host) {
            (Some(authority), Some(host)) => authority == normalize_host(host, &origin),
            _ => false,
        }
    }

    /// [`admits`](Self::admits) for raw header values: an `Origin` that is not UTF-8 is
    /// refused.
    pub fn admits_raw(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
        let host = host.and_then(|h| std::str::from_utf8(h).ok());
        match origin.map(std::str::from_utf8) {
            None => self.admits(None, host),
            Some(Ok(origin)) => self.admits(Some(origin), host),
            Some(Err(_)) => false,
        }
    }
}

/// `host[:port]` of an `http(s)://` origin, without its scheme's default port.
fn same_origin_authority(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    if scheme != "http" && scheme != "https" || rest.is_empty() || rest.contains('/') {
        return None;
    }
    Some(strip_default_port(rest, scheme))
}

fn normalize_host(host: &str, origin: &str) -> String {
    let scheme = origin.split_once("://").map_or("http", |(s, _)| s);
    strip_default_port(&host.trim().to_ascii_lowercase(), scheme)
}

fn strip_default_port(authority: &str, scheme: &str) -> String {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_without_origin_and_from_the_servers_own_origin_are_admitted() {
        let p = OriginPolicy::default();
        assert!(p.admits(None, Some("127.0.0.1:3572")));
        assert!(p.admits(Some("http://127.0.0.1:3572"), Some("127.0.0.1:3572")));
        assert!(p.admits(Some("HTTPS://Example.com"), Some("example.com:443")));
        assert!(p.admits(Some("http://example.com"), Some("example.com")));
    }

    #[test]
    fn other_origins_are_refused_unless_listed() {
        let p = OriginPolicy::default();
        assert!(!p.admits(Some("http://evil.example"), Some("127.0.0.1:3572")));
        assert!(!p.admits(Some("http://127.0.0.1:3573"), Some("127.0.0.1:3572")));
        assert!(!p.admits(Some("null"), Some("127.0.0.1:3572")));
        assert!(!p.admits(Some("http://127.0.0.1:3572"), None));
        // Only http(s) origins without a path can be the server's own.
        for odd in [
            "ftp://127.0.0.1:3572",
            "http://",
            "https://127.0.0.1:3572/x",
            "127.0.0.1:3572",
        ] {
            assert!(!p.admits(Some(odd), Some("127.0.0.1:3572")), "{odd}");
        }
        assert!(p.admits(Some("https://127.0.0.1:3572"), Some("127.0.0.1:3572")));
        let listed = OriginPolicy::allow(["https://app.example/"]);
        assert!(listed.admits(Some("https://APP.example"), Some("127.0.0.1:3572")));
        assert!(!listed.admits(Some("https://other.example"), Some("127.0.0.1:3572")));
        assert!(OriginPolicy::allow(["*"]).admits(Some("null"), None));
        assert!(OriginPolicy::any().admits(Some("http://x"), None));
        assert!(
            !OriginPolicy::any().admits_raw(Some(b"\xff"), None),
            "not UTF-8"
        );
        assert!(OriginPolicy::default().admits_raw(Some(b"http://a:1"), Some(b"a:1")));
    }

    #[test]
    fn only_http_and_https_origins_without_a_path_have_an_authority() {
        assert_eq!(same_origin_authority("http://a:1"), Some("a:1".into()));
        assert_eq!(same_origin_authority("https://a:443"), Some("a".into()));
        assert_eq!(same_origin_authority("ftp://a"), None);
        assert_eq!(same_origin_authority("http://"), None);
        assert_eq!(same_origin_authority("http://a/b"), None);
        assert_eq!(same_origin_authority("https://a/b"), None);
    }
}
