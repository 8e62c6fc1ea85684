//! Shared plumbing of the Hexpulse services, kept small on purpose: layered config loading, Kafka
//! client settings and topic creation, shutdown signalling, and telemetry set-up.
//!
//! Services (`ingest`, `processors`, `query`) depend on this crate and on `schemas`, never on each
//! other.

pub mod config;
pub mod fault;
pub mod health;
pub mod http;
pub mod kafka;
pub mod ratelimit;
pub mod registry;
pub mod serve;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
pub mod time;
