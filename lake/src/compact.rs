//! Compaction: the small files of a closed hour are merged into larger ones in one Delta commit.
//!
//! Processors commit a file per table and hour every unit (about a second), so an hour holds
//! thousands of small files. Once an hour is closed (past the allowed lateness), a compactor reads
//! its small files from the newest snapshot, writes merged files (sorted by the coarsest H3 cell and
//! event time, `compacted-{hash of the sources}` names), and commits one version that removes
//! the small files and adds the merged ones, both with `dataChange = false` (an `OPTIMIZE`). Every
//! Delta reader sees either the small files or the merged ones, never both. Two compactors racing on
//! an hour: the second finds a commit removing one of its sources and drops the outputs the winner did
//! not commit (equal names mean equal sources, hence equal bytes). Streaming
//! appends to the hour meanwhile do not conflict; their files are merged by a later round.
//!
//! Replaced files stay on disk for readers of older snapshots until [`vacuum`] deletes them, a
//! retention after they were removed. Log entries older than the retention and than the newest
//! checkpoint before it are deleted by [`clean_log`]; versions that sealed epochs pin keep a
//! checkpoint of their own, and vacuum keeps their files.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use deltalake::kernel::Action;
use sha2::{Digest, Sha256};

use crate::delta::{Check, Committed, DataFile};
use crate::store::{Lake, LakeError, date_hour, decode_parquet, encode_parquet};
use crate::unit::{STREAM_TABLES, add_action, remove_action};

/// Memory of one row in a merge: three copies (decoded sources, concatenated, sorted) of a decoded
/// row of about 200 bytes (measured on `make up`'s tables, all four alike), with some to spare. Row
/// counts come from the files' statistics; small files compress poorly (45 to 325 bytes a row), so
/// a size bound alone let a merge of 64 MB of sources take about 1 GB.
pub const MERGE_ROW_BYTES: u64 = 640;

/// File name prefix of merged files.
pub const COMPACTED_PREFIX: &str = "compacted-";

/// Tuning of compaction.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Merged files grow to about this many (compressed) bytes; files at least half this size are
    /// left alone.
    pub target_bytes: u64,
    /// What one merge may hold in memory: its sources decoded, their concatenation and the sorted
    /// copy, at [`MERGE_ROW_BYTES`] a row. A merge takes fewer sources (and its file stays smaller
    /// than `target_bytes`) rather than more memory.
    pub memory_bytes: u64,
    /// Files no snapshot newer than this references are deleted by [`vacuum`]; it must be longer
    /// than any reader's query and than the window in which a sealed epoch can be re-checked.
    pub retention: Duration,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            target_bytes: 64 << 20,
            memory_bytes: 256 << 20,
            retention: Duration::from_secs(600),
        }
    }
}

/// What one hour's compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fewer than two small files: nothing to merge.
    Nothing,
    /// A compaction was committed as this version of the table's log.
    Compacted {
        /// The commit's version.
        version: i64,
        /// Files it replaced.
        sources: usize,
        /// Files it wrote.
        outputs: usize,
        /// Rows moved.
        rows: u64,
    },
    /// Another compactor replaced some of the sources first; our outputs were dropped.
    Raced,
}

/// Whether a data file was written by compaction (its name says so).
pub fn is_compacted(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with(COMPACTED_PREFIX))
}

