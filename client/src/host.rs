//! Host mode: serve a `tower::Service` at `<id>.<domain>` through a browserver proxy.

use std::convert::Infallible;

use browserver_transport_http::message::{self, Head, Message};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::{Client, Event, Options, connect};

/// A client serving HTTP through the proxy. Dropping it disconnects.
#[derive(Debug)]
pub struct Host {
    client: std::sync::Arc<Client>,
    hostname: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Host {
    /// Waits until the proxy has told this client its hostname (`<id>.<domain>`); `None` if
    /// the connection ended first.
    pub async fn hostname(&self) -> Option<String> {
        let mut rx = self.hostname.clone();
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|h| h.clone())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Answers still being computed hold the client too: close it explicitly.
        self.client.close();
        self.task.abort();
    }
}

/// Connects to the proxy at `url` (BrowserChannel base or WebSocket URL, as for
/// [`connect`](crate::connect)) and answers every HTTP request for this client's hostname with
/// `service`. The richer wire mode is requested, so binary bodies and repeated headers
/// survive.
pub fn serve<S, B>(url: &str, mut options: Options, service: S) -> Host
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Display,
{
    options.extra_params.push(("brow".into(), "2".into()));
    let client = std::sync::Arc::new(connect(url, options));
    let (hostname_tx, hostname) = watch::channel(None);
    let host_client = client.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = client.next_event().await {
            let Event::Message(value) = event else {
                continue;
            };
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if let Some(name) = hello_hostname(&text) {
                let _ = hostname_tx.send(Some(name));
                continue;
            }
            let request = match message::decode(text.as_bytes()) {
                Ok(
                    m @ Message {
                        head: Head::Request { .. },
                        ..
                    },
                ) => m,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "dropped a malformed message from the proxy");
                    continue;
                }
            };
            let (client, service) = (client.clone(), service.clone());
            tokio::spawn(async move { answer(&client, service, request).await });
        }
    });
    Host {
        client: host_client,
        hostname,
        task,
    }
}

fn hello_hostname(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("hello")?
        .get("hostname")?
        .as_str()
        .map(str::to_string)
}

async fn answer<S, B>(client: &Client, service: S, request: Message)
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let id = request.id.clone();
    let response = match to_http(request) {
        Some(req) => match service.oneshot(req).await {
            Ok(response) => from_http(response).await,
            Err(never) => match never {},
        },
        None => error(400, "the proxy sent a request that is not valid HTTP"),
    };
    let response = Message { id, ..response };
    drop(client.send(&message::encode_json(&response)));
}

fn to_http(m: Message) -> Option<http::Request<Full<Bytes>>> {
    let Head::Request { method, target } = m.head else {
        return None;
    };
    let mut req = http::Request::builder()
        .method(method.as_str())
        .uri(target.as_str());
    for (k, v) in &m.headers {
        req = req.header(k.as_str(), v.as_slice());
    }
    req.body(Full::new(m.body)).ok()
}

async fn from_http<B>(response: http::Response<B>) -> Message
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(500, &format!("the service's body failed: {e}")),
    };
    Message {
        id: None,
        head: Head::Response {
            status: parts.status.as_u16(),
            reason: parts.status.canonical_reason().unwrap_or("").to_string(),
        },
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
    }
}

fn error(status: u16, text: &str) -> Message {
    Message {
        id: None,
        head: Head::Response {
            status,
            reason: String::new(),
        },
        headers: vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
        body: Bytes::from(text.to_string()),
    }
}
