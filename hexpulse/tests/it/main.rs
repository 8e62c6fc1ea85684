//! End-to-end tests of the `hexpulse` binary: real processes, the real broker, a real lake.

mod accounting;
mod cli;
mod crash;
mod faults;
mod k8s;
mod map;
mod restart;
mod soak;
mod up;
// Shared with the processor tests, which use all of it; this crate uses a part.
#[allow(dead_code)]
#[path = "../../../processors/tests/it/support.rs"]
mod support;
