//! [`forward_to`]: a ready-made host service that passes every request on to a local HTTP
//! server — streaming both ways, WebSocket (and other) upgrades included. What
//! `browserver expose` runs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::Service;

use super::{Body, Upgraded};

/// The body of a forwarded answer: the local server's, as it produces it, or an error page.
pub type ForwardBody = Either<hyper::body::Incoming, Full<Bytes>>;

/// Why [`forward_to`] cannot use a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// Not an absolute `http://` URL.
    #[error("not an http:// URL: {0}")]
    InvalidUrl(String),
}

/// A service forwarding requests to a local HTTP server (see [`forward_to`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forward {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The URL's path without its trailing `/`, put before every request's path.
    prefix: String,
    host_header: Option<HeaderValue>,
    answer_timeout: std::time::Duration,
    http: HttpClient<HttpConnector, Body>,
}

/// How long [`forward_to`] waits for the local server's answer head by default.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A service that answers every request by passing it to the HTTP server at `url` (e.g.
/// `http://127.0.0.1:8080`; a path in it is put before every request's path): bodies stream
/// both ways, an upgrade the local server accepts (`101`) becomes a byte pipe, a local server
/// that does not answer gets the visitor a `502` saying so. The visitor's `Host` is kept
/// unless [`host_header`](Forward::host_header) rewrites it.
///
/// ```no_run
/// use browserver_client::{host, Options};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let local = host::forward_to("http://127.0.0.1:8080")?;
/// let h = host::serve("ws://127.0.0.1:3572/ws", Options::default(), local);
/// println!("forwarding http://{} -> http://127.0.0.1:8080", h.hostname().await.unwrap_or_default());
/// # Ok(()) }
/// ```
pub fn forward_to(url: &str) -> Result<Forward, ForwardError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ForwardError::InvalidUrl(url.to_string()))?;
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return Err(ForwardError::InvalidUrl(url.to_string()));
    };
    if scheme != http::uri::Scheme::HTTP {
        return Err(ForwardError::InvalidUrl(url.to_string()));
    }
    let mut connector = HttpConnector::new();
    // Small answers are not held back by Nagle's algorithm.
    connector.set_nodelay(true);
    let http = HttpClient::builder(TokioExecutor::new()).build(connector);
    Ok(Forward {
        inner: Arc::new(Inner {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
            host_header: None,
            answer_timeout: ANSWER_TIMEOUT,
            http,
        }),
    })
}

impl Forward {
    /// Sends `host` as the `Host` header instead of the visitor's (for local servers that
    /// only answer their own name, e.g. `localhost:8080`).
    pub fn host_header(mut self, host: Option<&str>) -> Result<Forward, ForwardError> {
        let value = host
            .map(|h| HeaderValue::from_str(h).map_err(|_| ForwardError::InvalidUrl(h.into())))
            .transpose()?;
        self.inner = Arc::new(Inner {
            host_header: value,
            ..self.inner.copy()
        });
        Ok(self)
    }

    /// How long the local server may take to start its answer (then the visitor gets a
    /// `504`, and the local request is dropped). [`ANSWER_TIMEOUT`] by default. A visitor that
    /// goes away while waiting is noticed only through its request body, if it has one: this
    /// bounds how long such a request keeps the local server busy.
    pub fn answer_timeout(mut self, timeout: std::time::Duration) -> Forward {
        self.inner = Arc::new(Inner {
            answer_timeout: timeout,
            ..self.inner.copy()
        });
        self
    }

    /// The local server's URL.
    pub fn local(&self) -> String {
        format!(
            "{}://{}{}",
            self.inner.scheme, self.inner.authority, self.inner.prefix
        )
    }
}

impl Inner {
    fn copy(&self) -> Inner {
        Inner {
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            prefix: self.prefix.clone(),
            host_header: self.host_header.clone(),
            answer_timeout: self.answer_timeout,
            http: self.http.clone(),
        }
    }
}

fn bad_gateway(text: String) -> Response<ForwardBody> {
    plain(StatusCode::BAD_GATEWAY, text)
}

fn plain(status: StatusCode, text: String) -> Response<ForwardBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Service<Request<Body>> for Forward {
    type Response = Response<ForwardBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let upgraded = req
                .extensions_mut()
                .remove::<Upgraded>()
                .and_then(|u| u.take());
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let uri = Uri::builder()
                .scheme(inner.scheme.clone())
                .authority(inner.authority.clone())
                .path_and_query(format!("{}{path}", inner.prefix))
                .build();
            let Ok(uri) = uri else {
                return Ok(bad_gateway(format!("cannot forward the path {path:?}")));
            };
            *req.uri_mut() = uri;
            if let Some(host) = &inner.host_header {
                req.headers_mut().insert(http::header::HOST, host.clone());
            }
            let answer = tokio::time::timeout(inner.answer_timeout, inner.http.request(req)).await;
            let mut response = match answer {
                Err(_) => {
                    return Ok(plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "Gateway Timeout: the local server at {}://{} did not answer within {:?}",
                            inner.scheme, inner.authority, inner.answer_timeout
                        ),
                    ));
                }
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let why = std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), |s| s.to_string());
                    return Ok(bad_gateway(format!(
                        "Bad Gateway: the local server at {}://{} did not answer: {why}",
                        inner.scheme, inner.authority
                    )));
                }
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(mut visitor) = upgraded
            {
                let local = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let Ok(local) = local.await {
                        let mut local = TokioIo::new(local);
                        let _ = tokio::io::copy_bidirectional(&mut visitor, &mut local).await;
                    }
                });
            }
            Ok(response.map(Either::Left))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn get() -> Request<Body> {
        Request::get("/x").body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn a_local_server_that_does_not_answer_in_time_is_a_504() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts, reads nothing, answers nothing.
        let held = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let forward = forward_to(&format!("http://{addr}"))
            .expect("url")
            .answer_timeout(std::time::Duration::from_millis(200));
        let r = forward.oneshot(get()).await.expect("infallible");
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        drop(held);
    }

    #[tokio::test]
    async fn a_local_server_that_is_not_there_is_a_502_naming_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let forward = forward_to(&format!("http://{addr}")).expect("url");
        assert_eq!(forward.local(), format!("http://{addr}"));
        let r = forward.oneshot(get()).await.expect("infallible");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn only_absolute_http_urls_are_taken() {
        for bad in ["ftp://x", "/path", "https://x", "not a url"] {
            assert!(forward_to(bad).is_err(), "{bad}");
        }
        let f = forward_to("http://127.0.0.1:9/base/").expect("url");
        assert_eq!(f.local(), "http://127.0.0.1:9/base");
        assert!(f.host_header(Some("bad\nvalue")).is_err());
    }
}
