//! The `[query]` section of the config.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// HTTP listener.
    pub listen: SocketAddr,
    /// The lake (same as `process.lake_url` unless the query service reads a replica).
    pub lake_url: String,
    /// At most this many rows in one SQL answer (more: 413 with a clear error).
    pub max_rows: usize,
    /// A query running longer than this is cancelled (408).
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Memory DataFusion may use for all queries together, bytes.
    pub memory_limit_bytes: usize,
    /// How often the catalog re-lists the lake (new files, compactions, sealed epochs).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl QueryConfig {
    pub fn for_tests(lake_url: &str) -> QueryConfig {
        QueryConfig {
            listen: "127.0.0.1:0".parse().expect("static"),
            lake_url: lake_url.into(),
            max_rows: 10_000,
            query_timeout: Duration::from_secs(5),
            memory_limit_bytes: 512 << 20,
            refresh_interval: Duration::from_millis(500),
        }
    }
}
