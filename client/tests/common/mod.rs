//! Helpers shared by the client's test files.
#![allow(dead_code, missing_docs)]

use std::time::Duration;

use browserver_client::{Client, Event, Transport};
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(15);

pub async fn next(client: &Client) -> Event {
    tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("an event in time")
        .expect("event")
}

/// Waits for `Open`; returns the session id and transport.
pub async fn until_open(client: &Client) -> (String, Transport) {
    loop {
        if let Event::Open {
            session_id,
            transport,
        } = next(client).await
        {
            return (session_id, transport);
        }
    }
}

/// The next `n` messages, skipping other events.
pub async fn messages(client: &Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Event::Message(v) = next(client).await {
            out.push(v);
        }
    }
    out
}
