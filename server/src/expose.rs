//! `browserver expose LOCAL_URL --server PROXY_URL`: make a local HTTP server reachable at
//! `<name>.<domain>` through a browserver, as ngrok, bore or localtunnel do — every request
//! forwarded with streaming both ways, WebSocket upgrades and server-sent events included.

use std::convert::Infallible;
use std::time::Instant;

use browserver_client::host::{self, Forward};
use browserver_client::{Options, Transport};
use tower::{Service, ServiceExt};

/// What `expose` is told.
#[derive(Clone, Debug)]
pub struct ExposeConfig {
    /// The local server, e.g. `http://127.0.0.1:8080`.
    pub local: String,
    /// The browserver, `ws://host:port[/ws]` or `http://host:port[/channel]`.
    pub server: String,
    /// Rewrite `Host` to this for the local server.
    pub host_header: Option<String>,
    /// Force a transport (`None`: chosen by the server URL's scheme).
    pub transport: Option<Transport>,
    /// A certificate authority (PEM) to trust for an `https://`/`wss://` server, besides the
    /// system's.
    pub ca: Option<std::path::PathBuf>,
    /// A reserved name to ask for (the server's `--tokens`).
    pub name: Option<String>,
    /// Its token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Print JSON objects (one per line) instead of text lines.
    pub json: bool,
}

/// Why `expose` cannot run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    /// The local URL is not usable.
    #[error("invalid local URL: {0}")]
    Local(#[from] host::ForwardError),
    /// The server URL is not usable.
    #[error("invalid server URL {0:?}: give ws://, wss://, http:// or https://HOST:PORT")]
    Server(String),
    /// The `--ca` file is not usable.
    #[error("--ca: {0}")]
    Ca(String),
    /// The server ended the connection for good (refused it, or stopped it).
    #[error("{0}")]
    Ended(String),
}

/// Where to connect for `server`, and how: `ws://` → WebSocket (path `/ws` unless given);
/// `http://` → WebSocket first, BrowserChannel when it fails (base `/channel` unless given).
/// Also the public URL's scheme and port to show.
pub fn connect_url(server: &str) -> Result<(String, Transport, String, Option<u16>), ExposeError> {
    let url = url::Url::parse(server).map_err(|_| ExposeError::Server(server.into()))?;
    let (transport, default_path, public_scheme) = match url.scheme() {
        "ws" => (Transport::WebSocket, "/ws", "http"),
        "wss" => (Transport::WebSocket, "/ws", "https"),
        "http" => (Transport::Auto, "/channel", "http"),
        "https" => (Transport::Auto, "/channel", "https"),
        _ => return Err(ExposeError::Server(server.into())),
    };
    if url.host_str().is_none() {
        return Err(ExposeError::Server(server.into()));
    }
    let mut connect = url.clone();
    if url.path().is_empty() || url.path() == "/" {
        connect.set_path(default_path);
    }
    Ok((
        connect.to_string().trim_end_matches('/').to_string(),
        transport,
        public_scheme.to_string(),
        url.port(),
    ))
}

/// The public URL of `hostname` (as the proxy names it, maybe without a port).
pub fn public_url(hostname: &str, scheme: &str, port: Option<u16>) -> String {
    match port {
        Some(p) if !hostname.contains(':') => format!("{scheme}://{hostname}:{p}"),
        _ => format!("{scheme}://{hostname}"),
    }
}

