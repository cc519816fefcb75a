//! A session secret from the network (a BrowserChannel `SID` or `OSID`, a WebSocket resume
//! token) read for the node that made it: never a panic; a node it names is a valid node id
//! with a valid epoch, and routing agrees with it.
#![no_main]

use browserver_core::cluster::{NodeTag, Route, is_valid_node_id, owner_of, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(secret) = std::str::from_utf8(data) else {
        return;
    };
    let own = NodeTag::new("self", "e0").expect("tag");
    match owner_of(secret) {
        Some((node, epoch)) => {
            assert!(is_valid_node_id(node), "{node:?}");
            assert!(NodeTag::new(node, epoch).is_ok(), "{node:?} {epoch:?}");
            let expected = if (node, epoch) == ("self", "e0") {
                Route::Local
            } else {
                Route::Node { node, epoch }
            };
            assert_eq!(route(&own, secret), expected);
        }
        None => assert_eq!(route(&own, secret), Route::Local),
    }
});
