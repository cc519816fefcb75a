//! `browserver-load`: drives a running server the way real clients do, on loopback, for a
//! bounded time. Progress goes to stderr once a second; a JSON summary goes to stdout at the
//! end.
//!
//! ```sh
//! browserver echo &                                   # or: cargo run --release -p browserver-server -- echo
//! browserver-load echo --transport browserchannel --sessions 100 --seconds 10
//! browserver-load echo --transport websocket --sessions 100 --seconds 10
//! browserver-load echo --transport browserchannel --sessions 10000 --window 0 --seconds 30   # idle sessions
//! browserver-load echo --transport socketio-polling --url http://127.0.0.1:3000
//! browserver &                                        # the proxy
//! browserver-load proxy --hosts 10 --connections 32 --seconds 10
//! browserver-load http --url http://127.0.0.1:8080/hello --connections 32 --seconds 10
//! ```
//!
//! `echo` sessions each keep `--window` messages in flight and check that every echo comes
//! back once and in order (`out_of_order`, `duplicates`, `lost` in the summary). With
//! `--window 0` the sessions stay idle (a BrowserChannel session keeps its back channel
//! hanging); `ready N` on stderr says when all of them are open. `proxy` connects `--hosts`
//! client hosts (the Rust client's host mode, answering every request with `hello`) to a
//! browserver proxy and sends GETs to them through it; `http` sends the same GETs to any
//! URL, the baseline.

use std::time::Duration;

use browserver_benches::load::{self, Ctx, bc, socketio, ws};
use browserver_client::{Options, Transport, host};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::Full;

