//! End-to-end round trips on loopback with the Rust client: one message out, its echo back.
//!
//! `cargo bench -p browserver-benches --bench e2e`

use std::time::Duration;

use browserver_client::{Client, Event, Options, Transport, connect};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

async fn bc_echo() -> String {
    let (bc, mut sessions) = browserver_transport_bc::BrowserChannel::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_transport_bc::serve(listener, bc));
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    drop(s.send(&m.value));
                }
            });
        }
    });
    format!("http://{addr}/channel")
}

async fn ws_echo() -> String {
    let (ws, mut sessions) = browserver_transport_ws::WsEndpoint::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_transport_ws::serve(listener, ws));
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    drop(s.send(m));
                }
            });
        }
    });
    format!("ws://{addr}/ws")
}

async fn open(url: &str, transport: Transport) -> Client {
    let client = connect(
        url,
        Options {
            transport,
            ..Options::default()
        },
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.next_event()).await {
            Ok(Some(Event::Open { .. })) => return client,
            Ok(Some(_)) => {}
            other => panic!("no open: {other:?}"),
        }
    }
}

async fn round_trip(client: &Client) {
    drop(client.send(&json!({"ping": 1})));
    loop {
        if let Some(Event::Message(_)) = client.next_event().await {
            return;
        }
    }
}

fn round_trips(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("e2e/client_roundtrip");
    group.throughput(Throughput::Elements(1));
    for (name, transport) in [
        ("browserchannel", Transport::BrowserChannel),
        ("websocket", Transport::WebSocket),
    ] {
        let client = rt.block_on(async {
            let url = if transport == Transport::WebSocket {
                ws_echo().await
            } else {
                bc_echo().await
            };
            open(&url, transport).await
        });
        group.bench_function(name, |b| b.to_async(&rt).iter(|| round_trip(&client)));
    }
    group.finish();
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
