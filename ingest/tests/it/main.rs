//! Ingest integration tests against the real broker started by `make test`.

/// The allocator of the `hexpulse` binary that runs ingest in production, so that the memory tests
/// measure what it does (its peaks run higher than glibc's on the same load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod answers;
mod broker_outage;
mod delivery;
mod limits;
mod old_offsets;
mod overload;
mod support;
