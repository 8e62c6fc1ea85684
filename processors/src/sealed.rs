//! Writing a sealed unit: the rows a [`PartitionWorker`](crate::partition::PartitionWorker) took
//! out of its buffer ([`PartitionWorker::seal`](crate::partition::PartitionWorker::seal)), encoded
//! into Parquet off the async workers and committed through
//! [`hexpulse_lake::unit::commit_unit`]. A [`SealedUnit`] owns what that needs, so that the write
//! runs apart from the consumer loop, which meanwhile buffers the partition's next unit.

use std::collections::BTreeMap;
use std::time::Instant;

use hexpulse_lake::unit::{self, UnitFile, UnitOutcome};
use hexpulse_lake::{HOUR_MS, Lake, LakeError, date_hour, encode_parquet};
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::KindName;

use crate::metrics as m;
use arrow::array::RecordBatch;

use crate::rows::{Ctx, RejectedRow, ValidRow, hour_batches, rejected_batch, valid_batch};

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("lake: {0}")]
    Lake(#[from] LakeError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("encoding the unit panicked: {0}")]
    Panicked(String),
}

impl hexpulse_common::fault::Classify for FlushError {
    fn fault(&self) -> hexpulse_common::fault::Fault {
        match self {
            FlushError::Lake(e) => e.fault(),
            // Rows that do not encode into their table's schema: ours to fix.
            FlushError::Arrow(_) | FlushError::Panicked(_) => {
                hexpulse_common::fault::Fault::Internal
            }
        }
    }
}

/// A unit taken out of its worker ([`PartitionWorker::seal`](crate::partition::PartitionWorker::seal)): what writing and committing it
/// needs, owned, so that it can be written off the consumer loop.
pub struct SealedUnit {
    pub(crate) lake: Lake,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) writer: String,
    pub(crate) resolutions: Vec<u8>,
    pub(crate) rules_version: String,
    /// The stream tables may not exist yet.
    pub(crate) ensure_tables: bool,
    pub(crate) start: i64,
    pub(crate) end: i64,
    /// The unit's first valid readings, already built into Arrow for the live tier, per stream
    /// table in [`KindName::ALL`]'s order, in arrival order: the files are cut from these, and the
    /// rows are not built twice.
    pub(crate) built: [Vec<RecordBatch>; 3],
    /// The readings after them, not built yet (all of them without a live tier).
    pub(crate) valid: Vec<ValidRow>,
    /// Valid readings in the unit, built or not.
    pub(crate) valid_count: usize,
    pub(crate) rejected: Vec<RejectedRow>,
    /// The partition's watermark when the unit was sealed: every record received up to it is in
    /// this unit or an earlier one.
    pub(crate) watermark_ms: i64,
    pub(crate) sealed_at: Instant,
}

/// A sealed unit, written: what its worker takes in ([`PartitionWorker::written`](crate::partition::PartitionWorker::written)).
#[derive(Debug)]
pub struct Written {
    pub outcome: UnitOutcome,
    pub(crate) end: i64,
    /// The watermark the unit carries (publish it once the unit is committed).
    pub(crate) watermark_ms: i64,
    pub(crate) valid: u64,
    pub(crate) rejected: BTreeMap<&'static str, u64>,
    pub(crate) sealed_at: Instant,
}

impl Written {
    /// Rows in the unit, valid and rejected.
    pub(crate) fn rows(&self) -> u64 {
        self.valid + self.rejected.values().sum::<u64>()
    }
}

impl SealedUnit {
    /// The writer instance of the worker that sealed it.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Encodes the unit's files and commits them once.
    pub async fn write(mut self) -> Result<Written, FlushError> {
        let (files, written) = self.encode().await?;
        let outcome = self.commit(&files).await?;
        Ok(Written { outcome, ..written })
    }

