//! The Rust client against our own servers, over real sockets on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use browserver_client::{CloseReason, Event, Options, Transport, connect};
use bytes::Bytes;
use common::{WAIT, messages, next, until_open};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

async fn bc_echo() -> (SocketAddr, browserver_transport_bc::BrowserChannel) {
    let (bc, mut sessions) = browserver_transport_bc::BrowserChannel::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_transport_bc::serve(listener, bc.clone()));
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    match m.json::<Value>().ok().as_ref().and_then(Value::as_str) {
                        Some("stop") => drop(s.stop()),
                        Some("close") => s.close(),
                        _ => drop(s.send(m)),
                    }
                }
            });
        }
    });
    (addr, bc)
}

async fn ws_echo() -> SocketAddr {
    use browserver_transport_ws::{Message, WsEndpoint};
    let (ws, mut sessions) = WsEndpoint::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_transport_ws::serve(listener, ws));
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    match &m {
                        Message::Text(t) if t == "\"stop\"" => drop(s.stop()),
                        Message::Text(t) if t == "\"close\"" => s.close(),
                        _ => drop(s.send(m)),
                    }
                }
            });
        }
    });
    addr
}

fn bc_only() -> Options {
    Options {
        transport: Transport::BrowserChannel,
        ..Options::default()
    }
}

#[tokio::test]
async fn browserchannel_client_sends_before_open_and_exchanges_1000_messages_in_order() {
    let (addr, _) = bc_echo().await;
    let client = connect(&format!("http://{addr}/channel"), bc_only());
    let first = client.send(&json!({"i": 0}));
    let (_, transport) = until_open(&client).await;
    assert_eq!(transport, Transport::BrowserChannel);
    let acks: Vec<_> = (1..1000).map(|i| client.send(&json!({"i": i}))).collect();
    let got = messages(&client, 1000).await;
    assert_eq!(got, (0..1000).map(|i| json!({"i": i})).collect::<Vec<_>>());
    assert_eq!(
        tokio::time::timeout(WAIT, first).await.expect("acked"),
        Ok(())
    );
    for ack in acks {
        assert_eq!(
            tokio::time::timeout(WAIT, ack).await.expect("acked"),
            Ok(())
        );
    }
    client.close();
}

#[tokio::test]
async fn browserchannel_client_round_trips_unicode_and_large_messages() {
    let (addr, _) = bc_echo().await;
    let client = connect(&format!("http://{addr}/channel"), bc_only());
    until_open(&client).await;
    let sent = vec![
        json!("⚗☗⚑☯ 😀"),
        json!("\u{2028} \u{2029}"),
        json!("x".repeat(300_000)),
        json!(null),
        json!([1.5, {}]),
    ];
    for v in &sent {
        drop(client.send(v));
    }
    assert_eq!(messages(&client, sent.len()).await, sent);
}

#[tokio::test]
async fn browserchannel_stop_closes_without_reconnecting() {
    let (addr, _) = bc_echo().await;
    let client = connect(&format!("http://{addr}/channel"), bc_only());
    until_open(&client).await;
    drop(client.send(&"stop"));
    loop {
        if let Event::Close {
            reason,
            reconnecting,
        } = next(&client).await
        {
            assert_eq!((reason, reconnecting), (CloseReason::Stopped, false));
            break;
        }
    }
    assert_eq!(
        tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("ends"),
        None
    );
}

#[tokio::test]
async fn browserchannel_server_close_makes_the_client_reconnect_to_a_new_session() {
    let (addr, bc) = bc_echo().await;
    let options = Options {
        reconnect_delay: Duration::from_millis(50),
        ..bc_only()
    };
    let client = connect(&format!("http://{addr}/channel"), options);
    let (first, _) = until_open(&client).await;
    drop(client.send(&"close"));
    loop {
        if let Event::Close { reconnecting, .. } = next(&client).await {
            assert!(reconnecting);
            break;
        }
    }
    let (second, _) = until_open(&client).await;
    assert_ne!(first, second);
    assert!(bc.table().session(&second).is_some());
    drop(client.send(&"after"));
    assert_eq!(messages(&client, 1).await, [json!("after")]);
}

