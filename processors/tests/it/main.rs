//! Processor integration tests against the real broker (started by `make test`) and a real
//! local-filesystem object store.

mod around_ingest;
mod compaction;
mod epochs;
mod exactly_once;
mod faulty;
mod interrupted;
mod resume;
mod store_faults;
use hexpulse_testkit::processing as support;
mod zombie;
