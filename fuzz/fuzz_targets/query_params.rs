//! The query service's parameters and tile paths, through its real router (an empty lake, every
//! group public): the first byte picks a route, the rest becomes its path tail or query string
//! (bytes outside printable ASCII percent-encoded). Every request must get an answer, and never a
//! 500: bad parameters are 400, unknown things 404.
#![no_main]

use hexpulse_fuzz::service;
use libfuzzer_sys::fuzz_target;

const ROUTES: [&str; 12] = [
    "/v1/coverage?",
    "/v1/deadzones?",
    "/v1/sensors/hexes?",
    "/v1/sensors/series?",
    "/v1/road/hexes?",
    "/v1/tiles/",
    "/v1/tiles/coverage/",
    "/v1/epochs/",
    "/v1/epochs/1/devices?",
    "/v1/epochs/1/devices/",
    "/v1/coverage?res=8&bbox=",
    "/v1/sensors/series?metric=pm25&",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, tail)) = data.split_first() else {
        return;
    };
    let mut target = String::from(ROUTES[usize::from(pick) % ROUTES.len()]);
    for &b in tail.iter().take(512) {
        if b.is_ascii_graphic() && b != b'#' {
            target.push(char::from(b));
        } else {
            target.push_str(&format!("%{b:02X}"));
        }
    }
    let status = service::get(&target);
    assert!(
        status.is_some_and(|s| s < 500 || s == 503),
        "GET {target}: {status:?}"
    );
});
