//! `POST /v1/readings` with `Content-Type: application/json`: the JSON batch, hex and base64 fields,
//! JSON payloads, the registry look-up and batch signature verification.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hexpulse_fuzz::ingest_body(
        hexpulse_ingest::body::Format::Json,
        bytes::Bytes::copy_from_slice(data),
    );
});
