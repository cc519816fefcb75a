//! Reverse interop: our Rust client against node-browserchannel's own server (npm
//! `browserchannel@2.1.0`, `tests-js/node-bc-echo-server.js`).
//!
//! Needs Node.js and `tests-js/node_modules`; `scripts/test` installs both and runs these with
//! `--ignored`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use browserver_client::{CloseReason, Event, Options, Transport, connect};
use common::{WAIT, messages, next, until_open};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

struct NodeServer {
    base: String,
    lines: mpsc::UnboundedReceiver<String>,
    _child: Child,
}

async fn node_server() -> NodeServer {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests-js/node-bc-echo-server.js"
    );
    let mut child = Command::new("node")
        .arg(script)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (install Node.js, then `npm ci` in tests-js)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = tx.send(line);
        }
    });
    let first = tokio::time::timeout(WAIT, lines.recv())
        .await
        .expect("node started")
        .expect("a line");
    let addr = first
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    NodeServer {
        base: format!("http://{addr}/channel"),
        lines,
        _child: child,
    }
}

fn options() -> Options {
    Options {
        transport: Transport::BrowserChannel,
        reconnect_delay: Duration::from_millis(100),
        ..Options::default()
    }
}

#[tokio::test]
#[ignore = "needs Node.js and tests-js/node_modules; scripts/test runs it"]
async fn rust_client_exchanges_1000_messages_with_node_browserchannel_in_order() {
    let server = node_server().await;
    let client = connect(&server.base, options());
    let first = client.send(&json!({"i": 0}));
    until_open(&client).await;
    let acks: Vec<_> = (1..1000).map(|i| client.send(&json!({"i": i}))).collect();
    assert_eq!(
        messages(&client, 1000).await,
        (0..1000).map(|i| json!({"i": i})).collect::<Vec<_>>()
    );
    assert_eq!(
        tokio::time::timeout(WAIT, first).await.expect("acked"),
        Ok(())
    );
    for a in acks {
        assert_eq!(tokio::time::timeout(WAIT, a).await.expect("acked"), Ok(()));
    }
    client.close();
}

#[tokio::test]
#[ignore = "needs Node.js and tests-js/node_modules; scripts/test runs it"]
async fn rust_client_round_trips_unicode_and_large_messages_with_node_browserchannel() {
    let server = node_server().await;
    let client = connect(&server.base, options());
    until_open(&client).await;
    // node sends non-ASCII raw, with UTF-16 length prefixes: this checks our chunk decoding.
    let sent = vec![
        json!("⚗☗⚑☯ 😀 ü"),
        json!("\u{2028} \u{2029}"),
        json!("y".repeat(100_000)),
        json!({"nested": ["😀", 1.5]}),
    ];
    for v in &sent {
        drop(client.send(v));
    }
    assert_eq!(messages(&client, sent.len()).await, sent);
}

#[tokio::test]
#[ignore = "needs Node.js and tests-js/node_modules; scripts/test runs it"]
async fn node_browserchannel_stop_is_seen_as_stop_without_reconnect() {
    let server = node_server().await;
    let client = connect(&server.base, options());
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

#[tokio::test]
#[ignore = "needs Node.js and tests-js/node_modules; scripts/test runs it"]
async fn node_browserchannel_close_makes_the_rust_client_reconnect_with_osid() {
    let mut server = node_server().await;
    let client = connect(&server.base, options());
    let (first, _) = until_open(&client).await;
    drop(client.send(&"close"));
    let (second, _) = until_open(&client).await;
    assert_ne!(first, second);
    drop(client.send(&"after"));
    assert_eq!(messages(&client, 1).await, [json!("after")]);
    let closed = tokio::time::timeout(WAIT, server.lines.recv())
        .await
        .expect("line")
        .expect("line");
    assert!(closed.starts_with(&format!("closed {first}")), "{closed}");
}

#[tokio::test]
#[ignore = "needs Node.js and tests-js/node_modules; scripts/test runs it"]
async fn rust_client_close_sends_terminate_to_node_browserchannel() {
    let mut server = node_server().await;
    let client = connect(&server.base, options());
    let (sid, _) = until_open(&client).await;
    drop(client.send(&"x"));
    messages(&client, 1).await;
    client.close();
    let line = tokio::time::timeout(WAIT, server.lines.recv())
        .await
        .expect("line")
        .expect("line");
    assert_eq!(line, format!("closed {sid} Disconnected"));
}
