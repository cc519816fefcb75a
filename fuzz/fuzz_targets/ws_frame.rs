//! A WebSocket session-mode frame: decoding never panics, and what decodes encodes back to a
//! frame that decodes the same.
#![no_main]

use browserver_transport_ws::codec::{decode, encode};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    assert_eq!(decode(&encode(&frame)), Ok(frame));
});
