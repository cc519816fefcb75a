//! The WebSocket transport over real sockets on loopback.

use std::time::Duration;

use browserver_transport_ws::codec::{self, CLOSE_CLOSED, CLOSE_STOPPED, Frame, SUBPROTOCOL};
use browserver_transport_ws::{
    CloseReason, Message, Options, SendError, Sessions, Transport, WsEndpoint, serve,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);
type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(options: Options) -> (String, WsEndpoint, Sessions) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let (ws, sessions) = WsEndpoint::new(options);
    tokio::spawn(serve(listener, ws.clone()));
    (url, ws, sessions)
}

async fn plain(url: &str) -> Client {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn session_client(url: &str) -> Client {
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        SUBPROTOCOL.parse().expect("value"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(response.headers()["sec-websocket-protocol"], SUBPROTOCOL);
    ws
}

async fn next(ws: &mut Client) -> WsMessage {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame in time")
        .expect("open")
        .expect("frame")
}

async fn next_frame(ws: &mut Client) -> Frame {
    match next(ws).await {
        WsMessage::Binary(b) => codec::decode(&b).expect("frame"),
        other => panic!("unexpected {other:?}"),
    }
}

async fn accept(sessions: &mut Sessions) -> browserver_transport_ws::Session {
    tokio::time::timeout(WAIT, sessions.accept())
        .await
        .expect("in time")
        .expect("session")
}

fn close_code(m: &WsMessage) -> Option<u16> {
    match m {
        WsMessage::Close(Some(f)) => Some(u16::from(f.code)),
        _ => None,
    }
}

#[tokio::test]
async fn plain_client_exchanges_text_and_binary_and_gets_nothing_else() {
    let (url, _, mut sessions) = start(Options::default()).await;
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    assert_eq!(s.transport(), Transport::WebSocket);
    c.send(WsMessage::Text("héllo".into())).await.expect("send");
    c.send(WsMessage::Binary(Bytes::from_static(&[0, 1, 255])))
        .await
        .expect("send");
    assert_eq!(s.recv().await, Some(Message::Text("héllo".into())));
    assert_eq!(
        s.recv().await,
        Some(Message::Binary(Bytes::from_static(&[0, 1, 255])))
    );
    assert_eq!(
        s.send_text("back").await,
        Ok(()),
        "written counts as acknowledged"
    );
    assert_eq!(
        next(&mut c).await,
        WsMessage::Text("back".into()),
        "the first frame is the message"
    );
    drop(s.send_binary(Bytes::from_static(b"\x00bin")));
    assert_eq!(
        next(&mut c).await,
        WsMessage::Binary(Bytes::from_static(b"\x00bin"))
    );
}

#[tokio::test]
async fn plain_client_sees_close_4000_and_stop_4001() {
    let (url, _, mut sessions) = start(Options::default()).await;
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    s.close();
    assert_eq!(close_code(&next(&mut c).await), Some(CLOSE_CLOSED));
    assert_eq!(s.closed().await, CloseReason::Closed(None));

    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    drop(s.send_text("last"));
    tokio::time::timeout(WAIT, s.stop())
        .await
        .expect("stop written");
    assert_eq!(next(&mut c).await, WsMessage::Text("last".into()));
    assert_eq!(close_code(&next(&mut c).await), Some(CLOSE_STOPPED));
    assert_eq!(s.closed().await, CloseReason::Stopped);
}

#[tokio::test]
async fn plain_client_disconnect_closes_the_session() {
    let (url, _, mut sessions) = start(Options::default()).await;
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    c.close(None).await.expect("close");
    assert_eq!(
        tokio::time::timeout(WAIT, s.closed())
            .await
            .expect("closed"),
        CloseReason::PeerClosed
    );
}

#[tokio::test]
async fn session_mode_is_negotiated_with_hello_open_sequence_and_acks() {
    let (url, _, mut sessions) = start(Options::default()).await;
    let mut c = session_client(&url).await;
    let s = accept(&mut sessions).await;
    assert_eq!(s.transport(), Transport::WebSocketSession);
    match next_frame(&mut c).await {
        Frame::Hello {
            sid,
            ack: None,
            resumed: false,
            token: Some(token),
        } => {
            assert_eq!(sid, s.id());
            let secret = token
                .strip_prefix(&format!("{sid}."))
                .expect("the token names the session");
            assert_eq!(secret.len(), 25, "128 random bits");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_frame(&mut c).await, Frame::Open { seq: 0 });
    let ack = s.send_text("one");
    assert_eq!(
        next_frame(&mut c).await,
        Frame::Text {
            seq: 1,
            text: Bytes::from("one")
        }
    );
    let mut ack = Box::pin(ack);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut ack)
            .await
            .is_err(),
        "not before the client acks"
    );
    c.send(WsMessage::Binary(codec::encode(&Frame::Ack { upto: 1 })))
        .await
        .expect("ack");
    assert_eq!(
        tokio::time::timeout(WAIT, ack).await.expect("in time"),
        Ok(())
    );
    // Client → server: sequenced messages, out of order, duplicated.
    for (seq, t) in [(1, "b"), (0, "a"), (1, "b")] {
        let f = Frame::Text {
            seq,
            text: Bytes::from(t),
        };
        c.send(WsMessage::Binary(codec::encode(&f)))
            .await
            .expect("send");
    }
    c.send(WsMessage::Binary(codec::encode(&Frame::Binary {
        seq: 2,
        data: Bytes::from_static(&[9]),
    })))
    .await
    .expect("send");
    assert_eq!(s.recv().await, Some(Message::Text("a".into())));
    assert_eq!(s.recv().await, Some(Message::Text("b".into())));
    assert_eq!(
        s.recv().await,
        Some(Message::Binary(Bytes::from_static(&[9])))
    );
    loop {
        if let Frame::Ack { upto } = next_frame(&mut c).await
            && upto == 2
        {
            break;
        }
    }
}

#[tokio::test]
async fn session_mode_resumption_delivers_what_was_missed_in_order_once() {
    let (url, _, mut sessions) = start(Options::default()).await;
    let mut c = session_client(&url).await;
    let s = accept(&mut sessions).await;
    let Frame::Hello {
        token: Some(token), ..
    } = next_frame(&mut c).await
    else {
        panic!("a hello with a resume token")
    };
    next_frame(&mut c).await; // open
    let first = s.send_text("1");
    assert_eq!(
        next_frame(&mut c).await,
        Frame::Text {
            seq: 1,
            text: Bytes::from("1")
        }
    );
    // The client sends one message, then the connection dies without a close frame.
    c.send(WsMessage::Binary(codec::encode(&Frame::Text {
        seq: 0,
        text: Bytes::from("up"),
    })))
    .await
    .expect("send");
    assert_eq!(s.recv().await, Some(Message::Text("up".into())));
    drop(c);
    let missed: Vec<_> = ["2", "3", "4"].iter().map(|t| s.send_text(*t)).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Resume, acknowledging seq 1 (received before the drop).
    let mut c = session_client(&format!("{url}?resume={token}&ack=1")).await;
    assert_eq!(
        next_frame(&mut c).await,
        Frame::Hello {
            sid: s.id().to_string(),
            ack: Some(0),
            resumed: true,
            token: Some(token.clone()),
        }
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        match next_frame(&mut c).await {
            Frame::Text { seq, text } => {
                got.push((seq, String::from_utf8_lossy(&text).into_owned()))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, [(2, "2".into()), (3, "3".into()), (4, "4".into())]);
    assert_eq!(first.await, Ok(()), "acknowledged by the resume");
    c.send(WsMessage::Binary(codec::encode(&Frame::Ack { upto: 4 })))
        .await
        .expect("ack");
    for ack in missed {
        assert_eq!(
            tokio::time::timeout(WAIT, ack).await.expect("in time"),
            Ok(())
        );
    }
    assert_eq!(s.state(), browserver_transport_ws::State::Ok);
}

#[tokio::test]
async fn a_session_mode_client_that_does_not_resume_times_out() {
    let (url, ws, mut sessions) = start(Options {
        session_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let c = session_client(&url).await;
    let s = accept(&mut sessions).await;
    let pending = s.send_text("never acknowledged");
    drop(c);
    assert_eq!(
        tokio::time::timeout(WAIT, s.closed())
            .await
            .expect("closed"),
        CloseReason::TimedOut
    );
    assert_eq!(pending.await, Err(SendError::Closed(CloseReason::TimedOut)));
    assert_eq!(ws.table().len(), 0);
    // Resuming a forgotten session gets a new one, and says so.
    let mut c = session_client(&format!("{url}?resume={}&ack=0", s.id())).await;
    match next_frame(&mut c).await {
        Frame::Hello { sid, resumed, .. } => {
            assert!(!resumed);
            assert_ne!(sid, s.id());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn keepalive_pings_flow_and_a_silent_connection_is_dropped() {
    let (url, _, mut sessions) = start(Options {
        keep_alive_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(350),
        ..Options::default()
    })
    .await;
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    assert!(
        matches!(next(&mut c).await, WsMessage::Ping(_)),
        "a ping after the interval"
    );
    // Stop reading: tungstenite only answers pings while the stream is polled.
    let closed = tokio::time::timeout(WAIT, s.closed())
        .await
        .expect("dropped");
    assert_eq!(closed, CloseReason::PeerClosed);
    drop(c);
}

#[tokio::test]
async fn a_message_over_the_size_limit_ends_the_connection() {
    let (url, _, mut sessions) = start(Options {
        max_message_size: 1024,
        max_frame_size: 1024,
        ..Options::default()
    })
    .await;
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    let _ = c
        .send(WsMessage::Binary(Bytes::from(vec![0u8; 4096])))
        .await;
    assert_eq!(
        tokio::time::timeout(WAIT, s.closed())
            .await
            .expect("closed"),
        CloseReason::PeerClosed
    );
    assert_eq!(
        s.recv().await,
        None,
        "the oversized message was not delivered"
    );
}

#[tokio::test]
async fn sends_past_the_buffer_limit_are_refused() {
    let (url, _, mut sessions) = start(Options {
        max_buffered_bytes: 100,
        ..Options::default()
    })
    .await;
    let _c = session_client(&url).await;
    let s = accept(&mut sessions).await;
    assert!(matches!(
        s.send_text("x".repeat(200)).await,
        Err(SendError::BufferFull { limit: 100, .. })
    ));
}

#[tokio::test]
async fn a_bad_handshake_gets_400_with_a_reason() {
    let (url, _, _) = start(Options::default()).await;
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/ws")
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("req");
    let r = sender.send_request(req).await.expect("response");
    assert_eq!(r.status(), 400);
    use http_body_util::BodyExt;
    let body = r.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"missing Upgrade: websocket");
}

#[cfg(feature = "warp")]
#[tokio::test]
async fn the_warp_filter_serves_both_modes() {
    use warp::Filter;
    let (ws, mut sessions) = WsEndpoint::new(Options::default());
    let routes = warp::path("ws").and(ws.filter());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    c.send(WsMessage::Text("via warp".into()))
        .await
        .expect("send");
    assert_eq!(s.recv().await, Some(Message::Text("via warp".into())));
    drop(s.send_text("back"));
    assert_eq!(next(&mut c).await, WsMessage::Text("back".into()));

    let mut c = session_client(&url).await;
    let s = accept(&mut sessions).await;
    assert!(matches!(next_frame(&mut c).await, Frame::Hello { .. }));
    assert_eq!(s.transport(), Transport::WebSocketSession);
}

#[tokio::test]
async fn an_application_that_does_not_read_is_not_made_to_hold_more_than_its_limit() {
    let (url, _, mut sessions) = start(Options {
        max_unread_bytes: 10_000,
        ..Options::default()
    })
    .await;
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    // The application reads nothing while the client sends 40 KB.
    for _ in 0..40 {
        if c.send(WsMessage::Text("x".repeat(1000).into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(
        tokio::time::timeout(WAIT, s.closed())
            .await
            .expect("closed"),
        CloseReason::Protocol("the application is not reading".into())
    );
    // What was delivered before the limit can still be read, then nothing more.
    let mut read = 0;
    while let Some(m) = s.recv().await {
        read += m.len();
    }
    assert!(read <= 10_000, "{read}");
}

#[tokio::test]
async fn an_application_that_reads_keeps_its_session_however_much_arrives() {
    // The limit must exceed what arrives in one burst (here the client's Nagle batching,
    // about 13 KB) before the application gets to run.
    let (url, _, mut sessions) = start(Options {
        max_unread_bytes: 40_000,
        ..Options::default()
    })
    .await;
    let mut c = plain(&url).await;
    let s = accept(&mut sessions).await;
    let reader = tokio::spawn(async move {
        let mut read = 0;
        while read < 100_000 {
            match s.recv().await {
                Some(m) => read += m.len(),
                None => break,
            }
        }
        (read, s.close_reason())
    });
    for i in 0..100 {
        if let Err(e) = c.send(WsMessage::Text("y".repeat(1000).into())).await {
            let (read, reason) = reader.await.expect("task");
            panic!("send {i}: {e}; the application read {read}, session {reason:?}");
        }
        // Paced like a client that waits for its answers.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (read, reason) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!((read, reason), (100_000, None));
}

#[tokio::test]
async fn a_node_of_a_cluster_names_itself_in_every_session_secret() {
    let tag = browserver_core::cluster::NodeTag::new("n7", "e1").expect("tag");
    let (url, _, mut sessions) = start(Options {
        node: Some(tag),
        ..Options::default()
    })
    .await;
    let mut c = session_client(&url).await;
    let s = accept(&mut sessions).await;
    assert!(s.id().starts_with("n7-e1-"), "{}", s.id());
    match next_frame(&mut c).await {
        Frame::Hello {
            token: Some(token), ..
        } => {
            assert_eq!(
                browserver_core::cluster::owner_of(&token),
                Some(("n7", "e1")),
                "the resume token routes to its node"
            );
        }
        other => panic!("{other:?}"),
    }
}
