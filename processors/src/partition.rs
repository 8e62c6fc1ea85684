//! The work of one Kafka partition: buffer validated rows into a unit, and flush the unit exactly once.
//!
//! A unit covers the contiguous offsets `[start, end]`; `start` is always the end of the previous unit
//! plus one (the "chain"). Flushing a unit encodes its files and commits them to the Delta tables
//! through [`hexpulse_lake::unit::commit_unit`], whose gate commit succeeds only where the chain in
//! the log ends at `start - 1`; then (the caller) commits the next record's offset to Kafka. A lost
//! gate means another writer owns these offsets: this worker is fenced and must re-initialise.

use hexpulse_common::time::now_ms;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, TimestampMillisecondType, UInt64Type};
use bytes::Bytes;
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::KindName;

use hexpulse_lake::unit::{self, UnitOutcome};
use hexpulse_lake::{HOUR_MS, Lake, LakeError, column, date_hour, decode_parquet};

use crate::h3bin::Binner;
use crate::live::LiveStore;
use crate::metrics as m;
use crate::rows::{Ctx, RejectedRow, Source, ValidRow, rejected_batch, valid_batch};
pub use crate::sealed::{FlushError, SealedUnit, Written};
use crate::validate::{RawRecord, Validator, Verdict};

/// Records re-verified together (when re-verification is on).
const REVERIFY_BATCH: usize = 64;

/// Roll limits of a unit.
#[derive(Debug, Clone, Copy)]
pub struct Roll {
    pub rows: usize,
    pub bytes: usize,
    pub age: std::time::Duration,
}

impl Roll {
    /// Twice the row and byte bounds: how far a partition buffers while its previous unit is
    /// still being written, before the consumer waits for that write.
    pub fn twice(self) -> Roll {
        Roll {
            rows: self.rows.saturating_mul(2),
            bytes: self.bytes.saturating_mul(2),
            age: self.age,
        }
    }
}

/// Result of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing buffered.
    Empty,
    /// The unit is durable and published; `next_offset` is `end + 1`. The Kafka offset is committed
    /// when the partition's next record arrives, at that record's offset (`next_offset` may lie in
    /// an offset gap, where tansu's fetches stall).
    Committed { next_offset: i64, rows: u64 },
    /// Another writer committed these offsets: drop this worker, re-initialise, and seek to `next_offset`.
    Fenced { next_offset: i64 },
}

/// A record waiting for its batched signature re-verification.
struct Pending {
    offset: i64,
    signed: Bytes,
    receive_ms: i64,
    problem: Option<&'static str>,
}

#[derive(Default)]
struct Unit {
    /// Records waiting for one batched signature re-verification.
    pending: Vec<Pending>,
    first: Option<i64>,
    last: Option<i64>,
    /// The valid readings not built into Arrow yet (the unit's last ones; all of them without a
    /// live tier).
    valid: Vec<ValidRow>,
    /// The unit's valid readings, built or not.
    valid_count: usize,
    rejected: Vec<RejectedRow>,
    bytes: usize,
    opened: Option<Instant>,
    /// The last record validated (not waiting for re-verification).
    handled_last: Option<i64>,
    /// Rows of `valid` and `rejected` already live (or that failed to build for the live tier).
    live_valid: usize,
    live_rejected: usize,
    /// The unit's first valid readings, built into Arrow when they went live, per stream table in
    /// [`KindName::ALL`]'s order ([`SealedUnit::built`]): `valid` holds the ones after them.
    built: [Vec<arrow::array::RecordBatch>; 3],
}

/// State of one partition in this process.
pub struct PartitionWorker {
    pub topic: String,
    pub partition: i32,
    lake: Lake,
    validator: Validator,
    binner: Binner,
    resolutions: Vec<u8>,
    writer: String,
    /// First offset of the next unit (end of the chain).
    next_offset: i64,
    unit: Unit,
    /// Highest receive time seen (the partition's watermark), ms.
    pub watermark_ms: i64,
    /// A unit was published; commit the offset of the next record that arrives.
    pub commit_pending: bool,
    /// Records pushed so far (the run loop notices an idle partition by this not changing).
    pub pushed: u64,
    /// The stream tables exist (created on the first flush).
    tables_ready: bool,
    /// The live tier, and the first record whose rows are not live yet.
    live: Option<Arc<LiveStore>>,
    live_next: i64,
    /// The last offset of the sealed unit being written, if one is.
    in_flight: Option<i64>,
}

