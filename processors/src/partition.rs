//! The work of one Kafka partition: buffer validated rows into a unit, and flush the unit exactly once.
//!
//! A unit covers the contiguous offsets `[start, end]`; `start` is always the end of the previous unit
//! plus one (the "chain"). Flushing a unit: encode its files to staging, create the claim for `start`
//! (create-if-absent), publish the staged files, then (the caller) commit `end + 1` to Kafka. A lost
//! claim means another writer owns these offsets: this worker is fenced and must re-initialise.

use hexpulse_common::time::now_ms;
use std::collections::BTreeMap;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, TimestampMillisecondType, UInt64Type};
use bytes::Bytes;
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::KindName;

use crate::h3bin::Binner;
use crate::lake::{Claim, ClaimedFile, Lake, LakeError, column, decode_parquet, encode_parquet};
use crate::metrics as m;
use crate::rows::{Ctx, RejectedRow, Source, ValidRow, rejected_batch, valid_batch};
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

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("lake: {0}")]
    Lake(#[from] LakeError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing buffered.
    Empty,
    /// The unit is durable and published; commit this offset (`end + 1`) to Kafka.
    Committed { next_offset: i64, rows: usize },
    /// Another writer holds the claim: drop this worker, re-initialise, and seek to `next_offset`.
    Fenced { next_offset: i64 },
}

#[derive(Default)]
struct Unit {
    /// Records waiting for one batched signature re-verification: (offset, value, receive ms).
    pending: Vec<(i64, Bytes, i64)>,
    last: Option<i64>,
    valid: Vec<ValidRow>,
    rejected: Vec<RejectedRow>,
    bytes: usize,
    opened: Option<Instant>,
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
}

/// The end of a partition's claim chain (the first offset no claim covers), publishing on the way
/// every claim that ends at or after `from_offset` (a crash may have left one claimed but unpublished).
///
/// The chain is found by listing the partition's claims, not by walking from `from_offset`: the
/// committed Kafka offset is the first record of a unit, which need not be a unit's start when the log
/// has offset gaps.
pub async fn chain_end(
    lake: &Lake,
    topic: &str,
    partition: i32,
    from_offset: i64,
) -> Result<i64, LakeError> {
    let prefix = format!("_claims/{topic}/p{partition:04}/");
    let mut starts: Vec<i64> = lake
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|p| p.rsplit('/').next()?.strip_suffix(".json")?.parse().ok())
        .collect();
    starts.sort_unstable();
    // Claims starting at or after the last start not beyond `from_offset` may end at or after it.
    let first = starts
        .partition_point(|s| *s <= from_offset)
        .saturating_sub(1);
    let mut next = 0;
    for start in &starts[first.min(starts.len())..] {
        if let Some(claim) = lake.get_claim(topic, partition, *start).await? {
            if claim.end >= from_offset {
                lake.publish(&claim).await?;
            }
            next = next.max(claim.end + 1);
        }
    }
    Ok(next)
}

/// Hours (as (date, hour)) of a time, UTC.
pub fn date_hour(ms: i64) -> (String, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = (secs.rem_euclid(86_400) / 3600) as u32;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    (format!("{y:04}-{mo:02}-{d:02}"), hour)
}

