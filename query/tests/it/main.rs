//! Query service tests against a lake the processors wrote from broker traffic.

mod api;
mod limits;
mod live;
mod preagg;
mod readers;
mod slt;
// Shared with the processor tests; this crate uses a part of it.
#[allow(dead_code)]
#[path = "../../../processors/tests/it/support.rs"]
mod support;