impl PartitionWorker {
    /// Finds the end of the partition's chain in the lake (completing an interrupted unit), and
    /// rebuilds the validation state from the committed rows of this partition around `receive_ms`.
    #[allow(clippy::too_many_arguments)]
    pub async fn init(
        topic: &str,
        partition: i32,
        receive_ms: i64,
        lake: Lake,
        validator: Validator,
        binner: Binner,
        resolutions: Vec<u8>,
    ) -> Result<PartitionWorker, LakeError> {
        let next = unit::resume(&lake, topic, partition).await?;
        let writer = format!("{:016x}", rand::random::<u64>());
        let mut w = PartitionWorker {
            topic: topic.to_string(),
            partition,
            lake,
            validator,
            binner,
            resolutions,
            writer,
            next_offset: next,
            unit: Unit::default(),
            watermark_ms: receive_ms,
            commit_pending: false,
            pushed: 0,
            tables_ready: false,
            live: None,
            live_next: next,
            in_flight: None,
        };
        let remembered = w.rebuild_state(receive_ms).await?;
        tracing::info!(
            partition,
            resume_offset = next,
            remembered,
            "partition initialised"
        );
        Ok(w)
    }

    /// Feeds the validator the published valid rows of this partition whose event hour may still
    /// matter: from the lateness horizon before `receive_ms` up to now.
    async fn rebuild_state(&mut self, receive_ms: i64) -> Result<usize, LakeError> {
        let rules = self.validator.rules().time.clone();
        let from = receive_ms
            - (rules.allowed_lateness + rules.max_future_skew).as_millis() as i64
            - HOUR_MS;
        let now = now_ms().max(receive_ms) + rules.max_future_skew.as_millis() as i64 + HOUR_MS;
        let (from_date, from_hour) = date_hour(from - from.rem_euclid(HOUR_MS));
        let (to_date, to_hour) = date_hour(now);
        let mut remembered = 0;
        for table in KindName::ALL {
            let (_, files) = self.lake.table(table.as_str()).files().await?;
            for f in files {
                let (Some(date), Some(hour)) = (f.date.as_deref(), f.hour) else {
                    continue;
                };
                if (date, hour) < (from_date.as_str(), from_hour)
                    || (date, hour) > (to_date.as_str(), to_hour)
                {
                    continue;
                }
                let path = f.path;
                // Our own unit files hold only this partition; merged files hold every one.
                if !unit::is_unit_file_of(&path, &self.topic, self.partition)
                    && !hexpulse_lake::compact::is_compacted(&path)
                {
                    continue;
                }
                let Some(bytes) = self.lake.get(&path).await? else {
                    continue;
                };
                for b in decode_parquet(
                    bytes,
                    Some(&[
                        "device_key",
                        "seq",
                        "event_time",
                        "lat",
                        "lng",
                        "src_topic",
                        "src_partition",
                    ]),
                )? {
                    let key = column(&b, "device_key").as_string::<i32>();
                    let seq = column(&b, "seq").as_primitive::<UInt64Type>();
                    let t = column(&b, "event_time").as_primitive::<TimestampMillisecondType>();
                    let lat = column(&b, "lat").as_primitive::<Float64Type>();
                    let lng = column(&b, "lng").as_primitive::<Float64Type>();
                    let topic = column(&b, "src_topic").as_string::<i32>();
                    let part = column(&b, "src_partition").as_primitive::<Int32Type>();
                    for i in 0..b.num_rows() {
                        if part.value(i) != self.partition || topic.value(i) != self.topic {
                            continue;
                        }
                        let mut k = [0u8; 32];
                        if hex::decode_to_slice(key.value(i), &mut k).is_ok() && !seq.is_null(i) {
                            self.validator.remember(
                                k,
                                seq.value(i),
                                t.value(i),
                                (lat.value(i), lng.value(i)),
                                table,
                            );
                            remembered += 1;
                        }
                    }
                }
            }
        }
        Ok(remembered)
    }

