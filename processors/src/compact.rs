//! Compaction: the small files of a closed hour are merged into larger ones, atomically for readers.
//!
//! A compaction of one hour of one table writes its merged files (`compacted-…` names) next to the
//! small ones, then creates a **compaction record** `_compaction/{table}/date=D/hour=HH/{gen:06}.json`
//! with create-if-absent. The record is the commit point. The small files are deleted by a later
//! round, once the record is older than the retention (so a reader that listed the hour just before
//! the commit can still read them). Readers that
//! go through [`valid_files`] see, for every hour:
//!
//! - every file that no record names as a source, except
//! - `compacted-…` files that no record names as an output (an unfinished compaction's leftovers).
//!
//! Before the record exists they see the small files and not the merged one; after, the merged one
//! and not the small ones, even while the small files are still being deleted. Two compactors racing
//! on an hour both try to create the same generation; one wins, the other drops its outputs. A merged
//! file's name carries a hash of its sources, so equal names always mean equal content.
//!
//! Plain glob readers (`read_parquet('heartbeat/*/*/*.parquet')`) see both between the merged file's
//! write and the small files' deletion; `hexpulse lake files TABLE` prints the valid
//! list for such readers. Compaction only touches hours that closed (past the allowed lateness), so
//! in normal operation no processor still writes to them; one that does (a partition far behind)
//! just adds files that the next round merges.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::KindName;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::lake::{Lake, LakeError, decode_parquet, encode_parquet};
use crate::partition::date_hour;

/// Folder of the compaction records.
pub const RECORDS_ROOT: &str = "_compaction";
/// File name prefix of merged files.
pub const COMPACTED_PREFIX: &str = "compacted-";

/// One merged file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The commit record of one compaction of one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRecord {
    pub table: String,
    pub date: String,
    pub hour: u32,
    pub generation: u32,
    pub outputs: Vec<OutputFile>,
    /// Files the outputs replace; readers ignore them from the moment this record exists.
    pub sources: Vec<String>,
    /// When the record was written (ms since the epoch); sources are deleted a retention later.
    pub committed_at_ms: i64,
}

/// Tuning of compaction.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Merged files grow to about this many (compressed) bytes; files at least half this size are
    /// left alone.
    pub target_bytes: u64,
    /// Replaced files are deleted only this long after the record that replaced them, and an
    /// unlisted merged file (an interrupted compaction) only this long after it was written, so a
    /// reader that listed the hour just before a commit can still read what it listed.
    pub retention: Duration,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            target_bytes: 64 << 20,
            retention: Duration::from_secs(600),
        }
    }
}

/// What one hour's compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fewer than two small files: nothing to merge.
    Nothing,
    /// A new generation was committed.
    Compacted {
        generation: u32,
        sources: usize,
        outputs: usize,
        rows: u64,
    },
    /// Another compactor committed this generation first; our outputs were dropped.
    Raced,
}

pub fn record_prefix(table: &str, date: &str, hour: u32) -> String {
    format!("{RECORDS_ROOT}/{table}/date={date}/hour={hour:02}/")
}

pub fn is_compacted(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with(COMPACTED_PREFIX))
}

/// The files readers should use, given every file present and every compaction record.
pub fn apply_records(files: Vec<String>, records: &[CompactionRecord]) -> Vec<String> {
    let sources: HashSet<&str> = records
        .iter()
        .flat_map(|r| r.sources.iter().map(String::as_str))
        .collect();
    let outputs: HashSet<&str> = records
        .iter()
        .flat_map(|r| r.outputs.iter().map(|o| o.path.as_str()))
        .collect();
    let mut valid: Vec<String> = files
        .into_iter()
        .filter(|f| {
            f.ends_with(".parquet")
                && !sources.contains(f.as_str())
                && (!is_compacted(f) || outputs.contains(f.as_str()))
        })
        .collect();
    valid.sort();
    valid
}

async fn load_records(lake: &Lake, prefix: &str) -> Result<Vec<CompactionRecord>, LakeError> {
    let mut out = Vec::new();
    for path in lake.list(prefix).await? {
        if !path.ends_with(".json") {
            continue;
        }
        let Some(bytes) = lake.get(&path).await? else {
            continue;
        };
        let rec: CompactionRecord =
            serde_json::from_slice(&bytes).map_err(|e| LakeError::BadClaim {
                path: path.clone(),
                message: e.to_string(),
            })?;
        out.push(rec);
    }
    out.sort_by_key(|r| r.generation);
    Ok(out)
}

/// The valid files of a table (all hours), sorted by path.
pub async fn valid_files(lake: &Lake, table: &str) -> Result<Vec<String>, LakeError> {
    let files = lake.list(&format!("{table}/")).await?;
    let records = load_records(lake, &format!("{RECORDS_ROOT}/{table}/")).await?;
    Ok(apply_records(files, &records))
}

/// The valid files of one hour of a table, with the hour's records.
pub async fn hour_view(
    lake: &Lake,
    table: &str,
    date: &str,
    hour: u32,
) -> Result<(Vec<String>, Vec<CompactionRecord>), LakeError> {
    let files = lake
        .list(&format!("{table}/date={date}/hour={hour:02}/"))
        .await?;
    let records = load_records(lake, &record_prefix(table, date, hour)).await?;
    Ok((apply_records(files, &records), records))
}

