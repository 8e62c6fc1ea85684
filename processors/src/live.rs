//! The live tier of one processor: the rows its partitions have validated, served to the query
//! service before (and for `retention` after) their unit commits. The wire and the seam with the
//! lake are in [`hexpulse_lake::live`].
//!
//! Each partition's rows are a run of **segments**, contiguous in offsets: a segment holds the rows
//! that records `[first, last]` made in each stream table. A partition worker appends a segment on
//! every live tick and before each flush, marks segments committed when its unit commits, and
//! resets the partition when it (re)starts at the chain end. The store keeps within `memory_bytes`:
//! committed segments go first (oldest first); if uncommitted rows alone would pass the bound, the
//! partition stops growing until its unit commits, and then starts again after it. Freshness
//! suffers then, never correctness: a reader counts only rows contiguous from its snapshot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use hexpulse_lake::live::{Coverage, LiveHeader, SegmentHeader};

use crate::metrics as m;

/// One segment: the rows of records `[first, last]` of a partition, per stream table.
struct Segment {
    seq: u64,
    first: i64,
    last: i64,
    /// In [`STREAM_TABLES`](hexpulse_lake::unit::STREAM_TABLES) order; `None`: no rows in that table.
    tables: [Option<RecordBatch>; 4],
    bytes: usize,
    committed_at: Option<Instant>,
}

struct Part {
    coverage: Coverage,
    /// Appends wait for the next commit (the memory bound was reached).
    blocked: bool,
    segments: VecDeque<Segment>,
}

impl Part {
    fn new(next: i64) -> Part {
        Part {
            coverage: Coverage {
                from: next,
                to: next - 1,
            },
            blocked: false,
            segments: VecDeque::new(),
        }
    }

