//! The lake: Hexpulse's one owner of storage.
//!
//! Every stream table (`heartbeat`, `sensor`, `road`, `rejected`) is a Delta Lake table under the
//! lake root, partitioned by event date and hour (`rejected`: receive date and hour), readable as is
//! by any Delta reader (DuckDB `delta_scan`, the `deltalake` Python package, polars, Spark, Trino).
//! Processors write their own Parquet files (sort order, page size, page index: what query speed
//! depends on) and commit them with statistics.
//!
//! - [`store`]: the object store, plain objects, Parquet encoding, UTC hours;
//! - [`delta`]: tables, the commit loop with its conflict checks, snapshots;
//! - [`unit`]: the exactly-once protocol of a Kafka partition's units (txn versions, fencing,
//!   completing an interrupted unit);
//! - [`compact`]: merging closed hours, checkpoints, vacuum;
//! - [`stats`]: Delta file statistics of a batch;
//! - [`epoch`]: epoch ids, sealing into deterministic reward inputs (pinned to the input tables'
//!   Delta versions), the manifest and the epoch output tables, with the points formula, the
//!   Merkle tree and proofs of `hexpulse_rewards`; with [`rules`], the versioned rules file.
//! - [`live`]: the live tier's wire (rows not yet committed, from processors to the query service)
//!   and its seam with the tables' logs.

#![warn(missing_docs)]

pub mod compact;
pub mod delta;
pub mod epoch;
pub mod live;
pub mod rules;
mod sorted;
pub mod stats;
pub mod store;
pub mod unit;

pub use delta::{DataFile, Table};
pub use store::{
    COMPACTED_ZSTD_LEVEL, HOUR_MS, Lake, LakeError, PAGE_ROWS, UNIT_ZSTD_LEVEL, column, date_hour,
    decode_parquet, encode_parquet, encode_parquet_with,
};

/// Milliseconds since the Unix epoch, now (the one clock of the workspace, `hexpulse_common`'s).
pub use hexpulse_common::time::now_ms;
