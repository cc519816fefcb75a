//! A BrowserChannel request's query: every key the server reads, and the numbers in it.
#![no_main]

use browserver_transport_bc::codec::{leading_u64, param, parse_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let query = parse_query(Some(text));
    for key in [
        "VER", "SID", "RID", "AID", "OSID", "OAID", "TYPE", "CI", "DOMAIN", "CVER", "MODE",
    ] {
        if let Some(value) = param(&query, key) {
            let _ = leading_u64(value);
            let _ = value.parse::<u64>();
        }
    }
});
