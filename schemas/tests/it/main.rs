//! Integration tests of the wire contract: the vectors in `schemas/testdata/` and round-trip properties.

mod backend;
mod roundtrip;
mod vectors;
