//! `POST /v1/readings` with a protobuf body: decoding, the registry look-up and batch signature
//! verification.
//! (The body is `hexpulse_testkit::fuzz::batch_protobuf`; `make test` runs it over the seeds.)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hexpulse_testkit::fuzz::batch_protobuf(data));
