//! `POST /v1/sql` (the first byte picks a JSON or plain body) as planned for a caller without `raw`:
//! no permitted plan scans a private table.
//! (The body is `hexpulse_testkit::fuzz::sql_request`; `make test` runs it over the seeds.)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hexpulse_testkit::fuzz::sql_request(data));
