//! Test support shared by the workspace's tests and tools, never a dependency of a production
//! crate.
//!
//! - [`fuzz`]: the fuzz targets' bodies. `cargo fuzz` (fuzz/, its own workspace, libFuzzer) calls
//!   them; the tests here run them over the seeds, the saved crash inputs and inputs mutated from
//!   the seeds, in the ordinary test build (`make test`).
//! - [`testenv`]: how tests find the broker that `make test` starts, and control brokers of their
//!   own.
//! - [`inspect`]: a summary of what the lake holds, record by record, for the exactly-once checks.
//! - [`processing`]: the processors' test flow (produce a scenario, run processors, wait for the
//!   lake), shared by the processors', query's and the binary's tests.
//! - [`scenario`]: signed readings with a known verdict each, for the processors' and the lake's
//!   tests.

pub mod fuzz;
pub mod inspect;
pub mod processing;
pub mod scenario;
pub mod testenv;