#[tokio::test]
async fn browserchannel_client_close_terminates_the_server_session() {
    let (addr, bc) = bc_echo().await;
    let client = connect(&format!("http://{addr}/channel"), bc_only());
    let (sid, _) = until_open(&client).await;
    let session = bc.table().session(&sid).expect("live");
    client.close();
    assert_eq!(
        tokio::time::timeout(WAIT, session.closed())
            .await
            .expect("closed"),
        CloseReason::PeerClosed
    );
}

/// What a [`front`] does with one request.
enum Front {
    /// Hand it to the real endpoint.
    Pass,
    /// Answer it with this body (as a buffering proxy would).
    Answer(&'static [u8]),
    /// Drop the connection without an answer (a transient network failure).
    Drop,
}

/// A BrowserChannel echo server behind a front that decides, per request (method, path,
/// query), what happens to it.
async fn front(
    decide: impl Fn(&http::Method, &str, &str) -> Front + Send + Sync + 'static,
) -> SocketAddr {
    let (bc, mut sessions) = browserver_transport_bc::BrowserChannel::new(Default::default());
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    drop(s.send(m));
                }
            });
        }
    });
    let decide = Arc::new(decide);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (bc, decide) = (bc.clone(), decide.clone());
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (bc, decide) = (bc.clone(), decide.clone());
                    async move {
                        let query = req.uri().query().unwrap_or("").to_string();
                        match decide(req.method(), req.uri().path(), &query) {
                            Front::Pass => Ok(bc.handle(req).await),
                            Front::Answer(body) => Ok(http::Response::new(
                                browserver_transport_bc::ResponseBody::full(Bytes::from_static(
                                    body,
                                )),
                            )),
                            Front::Drop => Err("drop this connection"),
                        }
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// A front that answers the buffering-proxy probe in one piece (as a buffering proxy would)
/// and records every back-channel query.
#[tokio::test]
async fn browserchannel_client_falls_back_to_buffered_mode_behind_a_buffering_proxy() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let addr = front(move |_, path, query| {
        record.lock().expect("lock").push(query.to_string());
        if path.ends_with("/test") && query.contains("TYPE=xmlhttp") {
            Front::Answer(b"111112")
        } else {
            Front::Pass
        }
    })
    .await;
    let client = connect(&format!("http://{addr}/channel"), bc_only());
    until_open(&client).await;
    for i in 0..20 {
        drop(client.send(&i));
    }
    assert_eq!(
        messages(&client, 20).await,
        (0..20).map(|i| json!(i)).collect::<Vec<_>>()
    );
    let back_channels: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|q| q.contains("RID=rpc"))
        .cloned()
        .collect();
    assert!(!back_channels.is_empty());
    assert!(
        back_channels.iter().all(|q| q.contains("CI=1")),
        "{back_channels:?}"
    );
}

#[tokio::test]
async fn websocket_client_exchanges_messages_with_acknowledgements() {
    let addr = ws_echo().await;
    let client = connect(&format!("ws://{addr}/ws"), Options::default());
    let early = client.send(&json!({"early": true}));
    let (_, transport) = until_open(&client).await;
    assert_eq!(transport, Transport::WebSocket);
    let acks: Vec<_> = (0..500).map(|i| client.send(&i)).collect();
    let got = messages(&client, 501).await;
    assert_eq!(got[0], json!({"early": true}));
    assert_eq!(got[1..], (0..500).map(|i| json!(i)).collect::<Vec<_>>()[..]);
    assert_eq!(
        tokio::time::timeout(WAIT, early).await.expect("acked"),
        Ok(())
    );
    for a in acks {
        assert_eq!(tokio::time::timeout(WAIT, a).await.expect("acked"), Ok(()));
    }
}

