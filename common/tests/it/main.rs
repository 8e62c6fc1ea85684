//! Integration tests of the shared plumbing against the real broker started by `make test`.

mod broker_roundtrip;