    /// Encodes the unit's files once, then commits them, retrying with backoff while the lake
    /// fails in a way that may pass. Returns the first error that retrying cannot fix. It never
    /// gives up otherwise: the caller owns the task and aborts it when it must stop.
    pub async fn write_retrying(mut self) -> Result<Written, FlushError> {
        let (files, written) = self.encode().await?;
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match self.commit(&files).await {
                Ok(outcome) => return Ok(Written { outcome, ..written }),
                Err(e) if !hexpulse_common::fault::Classify::retryable(&e) => return Err(e),
                Err(e) => {
                    metrics::counter!(m::FLUSH_ERRORS).increment(1);
                    tracing::warn!(partition = self.partition, error = %e, ?backoff,
                        "unit commit failed; offsets stay uncommitted, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// The unit's Parquet files, encoded off the async workers, and what its worker is told once
    /// they are committed (the outcome still to be filled in).
    async fn encode(&mut self) -> Result<(Vec<UnitFile>, Written), FlushError> {
        let mut rejected: BTreeMap<&'static str, u64> = BTreeMap::new();
        for r in &self.rejected {
            *rejected.entry(r.reason).or_default() += 1;
        }
        let written = Written {
            outcome: UnitOutcome::Committed,
            end: self.end,
            watermark_ms: self.watermark_ms,
            valid: self.valid_count as u64,
            rejected,
            sealed_at: self.sealed_at,
        };
        // The rows are not needed after encoding: they move into the blocking task.
        let valid = std::mem::take(&mut self.valid);
        let built = std::mem::take(&mut self.built);
        let rejected = std::mem::take(&mut self.rejected);
        let (topic, rules_version, resolutions) = (
            self.topic.clone(),
            self.rules_version.clone(),
            self.resolutions.clone(),
        );
        let files = tokio::task::spawn_blocking(move || {
            let ctx = Ctx {
                topic: &topic,
                rules_version: &rules_version,
                resolutions: &resolutions,
            };
            encode_unit(&valid, built, &rejected, &ctx)
        })
        .await
        .map_err(|e| FlushError::Panicked(e.to_string()))??;
        Ok((files, written))
    }

    async fn commit(&self, files: &[UnitFile]) -> Result<UnitOutcome, FlushError> {
        if self.ensure_tables {
            let resolutions = &self.resolutions;
            unit::ensure_tables(&self.lake, |t| table_schema(t, resolutions)).await?;
        }
        Ok(unit::commit_unit(
            &self.lake,
            unit::Unit {
                topic: &self.topic,
                partition: self.partition,
                start: self.start,
                end: self.end,
                writer: &self.writer,
                files: files.to_vec(),
            },
        )
        .await?)
    }
}

/// Encodes a unit's rows: one file per table and event hour (rejections by receive hour), rows
/// sorted by their coarsest cell and then time, so that filters prune well ([`hour_batches`]).
/// Each stream table's rows are built into Arrow once: `built` holds those the live tier built,
/// `valid` the rest.
fn encode_unit(
    valid: &[ValidRow],
    built: [Vec<RecordBatch>; 3],
    rejected: &[RejectedRow],
    ctx: &Ctx<'_>,
) -> Result<Vec<UnitFile>, FlushError> {
    let started = Instant::now();
    let mut files = Vec::new();
    let coarse = tables::h3_column(ctx.resolutions.iter().copied().min().unwrap_or(0));
    for (kind, mut pieces) in KindName::ALL.into_iter().zip(built) {
        let rows: Vec<&ValidRow> = valid.iter().filter(|r| r.valid.kind == kind).collect();
        if !rows.is_empty() {
            pieces.push(valid_batch(kind, &rows, ctx)?);
        }
        if pieces.is_empty() {
            continue;
        }
        for (hour_index, file) in hour_batches(&pieces, &coarse)? {
            let (date, hour) = date_hour(hour_index * HOUR_MS);
            files.push(unit_file(kind.as_str(), date, hour, &file)?);
        }
    }
    let mut by_hour: BTreeMap<i64, Vec<&RejectedRow>> = BTreeMap::new();
    for r in rejected {
        by_hour
            .entry(r.src.receive_ms.div_euclid(HOUR_MS))
            .or_default()
            .push(r);
    }
    for (hour_index, rows) in by_hour {
        let (date, hour) = date_hour(hour_index * HOUR_MS);
        let batch = rejected_batch(&rows, ctx)?;
        files.push(unit_file(tables::REJECTED_TABLE, date, hour, &batch)?);
    }
    metrics::histogram!(m::FILE_WRITE_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(files)
}

/// The Arrow schema of a stream table's files.
pub fn table_schema(table: &str, resolutions: &[u8]) -> arrow::datatypes::SchemaRef {
    match table {
        t if t == KindName::Heartbeat.as_str() => tables::heartbeat_schema(resolutions),
        t if t == KindName::Sensor.as_str() => tables::sensor_schema(resolutions),
        t if t == KindName::Road.as_str() => tables::road_schema(resolutions),
        _ => tables::rejected_schema(),
    }
}

/// One encoded file of a unit, with its Delta statistics.
fn unit_file(
    table: &'static str,
    date: String,
    hour: u32,
    batch: &arrow::array::RecordBatch,
) -> Result<UnitFile, FlushError> {
    Ok(UnitFile {
        table,
        date,
        hour,
        bytes: encode_parquet(batch, hexpulse_lake::UNIT_ZSTD_LEVEL)?,
        stats: hexpulse_lake::stats::stats_json(batch),
    })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::h3bin::Binner;
    use crate::rows::tests::{RESOLUTIONS, ctx, in_pieces, row};

    fn files(
        valid: &[ValidRow],
        built: [Vec<RecordBatch>; 3],
        ctx: &Ctx<'_>,
    ) -> Vec<(&'static str, String, u32, bytes::Bytes, String)> {
        encode_unit(valid, built, &[], ctx)
            .unwrap()
            .into_iter()
            .map(|f| (f.table, f.date, f.hour, f.bytes, f.stats))
            .collect()
    }

    /// A unit whose first readings the live tier built (in pieces, per table) and whose later ones
    /// are built at the seal writes the same files as a unit built whole at the seal.
    #[test]
    fn files_of_built_pieces_and_rows_built_at_the_seal_equal_a_whole_build() {
        let (binner, ctx) = (Binner::new(RESOLUTIONS).unwrap(), ctx());
        for seed in 0..12u64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let rows: Vec<ValidRow> = (0..rng.random_range(2..200))
                .map(|i| {
                    let kind = if rng.random_bool(0.5) {
                        KindName::Sensor
                    } else {
                        KindName::Heartbeat
                    };
                    let mut r = row(&mut rng, &binner, kind, 100 + i);
                    r.valid.reading.device_time_ms += rng.random_range(0..2) * HOUR_MS;
                    r
                })
                .collect();
            let whole = files(&rows, Default::default(), &ctx);
            // The live tier built the first `cut` readings, each table's in arrival order, in
            // pieces of random sizes.
            let cut = rng.random_range(1..rows.len());
            let built = KindName::ALL.map(|kind| {
                let mine: Vec<&ValidRow> = rows[..cut]
                    .iter()
                    .filter(|r| r.valid.kind == kind)
                    .collect();
                in_pieces(&mut rng, kind, &mine, &ctx)
            });
            let mixed = files(&rows[cut..], built, &ctx);
            assert!(!whole.is_empty());
            assert_eq!(whole, mixed, "seed {seed}, cut {cut} of {}", rows.len());
        }
    }
}
