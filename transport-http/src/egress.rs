//! Egress: requests a client sends up its channel, performed by the proxy under a policy that
//! is safe by default.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use crate::message::{Head, Message};

/// What a client may reach through the proxy.
///
/// By default every public address is allowed and loopback, private (RFC 1918, unique-local),
/// link-local, shared (CGNAT), unspecified, multicast and cloud-metadata addresses are refused
/// — checked on the addresses the name resolves to, and the connection is made to the checked
/// address. `allow` entries (`host` or `host:port`, matched against the request's `Host`)
/// permit a destination the address rules would refuse.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// Whether egress is possible at all. Default true.
    pub enabled: bool,
    /// Destinations allowed even on refused addresses (`host` or `host:port`).
    pub allow: Vec<String>,
    /// Time to connect and answer; then 504. 30 s.
    pub timeout: Duration,
    /// Largest response body relayed; larger → 502. 16 MiB.
    pub max_response_bytes: usize,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            enabled: true,
            allow: Vec::new(),
            timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
        }
    }
}

/// Whether the address rules refuse `ip`.
pub fn is_refused_address(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the cloud metadata service
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space (CGNAT)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || s[..7] == [0xfd00, 0xec2, 0, 0, 0, 0, 0] // a cloud metadata address
        }
    }
}

impl EgressPolicy {
    fn allowed_by_list(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.allow.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            entry == host || entry == format!("{host}:{port}")
        })
    }

    /// Performs `request` (its `Host` header names the target; plain HTTP) and returns the
    /// response, or an error response saying why not: 403 refused by the policy, 502 the
    /// target failed, 504 the target did not answer in time.
    pub async fn perform(&self, request: Message) -> Message {
        if !self.enabled {
            return Message::text_response(403, "egress is disabled on this proxy");
        }
        let Head::Request { method, target } = &request.head else {
            return Message::text_response(400, "not a request");
        };
        let host_header = request
            .headers
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "localhost".into());
        let authority: http::uri::Authority = match host_header.parse() {
            Ok(a) => a,
            Err(_) => return Message::text_response(400, "invalid Host header"),
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(80);
        let listed = self.allowed_by_list(&host, port);
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
        let Some(addr) = addrs
            .iter()
            .copied()
            .find(|a| listed || !is_refused_address(a.ip()))
        else {
            return Message::text_response(
                403,
                &format!("egress to {host} is refused by the proxy's policy"),
            );
        };
        if !listed && addrs.iter().any(|a| is_refused_address(a.ip())) {
            return Message::text_response(
                403,
                &format!("egress to {host} is refused by the proxy's policy"),
            );
        }
        let mut builder = http::Request::builder()
            .method(method.as_str())
            .uri(target.as_str());
        for (k, v) in &request.headers {
            builder = builder.header(k.as_str(), v.as_slice());
        }
        let Ok(req) = builder.body(Full::new(request.body.clone())) else {
            return Message::text_response(400, "the request cannot be sent as HTTP");
        };
        match tokio::time::timeout(self.timeout, self.send(addr, req)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => Message::text_response(502, &format!("{host}: {e}")),
            Err(_) => Message::text_response(504, &format!("{host} did not answer in time")),
        }
    }

    async fn send(
        &self,
        addr: SocketAddr,
        req: http::Request<Full<Bytes>>,
    ) -> Result<Message, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, self.max_response_bytes)
            .collect()
            .await
            .map_err(|_| "response too large or unreadable".to_string())?
            .to_bytes();
        Ok(Message::from_response(&parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_refused_address(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_refused_address(ip.parse().expect("ip")), "{ip}");
        }
    }
}
