//! Egress: requests a client sends up its channel, performed by the proxy under a policy that
//! is safe by default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::budget::{BodyError, Budget};
use crate::headers::{forwardable, host_count};
use crate::message::{Head, Message};

/// Which destinations egress may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressMode {
    /// No egress at all: every client request for a host that is not another client is
    /// refused with 403.
    Off,
    /// Public addresses, plus the `allow` list (which may name otherwise refused ones). The
    /// default.
    #[default]
    Public,
    /// Only the destinations on the `allow` list.
    AllowList,
}

impl std::str::FromStr for EgressMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(EgressMode::Off),
            "public" => Ok(EgressMode::Public),
            "allow-list" => Ok(EgressMode::AllowList),
            other => Err(format!(
                "unknown egress mode {other:?} (off, public or allow-list)"
            )),
        }
    }
}

/// What a client may reach through the proxy.
///
/// By default ([`EgressMode::Public`]) every public address is allowed and every address of
/// the IANA IPv4 and IPv6 special-purpose registries that is not globally reachable is refused
/// ([`is_refused_address`]) — checked on the addresses the name resolves to, and the
/// connection is made to the checked address. `allow` entries (`host` or `host:port`, matched
/// against the request's `Host`) permit a destination the address rules would refuse.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// Off, public (default) or allow-list only.
    pub mode: EgressMode,
    /// Destinations allowed even on refused addresses (`host` or `host:port`).
    pub allow: Vec<String>,
    /// Time to connect and answer; then 504. 30 s.
    pub timeout: Duration,
    /// Largest response body relayed; larger → 502. 16 MiB.
    pub max_response_bytes: usize,
    /// Egress requests one client may have in flight at once; more → 429. 8.
    pub max_concurrent_per_client: usize,
    /// TLS for `https://` targets. Default: the compiled-in web roots
    /// ([`crate::tls::Roots::WebPki`]); add a private CA with [`crate::tls::client_config`].
    /// `None`: `https://` targets are refused (502).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            mode: EgressMode::Public,
            allow: Vec::new(),
            timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
            max_concurrent_per_client: 8,
            tls: crate::tls::client_config(crate::tls::Roots::WebPki, &[]).ok(),
        }
    }
}

fn refused_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        u32::from(v4) & mask == u32::from(Ipv4Addr::from(net)) & mask
    };
    o[0] == 0 // "this network"
        || o[0] == 10 // private
        || in_net([100, 64, 0, 0], 10) // shared address space (CGNAT)
        || o[0] == 127 // loopback
        || in_net([169, 254, 0, 0], 16) // link local, 169.254.169.254 (cloud metadata)
        || in_net([172, 16, 0, 0], 12) // private
        || in_net([192, 0, 0, 0], 24) // IETF protocol assignments
        || in_net([192, 0, 2, 0], 24) // documentation
        || in_net([192, 88, 99, 0], 24) // 6to4 relay anycast (deprecated)
        || in_net([192, 168, 0, 0], 16) // private
        || in_net([198, 18, 0, 0], 15) // benchmarking
        || in_net([198, 51, 100, 0], 24) // documentation
        || in_net([203, 0, 113, 0], 24) // documentation
        || o[0] >= 224 // multicast 224/4, reserved 240/4, broadcast
}

/// Whether the address rules refuse `ip`: every address that the IANA IPv4 and IPv6
/// special-purpose address registries do not mark globally reachable, multicast, and IPv6
/// outside global unicast (`2000::/3`). An IPv6 address that embeds an IPv4 address (mapped,
/// compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by the IPv4 address it
/// embeds; Teredo (`2001::/32`) and the rest of `2001::/23` are refused.
pub fn is_refused_address(ip: IpAddr) -> bool {
    let v6 = match ip {
        IpAddr::V4(v4) => return refused_v4(v4),
        IpAddr::V6(v6) => v6,
    };
    let s = v6.segments();
    let embedded_low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible (::a.b.c.d), which
        // includes :: and ::1.
        return s[5] == 0 || refused_v4(embedded_low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_v4(embedded_low); // NAT64 well-known prefix
    }
    if s[0] == 0x2002 {
        let embedded = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return refused_v4(embedded); // 6to4
    }
    if s[0] & 0xe000 != 0x2000 {
        return true; // not global unicast: ::/8, 64:ff9b:1::/48, 100::/64, fc00::/7, fe80::/10, fec0::/10, ff00::/8, …
    }
    // 2001::/23 (IETF protocol assignments, Teredo included) and 2001:db8::/32 (documentation).
    (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8)) || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
}