    fn bytes(&self) -> usize {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Drops the oldest segment, if it is committed; the coverage then starts after it.
    fn drop_oldest_committed(&mut self) -> Option<usize> {
        self.segments.front()?.committed_at?;
        let s = self.segments.pop_front()?;
        self.coverage.from = s.last + 1;
        Some(s.bytes)
    }
}

#[derive(Default)]
struct Inner {
    seq: u64,
    bytes: usize,
    parts: BTreeMap<i32, Part>,
}

/// The live rows of one processor (shared by its partition workers and its HTTP endpoint).
pub struct LiveStore {
    instance: String,
    topic: String,
    retention: Duration,
    memory_bytes: usize,
    schemas: [SchemaRef; 4],
    inner: Mutex<Inner>,
}

impl LiveStore {
    /// A store for `topic`'s partitions; `schemas` are the stream tables' schemas with the partition
    /// columns, in [`STREAM_TABLES`](hexpulse_lake::unit::STREAM_TABLES) order.
    pub fn new(
        topic: &str,
        retention: Duration,
        memory_bytes: usize,
        schemas: [SchemaRef; 4],
    ) -> LiveStore {
        LiveStore {
            instance: format!("{:016x}", rand::random::<u64>()),
            topic: topic.to_string(),
            retention,
            memory_bytes,
            schemas,
            inner: Mutex::default(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The partition starts (again) at `next`, its chain end: whatever it held is dropped.
    pub fn reset(&self, partition: i32, next: i64) {
        let mut inner = self.inner.lock().expect("live lock");
        let old = inner.parts.insert(partition, Part::new(next));
        inner.bytes -= old.map_or(0, |p| p.bytes());
        self.gauge(&inner);
    }

    /// The partition is no longer this processor's.
    pub fn remove(&self, partition: i32) {
        let mut inner = self.inner.lock().expect("live lock");
        let old = inner.parts.remove(&partition);
        inner.bytes -= old.map_or(0, |p| p.bytes());
        self.gauge(&inner);
    }

    /// Appends the rows of records `[first, last]` (`tables` in [`STREAM_TABLES`](hexpulse_lake::unit::STREAM_TABLES) order, each with
    /// the partition columns). A segment that does not continue the coverage starts it again.
    /// Returns whether the rows were taken.
    pub fn append(
        &self,
        partition: i32,
        first: i64,
        last: i64,
        tables: [Option<RecordBatch>; 4],
    ) -> bool {
        let bytes: usize = tables
            .iter()
            .flatten()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        let mut inner = self.inner.lock().expect("live lock");
        self.expire(&mut inner, Instant::now());
        let Some(part) = inner.parts.get(&partition) else {
            return false;
        };
        if part.blocked {
            return false;
        }
        let restart = first != part.coverage.to + 1;
        if restart {
            let freed = inner.parts.get(&partition).map_or(0, Part::bytes);
            inner.bytes -= freed;
            inner.parts.insert(partition, Part::new(first));
        }
        // Room: committed segments go first, this partition's, then the others'.
        while inner.bytes + bytes > self.memory_bytes {
            let Inner {
                parts, bytes: held, ..
            } = &mut *inner;
            let freed = parts
                .get_mut(&partition)
                .and_then(Part::drop_oldest_committed)
                .or_else(|| parts.values_mut().find_map(Part::drop_oldest_committed));
            match freed {
                Some(b) => *held -= b,
                None => break,
            }
        }
        if inner.bytes + bytes > self.memory_bytes {
            inner.parts.get_mut(&partition).expect("present").blocked = true;
            metrics::counter!(m::LIVE_FULL).increment(1);
            return false;
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.bytes += bytes;
        let part = inner.parts.get_mut(&partition).expect("present");
        part.segments.push_back(Segment {
            seq,
            first,
            last,
            tables,
            bytes,
            committed_at: None,
        });
        part.coverage.to = last;
        self.gauge(&inner);
        true
    }

    /// The partition's unit ending at `end` committed: its rows stay served for `retention`. A
    /// partition that stopped growing starts again after `end`.
    pub fn committed(&self, partition: i32, end: i64) {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("live lock");
        let Some(part) = inner.parts.get_mut(&partition) else {
            return;
        };
        let freed = if part.blocked {
            let freed = part.bytes();
            *part = Part::new(end + 1);
            freed
        } else {
            for s in part.segments.iter_mut().filter(|s| s.last <= end) {
                s.committed_at.get_or_insert(now);
            }
            0
        };
        inner.bytes -= freed;
        self.expire(&mut inner, now);
        self.gauge(&inner);
    }

    /// Drops the committed segments older than the retention.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        let Inner { parts, bytes, .. } = inner;
        for part in parts.values_mut() {
            while part
                .segments
                .front()
                .and_then(|s| s.committed_at)
                .is_some_and(|t| now.duration_since(t) >= self.retention)
            {
                *bytes -= part.drop_oldest_committed().expect("a committed front");
            }
        }
    }

    fn gauge(&self, inner: &Inner) {
        metrics::gauge!(m::LIVE_BYTES).set(inner.bytes as f64);
    }

    /// The answer for `table` (an index into [`STREAM_TABLES`](hexpulse_lake::unit::STREAM_TABLES)): the segments numbered above
    /// `since` when `instance` is this store's, else all of them.
    pub fn read(
        &self,
        table: usize,
        instance: Option<&str>,
        since: u64,
    ) -> (SchemaRef, LiveHeader, Vec<RecordBatch>) {
        let since = if instance == Some(self.instance.as_str()) {
            since
        } else {
            0
        };
        let schema = self.schemas[table].clone();
        let mut inner = self.inner.lock().expect("live lock");
        self.expire(&mut inner, Instant::now());
        let mut segments = Vec::new();
        let mut batches = Vec::new();
        for (p, part) in &inner.parts {
            for s in part.segments.iter().filter(|s| s.seq > since) {
                segments.push(SegmentHeader {
                    seq: s.seq,
                    partition: *p,
                    first: s.first,
                    last: s.last,
                });
                batches.push(
                    s.tables[table]
                        .clone()
                        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())),
                );
            }
        }
        let header = LiveHeader {
            instance: self.instance.clone(),
            seq: inner.seq,
            topic: self.topic.clone(),
            partitions: inner
                .parts
                .iter()
                .map(|(p, part)| (*p, part.coverage))
                .collect(),
            segments,
        };
        (schema, header, batches)
    }
}

/// `GET /v1/live/{table}?instance=I&since=S`: the live rows of a stream table
/// ([`hexpulse_lake::live`] describes the answer).
pub(crate) async fn live_rows(
    axum::extract::State(live): axum::extract::State<Arc<LiveStore>>,
    axum::extract::Path(table): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use hexpulse_common::http::error_answer;
    let Some(index) = hexpulse_lake::unit::stream_table_index(&table) else {
        return error_answer(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no stream table {table:?}"),
            None,
        );
    };
    let since = match q.get("since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            return error_answer(
                StatusCode::BAD_REQUEST,
                "bad_param",
                "since: a segment number",
                None,
            );
        }
    };
    let (schema, header, batches) = live.read(index, q.get("instance").map(String::as_str), since);
    match hexpulse_lake::live::encode(&schema, &header, &batches) {
        Ok(body) => (
            [(header::CONTENT_TYPE, hexpulse_lake::live::MEDIA_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => error_answer(StatusCode::INTERNAL_SERVER_ERROR, "internal", e, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "src_offset",
            DataType::Int64,
            false,
        )]))
    }