impl PartitionWorker {
    /// Walks the claim chain from `from_offset`, publishing any claimed files not yet published, and
    /// rebuilds the validation state from the published rows of this partition around `receive_ms`.
    #[allow(clippy::too_many_arguments)]
    pub async fn init(
        topic: &str,
        partition: i32,
        from_offset: i64,
        receive_ms: i64,
        lake: Lake,
        validator: Validator,
        binner: Binner,
        resolutions: Vec<u8>,
    ) -> Result<PartitionWorker, LakeError> {
        let next = chain_end(&lake, topic, partition, from_offset).await?;
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
            - 3_600_000;
        let now = now_ms().max(receive_ms) + rules.max_future_skew.as_millis() as i64 + 3_600_000;
        let mine = format!("{}-p{:04}-", self.topic, self.partition);
        let mut remembered = 0;
        for table in KindName::ALL {
            let mut hour_ms = from - from.rem_euclid(3_600_000);
            while hour_ms <= now {
                let (date, hour) = date_hour(hour_ms);
                let (files, _) =
                    crate::compact::hour_view(&self.lake, table.as_str(), &date, hour).await?;
                for path in files {
                    // Our own unit files hold only this partition; merged files hold every one.
                    let own = path
                        .rsplit('/')
                        .next()
                        .is_some_and(|f| f.starts_with(&mine));
                    if !own && !crate::compact::is_compacted(&path) {
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
                            if hex::decode_to_slice(key.value(i), &mut k).is_ok() && !seq.is_null(i)
                            {
                                self.validator.remember(
                                    k,
                                    seq.value(i),
                                    t.value(i),
                                    lat.value(i),
                                    lng.value(i),
                                );
                                remembered += 1;
                            }
                        }
                    }
                }
                hour_ms += 3_600_000;
            }
        }
        Ok(remembered)
    }

    /// Writes this partition's watermark where sealers read it (`epoch::seal::watermark_path`).
    pub async fn publish_watermark(&self) -> Result<(), LakeError> {
        let wm = crate::epoch::seal::Watermark {
            partition: self.partition,
            watermark_ms: self.watermark_ms,
            next_offset: self.next_offset,
        };
        let body = serde_json::to_vec(&wm).expect("watermark serialises");
        self.lake
            .put(
                &crate::epoch::seal::watermark_path(&self.topic, self.partition),
                body.into(),
            )
            .await
    }

    /// First offset of the next unit.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Whether a record at `offset` was already handled by a published unit.
    pub fn already_done(&self, offset: i64) -> bool {
        offset < self.next_offset || self.unit.last.is_some_and(|l| offset <= l)
    }

    /// Validates a record into the current unit. With re-verification on, records wait in a small
    /// batch and are verified together (one Ed25519 batch check instead of one check each).
    pub fn push(&mut self, offset: i64, value: &[u8], receive_ms: i64) {
        self.watermark_ms = self.watermark_ms.max(receive_ms);
        self.pushed += 1;
        self.unit.opened.get_or_insert_with(Instant::now);
        self.unit.last = Some(offset);
        self.unit.bytes += value.len();
        if self.validator.reverifies() {
            self.unit
                .pending
                .push((offset, Bytes::copy_from_slice(value), receive_ms));
            if self.unit.pending.len() >= REVERIFY_BATCH {
                self.drain_pending();
            }
        } else {
            self.handle(offset, value, receive_ms, None);
        }
    }

    /// Verifies the waiting records as one batch, then validates them in offset order.
    fn drain_pending(&mut self) {
        let pending = std::mem::take(&mut self.unit.pending);
        if pending.is_empty() {
            return;
        }
        let values: Vec<&[u8]> = pending.iter().map(|(_, v, _)| v.as_ref()).collect();
        let checked = self.validator.verify_batch(&values);
        for ((offset, value, receive_ms), ok) in pending.iter().zip(checked) {
            self.handle(*offset, value, *receive_ms, ok);
        }
    }

    fn handle(&mut self, offset: i64, value: &[u8], receive_ms: i64, signature_ok: Option<bool>) {
        let src = Source {
            partition: self.partition,
            offset,
            receive_ms,
        };
        let verdict = self.validator.validate_checked(
            RawRecord {
                partition: self.partition,
                offset,
                value,
                receive_ms,
            },
            signature_ok,
        );
        match verdict {
            Verdict::Valid(valid) => {
                let loc = valid.reading.location.unwrap_or_default();
                match self.binner.cells(loc.lat, loc.lng) {
                    Some(cells) => {
                        self.unit.valid.push(ValidRow { src, valid, cells });
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
        self.unit.valid.len() + self.unit.rejected.len() + self.unit.pending.len()
    }

    pub fn should_flush(&self, roll: Roll) -> bool {
        self.is_full(roll)
            || (self.buffered() > 0 && self.unit.opened.is_some_and(|t| t.elapsed() >= roll.age))
    }

    /// The unit reached its row or byte bound (no clock read: checked after every record).
    pub fn is_full(&self, roll: Roll) -> bool {
        self.buffered() > 0 && (self.buffered() >= roll.rows || self.unit.bytes >= roll.bytes)
    }

    /// Writes the unit: staged files, claim, publication. See the module docs.
    pub async fn flush(&mut self, rules_version: &str) -> Result<Flushed, FlushError> {
        self.drain_pending();
        let Some(end) = self.unit.last else {
            return Ok(Flushed::Empty);
        };
        let start = self.next_offset;
        let started = Instant::now();
        let ctx = Ctx {
            topic: &self.topic,
            rules_version,
            resolutions: &self.resolutions,
        };
        let mut files = Vec::new();

        // Group by table and event hour; sort rows by coarsest cell, then time, so filters prune well.
        let coarse = self
            .resolutions
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| **r)
            .map(|(i, _)| i)
            .unwrap_or(0);
        let mut groups: BTreeMap<(KindName, String, u32), Vec<&ValidRow>> = BTreeMap::new();
        for r in &self.unit.valid {
            let (date, hour) = date_hour(r.valid.reading.device_time_ms);
            groups
                .entry((r.valid.kind, date, hour))
                .or_default()
                .push(r);
        }
        for ((kind, date, hour), mut rows) in groups {
            rows.sort_by_key(|r| {
                (
                    r.cells[coarse],
                    r.valid.reading.device_time_ms,
                    r.src.offset,
                )
            });
            let batch = valid_batch(kind, &rows, &ctx)?;
            files.push(
                self.stage(kind.as_str(), &date, hour, start, end, &batch)
                    .await?,
            );
        }
        let mut rejected: BTreeMap<(String, u32), Vec<&RejectedRow>> = BTreeMap::new();
        for r in &self.unit.rejected {
            rejected
                .entry(date_hour(r.src.receive_ms))
                .or_default()
                .push(r);
        }
        for ((date, hour), rows) in rejected {
            let batch = rejected_batch(&rows, &ctx)?;
            files.push(
                self.stage(tables::REJECTED_TABLE, &date, hour, start, end, &batch)
                    .await?,
            );
        }
        metrics::histogram!(m::FILE_WRITE_SECONDS).record(started.elapsed().as_secs_f64());

        let claim = Claim {
            topic: self.topic.clone(),
            partition: self.partition,
            start,
            end,
            writer: self.writer.clone(),
            files,
        };
        if !self.lake.create_claim(&claim).await? {
            let winner = self
                .lake
                .get_claim(&self.topic, self.partition, start)
                .await?;
            if winner.as_ref().is_some_and(|w| *w == claim) {
                // Our own claim from an attempt whose publication failed: finish publishing it.
                return self.published(&claim, started).await;
            }
            // Someone else wrote these offsets. Our staged files are orphans; drop them.
            for f in &claim.files {
                self.lake.delete(&f.staging).await?;
            }
            let next_offset = winner.map(|w| w.end + 1).unwrap_or(start);
            tracing::warn!(
                partition = self.partition,
                start,
                next_offset,
                "fenced: another writer claimed this unit"
            );
            metrics::counter!(m::FENCED).increment(1);
            return Ok(Flushed::Fenced { next_offset });
        }
        self.published(&claim, started).await
    }

    async fn published(&mut self, claim: &Claim, started: Instant) -> Result<Flushed, FlushError> {
        self.lake.publish(claim).await?;
        let rows = self.buffered();
        // Rows by outcome count what was published, once per unit (not per row: that is hot).
        metrics::counter!(m::ROWS, "outcome" => "valid", "reason" => "")
            .increment(self.unit.valid.len() as u64);
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for r in &self.unit.rejected {
            *by_reason.entry(r.reason).or_default() += 1;
        }
        for (reason, n) in by_reason {
            metrics::counter!(m::ROWS, "outcome" => "rejected", "reason" => reason).increment(n);
        }
        self.next_offset = claim.end + 1;
        self.unit = Unit::default();
        self.validator.prune(self.watermark_ms);
        metrics::histogram!(m::UNIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(Flushed::Committed {
            next_offset: claim.end + 1,
            rows,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn stage(
        &self,
        table: &str,
        date: &str,
        hour: u32,
        start: i64,
        end: i64,
        batch: &arrow::array::RecordBatch,
    ) -> Result<ClaimedFile, FlushError> {
        let bytes = encode_parquet(batch, crate::lake::UNIT_ZSTD_LEVEL)?;
        let staging = Lake::staging_path(
            &self.topic,
            self.partition,
            start,
            end,
            &self.writer,
            table,
            date,
            hour,
        );
        let published =
            Lake::published_path(table, date, hour, &self.topic, self.partition, start, end);
        let len = bytes.len() as u64;
        self.lake.put(&staging, bytes).await?;
        Ok(ClaimedFile {
            table: table.to_string(),
            staging,
            published,
            rows: batch.num_rows() as u64,
            bytes: len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_hour_is_utc_civil_time() {
        assert_eq!(date_hour(0), ("1970-01-01".into(), 0));
        assert_eq!(date_hour(1_767_225_600_000), ("2026-01-01".into(), 0));
        assert_eq!(
            date_hour(1_709_164_800_000 + 13 * 3_600_000),
            ("2024-02-29".into(), 13)
        );
        assert_eq!(date_hour(-1), ("1969-12-31".into(), 23));
    }
}
