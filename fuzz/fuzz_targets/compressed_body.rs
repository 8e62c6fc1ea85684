//! A compressed body (the first byte picks gzip or zstd, protobuf or JSON): never more than the limit
//! once decompressed, then decoded as a batch.
//! (The body is `hexpulse_testkit::fuzz::compressed_body`; `make test` runs it over the seeds.)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hexpulse_testkit::fuzz::compressed_body(data));