/// The data files of a table's newest snapshot, as paths from the lake root, sorted.
pub async fn valid_files(lake: &Lake, table: &str) -> Result<Vec<String>, LakeError> {
    let (_, files) = lake.table(table).files().await?;
    Ok(files.into_iter().map(|f| f.path).collect())
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
async fn merge(lake: &Lake, sources: &[String]) -> Result<(bytes::Bytes, String), LakeError> {
    let mut batches = Vec::new();
    for path in sources {
        let bytes = lake.get(path).await?.ok_or_else(|| LakeError::Corrupt {
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
    Ok((
        encode_parquet(&sorted, crate::store::COMPACTED_ZSTD_LEVEL)?,
        crate::stats::stats_json(&sorted),
    ))
}

/// A name for a merged file: a hash of its sources, so that equal names mean equal content.
fn sources_hash(sources: &[String]) -> String {
    let mut h = Sha256::new();
    for s in sources {
        h.update(s.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

/// Compacts one hour of one table. An hour with fewer than two small files is left alone.
pub async fn compact_hour(
    lake: &Lake,
    table: &str,
    date: &str,
    hour: u32,
    opts: &CompactOptions,
) -> Result<Outcome, LakeError> {
    let t = lake.table(table);
    let (Some(read_version), files) = t.files().await? else {
        return Ok(Outcome::Nothing);
    };
    let small: Vec<DataFile> = files
        .into_iter()
        .filter(|f| {
            f.date.as_deref() == Some(date)
                && f.hour == Some(hour)
                && f.size < opts.target_bytes / 2
        })
        .collect();
    if small.len() < 2 {
        return Ok(Outcome::Nothing);
    }

    // Group consecutive small files up to the target size and the rows the memory bound allows; a
    // group of one is not worth a rewrite.
    let max_rows = (opts.memory_bytes / MERGE_ROW_BYTES).max(1);
    let mut groups: Vec<Vec<DataFile>> = vec![Vec::new()];
    let (mut size, mut rows) = (0u64, 0u64);
    for f in small {
        // A file without a row count is taken at one row per 16 bytes, more than zstd Parquet holds.
        let f_rows = f.rows.unwrap_or(f.size / 16);
        let full = size + f.size > opts.target_bytes || rows + f_rows > max_rows;
        if full && !groups.last().is_some_and(Vec::is_empty) {
            groups.push(Vec::new());
            (size, rows) = (0, 0);
        }
        size += f.size;
        rows += f_rows;
        groups.last_mut().expect("non-empty").push(f);
    }
    groups.retain(|g| g.len() >= 2);
    if groups.is_empty() {
        return Ok(Outcome::Nothing);
    }

    let mut actions = Vec::new();
    let mut outputs = Vec::new();
    let mut sources: HashSet<String> = HashSet::new();
    let mut total_rows = 0;
    let now = crate::now_ms();
    let strip = format!("{table}/");
    for group in &groups {
        let paths: Vec<String> = group.iter().map(|f| f.path.clone()).collect();
        let (bytes, stats) = merge(lake, &paths).await?;
        total_rows += group.iter().filter_map(|f| f.rows).sum::<u64>();
        let name = format!(
            "date={date}/hour={hour:02}/{COMPACTED_PREFIX}{}.parquet",
            sources_hash(&paths)
        );
        let full = format!("{table}/{name}");
        let len = bytes.len();
        lake.put(&full, bytes).await?;
        outputs.push(full);
        actions.push(Action::Add(add_action(name, date, hour, len, stats, false)));
        for f in group {
            let rel = f.path.strip_prefix(&strip).unwrap_or(&f.path).to_string();
            sources.insert(rel.clone());
            actions.push(Action::Remove(remove_action(
                rel,
                date,
                hour,
                f.size as i64,
                now,
            )));
        }
    }
    let source_count = sources.len();
    let committed = t
        .commit(
            actions,
            "OPTIMIZE",
            serde_json::Map::new(),
            None,
            Some(read_version),
            |winner| {
                let replaced = winner.iter().any(|a| match a {
                    Action::Remove(r) => sources.contains(&r.path),
                    _ => false,
                });
                if replaced {
                    Check::Stop("a source was replaced by another commit".into())
                } else {
                    Check::Go
                }
            },
        )
        .await?;
    match committed {
        Committed::Version(version) => {
            tracing::info!(
                table,
                date,
                hour,
                version,
                sources = source_count,
                outputs = outputs.len(),
                rows = total_rows,
                "compacted"
            );
            Ok(Outcome::Compacted {
                version,
                sources: source_count,
                outputs: outputs.len(),
                rows: total_rows,
            })
        }
        Committed::Stopped(why) => {
            // Equal names mean equal sources and equal bytes: the winner may have committed some of
            // our outputs under the same names. Drop only what its snapshot does not reference.
            tracing::info!(table, date, hour, reason = %why, "compaction lost a race");
            let (_, live) = t.files().await?;
            let live: HashSet<String> = live.into_iter().map(|f| f.path).collect();
            for o in outputs.iter().filter(|o| !live.contains(*o)) {
                lake.delete(o).await?;
            }
            Ok(Outcome::Raced)
        }
    }
}

/// The hours (date, hour) that hold files of `table` in its newest snapshot.
pub async fn table_hours(lake: &Lake, table: &str) -> Result<Vec<(String, u32)>, LakeError> {
    let (_, files) = lake.table(table).files().await?;
    let hours: std::collections::BTreeSet<(String, u32)> = files
        .into_iter()
        .filter_map(|f| Some((f.date?, f.hour?)))
        .collect();
    Ok(hours.into_iter().collect())
}

/// Every table compaction looks after.
pub fn tables() -> Vec<&'static str> {
    STREAM_TABLES.to_vec()
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

/// Deletes, in every stream table, the files that the newest snapshot does not reference and that
/// are older than `retention`: files replaced by compactions, and files of units that were never
/// committed (a fenced or crashed writer). Files that a sealed epoch's pinned Delta versions reference
/// are kept whatever their age, so a re-seal at those versions always finds its inputs. Returns how
/// many files were deleted.
pub async fn vacuum(lake: &Lake, retention: Duration) -> Result<usize, LakeError> {
    vacuum_pinned(lake, retention, &pinned_versions(lake).await?).await
}

/// [`vacuum`] with the pinned versions read already.
async fn vacuum_pinned(
    lake: &Lake,
    retention: Duration,
    pinned: &Pinned,
) -> Result<usize, LakeError> {
    let horizon = crate::now_ms() - retention.as_millis() as i64;
    let mut deleted = 0;
    for table in tables() {
        let t = lake.table(table);
        let (Some(_), live) = t.files().await? else {
            continue;
        };
        let pinned = match pinned.get(table) {
            Some(versions) => t.files_at_any(versions).await?,
            None => Default::default(),
        };
        let live: HashSet<String> = live.into_iter().map(|f| f.path).collect();
        for (path, _, modified_ms) in lake.list_meta(&format!("{table}/")).await? {
            if path.starts_with(&format!("{table}/_delta_log/"))
                || !path.ends_with(".parquet")
                || live.contains(&path)
                || pinned.contains(&path)
                || modified_ms > horizon
            {
                continue;
            }
            lake.delete(&path).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The versions of each table that sealed epochs pin.
type Pinned = HashMap<String, BTreeSet<i64>>;

/// The versions of each table that sealed epochs pin (their manifests' `input_versions`).
async fn pinned_versions(lake: &Lake) -> Result<Pinned, LakeError> {
    let mut out: HashMap<String, BTreeSet<i64>> = HashMap::new();
    for id in crate::epoch::sealed_ids(lake).await? {
        let manifest = crate::epoch::seal::read_manifest(lake, id)
            .await
            .map_err(|e| LakeError::Corrupt {
                path: crate::epoch::manifest_path(id),
                message: e.to_string(),
            })?;
        for (table, version) in manifest.map(|m| m.input_versions).unwrap_or_default() {
            out.entry(table).or_default().insert(version);
        }
    }
    Ok(out)
}

/// An entry of `_delta_log/` named by its version (a commit, a checkpoint part, a checksum).
struct LogEntry {
    path: String,
    version: i64,
    checkpoint: bool,
    modified_ms: i64,
}

fn log_entry((path, _, modified_ms): (String, u64, i64)) -> Option<LogEntry> {
    let name = path.rsplit('/').next()?;
    let digits = name.get(..20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || name.as_bytes().get(20) != Some(&b'.') {
        return None;
    }
    Some(LogEntry {
        version: digits.parse().ok()?,
        checkpoint: name[20..].starts_with(".checkpoint"),
        path,
        modified_ms,
    })
}

/// Deletes the log entries of each stream table that no reader needs any more: those older than
/// `retention` and older than the newest checkpoint that is itself older than `retention` (so every
/// version committed within `retention` stays loadable from that checkpoint on). A version that a
/// sealed epoch pins stays loadable forever: it gets a checkpoint of its own first, and that
/// checkpoint is kept. Without this, every unit adds a commit file per table that is never
/// deleted, and every reader that lists `_delta_log/` (a query refresh, a reader's first load)
/// gets slower all day. Returns how many entries were deleted.
pub async fn clean_log(lake: &Lake, retention: Duration) -> Result<usize, LakeError> {
    clean_log_pinned(lake, retention, &pinned_versions(lake).await?).await
}

/// [`clean_log`] with the pinned versions read already.
async fn clean_log_pinned(
    lake: &Lake,
    retention: Duration,
    pinned: &Pinned,
) -> Result<usize, LakeError> {
    let cutoff = crate::now_ms() - retention.as_millis() as i64;
    let mut deleted = 0;
    for table in tables() {
        let entries: Vec<LogEntry> = lake
            .list_meta(&format!("{table}/_delta_log/"))
            .await?
            .into_iter()
            .filter_map(log_entry)
            .collect();
        let Some(safe) = entries
            .iter()
            .filter(|e| e.checkpoint && e.modified_ms <= cutoff)
            .map(|e| e.version)
            .max()
        else {
            continue;
        };
        let keep: BTreeSet<i64> = pinned
            .get(table)
            .map(|v| v.range(..safe).copied().collect())
            .unwrap_or_default();
        let t = lake.table(table);
        for v in &keep {
            if !entries.iter().any(|e| e.checkpoint && e.version == *v) {
                t.checkpoint_at(*v).await?;
                tracing::info!(table, version = v, "checkpoint of a pinned version written");
            }
        }
        for e in entries {
            let pinned_checkpoint = e.checkpoint && keep.contains(&e.version);
            if e.version < safe && e.modified_ms <= cutoff && !pinned_checkpoint {
                lake.delete(&e.path).await?;
                deleted += 1;
            }
        }
    }
    if deleted > 0 {
        tracing::debug!(deleted, "expired log entries deleted");
    }
    Ok(deleted)
}

/// Writes a checkpoint of every stream table whose log grew `interval` versions past its last one.
/// A table is loaded with delta-rs only when a checkpoint is due: a full load costs memory in
/// proportion to the live files.
pub async fn checkpoint(lake: &Lake, interval: i64) -> Result<(), LakeError> {
    for table in tables() {
        let t = lake.table(table);
        let Some(version) = t.version().await? else {
            continue;
        };
        let last = t.checkpoint_hint().await?.unwrap_or(-1);
        if version - last >= interval {
            t.checkpoint_newest(version).await?;
            tracing::debug!(table, version, "checkpoint written");
        }
    }
    Ok(())
}

/// One round of lake maintenance: compacts the hours closed `close_after` after their end, writes
/// checkpoints, vacuums and cleans the logs (keeping what sealed epochs pin). A failed round is
/// logged and counted; the next round tries again.
pub async fn maintenance_round(lake: &Lake, close_after: Duration, opts: &CompactOptions) {
    let cut = crate::now_ms() - close_after.as_millis() as i64;
    let round = async {
        let done = compact_closed(lake, cut, opts).await?;
        for (table, date, hour, outcome) in done {
            tracing::debug!(table, date, hour, ?outcome, "compaction round");
        }
        checkpoint(lake, CHECKPOINT_INTERVAL).await?;
        // Every sealed manifest is read once per round, for both.
        let pinned = pinned_versions(lake).await?;
        vacuum_pinned(lake, opts.retention, &pinned).await?;
        clean_log_pinned(lake, opts.retention, &pinned).await
    };
    if let Err(e) = round.await {
        tracing::warn!(error = %e, "lake maintenance round failed; retrying next round");
        metrics::counter!(COMPACTION_ERRORS).increment(1);
    }
}

/// Versions between checkpoints of a stream table.
pub const CHECKPOINT_INTERVAL: i64 = 100;

/// Failed maintenance rounds (compaction, checkpoint, vacuum, log cleanup).
pub const COMPACTION_ERRORS: &str = "hexpulse_processor_compaction_errors_total";
