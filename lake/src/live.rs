//! The live tier's wire: rows a processor has validated but not yet committed (and, for a few
//! seconds, rows it has committed), served to the query service so that a reading is visible
//! within about a second of its acknowledgement, while units commit to the Delta tables far less
//! often (see ARCHITECTURE.md, "The live tier").
//!
//! A processor answers `GET /v1/live/{table}?instance=I&since=S` with one Arrow IPC stream. Its
//! schema is the table's schema (file columns, then the partition columns `date` and `hour`), and
//! its schema metadata holds a [`LiveHeader`] as JSON under [`HEADER_KEY`]: the processor instance,
//! the newest segment number, what each partition it owns covers, and one [`SegmentHeader`] per
//! record batch that follows, in order. A segment holds the rows that the records `[first, last]`
//! of one partition made in this table (possibly none). When `I` names the instance that answers,
//! only segments numbered above `S` are sent; otherwise all of them.
//!
//! The seam with the lake: each stream table's Delta log records, per partition, the last offset
//! committed to that table (the unit's `txn`, [`crate::unit::app_id`]). A reader whose snapshot of
//! a table says `e` for partition `p` takes from the live tier exactly the rows of `p` whose
//! `src_offset` is above `e`, from a source whose coverage of `p` is contiguous from `e + 1`; so no
//! row is counted twice, and none is missed once the coverage reaches it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

/// The schema metadata key of the [`LiveHeader`].
pub const HEADER_KEY: &str = "hexpulse.live";

/// The media type of a live answer (an Arrow IPC stream).
pub const MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

/// What a partition's live rows cover: the records `[from, to]` (`to = from - 1`: none yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// The first record covered.
    pub from: i64,
    /// The last record covered.
    pub to: i64,
}

/// One record batch of a live answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Numbered per processor instance, rising.
    pub seq: u64,
    /// The Kafka partition.
    pub partition: i32,
    /// The records whose rows the batch holds: the first,
    pub first: i64,
    /// and the last.
    pub last: i64,
}

/// The header of a live answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveHeader {
    /// Changes when the processor restarts: segment numbers start again.
    pub instance: String,
    /// The newest segment number of the instance (ask for `since` it next time).
    pub seq: u64,
    /// The raw topic.
    pub topic: String,
    /// The partitions this processor owns now, with their coverage.
    pub partitions: BTreeMap<i32, Coverage>,
    /// One per batch of the stream, in order.
    pub segments: Vec<SegmentHeader>,
}

/// The partition columns of a stream table, as Delta readers show them.
pub fn partition_fields() -> Vec<Arc<Field>> {
    vec![
        Arc::new(Field::new("date", DataType::Date32, true)),
        Arc::new(Field::new("hour", DataType::Int32, true)),
    ]
}

/// `file_schema` followed by the partition columns.
pub fn with_partition_fields(file_schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = file_schema.fields().iter().cloned().collect();
    fields.extend(partition_fields());
    Arc::new(Schema::new_with_metadata(
        fields,
        file_schema.metadata().clone(),
    ))
}

/// The column whose hour partitions a table: the reading's time for the valid tables, the receive
/// time for `rejected` (as units lay out their files).
pub fn partition_time_column(table: &str) -> &'static str {
    if table == hexpulse_schemas::tables::REJECTED_TABLE {
        "receive_time"
    } else {
        "event_time"
    }
}

/// `batch` (a table's file columns) with the partition columns `date` and `hour` appended, derived
/// from the table's partition time column.
pub fn add_partition_columns(table: &str, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    const DAY_MS: i64 = 86_400_000;
    let name = partition_time_column(table);
    let time = batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("{table} has no column {name}")))?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{table}.{name} is not a timestamp")))?;
    let date: Date32Array = time
        .iter()
        .map(|t| t.map(|t| t.div_euclid(DAY_MS) as i32))
        .collect();
    let hour: Int32Array = time
        .iter()
        .map(|t| t.map(|t| (t.rem_euclid(DAY_MS) / crate::HOUR_MS) as i32))
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(date));
    columns.push(Arc::new(hour));
    RecordBatch::try_new(with_partition_fields(&batch.schema()), columns)
}

/// Encodes a live answer: `batches` (one per header segment, each of `schema`).
pub fn encode(
    schema: &SchemaRef,
    header: &LiveHeader,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, ArrowError> {
    debug_assert_eq!(header.segments.len(), batches.len());
    let mut metadata = schema.metadata().clone();
    metadata.insert(
        HEADER_KEY.to_string(),
        serde_json::to_string(header).expect("header serialises"),
    );
    let schema = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema)?;
    for b in batches {
        w.write(&RecordBatch::try_new(schema.clone(), b.columns().to_vec())?)?;
    }
    w.finish()?;
    drop(w);
    Ok(out)
}

