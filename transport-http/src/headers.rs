//! Header hygiene at the proxy's boundaries: what one hop may pass to the next.
//!
//! Every message that crosses the proxy — a visitor's request to a client, a client's request
//! to another client or to the internet, and every answer — goes through [`forwardable`]:
//! hop-by-hop headers (and those a `Connection` header names), framing headers (the proxy
//! frames bodies itself: the body wins over any `content-length`), the correlation header and
//! the `x-forwarded-*`/`forwarded` family (only the proxy writes those) never pass.

use crate::message::REQ_ID_HEADER;

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
];

/// Whether `name` (lowercase) is a hop-by-hop header.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("proxy-")
}

/// Whether `name` (lowercase) is one only the proxy may set.
fn is_proxy_owned(name: &str) -> bool {
    name == REQ_ID_HEADER
        || name == "content-length"
        || name == "forwarded"
        || name.starts_with("x-forwarded-")
}

/// The headers of `headers` that may cross to the next hop, in order (names lowercase).
pub fn forwardable(headers: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| !is_hop_by_hop(k) && !is_proxy_owned(k) && !named.contains(k))
        .map(|(k, v)| (k, v.clone()))
        .collect()
}

/// How many `Host` headers there are.
pub fn host_count(headers: &[(String, Vec<u8>)]) -> usize {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn hop_by_hop_framing_correlation_and_forwarding_headers_never_pass() {
        let kept = forwardable(&h(&[
            ("Connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("content-length", "5"),
            ("x-brow-req-id", "7"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("upgrade", "websocket"),
            ("proxy-anything", "x"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-empty", ""),
        ]));
        assert_eq!(
            kept,
            h(&[
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-empty", "")
            ])
        );
    }

    #[test]
    fn hosts_are_counted_whatever_their_case() {
        assert_eq!(host_count(&h(&[("host", "a"), ("HOST", "b")])), 2);
        assert_eq!(host_count(&h(&[("x", "a")])), 0);
    }
}
