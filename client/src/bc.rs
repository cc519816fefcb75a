//! BrowserChannel for the client: the test channel (two phases: the host prefix, and whether
//! responses stream), then the session, whose protocol is `browserver-transport-bc`'s
//! sans-IO [`ClientMachine`]. This file only makes its HTTP requests, feeds their responses
//! back, and runs its one timer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use browserver_transport_bc::client::{
    ClientConfig, ClientInput, ClientMachine, ClientTransmit, Request,
};
use browserver_transport_bc::codec;
use browserver_transport_bc::protocol::RequestId;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::{Command, Ended, Link, SendError, Tracker, Transport};

/// The HTTP client of one session: pooled connections (TLS for `https://`), and the
/// options' extra headers on every request.
#[derive(Clone)]
struct Http {
    client: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: Arc<http::HeaderMap>,
}

impl Http {
    fn new(link: &mut Link, base: &str) -> Result<Http, String> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        // TLS is set up (the system's roots are read) only for an https:// base.
        let tls = if base.starts_with("https://") {
            link.tls()?
        } else {
            let none = browserver_transport_http::tls::Roots::None;
            browserver_transport_http::tls::client_config(none, &[])?
        };
        // hyper-rustls sets ALPN itself (from `enable_http1`) and refuses a preset one.
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        let connector = builder
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let mut headers = http::HeaderMap::new();
        for (k, v) in &link.options.headers {
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) else {
                return Err(format!("invalid header {k:?}"));
            };
            headers.append(name, value);
        }
        Ok(Http {
            client: HttpClient::builder(TokioExecutor::new()).build(connector),
            headers: Arc::new(headers),
        })
    }

    fn request(
        &self,
        mut req: http::Request<Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        for (k, v) in self.headers.iter() {
            req.headers_mut().append(k, v.clone());
        }
        self.client.request(req)
    }
}

/// The test channel's deadline (Closure's request watchdog: 45 s).
const WATCHDOG: Duration = Duration::from_secs(45);

fn zx() -> String {
    format!("{:x}", rand::rng().random::<u64>())
}

fn url(base: &str, path: &str, params: &[(String, String)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    format!("{base}/{path}?{}", ser.finish())
}

/// A test-channel request's status and body, within the watchdog.
async fn get_text(http: &Http, url: &str) -> Result<(u16, String), String> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let res = http.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    tokio::time::timeout(WATCHDOG, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Runs one BrowserChannel session from the test channel to its end.
pub(crate) async fn run(link: &mut Link, base: &str) -> Ended {
    let base = base.trim_end_matches('/').to_string();
    let http = match Http::new(link, &base) {
        Ok(http) => http,
        Err(e) => return Ended::Failed(format!("Request failed: {e}")),
    };
    let params = link.common_params();
    // Test channel, phase 1: the host prefix.
    let mut p = params.clone();
    p.extend([
        ("VER".into(), "8".into()),
        ("MODE".into(), "init".into()),
        ("zx".into(), zx()),
        ("t".into(), "1".into()),
    ]);
    let host_prefix = match get_text(&http, &url(&base, "test", &p)).await {
        Ok((200, body)) => match codec::parse_test_init(&body) {
            Ok(prefix) => prefix,
            Err(_) => return Ended::Failed("Request failed: bad test channel answer".into()),
        },
        Ok((status, _)) => return Ended::Failed(format!("Request failed (HTTP {status})")),
        Err(e) => return Ended::Failed(format!("Request failed: {e}")),
    };
    let back_base = match (&host_prefix, link.options.use_host_prefix) {
        (Some(prefix), true) => with_host_prefix(&base, prefix).unwrap_or_else(|| base.clone()),
        _ => base.clone(),
    };
    // Phase 2: can responses stream, or does a proxy buffer them?
    let mut p = params.clone();
    p.extend([
        ("VER".into(), "8".into()),
        ("TYPE".into(), "xmlhttp".into()),
        ("zx".into(), zx()),
        ("t".into(), "1".into()),
    ]);
    let streaming = match phase2(&http, &url(&back_base, "test", &p)).await {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e),
    };
    let config = ClientConfig {
        streaming,
        app_version: link.options.app_version.clone(),
        previous: link.previous.clone(),
        first_rid: rand::rng().random_range(0..100_000),
        fail_fast: link.options.fail_fast,
        seed: rand::rng().random(),
        ..ClientConfig::default()
    };
    let mut session = Session {
        machine: ClientMachine::new(config, Instant::now()),
        http,
        base,
        back_base,
        params,
        tracker: Tracker::new(Transport::BrowserChannel),
        tasks: HashMap::new(),
    };
    let ended = session.run(link).await;
    if let Some(sid) = session.machine.sid() {
        link.previous = Some((sid.to_string(), session.machine.ack_position()));
    }
    ended
}

fn with_host_prefix(base: &str, prefix: &str) -> Option<String> {
    let mut u = url::Url::parse(base).ok()?;
    let host = format!("{prefix}.{}", u.host_str()?);
    u.set_host(Some(&host)).ok()?;
    Some(u.to_string().trim_end_matches('/').to_string())
}

/// True if the test channel's first answer arrives on its own (streaming works), false if
/// the answers come buffered.
async fn phase2(http: &Http, url: &str) -> Result<bool, String> {
    let failed = |e: String| format!("Request failed: {e}");
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| failed(e.to_string()))?;
    let fut = async {
        let res = http.request(req).await.map_err(|e| failed(e.to_string()))?;
        if res.status() != 200 {
            return Err(format!("Request failed (HTTP {})", res.status().as_u16()));
        }
        let mut body = res.into_body();
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| failed(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                seen.extend_from_slice(&data);
                if seen == codec::TEST_FIRST.as_bytes() {
                    return Ok(true);
                }
                if seen.len() > codec::TEST_FIRST.len() {
                    break;
                }
            }
        }
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| failed(e.to_string()))?;
        }
        Ok(false)
    };
    tokio::time::timeout(WATCHDOG, fut)
        .await
        .unwrap_or_else(|_| Err(failed("timed out".into())))
}