/// Decodes a live answer into its header, its schema (without the header) and its batches.
pub fn decode(body: &[u8]) -> Result<(LiveHeader, SchemaRef, Vec<RecordBatch>), ArrowError> {
    let reader = StreamReader::try_new(std::io::Cursor::new(body), None)?;
    let schema = reader.schema();
    let header: LiveHeader = schema
        .metadata()
        .get(HEADER_KEY)
        .ok_or_else(|| ArrowError::ParseError(format!("no {HEADER_KEY} metadata")))
        .and_then(|h| {
            serde_json::from_str(h).map_err(|e| ArrowError::ParseError(format!("header: {e}")))
        })?;
    let mut metadata = schema.metadata().clone();
    metadata.remove(HEADER_KEY);
    let plain = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
    let mut batches = Vec::new();
    for b in reader {
        batches.push(RecordBatch::try_new(plain.clone(), b?.columns().to_vec())?);
    }
    if batches.len() != header.segments.len() {
        return Err(ArrowError::ParseError(format!(
            "{} batches for {} segments",
            batches.len(),
            header.segments.len()
        )));
    }
    Ok((header, plain, batches))
}

/// The rows of `batch` whose `src_offset` is above `after`.
pub fn rows_after(batch: &RecordBatch, after: i64) -> Result<RecordBatch, ArrowError> {
    let offsets = batch
        .column_by_name("src_offset")
        .ok_or_else(|| ArrowError::SchemaError("no column src_offset".into()))?
        .as_primitive_opt::<arrow::datatypes::Int64Type>()
        .ok_or_else(|| ArrowError::SchemaError("src_offset is not Int64".into()))?;
    if offsets.null_count() == 0 && offsets.values().iter().all(|o| *o > after) {
        return Ok(batch.clone());
    }
    let keep: arrow::array::BooleanArray = offsets.iter().map(|o| Some(o? > after)).collect();
    arrow::compute::filter_record_batch(batch, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMillisecondArray};

    fn batch(offsets: &[i64], times: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "event_time",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("src_offset", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(times.to_vec()).with_timezone("UTC")),
                Arc::new(Int64Array::from(offsets.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn partition_columns_follow_the_lake_layout() {
        // 2026-11-30T06:59:59.999Z and 2026-11-30T07:00:00Z, and a time before 1970.
        let t = 1_764_485_999_999;
        let b = add_partition_columns("heartbeat", &batch(&[1, 2, 3], &[t, t + 1, -1])).unwrap();
        let date = b
            .column_by_name("date")
            .unwrap()
            .as_primitive::<arrow::datatypes::Date32Type>();
        let hour = b
            .column_by_name("hour")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        for (i, ms) in [t, t + 1, -1].into_iter().enumerate() {
            let (d, h) = crate::date_hour(ms);
            let days = chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                .unwrap()
                .signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
                .num_days();
            assert_eq!(
                (date.value(i) as i64, hour.value(i) as u32),
                (days, h),
                "row {i}"
            );
        }
        // `rejected` partitions by the receive time, which this batch lacks.
        assert!(add_partition_columns("rejected", &batch(&[1], &[t])).is_err());
    }

    #[test]
    fn an_answer_round_trips_and_rows_after_cut_at_the_offset() {
        let b1 = batch(&[5, 6, 6, 7], &[1, 2, 3, 4]);
        let b2 = batch(&[], &[]);
        let header = LiveHeader {
            instance: "i".into(),
            seq: 9,
            topic: "raw".into(),
            partitions: BTreeMap::from([(0, Coverage { from: 5, to: 8 })]),
            segments: vec![
                SegmentHeader {
                    seq: 8,
                    partition: 0,
                    first: 5,
                    last: 7,
                },
                SegmentHeader {
                    seq: 9,
                    partition: 0,
                    first: 8,
                    last: 8,
                },
            ],
        };
        let body = encode(&b1.schema(), &header, &[b1.clone(), b2]).unwrap();
        let (h, schema, batches) = decode(&body).unwrap();
        assert_eq!(h, header);
        assert!(!schema.metadata().contains_key(HEADER_KEY));
        assert_eq!(batches[0], b1);
        assert_eq!(batches[1].num_rows(), 0);
        let cut = rows_after(&batches[0], 5).unwrap();
        assert_eq!(cut.num_rows(), 3);
        assert_eq!(rows_after(&batches[0], 4).unwrap().num_rows(), 4);
        assert_eq!(rows_after(&batches[0], 7).unwrap().num_rows(), 0);
        // A body that is not an answer is an error, never a panic.
        assert!(decode(b"not arrow").is_err());
    }
}
