//! Hexpulse load tests: the device simulator (`hexpulse simulate`, demo traffic for `make up`) and
//! the benchmarks recorded in `load-tests/RESULTS.md`.
//!
//! - [`fleet`]: simulated devices with keys derived from a seed and a realistic geography: hotspots
//!   clustered in cities, sensors at fixed sites with diurnal patterns, dashcams moving along roads.
//! - [`sim`]: drives an ingest endpoint at a rate, with live progress and a JSON summary.
//! - [`adversary`]: the adversarial mix (readings and requests that must be refused) and the ledger
//!   of what was sent and answered.
//! - [`account`]: accounting mode, the ledger against the lake through the query service's SQL.
//! - [`freshness`]: time from ingest's acceptance to visibility in the query service, by probe.
//! - [`bench`]: the ingest benchmark against the raw Ed25519 batch-verify rate.

pub mod account;
pub mod adversary;
pub mod bench;
pub mod door;
pub mod fleet;
pub mod freshness;
pub mod sim;