#[tokio::test]
async fn websocket_stop_means_no_reconnect() {
    let addr = ws_echo().await;
    let client = connect(&format!("ws://{addr}/ws"), Options::default());
    until_open(&client).await;
    drop(client.send(&"stop"));
    loop {
        if let Event::Close {
            reason,
            reconnecting,
        } = next(&client).await
        {
            assert_eq!((reason, reconnecting), (CloseReason::Stopped, false));
            break;
        }
    }
}

/// A TCP relay whose live connections can be cut at once.
struct Relay {
    addr: SocketAddr,
    cut: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

async fn relay(upstream: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cut = Arc::new(Mutex::new(Vec::new()));
    let handles = cut.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let task = tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    let _ = outbound.shutdown().await;
                }
            });
            if let Ok(mut h) = handles.lock() {
                h.push(task.abort_handle());
            }
        }
    });
    Relay { addr, cut }
}

impl Relay {
    fn cut(&self) {
        for h in self.cut.lock().expect("lock").drain(..) {
            h.abort();
        }
    }
}

#[tokio::test]
async fn websocket_client_resumes_a_dropped_connection_without_loss_or_duplicates() {
    let addr = ws_echo().await;
    let relay = relay(addr).await;
    let client = connect(&format!("ws://{}/ws", relay.addr), Options::default());
    let (sid, _) = until_open(&client).await;
    for i in 0..50 {
        drop(client.send(&i));
    }
    let mut got = messages(&client, 50).await;
    relay.cut();
    let acks: Vec<_> = (50..100).map(|i| client.send(&i)).collect();
    got.extend(messages(&client, 50).await);
    assert_eq!(got, (0..100).map(|i| json!(i)).collect::<Vec<_>>());
    for a in acks {
        assert_eq!(tokio::time::timeout(WAIT, a).await.expect("acked"), Ok(()));
    }
    // Still the same session: no Close, no second Open.
    drop(client.send(&"still"));
    loop {
        match next(&client).await {
            Event::Message(v) => {
                assert_eq!(v, json!("still"));
                break;
            }
            Event::Open { session_id, .. } => {
                assert_eq!(session_id, sid, "resumed, not a new session")
            }
            Event::Close { .. } => panic!("the session closed"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn auto_falls_back_to_browserchannel_when_websocket_is_unavailable() {
    let (addr, _) = bc_echo().await; // this server has no WebSocket endpoint
    let client = connect(&format!("http://{addr}/channel"), Options::default());
    let (_, transport) = until_open(&client).await;
    assert_eq!(transport, Transport::BrowserChannel);
    drop(client.send(&"hi"));
    assert_eq!(messages(&client, 1).await, [json!("hi")]);
}

/// A front that kills the connection of the first forward POST (a transient network failure)
/// and records every forward POST's RID.
#[tokio::test]
async fn browserchannel_client_retries_a_failed_forward_post_under_the_same_rid() {
    let rids = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = rids.clone();
    let addr = front(move |method, _, query| {
        if method != http::Method::POST || !query.contains("SID=") {
            return Front::Pass;
        }
        let rid = query
            .split('&')
            .find(|p| p.starts_with("RID="))
            .unwrap_or("")
            .to_string();
        let mut r = record.lock().expect("lock");
        r.push(rid);
        if r.len() == 1 {
            Front::Drop
        } else {
            Front::Pass
        }
    })
    .await;
    let client = connect(&format!("http://{addr}/channel"), bc_only());
    until_open(&client).await;
    for i in 0..5 {
        drop(client.send(&i));
    }
    assert_eq!(
        messages(&client, 5).await,
        (0..5).map(|i| json!(i)).collect::<Vec<_>>()
    );
    let rids = rids.lock().expect("lock").clone();
    assert!(rids.len() >= 2, "{rids:?}");
    assert_eq!(
        rids[0], rids[1],
        "the retry reuses the failed request's RID"
    );
}