impl EgressPolicy {
    fn allowed_by_list(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.allow.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            entry == host || entry == format!("{host}:{port}")
        })
    }

    /// Performs `request` and returns the response, or an error response saying why not:
    /// 400 a malformed request (a second `Host`, a target that is neither a path nor an
    /// absolute `http://`/`https://` URL), 403 refused by the policy, 502 the target failed
    /// (its certificate included), 503 the proxy holds too many bodies, 504 the target did
    /// not answer in time. A path target goes over plain HTTP to the host its `Host` header
    /// names; an absolute target (`https://example.com/x`) names scheme and host itself.
    /// The policy is applied to the addresses the host resolves to, whatever the scheme.
    /// Hop-by-hop, framing and forwarding headers are dropped both ways.
    pub async fn perform(&self, request: Message, budget: &Budget) -> Message {
        if self.mode == EgressMode::Off {
            browserver_runtime::metrics::egress_refused("off");
            return Message::text_response(403, "egress is disabled on this proxy");
        }
        let Head::Request { method, target } = &request.head else {
            return Message::text_response(400, "not a request");
        };
        if host_count(&request.headers) > 1 {
            return Message::text_response(400, "more than one Host header");
        }
        let (https, authority, path) = if target.starts_with('/') {
            let host_header = request
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| "localhost".into());
            match host_header.parse::<http::uri::Authority>() {
                Ok(a) => (false, a, target.clone()),
                Err(_) => return Message::text_response(400, "invalid Host header"),
            }
        } else {
            match absolute_target(target) {
                Some(parts) => parts,
                None => {
                    return Message::text_response(
                        400,
                        "the request target must be a path or an http:// or https:// URL",
                    );
                }
            }
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let listed = self.allowed_by_list(&host, port);
        if self.mode == EgressMode::AllowList && !listed {
            browserver_runtime::metrics::egress_refused("allow_list");
            return Message::text_response(
                403,
                &format!("egress to {host} is not on the proxy's allow list"),
            );
        }
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(
            self.timeout,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                return Message::text_response(502, &format!("cannot resolve {host}: {e}"));
            }
            Err(_) => return Message::text_response(504, &format!("resolving {host} timed out")),
        };
        // Every address the name resolves to must pass (a name that also resolves to a
        // private address is refused), and the connection goes to one that was checked.
        if !listed && addrs.iter().any(|a| is_refused_address(a.ip())) {
            browserver_runtime::metrics::egress_refused("address");
            return Message::text_response(
                403,
                &format!("egress to {host} is refused by the proxy's policy"),
            );
        }
        let Some(addr) = addrs.first().copied() else {
            return Message::text_response(502, &format!("{host} has no address"));
        };
        let mut builder = http::Request::builder()
            .method(method.as_str())
            .uri(path.as_str())
            .header(http::header::HOST, authority.as_str());
        for (k, v) in forwardable(&request.headers) {
            if k != "host" {
                builder = builder.header(k.as_str(), v.as_slice());
            }
        }
        let Ok(req) = builder.body(Full::new(request.body.clone())) else {
            return Message::text_response(400, "the request cannot be sent as HTTP");
        };
        let tls = if https {
            let Some(config) = self.tls.clone() else {
                return Message::text_response(502, "egress over https is not configured");
            };
            let Ok(name) = rustls::pki_types::ServerName::try_from(host.clone()) else {
                return Message::text_response(400, "invalid host name for TLS");
            };
            Some((config, name))
        } else {
            None
        };
        match tokio::time::timeout(self.timeout, self.send(addr, tls, req, budget)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => Message::text_response(502, &format!("{host}: {e}")),
            Err(_) => Message::text_response(504, &format!("{host} did not answer in time")),
        }
    }

    async fn send(
        &self,
        addr: SocketAddr,
        tls: Option<(
            std::sync::Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        )>,
        req: http::Request<Full<Bytes>>,
        budget: &Budget,
    ) -> Result<Message, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut sender = match tls {
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender
            }
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender
            }
        };
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        // The reservation ends once the answer is encoded for the client's channel, whose
        // own buffer limit bounds it from there.
        let (body, _held) = match budget.read(body, self.max_response_bytes).await {
            Ok(read) => read,
            Err(BodyError::Busy) => return Ok(Message::text_response(503, "proxy busy")),
            Err(e) => return Err(format!("response too large or unreadable: {e}")),
        };
        let mut m = Message::from_response(&parts, body);
        m.headers = forwardable(&m.headers);
        Ok(m)
    }
}

