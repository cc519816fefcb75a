//! Who may read the admin surface (`/_browserver/clients`).
//!
//! With an admin token: whoever presents it (`Authorization: Bearer TOKEN`, compared in
//! constant time), from anywhere. Without one: only a request that is local in every way a
//! server can tell — a loopback peer, and no forwarding headers (a reverse proxy on the same
//! host would make every visitor a loopback peer) unless the peer is a trusted proxy whose
//! `X-Forwarded-For` names a loopback client; and a `Host` that is a loopback name or this
//! server's own address (a DNS-rebinding page names its own domain).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

const FORWARDING: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// `Ok` if the request may read the admin surface, else the status and reason.
pub(crate) fn authorize(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted_peer: bool,
    local: Option<SocketAddr>,
    token: Option<&str>,
) -> Result<(), (u16, &'static str)> {
    if let Some(token) = token {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        return match presented {
            Some(p) if browserver_core::secret::equal(p, token) => Ok(()),
            Some(_) => Err((403, "Forbidden: wrong admin token")),
            None => Err((401, "Unauthorized: this endpoint needs the admin token")),
        };
    }
    if !peer.is_some_and(|p| p.ip().is_loopback()) {
        return Err((403, "Forbidden: the status endpoint answers loopback only"));
    }
    if FORWARDING.iter().any(|h| headers.contains_key(*h)) {
        // The client the trusted proxy saw is the last address it appended.
        let forwarded_client = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
        if !(trusted_peer && forwarded_client.is_some_and(|ip| ip.is_loopback())) {
            return Err((
                403,
                "Forbidden: a forwarded request needs the admin token (--admin-token)",
            ));
        }
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_local_host(host, local) {
        Ok(())
    } else {
        Err((
            403,
            "Forbidden: the status endpoint answers loopback hosts only",
        ))
    }
}

/// Whether `host` (a `Host` header) is `localhost`, a loopback address, or this server's own
/// address.
fn is_local_host(host: &str, local: Option<SocketAddr>) -> bool {
    let name = match host.parse::<http::uri::Authority>() {
        Ok(a) => a
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
        Err(_) => return false,
    };
    if name == "localhost" {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || local.is_some_and(|l| l.ip() == ip),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("addr"))
    }

    #[test]
    fn without_a_token_only_local_requests_to_local_hosts_are_answered() {
        let local = addr("127.0.0.1:3572");
        let lo = addr("127.0.0.1:5000");
        assert!(
            authorize(
                &headers(&[("host", "127.0.0.1:3572")]),
                lo,
                false,
                local,
                None
            )
            .is_ok()
        );
        assert!(
            authorize(
                &headers(&[("host", "localhost:3572")]),
                lo,
                false,
                local,
                None
            )
            .is_ok()
        );
        assert!(
            authorize(
                &headers(&[("host", "[::1]:3572")]),
                addr("[::1]:1"),
                false,
                local,
                None
            )
            .is_ok()
        );
        // DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1.
        assert!(
            authorize(
                &headers(&[("host", "evil.example:3572")]),
                lo,
                false,
                local,
                None
            )
            .is_err()
        );
        // A reverse proxy on the same host.
        assert!(
            authorize(
                &headers(&[("host", "localhost"), ("x-forwarded-for", "6.6.6.6")]),
                lo,
                false,
                local,
                None
            )
            .is_err()
        );
        assert!(
            authorize(
                &headers(&[("host", "127.0.0.1:3572")]),
                addr("10.0.0.1:1"),
                false,
                local,
                None
            )
            .is_err()
        );
        assert!(authorize(&HeaderMap::new(), lo, false, local, None).is_err());
        // Mounted where no client address is known: not a local request.
        let host = headers(&[("host", "127.0.0.1:3572")]);
        assert!(authorize(&host, None, false, local, None).is_err());
        // Listening on another address: that address is the server's own host too.
        let own = addr("10.0.0.5:3572");
        assert!(authorize(&headers(&[("host", "10.0.0.5:3572")]), lo, false, own, None).is_ok());
        assert!(authorize(&headers(&[("host", "10.0.0.6:3572")]), lo, false, own, None).is_err());
    }

    #[test]
    fn a_trusted_proxy_forwarding_a_local_client_is_believed_and_no_one_else() {
        let local = addr("127.0.0.1:3572");
        let proxy = addr("127.0.0.1:40000");
        let via = |xff: &'static str| headers(&[("host", "localhost"), ("x-forwarded-for", xff)]);
        assert!(authorize(&via("127.0.0.1"), proxy, true, local, None).is_ok());
        assert!(authorize(&via("127.0.0.1, 203.0.113.9"), proxy, true, local, None).is_err());
        assert!(authorize(&via("203.0.113.9, 127.0.0.1"), proxy, true, local, None).is_ok());
        assert!(
            authorize(&via("127.0.0.1"), proxy, false, local, None).is_err(),
            "untrusted"
        );
    }

    #[test]
    fn with_a_token_only_the_token_counts() {
        let remote = addr("203.0.113.9:1");
        let ok = headers(&[("authorization", "Bearer s3cret"), ("host", "x.example")]);
        assert!(authorize(&ok, remote, false, None, Some("s3cret")).is_ok());
        let wrong = headers(&[("authorization", "Bearer guess")]);
        assert_eq!(
            authorize(&wrong, remote, false, None, Some("s3cret")).map_err(|e| e.0),
            Err(403)
        );
        let local = headers(&[("host", "127.0.0.1")]);
        assert_eq!(
            authorize(&local, addr("127.0.0.1:1"), false, None, Some("s3cret")).map_err(|e| e.0),
            Err(401),
            "loopback is no substitute for the token"
        );
    }
}
