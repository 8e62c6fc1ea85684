//! The `[process]` section of the config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Health and metrics listener.
    pub listen: SocketAddr,
    /// Kafka consumer group of the processors.
    pub group_id: String,
    /// The lake: a local directory, or an object store URL (`s3://bucket/prefix`, ...).
    pub lake_url: String,
    /// H3 resolutions binned on every valid row, as columns `h3_r{res}`.
    pub h3_resolutions: Vec<u8>,
    /// A unit (one set of files per partition) closes at this many rows, input bytes, or age. It
    /// is written while the next one fills, which may grow to twice these bounds before the
    /// consumer waits for the write.
    pub roll_rows: usize,
    pub roll_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub roll_age: Duration,
    /// Validation rules file; empty = the compiled-in `config/rules.toml`.
    #[serde(default)]
    pub rules_path: Option<PathBuf>,
    /// Verify every signature again (for deployments where the Kafka topic is shared).
    pub reverify_signatures: bool,
    /// Kafka group session timeout: how long a crashed processor's partitions wait before another
    /// member takes them over.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Time allowed on SIGTERM to flush and commit.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often closed hours are compacted ("0s": never; `hexpulse lake compact` does it on demand).
    #[serde(with = "humantime_serde")]
    pub compact_interval: Duration,
    /// An hour is closed this long after its end plus the rules' allowed lateness and clock skew.
    #[serde(with = "humantime_serde")]
    pub compact_grace: Duration,
    /// Merged files grow to about this many bytes.
    pub compact_target_bytes: u64,
    /// What one merge may hold in memory (see `hexpulse_lake::compact::CompactOptions`).
    pub compact_memory_bytes: u64,
    /// Replaced small files are deleted this long after the merge (readers that listed them just
    /// before it can still read them).
    #[serde(with = "humantime_serde")]
    pub compact_retention: Duration,
    /// Epochs and their sealing (`[process.epoch]`).
    #[serde(default)]
    pub epoch: hexpulse_lake::epoch::EpochConfig,
    /// The live tier (`[process.live]`).
    #[serde(default)]
    pub live: LiveConfig,
}

/// The rows a processor serves before its units commit (`processors::live`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// How often each partition's newly validated rows become live ("0s": no live tier).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Committed rows stay served this long (a query service whose snapshot lags the commit
    /// still finds them).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// What the live rows may hold in memory; past it a partition's rows wait for its unit's commit.
    pub memory_bytes: usize,
}

impl Default for LiveConfig {
    fn default() -> LiveConfig {
        LiveConfig {
            interval: Duration::from_millis(100),
            retention: Duration::from_secs(5),
            memory_bytes: 128 << 20,
        }
    }
}

impl ProcessConfig {
    pub fn for_tests(lake_url: &str) -> ProcessConfig {
        ProcessConfig {
            listen: "127.0.0.1:0".parse().expect("static"),
            group_id: "hexpulse-processors".into(),
            lake_url: lake_url.into(),
            h3_resolutions: vec![12, 8],
            roll_rows: 5_000,
            roll_bytes: 8 << 20,
            roll_age: Duration::from_millis(300),
            rules_path: None,
            reverify_signatures: false,
            session_timeout: Duration::from_secs(6),
            shutdown_timeout: Duration::from_secs(10),
            compact_interval: Duration::ZERO,
            compact_grace: Duration::from_secs(600),
            compact_target_bytes: 64 << 20,
            compact_memory_bytes: 256 << 20,
            compact_retention: Duration::from_secs(600),
            epoch: hexpulse_lake::epoch::EpochConfig {
                seal_interval: Duration::ZERO,
                ..Default::default()
            },
            live: LiveConfig::default(),
        }
    }
}