/// An absolute-form target (`https://host[:port]/path?query`): whether it is https, its
/// authority, and its path and query. `None` for anything else (other schemes, user info).
fn absolute_target(target: &str) -> Option<(bool, http::uri::Authority, String)> {
    let uri: http::Uri = target.parse().ok()?;
    let https = match uri.scheme_str()? {
        "http" => false,
        "https" => true,
        _ => return None,
    };
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') {
        return None;
    }
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.to_string());
    Some((https, authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_name_scheme_host_and_path_and_nothing_else_passes() {
        let (https, authority, path) = absolute_target("https://example.com/a?b=1").expect("ok");
        assert!(https);
        assert_eq!(
            (authority.as_str(), path.as_str()),
            ("example.com", "/a?b=1")
        );
        let (https, authority, path) = absolute_target("http://[::1]:8080").expect("ok");
        assert!(!https);
        assert_eq!((authority.as_str(), path.as_str()), ("[::1]:8080", "/"));
        for bad in [
            "ftp://example.com/",
            "https://user@example.com/",
            "example.com/x",
            "*",
        ] {
            assert!(absolute_target(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn addresses_that_are_not_globally_reachable_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.255.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.9",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "4000::1",
            "::ffff:198.51.100.1",
            "64:ff9b::c633:6401",
            "2002:c633:6401::1",
            "2001:1ff::1",
            "3fff:fff::1",
        ] {
            assert!(is_refused_address(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_allowed_including_embedded_public_ipv4() {
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700::1111",
            "2a00:1450::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
            "2001:200::1",
            "3fff:1000::1",
            "2a00:100::1",
        ] {
            assert!(!is_refused_address(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn egress_modes_parse_from_their_flag_values() {
        assert_eq!("off".parse(), Ok(EgressMode::Off));
        assert_eq!("public".parse(), Ok(EgressMode::Public));
        assert_eq!("allow-list".parse(), Ok(EgressMode::AllowList));
        assert!("open".parse::<EgressMode>().is_err());
    }

    /// A loopback HTTP server answering 200 with the request's headers as its body.
    async fn echo_headers() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut seen = String::new();
                        for (k, v) in req.headers() {
                            seen.push_str(&format!("{k}={}\n", v.to_str().unwrap_or("?")));
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(seen),
                        )))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    fn get(host: &str, extra: &[(&str, &str)]) -> Message {
        let mut headers = vec![("host".to_string(), host.as_bytes().to_vec())];
        for (k, v) in extra {
            headers.push((k.to_string(), v.as_bytes().to_vec()));
        }
        Message {
            id: None,
            head: Head::Request {
                method: "GET".into(),
                target: "/".into(),
            },
            headers,
            body: Bytes::new(),
        }
    }

    fn status(m: &Message) -> u16 {
        match m.head {
            Head::Response { status, .. } => status,
            Head::Request { .. } => 0,
        }
    }

    #[tokio::test]
    async fn listed_destinations_are_reached_although_refused_and_others_are_not() {
        let up = echo_headers().await;
        let budget = Budget::new(1 << 20);
        let host = up.to_string();
        let unlisted = EgressPolicy::default();
        assert_eq!(
            status(&unlisted.perform(get(&host, &[]), &budget).await),
            403
        );
        for entry in [host.clone(), "127.0.0.1".to_string(), host.to_uppercase()] {
            let listed = EgressPolicy {
                allow: vec![entry.clone()],
                ..EgressPolicy::default()
            };
            let answer = listed
                .perform(get(&host, &[("x-kept", "1"), ("te", "trailers")]), &budget)
                .await;
            assert_eq!(status(&answer), 200, "{entry}");
            let seen = String::from_utf8_lossy(&answer.body);
            assert_eq!(seen.matches("host=").count(), 1, "{seen}");
            assert!(seen.contains("x-kept=1") && !seen.contains("te="), "{seen}");
        }
        let other_port = EgressPolicy {
            allow: vec!["127.0.0.1:1".into()],
            ..EgressPolicy::default()
        };
        assert_eq!(
            status(&other_port.perform(get(&host, &[]), &budget).await),
            403
        );
        let allow_list = EgressPolicy {
            mode: EgressMode::AllowList,
            allow: vec![host.clone()],
            ..EgressPolicy::default()
        };
        assert_eq!(
            status(&allow_list.perform(get(&host, &[]), &budget).await),
            200
        );
    }

    #[tokio::test]
    async fn off_and_allow_list_modes_refuse_before_resolving() {
        let request = |host: &str| Message {
            id: None,
            head: Head::Request {
                method: "GET".into(),
                target: "/".into(),
            },
            headers: vec![("host".into(), host.as_bytes().to_vec())],
            body: Bytes::new(),
        };
        let budget = Budget::new(1 << 20);
        let status = |m: Message| match m.head {
            Head::Response { status, .. } => status,
            Head::Request { .. } => 0,
        };
        let off = EgressPolicy {
            mode: EgressMode::Off,
            ..EgressPolicy::default()
        };
        assert_eq!(
            status(off.perform(request("example.com"), &budget).await),
            403
        );
        let listed = EgressPolicy {
            mode: EgressMode::AllowList,
            allow: vec!["api.example:8080".into()],
            ..EgressPolicy::default()
        };
        assert_eq!(
            status(listed.perform(request("other.example"), &budget).await),
            403
        );
        let mut two_hosts = request("a.example");
        two_hosts
            .headers
            .push(("Host".into(), b"127.0.0.1".to_vec()));
        assert_eq!(
            status(EgressPolicy::default().perform(two_hosts, &budget).await),
            400
        );
        // An absolute target names its host itself, and the policy applies to it.
        for (target, expected) in [
            ("http://127.0.0.1/", 403),
            ("https://127.0.0.1:8443/x", 403),
            ("ftp://a.example/", 400),
        ] {
            let mut absolute = request("a.example");
            absolute.head = Head::Request {
                method: "GET".into(),
                target: target.into(),
            };
            assert_eq!(
                status(EgressPolicy::default().perform(absolute, &budget).await),
                expected,
                "{target}"
            );
        }
    }
}
