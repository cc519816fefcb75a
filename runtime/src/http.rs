//! What both transports' HTTP sides share: the client address, owned request headers, the
//! origin check, the per-address session quota, and the admission and connect hooks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use browserver_core::{OriginPolicy, QuotaError, SharedQuota};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::session::Session;

/// The client's address, for [`Session::address`], the per-address quota and the proxy's
/// `x-forwarded-for`: the one address type of every browserver crate. A server inserts it into
/// each request's extensions (the accept loop in this crate, and the `browserver` server,
/// do); see [`client_addr`] for what else is understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The client's address a request carries: a [`ClientAddr`], or — with the `axum` feature —
/// axum's `ConnectInfo<SocketAddr>` (what `into_make_service_with_connect_info::<SocketAddr>()`
/// inserts), so that an axum application needs no middleware of its own.
pub fn client_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    if let Some(ClientAddr(address)) = extensions.get::<ClientAddr>() {
        return Some(*address);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    None
}

/// Decides, before a session is created, whether the connecting client is admitted and,
/// optionally, which public name it gets ([`Session::name`]; for example from a bearer token
/// or a signed claim). The session id stays a fresh secret whatever the name. A refusal
/// `(status, reason)` — 401 or 403 — answers the creating request.
pub type Admission = Arc<dyn Fn(&http::request::Parts) -> AdmissionFuture + Send + Sync>;

/// The future an [`Admission`] returns.
pub type AdmissionFuture =
    Pin<Box<dyn Future<Output = Result<Option<String>, (u16, String)>> + Send>>;

/// Runs synchronously when a session is created, before its first bytes are written:
/// whatever it sends (or `stop`, or `close`) goes out first, as with node-browserchannel's
/// connect handler.
pub type ConnectHook = Arc<dyn Fn(&Session) + Send + Sync>;

/// A copy of request headers that owns its bytes. hyper's header values are slices of the
/// connection's read buffer; a session keeping them would keep that buffer (8 KiB or more)
/// alive as long as the session lives.
pub fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
        .collect()
}

/// Whether `policy` admits the request's `Origin` (compared with its `Host`, or the URI's
/// authority under HTTP/2).
pub fn admits_origin(policy: &OriginPolicy, parts: &http::request::Parts) -> bool {
    let host = parts
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()));
    let origin = parts
        .headers
        .get(http::header::ORIGIN)
        .map(|o| o.as_bytes());
    policy.admits_raw(origin, host)
}

/// A session creation's place in its address's quota: given back when dropped, unless
/// [`keep`](Self::keep) hands it to the registered session (whose transport gives it back
/// when the session closes, with [`SharedQuota::release`]).
#[derive(Debug)]
pub struct QuotaSlot {
    quota: SharedQuota,
    address: Option<SocketAddr>,
}

impl QuotaSlot {
    /// Takes a place for the request's client ([`client_addr`]); a request without an
    /// address is not counted.
    pub fn take(
        quota: &SharedQuota,
        parts: &http::request::Parts,
    ) -> Result<QuotaSlot, QuotaError> {
        let address = client_addr(&parts.extensions);
        if let Some(address) = address {
            quota.try_admit(address.ip(), now())?;
        }
        Ok(QuotaSlot {
            quota: quota.clone(),
            address,
        })
    }

    /// The client's address.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// The place now belongs to a registered session.
    pub fn keep(mut self) {
        self.address = None;
    }
}

impl Drop for QuotaSlot {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            self.quota.release(address.ip(), now());
        }
    }
}

/// The answer to a creation the quota refused: status and `Retry-After` seconds (429 for the
/// address's limits, 503 when the table is full). Counted in `browserver_limit_hits_total`.
pub fn quota_refusal(e: &QuotaError) -> (u16, u64) {
    use crate::metrics::{Limit, limit_hit};
    match e {
        QuotaError::TooManySessions { .. } => {
            limit_hit(Limit::MaxSessionsPerAddress);
            (429, 5)
        }
        QuotaError::TooFast { retry_after } => {
            limit_hit(Limit::SessionRate);
            (429, retry_after.as_secs().max(1))
        }
        QuotaError::TableFull => {
            limit_hit(Limit::QuotaAddresses);
            (503, 5)
        }
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_headers_keep_every_value_without_sharing_the_request_buffer() {
        let buffer = bytes::Bytes::from_static(b"a1a2z");
        let mut headers = HeaderMap::new();
        let name = HeaderName::from_static("x-repeated");
        headers.append(
            &name,
            HeaderValue::from_maybe_shared(buffer.slice(0..2)).expect("valid value"),
        );
        headers.append(
            &name,
            HeaderValue::from_maybe_shared(buffer.slice(2..4)).expect("valid value"),
        );
        headers.insert(http::header::HOST, HeaderValue::from_static("example"));
        let owned = owned_headers(&headers);
        assert_eq!(owned, headers);
        let values: Vec<_> = owned.get_all(&name).iter().collect();
        assert_eq!(values, ["a1", "a2"]);
        for value in owned.values() {
            let range = buffer.as_ptr_range();
            assert!(
                !range.contains(&value.as_bytes().as_ptr()),
                "a value still points into the buffer"
            );
        }
    }

    #[test]
    fn a_quota_slot_is_given_back_unless_kept() {
        let quota = SharedQuota::new(browserver_core::QuotaConfig {
            max_sessions: 1,
            ..Default::default()
        });
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts
            .extensions
            .insert(ClientAddr("127.0.0.1:1".parse().expect("addr")));
        let slot = QuotaSlot::take(&quota, &parts).expect("first");
        assert!(QuotaSlot::take(&quota, &parts).is_err());
        drop(slot);
        let slot = QuotaSlot::take(&quota, &parts).expect("given back");
        slot.keep();
        assert!(QuotaSlot::take(&quota, &parts).is_err());
    }
}
