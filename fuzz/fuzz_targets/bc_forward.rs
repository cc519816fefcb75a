//! A BrowserChannel forward-channel body, form-encoded or JSON (the first byte chooses): it
//! parses or is refused, within its limits, and every id fits in a u64.
#![no_main]

use browserver_transport_bc::codec::{ForwardBody, ForwardLimits, parse_forward};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let limits = ForwardLimits {
        max_maps: 64,
        max_entries: 256,
    };
    match parse_forward(body, mode & 1 == 1, limits) {
        Ok(ForwardBody::Maps { ofs, maps }) => {
            assert!(maps.len() as u64 <= limits.max_maps);
            assert!(ofs.checked_add(maps.len() as u64).is_some());
            let entries: usize = maps.iter().map(|m| m.len()).sum();
            assert!(entries <= limits.max_entries);
        }
        Ok(ForwardBody::Json { ofs, messages }) => {
            assert!(messages.len() as u64 <= limits.max_maps);
            assert!(ofs.checked_add(messages.len() as u64).is_some());
        }
        Ok(ForwardBody::Empty) | Err(_) => {}
    }
});
