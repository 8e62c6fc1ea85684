//! Delta file statistics (`numRecords`, `minValues`, `maxValues`, `nullCount`) of a record batch, as
//! the JSON string an Add action carries, so that Delta readers can skip files by their values.
//!
//! delta-rs computes these only inside its own writers; ours writes its own Parquet (sort order, page
//! size, page index), so the statistics are computed here from the batch before it is encoded. A
//! column whose min and max cannot be stated exactly in Delta's JSON form (binary, NaN floats,
//! unsigned values past `i64::MAX`, long strings) gets only its null count, which is always safe:
//! readers keep a file whose statistics are missing.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute;
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType,
    UInt32Type, UInt64Type,
};
use serde_json::{Map, Value, json};

/// Strings longer than this get no min/max (Delta readers compare whole values).
const MAX_STRING_STAT: usize = 64;

/// The stats JSON of `batch`.
pub fn stats_json(batch: &RecordBatch) -> String {
    let mut mins = Map::new();
    let mut maxs = Map::new();
    let mut nulls = Map::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        nulls.insert(field.name().clone(), json!(col.null_count()));
        if let Some((lo, hi)) = min_max(col.as_ref()) {
            mins.insert(field.name().clone(), lo);
            maxs.insert(field.name().clone(), hi);
        }
    }
    json!({
        "numRecords": batch.num_rows(),
        "minValues": mins,
        "maxValues": maxs,
        "nullCount": nulls,
    })
    .to_string()
}

fn min_max(col: &dyn Array) -> Option<(Value, Value)> {
    if col.len() == col.null_count() {
        return None;
    }
    match col.data_type() {
        DataType::Int32 => {
            let a = col.as_primitive::<Int32Type>();
            Some((json!(compute::min(a)?), json!(compute::max(a)?)))
        }
        DataType::Int64 => {
            let a = col.as_primitive::<Int64Type>();
            Some((json!(compute::min(a)?), json!(compute::max(a)?)))
        }
        DataType::UInt32 => {
            let a = col.as_primitive::<UInt32Type>();
            Some((json!(compute::min(a)?), json!(compute::max(a)?)))
        }
        DataType::UInt64 => {
            // Delta stores these as `long`: only values that fit are stated.
            let a = col.as_primitive::<UInt64Type>();
            let (lo, hi) = (compute::min(a)?, compute::max(a)?);
            (hi <= i64::MAX as u64).then(|| (json!(lo), json!(hi)))
        }
        DataType::Float32 => {
            let a = col.as_primitive::<Float32Type>();
            if a.iter().flatten().any(f32::is_nan) {
                return None;
            }
            Some((json!(compute::min(a)?), json!(compute::max(a)?)))
        }
        DataType::Float64 => {
            let a = col.as_primitive::<Float64Type>();
            if a.iter().flatten().any(f64::is_nan) {
                return None;
            }
            Some((json!(compute::min(a)?), json!(compute::max(a)?)))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            let a = col.as_primitive::<TimestampMillisecondType>();
            Some((
                json!(timestamp(compute::min(a)?)?),
                json!(timestamp(compute::max(a)?)?),
            ))
        }
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            let (lo, hi) = (compute::min_string(a)?, compute::max_string(a)?);
            (lo.len() <= MAX_STRING_STAT && hi.len() <= MAX_STRING_STAT)
                .then(|| (json!(lo), json!(hi)))
        }
        _ => None,
    }
}

/// Delta's JSON form of a timestamp: ISO 8601 in UTC with milliseconds.
fn timestamp(ms: i64) -> Option<String> {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)?;
    Some(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BinaryArray, Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn stats_state_exact_bounds_and_leave_out_what_they_cannot_state() {
        let schema = Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("x", DataType::Float64, true),
            Field::new("nan", DataType::Float64, false),
            Field::new("s", DataType::Utf8, false),
            Field::new("b", DataType::Binary, false),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_764_482_400_123, 1_764_482_400_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(vec![Some(2.5), None])),
                Arc::new(Float64Array::from(vec![1.0, f64::NAN])),
                Arc::new(StringArray::from(vec!["b", "a"])),
                Arc::new(BinaryArray::from(vec![&b"x"[..], &b"y"[..]])),
            ],
        )
        .unwrap();
        let v: Value = serde_json::from_str(&stats_json(&batch)).unwrap();
        assert_eq!(v["numRecords"], 2);
        assert_eq!(v["minValues"]["t"], "2025-11-30T06:00:00.000Z");
        assert_eq!(v["maxValues"]["t"], "2025-11-30T06:00:00.123Z");
        assert_eq!(v["minValues"]["x"], 2.5);
        assert_eq!(v["nullCount"]["x"], 1);
        assert_eq!(v["minValues"]["s"], "a");
        assert_eq!(v["maxValues"]["s"], "b");
        assert!(v["minValues"].get("nan").is_none());
        assert!(v["minValues"].get("b").is_none());
        assert_eq!(v["nullCount"]["b"], 0);
    }
}