/// Runs until interrupted: prints `forwarding <public URL> -> <LOCAL_URL>` each time the
/// proxy gives this client a name, then one line per request.
pub async fn expose(config: ExposeConfig) -> Result<(), ExposeError> {
    let forward = host::forward_to(&config.local)?.host_header(config.host_header.as_deref())?;
    let local = forward.local();
    let (url, transport, scheme, port) = connect_url(&config.server)?;
    let url = match (config.transport, transport) {
        // BrowserChannel asked for with a ws:// URL: the same server's channel base.
        (Some(Transport::BrowserChannel), Transport::WebSocket) => {
            connect_url(&url.replacen("ws", "http", 1).replace("/ws", ""))?.0
        }
        _ => url,
    };
    let tls = match (
        &config.ca,
        url.starts_with("https://") || url.starts_with("wss://"),
    ) {
        (Some(ca), _) => Some(browserver_client::tls_config(Some(ca)).map_err(ExposeError::Ca)?),
        (None, true) => Some(browserver_client::tls_config(None).map_err(ExposeError::Ca)?),
        (None, false) => None,
    };
    let mut options = Options {
        transport: config.transport.unwrap_or(transport),
        tls,
        ..Options::default()
    };
    if let Some(name) = &config.name {
        options.extra_params.push(("name".into(), name.clone()));
    }
    if let Some(token) = &config.token {
        options
            .headers
            .push(("authorization".into(), format!("Bearer {token}")));
    }
    let out = lines();
    let json = config.json;
    let h = host::serve(&url, options, logged(forward, out.clone(), json));
    let mut names = h.hostnames();
    loop {
        if let Some(hostname) = names.borrow_and_update().clone() {
            let public = public_url(&hostname, &scheme, port);
            let line = if json {
                line_json(
                    &format!("forwarding {public} -> {local}"),
                    serde_json::json!({ "public": public, "local": local.to_string() }),
                )
            } else {
                format!("forwarding {public} -> {local}\n")
            };
            let _ = out.send(line).await;
        }
        if names.changed().await.is_err() {
            let why = h.end_reason().map_or_else(
                || "the server ended the connection".to_string(),
                |r| r.to_string(),
            );
            return Err(ExposeError::Ended(why));
        }
    }
}

/// Stdout for the lines: written by a task, in batches when they come fast (one write for
/// all the lines waiting, not one per request), at once when they do not.
fn lines() -> tokio::sync::mpsc::Sender<String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    tokio::spawn(async move {
        use std::io::Write;
        let mut batch = String::new();
        while let Some(line) = rx.recv().await {
            batch.push_str(&line);
            while let Ok(more) = rx.try_recv() {
                batch.push_str(&more);
            }
            // As println! does: a write to the process's stdout, here once per batch.
            let mut out = std::io::stdout().lock();
            if out.write_all(batch.as_bytes()).is_err() || out.flush().is_err() {
                return;
            }
            batch.clear();
        }
    });
    tx
}

/// `forward`, printing one line per request: method, path, status, time to the answer's
/// head.
fn logged(
    forward: Forward,
    lines: tokio::sync::mpsc::Sender<String>,
    json: bool,
) -> impl Service<
    http::Request<host::Body>,
    Response = http::Response<host::ForwardBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: http::Request<host::Body>| {
        let (forward, lines) = (forward.clone(), lines.clone());
        async move {
            let started = Instant::now();
            let (method, uri) = (req.method().to_string(), req.uri().to_string());
            let response = forward.oneshot(req).await?;
            let (status, ms) = (response.status().as_u16(), started.elapsed().as_millis());
            let text = format!("{method} {uri} -> {status} ({ms} ms)");
            let line = if json {
                line_json(
                    &text,
                    serde_json::json!({
                        "method": method, "path": uri, "status": status, "duration_ms": ms as u64,
                    }),
                )
            } else {
                format!("{text}\n")
            };
            let _ = lines.send(line).await;
            Ok(response)
        }
    })
}

/// One JSON object on one line: the message and `fields`, with a timestamp and a level as
/// the log lines have them.
fn line_json(message: &str, fields: serde_json::Value) -> String {
    let mut object = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": "INFO",
        "message": message,
    });
    if let (Some(o), serde_json::Value::Object(f)) = (object.as_object_mut(), fields) {
        o.extend(f);
    }
    format!("{object}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_of_either_scheme_pick_the_endpoint_and_the_transport() {
        let (url, t, scheme, port) = connect_url("ws://127.0.0.1:3572").expect("ok");
        assert_eq!(
            (url.as_str(), t, scheme.as_str(), port),
            (
                "ws://127.0.0.1:3572/ws",
                Transport::WebSocket,
                "http",
                Some(3572)
            )
        );
        let (url, t, _, _) = connect_url("http://example.test:80/").expect("ok");
        assert_eq!(
            (url.as_str(), t),
            ("http://example.test/channel", Transport::Auto)
        );
        let (url, _, _, _) = connect_url("http://h:1/base").expect("ok");
        assert_eq!(url, "http://h:1/base");
        assert!(connect_url("ftp://h").is_err());
        assert!(connect_url("not a url").is_err());
    }

    #[test]
    fn the_public_url_carries_the_servers_port_unless_the_name_has_one() {
        assert_eq!(
            public_url("a.localhost", "http", Some(3572)),
            "http://a.localhost:3572"
        );
        assert_eq!(
            public_url("a.localhost:80", "http", Some(3572)),
            "http://a.localhost:80"
        );
        assert_eq!(public_url("a.example", "https", None), "https://a.example");
    }
}
