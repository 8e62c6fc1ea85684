//! Arrow schemas of the lake tables. Column meanings are documented in `schemas/TABLES.md`; keep the
//! two in step (a test checks that every column here is named there).
//!
//! Every valid-row table starts with the same columns ([`common_fields`]): event and receive time, the
//! device key, sequence number, location, the H3 cells at each configured resolution, provenance
//! (topic, partition, offset) and the rules version. Kind-specific columns follow.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The heartbeat readings' table in the lake.
pub const HEARTBEAT_TABLE: &str = "heartbeat";
/// The sensor readings' table (one row per measurement).
pub const SENSOR_TABLE: &str = "sensor";
/// The dashcam observations' table.
pub const ROAD_TABLE: &str = "road";
/// Every refused record, with its reason.
pub const REJECTED_TABLE: &str = "rejected";
/// A sealed epoch's per-device summary (the Merkle tree's leaves).
pub const DEVICE_SUMMARY_TABLE: &str = "device_summary";

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Name of the column holding the H3 cell at `res`.
pub fn h3_column(res: u8) -> String {
    format!("h3_r{res}")
}

/// Columns every valid-row table starts with.
pub fn common_fields(h3_resolutions: &[u8]) -> Vec<Field> {
    let mut f = vec![
        Field::new("event_time", ts(), false),
        Field::new("receive_time", ts(), false),
        Field::new("device_key", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("lat", DataType::Float64, false),
        Field::new("lng", DataType::Float64, false),
        Field::new("accuracy_m", DataType::Float32, false),
        Field::new("asserted_distance_m", DataType::Float64, false),
    ];
    f.extend(
        h3_resolutions
            .iter()
            .map(|r| Field::new(h3_column(*r), DataType::UInt64, false)),
    );
    f.extend(provenance_fields());
    f
}

fn provenance_fields() -> Vec<Field> {
    vec![
        Field::new("src_topic", DataType::Utf8, false),
        Field::new("src_partition", DataType::Int32, false),
        Field::new("src_offset", DataType::Int64, false),
        Field::new("rules_version", DataType::Utf8, false),
    ]
}

fn with(mut base: Vec<Field>, extra: Vec<Field>) -> SchemaRef {
    base.extend(extra);
    Arc::new(Schema::new(base))
}

/// `heartbeat`: one row per heartbeat.
pub fn heartbeat_schema(h3_resolutions: &[u8]) -> SchemaRef {
    with(
        common_fields(h3_resolutions),
        vec![
            Field::new("radio", DataType::Utf8, false),
            Field::new("signal_dbm", DataType::Float32, false),
            Field::new("download_mbps", DataType::Float32, true),
            Field::new("upload_mbps", DataType::Float32, true),
            Field::new("latency_ms", DataType::Float32, true),
        ],
    )
}

/// `sensor`: one row per measurement (a reading with three metrics gives three rows).
pub fn sensor_schema(h3_resolutions: &[u8]) -> SchemaRef {
    with(
        common_fields(h3_resolutions),
        vec![
            Field::new("metric", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("unit", DataType::Utf8, false),
        ],
    )
}

/// `road`: one row per dashcam observation.
pub fn road_schema(h3_resolutions: &[u8]) -> SchemaRef {
    with(
        common_fields(h3_resolutions),
        vec![
            Field::new("observation", DataType::Utf8, false),
            Field::new("heading_deg", DataType::Float32, false),
            Field::new("speed_kmh", DataType::Float32, false),
            Field::new("confidence", DataType::Float32, false),
        ],
    )
}

/// `rejected`: one row per refused reading, whatever stage refused it.
pub fn rejected_schema() -> SchemaRef {
    let mut f = vec![
        Field::new("receive_time", ts(), false),
        Field::new("event_time", ts(), true),
        Field::new("device_key", DataType::Utf8, true),
        Field::new("seq", DataType::UInt64, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
    ];
    f.extend(provenance_fields());
    Arc::new(Schema::new(f))
}

/// `device_summary`: one row per device per sealed epoch (written by the epoch sealer). The
/// `rejected_{reason}` columns follow [`crate::reasons::RejectReason::ALL`] order.
pub fn device_summary_schema() -> SchemaRef {
    let mut f = vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("device_key", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("heartbeats", DataType::UInt64, false),
        Field::new("sensor_readings", DataType::UInt64, false),
        Field::new("road_observations", DataType::UInt64, false),
        Field::new("active_hours", DataType::UInt32, false),
        Field::new("distinct_hexes", DataType::UInt64, false),
        Field::new("median_distance_m", DataType::Float64, true),
        Field::new("location_trust", DataType::Float64, false),
        Field::new("speed_tests", DataType::UInt64, false),
        Field::new("median_download_mbps", DataType::Float64, true),
        Field::new("speed_tier", DataType::Utf8, false),
        Field::new("rejected", DataType::UInt64, false),
    ];
    f.extend(
        crate::reasons::RejectReason::ALL
            .iter()
            .map(|r| Field::new(format!("rejected_{}", r.as_str()), DataType::UInt64, false)),
    );
    f.extend([
        Field::new("reward_points", DataType::UInt64, false),
        Field::new("rules_version", DataType::Utf8, false),
        Field::new("rules_hash", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(f))
}

/// `hex_coverage`: one row per H3 cell with heartbeats in a sealed epoch.
pub fn hex_coverage_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("h3_cell", DataType::UInt64, false),
        Field::new("devices", DataType::UInt64, false),
        Field::new("heartbeats", DataType::UInt64, false),
        Field::new("best_signal_dbm", DataType::Float64, false),
        Field::new("median_signal_dbm", DataType::Float64, false),
        Field::new("speed_tests", DataType::UInt64, false),
        Field::new("median_download_mbps", DataType::Float64, true),
        Field::new("median_upload_mbps", DataType::Float64, true),
        Field::new("median_latency_ms", DataType::Float64, true),
    ]))
}

/// `sensor_hex_hourly`: one row per H3 cell, hour and metric in a sealed epoch.
pub fn sensor_hex_hourly_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("h3_cell", DataType::UInt64, false),
        Field::new("hour", ts(), false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("mean", DataType::Float64, false),
        Field::new("min", DataType::Float64, false),
        Field::new("max", DataType::Float64, false),
        Field::new("p95", DataType::Float64, false),
    ]))
}

/// `road_hex`: one row per H3 cell and observation type with at least k distinct devices.
pub fn road_hex_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("h3_cell", DataType::UInt64, false),
        Field::new("observation", DataType::Utf8, false),
        Field::new("observations", DataType::UInt64, false),
        Field::new("devices", DataType::UInt64, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_is_documented() {
        let doc = include_str!("../TABLES.md");
        let schemas = [
            heartbeat_schema(&[12, 8]),
            sensor_schema(&[12, 8]),
            road_schema(&[12, 8]),
            rejected_schema(),
            device_summary_schema(),
            hex_coverage_schema(),
            sensor_hex_hourly_schema(),
            road_hex_schema(),
        ];
        for s in schemas {
            for f in s.fields() {
                let name = if f.name().starts_with("h3_r") {
                    "h3_r{res}"
                } else if f.name().starts_with("rejected_") {
                    "rejected_{reason}"
                } else {
                    f.name().as_str()
                };
                assert!(
                    doc.contains(&format!("`{name}`")),
                    "column {name} is not documented in TABLES.md"
                );
            }
        }
    }
}
