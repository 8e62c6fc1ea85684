//! Hexpulse stream processors: consume raw signed readings from Kafka, validate them, bin them into H3
//! cells, and commit Parquet to the lake's Delta tables (`hexpulse-lake`) with every input record stored exactly once, as a valid row or
//! as a rejection with its reason.
//!
//! - [`validate`]: the semantic checks and per-device state (duplicates, speed, rate);
//! - `hexpulse_lake::rules`: the versioned thresholds file;
//! - [`h3bin`]: H3 cells at the configured resolutions (h3o);
//! - [`rows`]: Arrow record batches of the lake tables;
//! - `hexpulse_lake::epoch`: sealing epochs into deterministic reward inputs with a manifest and
//!   Merkle root (`hexpulse process` runs the sealer's loop, `hexpulse_sealer`, beside the
//!   processor where configured);
//! - [`partition`]: one partition's unit buffer and its exactly-once flush; [`sealed`]: writing a
//!   unit taken out of the buffer, apart from the consumer loop;
//! - [`live`]: the rows validated but not yet committed (and for a few seconds after), served to
//!   the query service;
//! - [`run`]: a processor's start, HTTP endpoints, background tasks and shutdown; `session`: one
//!   group membership of the consumer loop; `reread`: the recovery from records a broker skipped
//!   and partitions a group lost.
//!
//! The exactly-once argument is in `ARCHITECTURE.md`.

pub mod config;
pub mod h3bin;
pub mod live;
pub mod metrics;
pub mod partition;
mod reread;
pub mod rows;
pub mod run;
pub mod sealed;
mod session;
pub mod validate;

pub use config::ProcessConfig;
