//! End-to-end tests of the `hexpulse` binary: real processes, the real broker, a real lake.

// These tests drive processes synchronously, from plain threads with no async runtime to block.
#![expect(clippy::disallowed_methods)]

mod accounting;
mod cli;
mod crash;
mod faults;
mod grpc;
mod k8s;
mod map;
mod mqtt;
mod pilot;
mod restart;
mod soak;
mod up;
use hexpulse_testkit::processing as support;
