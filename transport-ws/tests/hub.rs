//! Broadcast and rooms over real WebSocket sessions on loopback: a member that does not keep
//! up never holds back the others, and its memory stays bounded by its buffer limit.

use std::time::Duration;

use browserver_transport_ws::codec::SUBPROTOCOL;
use browserver_transport_ws::{Hub, Options, SendError, Session, Sessions, WsEndpoint, serve};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(20);

async fn start(options: Options) -> (String, Sessions) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let (ws, sessions) = WsEndpoint::new(options);
    tokio::spawn(serve(listener, ws));
    (url, sessions)
}

async fn accept(sessions: &mut Sessions) -> Session {
    tokio::time::timeout(WAIT, sessions.accept())
        .await
        .expect("in time")
        .expect("session")
}

/// A plain client that reads everything and returns the texts once it has `n`.
fn reader(
    url: String,
    n: usize,
) -> (
    tokio::sync::oneshot::Receiver<()>,
    tokio::task::JoinHandle<Vec<String>>,
) {
    let (connected, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        let _ = connected.send(());
        let mut texts = Vec::new();
        while texts.len() < n {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(WsMessage::Text(t)))) => texts.push(t.to_string()),
                Ok(Some(Ok(_))) => {}
                other => panic!("reader ended early after {}: {other:?}", texts.len()),
            }
        }
        texts
    });
    (rx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_acknowledges_does_not_hold_back_the_room() {
    const FAST: usize = 8;
    const MESSAGES: usize = 400;
    const LIMIT: usize = 64 * 1024;
    let (url, mut sessions) = start(Options {
        max_buffered_bytes: LIMIT,
        ..Options::default()
    })
    .await;
    let hub = Hub::default();

    // The slow member speaks session mode and never reads: nothing it is sent is ever
    // acknowledged, so everything sent to it stays in its session's buffer.
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        SUBPROTOCOL.parse().expect("value"),
    );
    let (_slow_socket, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let slow = accept(&mut sessions).await;
    hub.join(&slow, "room").expect("join");

    let mut readers = Vec::new();
    for _ in 0..FAST {
        let (connected, task) = reader(url.clone(), MESSAGES);
        connected.await.expect("connected");
        hub.join(&accept(&mut sessions).await, "room")
            .expect("join");
        readers.push(task);
    }
    // Someone outside the room hears nothing of it.
    let outsider = accept_outsider(&url, &mut sessions, &hub).await;

    let payload = "x".repeat(1000);
    let mut refused_to_slow = 0;
    for i in 0..MESSAGES {
        let report = hub
            .to("room")
            .send_text(format!("{i:04}{payload}"))
            .within(Duration::from_millis(20))
            .await;
        assert_eq!(report.recipients, FAST + 1);
        for (member, error) in &report.failed {
            assert_eq!(
                member.id(),
                slow.id(),
                "only the slow member fails: {error}"
            );
            assert!(matches!(error, SendError::BufferFull { limit, .. } if *limit == LIMIT));
            refused_to_slow += 1;
        }
        for member in &report.pending {
            assert_eq!(member.id(), slow.id(), "only the slow member is unanswered");
        }
    }
    // Sent after the room's messages: were any of them to reach the outsider, it would read
    // one of those first.
    drop(hub.to("elsewhere").send_text("only this"));
    for task in readers {
        let texts = tokio::time::timeout(WAIT, task)
            .await
            .expect("in time")
            .expect("reader");
        let expected: Vec<String> = (0..MESSAGES).map(|i| format!("{i:04}{payload}")).collect();
        assert_eq!(
            texts, expected,
            "every fast member got everything, in order"
        );
    }
    // The slow member's buffer held at most its limit: everything past ~64 messages of
    // 1 KiB was dropped for it and reported.
    let held = MESSAGES - refused_to_slow;
    assert!(
        held * 1000 <= LIMIT,
        "{held} messages held for the slow member"
    );
    assert!(refused_to_slow > 0);
    assert_eq!(
        tokio::time::timeout(WAIT, outsider)
            .await
            .expect("in time")
            .expect("outsider"),
        ["only this"],
        "the outsider heard only its own room"
    );
}

async fn accept_outsider(
    url: &str,
    sessions: &mut Sessions,
    hub: &Hub,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (connected, task) = reader(url.to_string(), 1);
    connected.await.expect("connected");
    let session = accept(sessions).await;
    hub.join(&session, "elsewhere").expect("join");
    task
}

#[tokio::test]
async fn members_leave_every_room_when_their_client_goes_away() {
    let (url, mut sessions) = start(Options::default()).await;
    let hub = Hub::default();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    let session = accept(&mut sessions).await;
    hub.join(&session, "a").expect("join");
    hub.join(&session, "b").expect("join");
    ws.close(None).await.expect("close");
    tokio::time::timeout(WAIT, async {
        while !hub.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("forgotten once closed");
    assert!(hub.members("a").is_empty() && hub.members("b").is_empty());
}
