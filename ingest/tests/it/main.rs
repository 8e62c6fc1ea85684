//! Ingest integration tests against the real broker started by `make test`.

mod admin;
mod answers;
mod broker_outage;
mod delivery;
mod limits;
mod old_offsets;
mod overload;
mod support;
