//! Stream frames from a peer (`browserver_core::stream`): each decodes or is refused, a
//! decoded frame encodes back to itself, and a sequence of them fed to a stream machine
//! never panics — a protocol error is returned, the machine stays within its bounds, and a
//! head goes through the proxy's head codec without panicking.
#![no_main]

use std::time::{Duration, Instant};

use browserver_core::stream::{Frame, Side, StreamConfig, StreamEvent, Streams};
use browserver_transport_http::message::decode_head;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = StreamConfig {
        stream_window: 4096,
        connection_window: 8192,
        max_frame_data: 1024,
        max_peer_streams: 4,
        send_buffer: 2048,
        connection_send_buffer: 4096,
        ..StreamConfig::default()
    };
    let side = if data.first().is_some_and(|b| b & 1 == 1) {
        Side::Proxy
    } else {
        Side::Client
    };
    let mut machine = Streams::new(side, config);
    machine.set_head_timeout(Some(Duration::from_secs(1)));
    let now = Instant::now();
    // Frames are length-prefixed (one byte) in the input.
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let bytes = Bytes::copy_from_slice(&tail[..len]);
        rest = &tail[len..];
        let Ok(frame) = Frame::decode(&bytes) else {
            continue;
        };
        assert_eq!(Frame::decode(&frame.encode()).as_ref(), Ok(&frame));
        if let Frame::Head { head, .. } = &frame {
            let _ = decode_head(head);
        }
        if machine.handle_frame(now, frame).is_err() {
            break;
        }
        while let Some(event) = machine.poll_event() {
            if let StreamEvent::Data { id, data } = event {
                machine.consumed(id, data.len());
            }
        }
        while machine.poll_frame().is_some() {}
        assert!(machine.len() <= 4 + 128);
    }
    machine.handle_timeout(now + Duration::from_secs(2));
    machine.close();
    while machine.poll_event().is_some() {}
    assert!(machine.is_empty());
});
