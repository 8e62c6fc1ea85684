//! A GET of one of the query service's routes (the first byte picks it) with the rest as its path
//! and query: the service answers, never with a 5xx other than 503.
//! (The body is `hexpulse_testkit::fuzz::query_params`; `make test` runs it over the seeds.)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hexpulse_testkit::fuzz::query_params(data));