#[derive(Parser, Debug)]
#[command(
    name = "browserver-load",
    about = "Load for browserver and its peers (loopback only)"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EchoTransport {
    /// BrowserChannel (ours, node-browserchannel); URL: the channel base.
    Browserchannel,
    /// Plain WebSocket, one text frame per message; URL: ws://…
    Websocket,
    /// browserver's WebSocket session mode; URL: ws://…
    WebsocketSession,
    /// Socket.IO 4 over WebSocket; URL: the server's origin.
    SocketioWebsocket,
    /// Socket.IO 4 over HTTP long-polling; URL: the server's origin.
    SocketioPolling,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HostTransport {
    Websocket,
    Browserchannel,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Echo sessions: messages/s, latency percentiles, order and loss check.
    Echo {
        #[arg(long, value_enum, default_value = "browserchannel")]
        transport: EchoTransport,
        /// Endpoint (default: browserver's defaults on 127.0.0.1:3572).
        #[arg(long)]
        url: Option<String>,
        /// Concurrent sessions.
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        /// Seconds to measure once every session is open (then ≤ 5 s to settle).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Messages in flight per session; 0 keeps the sessions idle.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Padding bytes per message (the JSON around it adds about 30).
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
    /// GETs through a browserver proxy to client hosts connected to it.
    Proxy {
        /// The proxy's origin; several (comma-separated nodes of a cluster): the hosts
        /// connect to them in turn.
        #[arg(long, default_value = "http://127.0.0.1:3572", value_delimiter = ',')]
        url: Vec<String>,
        /// Where the GETs go, each connection to the next (default: --url).
        #[arg(long, value_delimiter = ',')]
        via: Vec<String>,
        /// Client hosts to connect (requests go round-robin to them).
        #[arg(long, default_value_t = 10)]
        hosts: usize,
        /// How the hosts connect.
        #[arg(long, value_enum, default_value = "websocket")]
        host_transport: HostTransport,
        /// Concurrent keep-alive connections sending GETs.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// GETs to a URL (a baseline: a bare HTTP server, or one behind a tunnel).
    Http {
        #[arg(long)]
        url: String,
        /// The `Host` header to send (default: the URL's).
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// One large transfer: `GET URL/bytes?n=BYTES` (down) or a `POST` of BYTES (up) to a
    /// `baseline-server http-hello`, directly or through a tunnel; seconds and MiB/s.
    Transfer {
        #[arg(long)]
        url: String,
        /// The `Host` header to send (default: the URL's).
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// `down` or `up`.
        #[arg(long, default_value = "down")]
        direction: String,
    },
}

async fn hello(
    _req: http::Request<browserver_client::host::Body>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
}

async fn run(command: Command) -> Result<serde_json::Value, String> {
    match command {
        Command::Echo {
            transport,
            url,
            sessions,
            seconds,
            window,
            size,
        } => {
            let url = match (url, transport) {
                (Some(u), _) => u.trim_end_matches('/').to_string(),
                (None, EchoTransport::Browserchannel) => "http://127.0.0.1:3572/channel".into(),
                (None, EchoTransport::Websocket | EchoTransport::WebsocketSession) => {
                    "ws://127.0.0.1:3572/ws".into()
                }
                (None, _) => return Err("--url: the Socket.IO server's origin".into()),
            };
            load::http::loopback(&url.replacen("ws", "http", 1))?;
            let ctx = Ctx::new(url, window, size);
            let name = transport
                .to_possible_value()
                .map_or(String::new(), |v| v.get_name().to_string());
            let client = load::http::client(4);
            Ok(match transport {
                EchoTransport::Browserchannel => {
                    load::run_echo(ctx, &name, sessions, seconds, move |c| {
                        bc::session(c, client.clone())
                    })
                    .await
                }
                EchoTransport::SocketioPolling => {
                    load::run_echo(ctx, &name, sessions, seconds, move |c| {
                        socketio::session(c, client.clone())
                    })
                    .await
                }
                EchoTransport::Websocket => {
                    load::run_echo(ctx, &name, sessions, seconds, |c| {
                        ws::session(c, ws::Dialect::Plain)
                    })
                    .await
                }
                EchoTransport::WebsocketSession => {
                    load::run_echo(ctx, &name, sessions, seconds, |c| {
                        ws::session(c, ws::Dialect::Session)
                    })
                    .await
                }
                EchoTransport::SocketioWebsocket => {
                    load::run_echo(ctx, &name, sessions, seconds, |c| {
                        ws::session(c, ws::Dialect::SocketIo)
                    })
                    .await
                }
            })
        }
        Command::Proxy {
            url,
            via,
            hosts,
            host_transport,
            connections,
            seconds,
        } => {
            let mut running = Vec::new();
            for k in 0..hosts {
                let origin = url[k % url.len()].trim_end_matches('/');
                load::http::loopback(origin)?;
                let (transport, channel) = match host_transport {
                    HostTransport::Websocket => (
                        Transport::WebSocket,
                        format!("{}/ws", origin.replacen("http", "ws", 1)),
                    ),
                    HostTransport::Browserchannel => {
                        (Transport::BrowserChannel, format!("{origin}/channel"))
                    }
                };
                let options = Options {
                    transport,
                    ..Options::default()
                };
                running.push((
                    channel.clone(),
                    host::serve(&channel, options, tower::service_fn(hello)),
                ));
            }
            let mut names = Vec::new();
            for (channel, h) in &running {
                match tokio::time::timeout(Duration::from_secs(10), h.hostname()).await {
                    Ok(Some(name)) => names.push(name),
                    _ => return Err(format!("a host did not connect to {channel}")),
                }
            }
            let via = if via.is_empty() { url } else { via };
            let mut addrs = Vec::new();
            for v in &via {
                addrs.push(load::http::loopback(v)?.0);
            }
            eprintln!("ready {}", names.len());
            let mut summary = load::http::run_gets(&addrs, names, "/", connections, seconds).await;
            summary["host_transport"] = host_transport
                .to_possible_value()
                .map_or(String::new(), |v| v.get_name().to_string())
                .into();
            Ok(summary)
        }
        Command::Http {
            url,
            host,
            connections,
            seconds,
        } => {
            let (addr, path) = load::http::loopback(&url)?;
            let host = host.unwrap_or_else(|| addr.to_string());
            Ok(load::http::run_gets(&[addr], vec![host], &path, connections, seconds).await)
        }
        Command::Transfer {
            url,
            host,
            bytes,
            direction,
        } => {
            let (addr, _) = load::http::loopback(&url)?;
            let host = host.unwrap_or_else(|| addr.to_string());
            load::http::transfer(addr, &host, bytes, direction == "up").await
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args.command).await {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            eprintln!("browserver-load: {e}");
            std::process::exit(2);
        }
    }
}
