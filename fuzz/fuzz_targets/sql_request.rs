//! `POST /v1/sql`: the body (text, or JSON `{"sql": ...}` when the first byte is odd), then parsing,
//! planning against the lake's real tables (an empty lake), the read-only check and the privacy
//! check for a caller without the `raw` group. A permitted plan must never scan a private table.
#![no_main]

use hexpulse_fuzz::sql::{context, runtime};
use hexpulse_query::sql;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = (pick & 1 == 1).then_some("application/json");
    let Ok(text) = sql::request_text(content_type, body) else {
        return;
    };
    let ctx = context();
    if let Ok(plan) = runtime().block_on(sql::plan(ctx, &text, false)) {
        let scanned = sql::scanned_tables(&plan);
        assert!(
            !scanned
                .iter()
                .any(|t| sql::PRIVATE_TABLES.contains(&t.as_str())),
            "a permitted plan scans a private table: {scanned:?}"
        );
    }
});
