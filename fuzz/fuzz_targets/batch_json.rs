//! `POST /v1/readings` with `Content-Type: application/json`: the JSON batch, hex and base64 fields,
//! JSON payloads, the registry look-up and batch signature verification.
//! (The body is `hexpulse_testkit::fuzz::batch_json`; `make test` runs it over the seeds.)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hexpulse_testkit::fuzz::batch_json(data));