/// One session's driver: the machine, its requests in flight, and the application's
/// pending acknowledgements.
struct Session {
    machine: ClientMachine,
    http: Http,
    base: String,
    back_base: String,
    params: Vec<(String, String)>,
    tracker: Tracker,
    tasks: HashMap<RequestId, AbortHandle>,
}

impl Session {
    async fn run(&mut self, link: &mut Link) -> Ended {
        let now = Instant::now();
        for (json, ack) in std::mem::take(&mut link.queued) {
            self.send(now, json, ack);
        }
        self.machine.open(now);
        let (io_tx, mut io_rx) = mpsc::unbounded_channel::<ClientInput>();
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed = None;
        let mut by_application = false;
        loop {
            self.flush(link, &io_tx);
            if self.machine.is_finished() {
                break;
            }
            let deadline = self.machine.poll_timeout();
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed = deadline;
            }
            let open = !self.machine.is_closed();
            tokio::select! {
                command = link.commands.recv(), if open => match command {
                    Some(Command::Send { json, ack }) => self.send(Instant::now(), json, ack),
                    Some(Command::Close) | None => {
                        by_application = true;
                        self.machine.close(Instant::now());
                    }
                },
                Some(input) = io_rx.recv() => self.machine.handle_input(Instant::now(), input),
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.machine.handle_timeout(Instant::now());
                }
            }
        }
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
        self.tracker.ended(by_application)
    }

    fn send(&mut self, now: Instant, json: Bytes, ack: oneshot::Sender<Result<(), SendError>>) {
        let result = self.machine.send(now, json);
        self.tracker.sent(result, ack);
    }

    /// Makes the machine's requests and tells the application its events.
    fn flush(&mut self, link: &Link, io: &mpsc::UnboundedSender<ClientInput>) {
        while let Some(t) = self.machine.poll_transmit() {
            match t {
                ClientTransmit::Request(request) => {
                    let id = request.id;
                    let task = tokio::spawn(exchange(
                        self.http.clone(),
                        self.url(&request),
                        request,
                        io.clone(),
                    ));
                    self.tasks.insert(id, task.abort_handle());
                }
                ClientTransmit::Cancel(id) => {
                    if let Some(task) = self.tasks.remove(&id) {
                        task.abort();
                    }
                }
                _ => {}
            }
        }
        while let Some(e) = self.machine.poll_event() {
            self.tracker.event(link, e);
        }
    }

    fn url(&self, request: &Request) -> String {
        let base = if request.back {
            &self.back_base
        } else {
            &self.base
        };
        let mut params = self.params.clone();
        params.extend(request.query.iter().cloned());
        params.push(("zx".into(), zx()));
        url(base, "bind", &params)
    }
}

/// Makes one request and reports its response as it arrives. No timeout here: the
/// machine's deadlines cancel it.
async fn exchange(
    http: Http,
    url: String,
    request: Request,
    io: mpsc::UnboundedSender<ClientInput>,
) {
    let id = request.id;
    let failed = |error: String| ClientInput::Failed { request: id, error };
    let built = if request.post {
        http::Request::post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(request.body.unwrap_or_default())))
    } else {
        http::Request::get(&url).body(Full::new(Bytes::new()))
    };
    let req = match built {
        Ok(req) => req,
        Err(e) => {
            let _ = io.send(failed(e.to_string()));
            return;
        }
    };
    let res = match http.request(req).await {
        Ok(res) => res,
        Err(e) => {
            let _ = io.send(failed(e.to_string()));
            return;
        }
    };
    let status = res.status().as_u16();
    let _ = io.send(ClientInput::Head {
        request: id,
        status,
    });
    let mut body = res.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data()
                    && io.send(ClientInput::Data { request: id, data }).is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let _ = io.send(failed(e.to_string()));
                return;
            }
        }
    }
    let _ = io.send(ClientInput::End { request: id });
}
