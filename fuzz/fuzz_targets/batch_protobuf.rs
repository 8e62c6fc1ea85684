//! `POST /v1/readings` with `Content-Type: application/x-protobuf`: the `ReadingBatch` framing, every
//! `SignedReading`, its payload, the registry look-up and batch signature verification.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hexpulse_fuzz::ingest_body(
        hexpulse_ingest::body::Format::Protobuf,
        bytes::Bytes::copy_from_slice(data),
    );
});
