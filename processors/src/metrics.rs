//! Metric names of the processors (`hexpulse_processor_*`). Labels: outcome, reason code, partition.

pub const ROWS: &str = "hexpulse_processor_rows_total"; // outcome, reason
pub const FILE_WRITE_SECONDS: &str = "hexpulse_processor_file_write_seconds";
pub const UNIT_SECONDS: &str = "hexpulse_processor_unit_seconds";
pub const COMMIT_SECONDS: &str = "hexpulse_processor_commit_seconds";
pub const FENCED: &str = "hexpulse_processor_fenced_total";
pub const REJOINS_TOTAL: &str = "hexpulse_processor_group_rejoins_total";
/// Rejoins because a partition with records waiting was processed by no live member.
pub const REJOINS_ORPHANED_TOTAL: &str = "hexpulse_processor_group_rejoins_orphaned_total";
pub const WATERMARK_MS: &str = "hexpulse_processor_watermark_ms"; // partition
pub const LAG_MS: &str = "hexpulse_processor_lag_ms"; // partition
pub const FLUSH_ERRORS: &str = "hexpulse_processor_flush_errors_total";
/// Partitions stopped by a flush error that retrying cannot fix (see `session::Consuming::on_flushed`).
pub const PARTITIONS_STOPPED: &str = "hexpulse_processor_partitions_stopped_total";
/// Bytes of rows the live tier holds (`live`).
pub const LIVE_BYTES: &str = "hexpulse_processor_live_bytes";
/// Segments the live tier refused at its memory bound (the partition waits for its unit's commit).
pub const LIVE_FULL: &str = "hexpulse_processor_live_full_total";
/// Age of a partition's newest record (now minus its receive time at ingest) when its rows go live:
/// the processor's share of freshness (consumer lag plus the live interval).
pub const LIVE_LAG_SECONDS: &str = "hexpulse_processor_live_lag_seconds";