/// Whether `path` (a published data file) was replaced by a compaction.
pub async fn was_compacted(lake: &Lake, path: &str) -> Result<bool, LakeError> {
    let Some((dir, _)) = path.rsplit_once('/') else {
        return Ok(false);
    };
    let records = load_records(lake, &format!("{RECORDS_ROOT}/{dir}/")).await?;
    Ok(records.iter().any(|r| r.sources.iter().any(|s| s == path)))
}

/// The sort order of merged files: coarsest H3 cell, then event time, then provenance (valid
/// tables); receive time, then provenance (rejected). Ties keep input order, which is by path.
fn sort_columns(batch: &RecordBatch) -> Vec<SortColumn> {
    let schema = batch.schema();
    let coarsest = schema
        .fields()
        .iter()
        .filter_map(|f| {
            let res: u8 = f.name().strip_prefix("h3_r")?.parse().ok()?;
            Some((res, f.name().clone()))
        })
        .min();
    let mut names: Vec<String> = Vec::new();
    match coarsest {
        Some((_, name)) => names.extend([name, "event_time".into()]),
        None => names.push("receive_time".into()),
    }
    names.extend(["src_partition".into(), "src_offset".into()]);
    names
        .iter()
        .filter_map(|n| batch.column_by_name(n))
        .map(|c| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect()
}

/// Reads, sorts and encodes the files of one merged output.
async fn merge(lake: &Lake, sources: &[String]) -> Result<(bytes::Bytes, u64), LakeError> {
    let mut batches = Vec::new();
    for path in sources {
        let bytes = lake.get(path).await?.ok_or_else(|| LakeError::BadClaim {
            path: path.clone(),
            message: "source file vanished during compaction".into(),
        })?;
        batches.extend(decode_parquet(bytes, None)?);
    }
    let schema = batches[0].schema();
    let all = concat_batches(&schema, &batches)?;
    drop(batches);
    let cols = sort_columns(&all);
    let sorted = if cols.is_empty() || all.num_rows() < 2 {
        all
    } else {
        // A stable order: lexsort is unstable, so the row index is the final key.
        let index: UInt32Array = (0..all.num_rows() as u32).collect();
        let mut keys = cols;
        keys.push(SortColumn {
            values: Arc::new(index),
            options: None,
        });
        let idx = lexsort_to_indices(&keys, None)?;
        take_record_batch(&all, &idx)?
    };
    let rows = sorted.num_rows() as u64;
    Ok((
        encode_parquet(&sorted, crate::lake::COMPACTED_ZSTD_LEVEL)?,
        rows,
    ))
}

fn sources_hash(sources: &[String]) -> String {
    let mut h = Sha256::new();
    for s in sources {
        h.update(s.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Compacts one hour of one table. Idempotent: an hour with fewer than two small valid files is left
/// alone. Leftover sources of earlier generations are deleted on the way.
pub async fn compact_hour(
    lake: &Lake,
    table: &str,
    date: &str,
    hour: u32,
    opts: &CompactOptions,
) -> Result<Outcome, LakeError> {
    let dir = format!("{table}/date={date}/hour={hour:02}/");
    let present = lake.list_meta(&dir).await?;
    let records = load_records(lake, &record_prefix(table, date, hour)).await?;
    collect_garbage(lake, &present, &records, opts.retention).await?;
    let present: Vec<(String, u64)> = present.into_iter().map(|(p, size, _)| (p, size)).collect();

    let valid: BTreeSet<String> =
        apply_records(present.iter().map(|(p, _)| p.clone()).collect(), &records)
            .into_iter()
            .collect();
    let small: Vec<(String, u64)> = present
        .into_iter()
        .filter(|(p, size)| valid.contains(p) && *size < opts.target_bytes / 2)
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    if small.len() < 2 {
        return Ok(Outcome::Nothing);
    }

    // Group consecutive small files up to the target size; a group of one is not worth a rewrite.
    let mut groups: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0u64;
    for (path, bytes) in small {
        if size + bytes > opts.target_bytes && !groups.last().is_some_and(Vec::is_empty) {
            groups.push(Vec::new());
            size = 0;
        }
        size += bytes;
        groups.last_mut().expect("non-empty").push(path);
    }
    groups.retain(|g| g.len() >= 2);
    if groups.is_empty() {
        return Ok(Outcome::Nothing);
    }

    let generation = records.last().map_or(1, |r| r.generation + 1);
    let mut outputs = Vec::new();
    let mut sources = Vec::new();
    let mut total_rows = 0;
    for (i, group) in groups.iter().enumerate() {
        let (bytes, rows) = merge(lake, group).await?;
        let path = format!(
            "{dir}{COMPACTED_PREFIX}{generation:06}-{i:03}-{}.parquet",
            sources_hash(group)
        );
        let len = bytes.len() as u64;
        lake.put(&path, bytes).await?;
        outputs.push(OutputFile {
            path,
            rows,
            bytes: len,
        });
        sources.extend(group.iter().cloned());
        total_rows += rows;
    }
    let record = CompactionRecord {
        table: table.to_string(),
        date: date.to_string(),
        hour,
        generation,
        outputs: outputs.clone(),
        sources: sources.clone(),
        committed_at_ms: hexpulse_common::time::now_ms(),
    };
    let record_path = format!("{}{generation:06}.json", record_prefix(table, date, hour));
    let body = serde_json::to_vec_pretty(&record).expect("record serialises");
    if !lake.put_if_absent(&record_path, body).await? {
        // Someone else committed this generation. Drop our outputs that it does not list.
        let winner = load_records(lake, &record_prefix(table, date, hour)).await?;
        let listed: HashSet<&str> = winner
            .iter()
            .flat_map(|r| r.outputs.iter().map(|o| o.path.as_str()))
            .collect();
        for o in &outputs {
            if !listed.contains(o.path.as_str()) {
                lake.delete(&o.path).await?;
            }
        }
        return Ok(Outcome::Raced);
    }
    tracing::info!(
        table,
        date,
        hour,
        generation,
        sources = sources.len(),
        outputs = outputs.len(),
        rows = total_rows,
        "compacted"
    );
    Ok(Outcome::Compacted {
        generation,
        sources: sources.len(),
        outputs: outputs.len(),
        rows: total_rows,
    })
}

/// Deletes the sources of records older than `retention`, and merged files that no record lists and
/// that are older than `retention` (left by an interrupted compaction).
async fn collect_garbage(
    lake: &Lake,
    present: &[(String, u64, i64)],
    records: &[CompactionRecord],
    retention: Duration,
) -> Result<(), LakeError> {
    let horizon = hexpulse_common::time::now_ms() - retention.as_millis() as i64;
    let expired: HashSet<&str> = records
        .iter()
        .filter(|r| r.committed_at_ms <= horizon)
        .flat_map(|r| r.sources.iter().map(String::as_str))
        .collect();
    let listed: HashSet<&str> = records
        .iter()
        .flat_map(|r| r.outputs.iter().map(|o| o.path.as_str()))
        .collect();
    for (path, _, modified_ms) in present {
        let orphan =
            is_compacted(path) && !listed.contains(path.as_str()) && *modified_ms <= horizon;
        if expired.contains(path.as_str()) || orphan {
            lake.delete(path).await?;
        }
    }
    Ok(())
}

/// The hours (date, hour) that hold files of `table`.
pub async fn table_hours(lake: &Lake, table: &str) -> Result<Vec<(String, u32)>, LakeError> {
    let mut hours = Vec::new();
    let dates = lake
        .store()
        .list_with_delimiter(Some(&Path::from(format!("{table}/"))))
        .await?;
    for d in dates.common_prefixes {
        let Some(date) = d
            .filename()
            .and_then(|f| f.strip_prefix("date="))
            .map(str::to_string)
        else {
            continue;
        };
        let hs = lake.store().list_with_delimiter(Some(&d)).await?;
        for h in hs.common_prefixes {
            if let Some(hour) = h
                .filename()
                .and_then(|f| f.strip_prefix("hour="))
                .and_then(|v| v.parse().ok())
            {
                hours.push((date.clone(), hour));
            }
        }
    }
    hours.sort();
    Ok(hours)
}

/// Every table compaction looks after.
pub fn tables() -> Vec<&'static str> {
    KindName::ALL
        .map(|k| k.as_str())
        .into_iter()
        .chain([tables::REJECTED_TABLE])
        .collect()
}

/// Compacts every hour of every table that ended before `closed_before_ms`.
pub async fn compact_closed(
    lake: &Lake,
    closed_before_ms: i64,
    opts: &CompactOptions,
) -> Result<Vec<(String, String, u32, Outcome)>, LakeError> {
    let (cut_date, cut_hour) = date_hour(closed_before_ms);
    let mut done = Vec::new();
    for table in tables() {
        for (date, hour) in table_hours(lake, table).await? {
            // The hour [h, h+1) is closed when h+1 <= cut, i.e. (date, hour) < the cut's hour.
            if (date.as_str(), hour) >= (cut_date.as_str(), cut_hour) {
                continue;
            }
            let outcome = compact_hour(lake, table, &date, hour, opts).await?;
            if outcome != Outcome::Nothing {
                done.push((table.to_string(), date, hour, outcome));
            }
        }
    }
    Ok(done)
}

/// Compacts closed hours every `interval` until `stop`. `close_after` is how long after its end an
/// hour is closed (the allowed lateness plus margins).
pub async fn run_compactor(
    lake: Lake,
    interval: Duration,
    close_after: Duration,
    opts: CompactOptions,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let cut = hexpulse_common::time::now_ms() - close_after.as_millis() as i64;
        match compact_closed(&lake, cut, &opts).await {
            Ok(done) => {
                for (table, date, hour, outcome) in done {
                    tracing::debug!(table, date, hour, ?outcome, "compaction round");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "compaction round failed; retrying next round");
                metrics::counter!(crate::metrics::COMPACTION_ERRORS).increment(1);
            }
        }
    }
}
