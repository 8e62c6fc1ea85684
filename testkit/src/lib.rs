//! Test support shared by the workspace's tests and tools, never a dependency of a production
//! crate.
//!
//! - [`fuzz`]: the fuzz targets' bodies. `cargo fuzz` (fuzz/, its own workspace, libFuzzer) calls
//!   them; the tests here run them over the seeds, the saved crash inputs and inputs mutated from
//!   the seeds, in the ordinary test build (`make test`).

pub mod fuzz;
