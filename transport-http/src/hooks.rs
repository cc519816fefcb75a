//! Authorization hooks: the embedding application decides, per request and in both
//! directions, what the proxy forwards.

use crate::message::Message;

/// A refusal: the HTTP status (401 or 403) and a short reason for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401 (who are you?) or 403 (not allowed).
    pub status: u16,
    /// Sent as the response body.
    pub reason: String,
}

impl Refusal {
    /// A 403 with this reason.
    pub fn forbidden(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 403,
            reason: reason.into(),
        }
    }

    /// A 401 with this reason.
    pub fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 401,
            reason: reason.into(),
        }
    }
}

/// Decides which requests the proxy forwards. Both methods allow everything by default.
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// An HTTP request from the outside for client `client_id` (ingress). A refusal is the
    /// HTTP response.
    async fn authorize_ingress(&self, client_id: &str, request: &Message) -> Result<(), Refusal> {
        let _ = (client_id, request);
        Ok(())
    }

    /// A request client `client_id` sent up its channel (to another client or out through
    /// egress). A refusal is sent back to the client as the response.
    async fn authorize_egress(&self, client_id: &str, request: &Message) -> Result<(), Refusal> {
        let _ = (client_id, request);
        Ok(())
    }
}

/// Allows everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {}

/// What a connecting client presented, for [`Authenticator::authenticate`].
#[derive(Debug, Clone)]
pub struct Connecting {
    /// `websocket` or `browserchannel`.
    pub transport: &'static str,
    /// The connecting request's headers (an `authorization` header, cookies, …).
    pub headers: http::HeaderMap,
    /// The connecting request's query parameters (a token, a signed claim, …).
    pub query: Vec<(String, String)>,
    /// The client's address, when known.
    pub address: Option<std::net::SocketAddr>,
}

impl Connecting {
    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decides who may connect, and which id (hence hostname) a client gets.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Admits the client — `Ok(Some(id))` gives it that id (it must be a valid DNS label; a
    /// previous session with the same id is replaced), `Ok(None)` a random one — or refuses it
    /// with 401/403 and a reason, which is the answer to its connecting request.
    async fn authenticate(&self, client: &Connecting) -> Result<Option<String>, Refusal>;
}
