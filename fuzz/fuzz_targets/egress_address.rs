//! Egress address classification: every IPv6 spelling that embeds an IPv4 address (mapped,
//! NAT64, 6to4) is judged as that IPv4 address, and loopback, private and link-local IPv4 are
//! refused in every spelling.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use browserver_transport_http::is_refused_address;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = <[u8; 16]>::try_from(data) {
        let _ = is_refused_address(IpAddr::V6(Ipv6Addr::from(bytes)));
        return;
    }
    let Ok(bytes) = <[u8; 4]>::try_from(data) else {
        return;
    };
    let v4 = Ipv4Addr::from(bytes);
    let verdict = is_refused_address(IpAddr::V4(v4));
    let [a, b, c, d] = bytes;
    let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
    let spellings = [
        v4.to_ipv6_mapped(),
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
        Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
    ];
    for v6 in spellings {
        assert_eq!(is_refused_address(IpAddr::V6(v6)), verdict, "{v6} vs {v4}");
    }
    if v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() {
        assert!(verdict, "{v4}");
        assert!(is_refused_address(IpAddr::V6(v4.to_ipv6_compatible())), "{v4}");
    }
});
