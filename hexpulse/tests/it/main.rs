//! End-to-end tests of the `hexpulse` binary: real processes, the real broker, a real lake.

mod crash;
#[path = "../../../processors/tests/it/support.rs"]
mod support;
