//! Hexpulse query service: DataFusion over the Parquet lake.
//!
//! - One DataFusion catalog over the lake's valid files (compactions applied) and the
//!   manifest-listed epoch files, rebuilt in the background and swapped atomically ([`catalog`]).
//! - H3 functions for SQL ([`udf`]), tested by `tests/slt/*.slt`.
//! - Hex maps as GeoJSON and vector tiles, dead zones, sensor series and hex aggregates, road
//!   aggregates under the k-anonymity rule ([`http`], [`geo`], [`mvt`]); each answer states its freshness.
//! - The processors' rows not yet committed, polled into a mirror and answered with the lake
//!   snapshot, each row once ([`live`]).
//! - Sensor aggregates over sealed time read the epochs' hourly rows instead of raw rows ([`preagg`]).
//! - Read-only SQL with row, time and memory limits, answering JSON, CSV or Arrow IPC ([`sql`]);
//!   raw dashcam rows only for the `raw` group, checked on the plan. Every SQL door keeps the same
//!   rules, in one place ([`gate`]): HTTP, the PostgreSQL wire protocol ([`pg`]) and Arrow
//!   Flight SQL ([`flight`]).
//! - Epoch endpoints for reward oracles (list, manifest, device summaries as JSON/CSV/Parquet,
//!   Merkle proofs); bearer tokens → roles → endpoint groups ([`auth`]); `/openapi.json`.
//! - Device status (last heartbeat and reading, online/stale/offline, last location, rejections)
//!   from a bounded cache that follows the lake's commits ([`status`]).
//! - Alert rules over the lake (devices offline, a hex's metric over a threshold, a pilot's
//!   coverage dropping), evaluated by the alerts role, delivered as signed webhooks ([`alerts`]).
//! - Plans run on their own runtime, at most `max_concurrent_queries` at once, so HTTP and health
//!   checks stay responsive.

pub mod alerts;
pub mod auth;
pub mod bounded;
pub mod catalog;
mod columns;
pub mod config;
pub mod deadline;
pub mod flight;
pub mod gate;
pub mod geo;
pub mod http;
pub mod live;
pub mod mvt;
mod objects;
pub use objects::ObjectError;
pub mod openapi;
pub mod params;
pub mod pg;
pub mod pilots;
pub mod preagg;
pub mod snapshot;
pub mod sql;
pub mod status;
pub mod udf;

pub use datafusion;

pub use config::QueryConfig;
pub use http::{Query, QueryError, run};
