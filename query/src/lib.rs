//! Hexpulse query service: DataFusion over the Parquet lake.
//!
//! Built so far (issue #6 has the rest): one DataFusion catalog over the lake's valid files
//! (compactions applied) and the manifest-listed epoch files, refreshed in the background; read-only
//! SQL with row, time and memory limits, answering JSON, CSV or Arrow IPC; the epoch endpoints for
//! reward oracles (list, manifest, device summaries as JSON/CSV/Parquet, Merkle proofs); health and
//! metrics. Not built yet: H3 UDFs, coverage GeoJSON, vector tiles, dead zones, sensor series, road
//! aggregates, auth and roles, OpenAPI. Until roles exist, the raw `road` table is not registered at
//! all (dashcam tracks are private); road data is visible only as the k-anonymous epoch `road_hex`.

pub mod catalog;
pub mod config;
pub mod server;
pub mod sql;

pub use datafusion;

pub use config::QueryConfig;
pub use server::{Query, run};
