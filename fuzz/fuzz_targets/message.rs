//! The browserver message codec, both forms: decoding never panics, and whatever decodes
//! survives a round trip through the JSON form unchanged — except header values that are not
//! UTF-8, which the JSON form documents as written lossily (found by this target).
#![no_main]

use browserver_transport_http::message::{decode, decode_json, encode_json, encode_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut message) = decode(data) else {
        return;
    };
    let json = encode_json(&message);
    for (_, value) in &mut message.headers {
        *value = String::from_utf8_lossy(value).into_owned().into_bytes();
    }
    assert_eq!(decode_json(json.as_bytes()).as_ref(), Ok(&message));
    let _ = encode_text(&message);
});