    /// Serves this partition's rows in `live` from the chain end on.
    pub fn with_live(mut self, live: Arc<LiveStore>) -> PartitionWorker {
        live.reset(self.partition, self.next_offset);
        self.live_next = self.next_offset;
        self.live = Some(live);
        self
    }

    /// Makes the rows validated since the last call live (records waiting for re-verification are
    /// verified first).
    pub fn publish_live(&mut self, rules_version: &str) {
        let Some(live) = self.live.clone() else {
            return;
        };
        self.drain_pending();
        let Some(last) = self.unit.handled_last.filter(|l| *l >= self.live_next) else {
            return;
        };
        match self.live_batches(rules_version) {
            Ok((tables, plain)) => {
                // Kept for the unit's files when they follow the built rows directly (no earlier
                // build failed in this unit); the readings' vector is then reused.
                if self.unit.live_valid == 0 {
                    for (kept, batch) in self.unit.built.iter_mut().zip(plain) {
                        kept.extend(batch);
                    }
                    self.unit.valid.clear();
                }
                // `append` refuses at the memory bound: the store starts again after the unit's commit.
                if live.append(self.partition, self.live_next, last, tables) {
                    let lag_ms = (now_ms() - self.watermark_ms).max(0);
                    metrics::histogram!(m::LIVE_LAG_SECONDS).record(lag_ms as f64 / 1000.0);
                }
            }
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "live rows not built");
                live.reset(self.partition, last + 1);
            }
        }
        self.live_next = last + 1;
        self.unit.live_valid = self.unit.valid.len();
        self.unit.live_rejected = self.unit.rejected.len();
    }

    /// The rows validated since the last [`PartitionWorker::publish_live`], per stream table, with
    /// the partition columns (the live tables, the rejected last), and the stream tables' batches
    /// without them (in [`KindName::ALL`]'s order).
    #[allow(clippy::type_complexity)]
    fn live_batches(
        &self,
        rules_version: &str,
    ) -> Result<
        (
            [Option<arrow::array::RecordBatch>; 4],
            [Option<arrow::array::RecordBatch>; 3],
        ),
        arrow::error::ArrowError,
    > {
        let ctx = Ctx {
            topic: &self.topic,
            rules_version,
            resolutions: &self.resolutions,
        };
        let mut tables: [Option<arrow::array::RecordBatch>; 4] = Default::default();
        let mut plain: [Option<arrow::array::RecordBatch>; 3] = Default::default();
        let valid = &self.unit.valid[self.unit.live_valid..];
        for (k, kind) in KindName::ALL.into_iter().enumerate() {
            let rows: Vec<&ValidRow> = valid.iter().filter(|r| r.valid.kind == kind).collect();
            if rows.is_empty() {
                continue;
            }
            let i = unit::stream_table_index(kind.as_str()).expect("stream table");
            let batch = valid_batch(kind, &rows, &ctx)?;
            tables[i] = Some(hexpulse_lake::live::add_partition_columns(
                kind.as_str(),
                &batch,
            )?);
            plain[k] = Some(batch);
        }
        let rejected: Vec<&RejectedRow> = self.unit.rejected[self.unit.live_rejected..]
            .iter()
            .collect();
        if !rejected.is_empty() {
            let batch = rejected_batch(&rejected, &ctx)?;
            tables[3] = Some(hexpulse_lake::live::add_partition_columns(
                tables::REJECTED_TABLE,
                &batch,
            )?);
        }
        Ok((tables, plain))
    }

    /// Writes this partition's watermark where sealers read it (`epoch::seal::watermark_path`),
    /// with the chain's end: `watermark_ms` must hold for everything committed (the one a
    /// [`Written`] unit carries, or the worker's own when nothing is buffered or in flight).
    pub async fn publish_watermark(&self, watermark_ms: i64) -> Result<(), LakeError> {
        let wm = hexpulse_lake::epoch::seal::Watermark {
            partition: self.partition,
            watermark_ms,
            next_offset: self.next_offset,
        };
        let body = serde_json::to_vec(&wm).expect("watermark serialises");
        self.lake
            .put(
                &hexpulse_lake::epoch::seal::watermark_path(&self.topic, self.partition),
                body.into(),
            )
            .await
    }

    /// This worker instance's id (in its files' names).
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// First offset of the next unit.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Whether a record at `offset` was already handled by a published unit.
    pub fn already_done(&self, offset: i64) -> bool {
        offset < self.next_offset
            || self.in_flight.is_some_and(|l| offset <= l)
            || self.unit.last.is_some_and(|l| offset <= l)
    }

    /// Validates a record into the current unit: `value` is the record's value (enveloped by
    /// ingest, or bare), `record_ms` its Kafka timestamp. With re-verification on, records wait
    /// in a small batch and are verified together (one Ed25519 batch check instead of one check
    /// each).
    pub fn push(&mut self, offset: i64, value: &[u8], record_ms: i64) {
        let (receive_ms, signed, problem) = self.validator.open_envelope(value, record_ms);
        self.watermark_ms = self.watermark_ms.max(receive_ms);
        self.pushed += 1;
        self.unit.opened.get_or_insert_with(Instant::now);
        self.unit.first.get_or_insert(offset);
        self.unit.last = Some(offset);
        self.unit.bytes += signed.len();
        if self.validator.reverifies() {
            self.unit.pending.push(Pending {
                offset,
                signed: Bytes::copy_from_slice(signed),
                receive_ms,
                problem,
            });
            if self.unit.pending.len() >= REVERIFY_BATCH {
                self.drain_pending();
            }
        } else {
            self.handle(offset, signed, receive_ms, problem, None);
        }
    }

    /// Verifies the waiting records as one batch, then validates them in offset order.
    fn drain_pending(&mut self) {
        let pending = std::mem::take(&mut self.unit.pending);
        if pending.is_empty() {
            return;
        }
        let values: Vec<&[u8]> = pending.iter().map(|r| r.signed.as_ref()).collect();
        let checked = self.validator.verify_batch(&values);
        for (r, ok) in pending.iter().zip(checked) {
            self.handle(r.offset, &r.signed, r.receive_ms, r.problem, ok);
        }
    }

    fn handle(
        &mut self,
        offset: i64,
        value: &[u8],
        receive_ms: i64,
        envelope_problem: Option<&'static str>,
        signature_ok: Option<bool>,
    ) {
        let src = Source {
            partition: self.partition,
            offset,
            receive_ms,
        };
        self.unit.handled_last = Some(offset);
        let verdict = self.validator.validate_checked(
            RawRecord {
                partition: self.partition,
                offset,
                value,
                receive_ms,
                envelope_problem,
            },
            signature_ok,
        );
        match verdict {
            Verdict::Valid(valid) => {
                let loc = valid.reading.location.unwrap_or_default();
                match self
                    .validator
                    .cells_of(&self.binner, &valid.key, loc.lat, loc.lng)
                {
                    Some(cells) => {
                        self.unit.valid.push(ValidRow { src, valid, cells });
                        self.unit.valid_count += 1;
                    }
                    None => self.reject(
                        src,
                        value,
                        Some(valid.key),
                        Some(&valid.reading),
                        Some(valid.kind),
                        "location_invalid",
                        "no H3 cell for this point".into(),
                    ),
                }
            }
            Verdict::Rejected {
                rejection,
                key,
                reading,
                kind,
            } => self.reject(
                src,
                value,
                key,
                reading.as_ref(),
                kind,
                rejection.reason.as_str(),
                rejection.message,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reject(
        &mut self,
        src: Source,
        value: &[u8],
        key: Option<[u8; 32]>,
        reading: Option<&hexpulse_schemas::wire::Reading>,
        kind: Option<KindName>,
        reason: &'static str,
        message: String,
    ) {
        self.unit.rejected.push(RejectedRow {
            src,
            raw: Bytes::copy_from_slice(value),
            event_ms: reading.map(|r| r.device_time_ms),
            key,
            seq: reading.map(|r| r.seq),
            kind,
            reason,
            message,
        });
    }

    pub fn buffered(&self) -> usize {
        self.unit.valid_count + self.unit.rejected.len() + self.unit.pending.len()
    }

    pub fn should_flush(&self, roll: Roll) -> bool {
        self.is_full(roll)
            || (self.buffered() > 0 && self.unit.opened.is_some_and(|t| t.elapsed() >= roll.age))
    }

    /// The unit reached its row or byte bound (no clock read: checked after every record).
    pub fn is_full(&self, roll: Roll) -> bool {
        self.buffered() > 0 && (self.buffered() >= roll.rows || self.unit.bytes >= roll.bytes)
    }

    /// Whether a sealed unit of this partition is being written ([`PartitionWorker::seal`]).
    pub fn flushing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The first record of the unit being buffered, if any.
    pub fn buffered_from(&self) -> Option<i64> {
        self.unit.first
    }

    /// Takes the buffered unit out for writing ([`SealedUnit::write`]), after making its last rows
    /// live (the live rows stay contiguous). The worker goes on buffering the next unit meanwhile;
    /// a partition has at most one unit in flight, because the next unit's gate commit needs this
    /// one's. `None`: nothing buffered, or a unit is in flight already.
    pub fn seal(&mut self, rules_version: &str) -> Option<SealedUnit> {
        if self.flushing() {
            return None;
        }
        self.drain_pending();
        self.publish_live(rules_version);
        let end = self.unit.last?;
        let mut unit = std::mem::take(&mut self.unit);
        if unit.valid.is_empty() {
            // All built: the next unit reuses the allocation.
            std::mem::swap(&mut self.unit.valid, &mut unit.valid);
        }
        self.in_flight = Some(end);
        Some(SealedUnit {
            lake: self.lake.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            writer: self.writer.clone(),
            resolutions: self.resolutions.clone(),
            rules_version: rules_version.to_string(),
            ensure_tables: !self.tables_ready,
            start: self.next_offset,
            end,
            built: unit.built,
            valid: unit.valid,
            valid_count: unit.valid_count,
            rejected: unit.rejected,
            watermark_ms: self.watermark_ms,
            sealed_at: Instant::now(),
        })
    }

    /// Takes the outcome of writing the sealed unit in.
    pub fn written(&mut self, w: &Written) -> Flushed {
        self.in_flight = None;
        match w.outcome {
            UnitOutcome::Committed => {
                self.tables_ready = true;
                metrics::counter!(m::ROWS, "outcome" => "valid", "reason" => "").increment(w.valid);
                for (reason, n) in &w.rejected {
                    metrics::counter!(m::ROWS, "outcome" => "rejected", "reason" => *reason)
                        .increment(*n);
                }
                self.next_offset = w.end + 1;
                if let Some(live) = &self.live {
                    live.committed(self.partition, w.end);
                }
                self.validator.prune(self.watermark_ms);
                metrics::histogram!(m::UNIT_SECONDS).record(w.sealed_at.elapsed().as_secs_f64());
                Flushed::Committed {
                    next_offset: w.end + 1,
                    rows: w.rows(),
                }
            }
            UnitOutcome::Fenced { next_offset } => {
                metrics::counter!(m::FENCED).increment(1);
                Flushed::Fenced { next_offset }
            }
        }
    }

    /// Seals, writes and commits the buffered unit, in one step. See the module docs. After an
    /// error the unit is not in the worker any more: drop the worker (its records are read again).
    pub async fn flush(&mut self, rules_version: &str) -> Result<Flushed, FlushError> {
        let Some(unit) = self.seal(rules_version) else {
            return Ok(Flushed::Empty);
        };
        let written = unit.write().await?;
        Ok(self.written(&written))
    }
}