    fn rows(offsets: std::ops::RangeInclusive<i64>) -> [Option<RecordBatch>; 4] {
        let b = RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from_iter_values(offsets))],
        )
        .unwrap();
        [Some(b), None, None, None]
    }

    fn store(memory: usize, retention: Duration) -> LiveStore {
        LiveStore::new(
            "raw",
            retention,
            memory,
            [schema(), schema(), schema(), schema()],
        )
    }

    fn offsets(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                use arrow::array::AsArray;
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn segments_are_served_once_per_reader_and_coverage_stays_contiguous() {
        let s = store(1 << 20, Duration::from_secs(60));
        s.reset(3, 10);
        assert!(s.append(3, 10, 12, rows(10..=12)));
        assert!(s.append(3, 13, 13, rows(13..=13)));
        let (_, h, b) = s.read(0, None, 0);
        assert_eq!(h.partitions[&3], Coverage { from: 10, to: 13 });
        assert_eq!(offsets(&b), vec![10, 11, 12, 13]);
        // Another table: empty batches, one per segment.
        let (_, h1, b1) = s.read(1, None, 0);
        assert_eq!(
            (
                h1.segments.len(),
                b1.iter().map(RecordBatch::num_rows).sum::<usize>()
            ),
            (2, 0)
        );
        // Since the newest: nothing new; another instance's number: everything.
        assert!(s.read(0, Some(s.instance()), h.seq).2.is_empty());
        assert_eq!(s.read(0, Some("other"), h.seq).2.len(), 2);
        // A segment that skips records starts the coverage again.
        assert!(s.append(3, 20, 21, rows(20..=21)));
        let (_, h, b) = s.read(0, None, 0);
        assert_eq!(h.partitions[&3], Coverage { from: 20, to: 21 });
        assert_eq!(offsets(&b), vec![20, 21]);
        s.remove(3);
        assert!(!s.append(3, 22, 22, rows(22..=22)), "not this processor's");
        assert!(s.read(0, None, 0).1.partitions.is_empty());
    }

    #[test]
    fn committed_rows_expire_and_make_room_first() {
        let one = rows(0..=9)[0].as_ref().unwrap().get_array_memory_size();
        let s = store(one * 2, Duration::from_secs(60));
        s.reset(0, 0);
        assert!(s.append(0, 0, 9, rows(0..=9)));
        assert!(s.append(0, 10, 19, rows(10..=19)));
        // Full, and nothing committed: the partition stops growing until its unit commits.
        assert!(!s.append(0, 20, 29, rows(20..=29)));
        assert!(!s.append(0, 20, 29, rows(20..=29)));
        assert_eq!(
            s.read(0, None, 0).1.partitions[&0],
            Coverage { from: 0, to: 19 }
        );
        // The unit committed (through 29, rows the store never held): it starts after it.
        s.committed(0, 29);
        assert_eq!(
            s.read(0, None, 0).1.partitions[&0],
            Coverage { from: 30, to: 29 }
        );
        assert!(s.append(0, 30, 39, rows(30..=39)));
        assert!(s.append(0, 40, 49, rows(40..=49)));
        // Committed segments make room, oldest first.
        s.committed(0, 39);
        assert!(s.append(0, 50, 59, rows(50..=59)));
        let (_, h, b) = s.read(0, None, 0);
        assert_eq!(h.partitions[&0], Coverage { from: 40, to: 59 });
        assert_eq!(offsets(&b), (40..=59).collect::<Vec<_>>());

        let s = store(1 << 20, Duration::ZERO);
        s.reset(0, 0);
        assert!(s.append(0, 0, 9, rows(0..=9)));
        assert!(s.append(0, 10, 19, rows(10..=19)));
        s.committed(0, 9);
        let (_, h, b) = s.read(0, None, 0);
        assert_eq!(h.partitions[&0], Coverage { from: 10, to: 19 });
        assert_eq!(offsets(&b), (10..=19).collect::<Vec<_>>());
    }
}
