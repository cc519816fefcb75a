//! The host pattern (`*.domain`) and the `Host` headers matched against it: a name found in a
//! host is a valid DNS label, and its hostname matches the pattern again.
#![no_main]

use browserver_transport_http::HostPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, host) = text.split_once('\n').unwrap_or(("*.localhost", text));
    let Ok(pattern) = HostPattern::parse(pattern) else {
        return;
    };
    if let Some(name) = pattern.client_id(host) {
        assert!(name.len() <= 63 && !name.is_empty(), "{name:?}");
        let hostname = pattern.hostname(&name);
        assert_eq!(pattern.client_id(&hostname), Some(name));
    }
});
