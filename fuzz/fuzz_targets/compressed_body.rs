//! `Content-Encoding: gzip` or `zstd` bodies: the first byte picks the encoding and the format, the
//! rest is the body as sent. Decompression must stop at the limit (zip bombs), then the batch is
//! decoded as in the other targets.
#![no_main]

use hexpulse_ingest::body::{self, Format};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let encoding = if pick & 1 == 0 { "gzip" } else { "zstd" };
    let format = if pick & 2 == 0 {
        Format::Protobuf
    } else {
        Format::Json
    };
    let Ok(plain) = body::decompress(Some(encoding), bytes::Bytes::copy_from_slice(rest), LIMIT)
    else {
        return;
    };
    assert!(plain.len() <= LIMIT, "decompressed past the limit");
    hexpulse_fuzz::ingest_body(format, plain);
});
