//! Following the lake: which files of each table the cache reads on a refresh, and what it takes
//! from each (the newest valid row per device; rejections per device, hour and reason).

use std::collections::HashMap;

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use hexpulse_lake::LakeError;
use hexpulse_lake::delta::DataFile;

use super::{HOUR_MS, Key, Place, RejectedRows, Seen, StatusCache, ValidRow, parse_key};

/// The tables the cache reads, in the order of its versions: the three stream tables ([`KINDS`]
/// order), then `rejected`.
///
/// [`KINDS`]: super::KINDS
pub const TABLES: [&str; 4] = ["heartbeat", "sensor", "road", "rejected"];
const REJECTED: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("lake: {0}")]
    Lake(#[from] LakeError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("reading a file failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What one file gave.
enum Rows {
    Valid(HashMap<Key, ValidRow>),
    Rejected(HashMap<Key, RejectedRows>),
}

fn bad(path: &str, message: impl std::fmt::Display) -> FollowError {
    FollowError::File {
        path: path.to_string(),
        message: message.to_string(),
    }
}

fn column<'a, T: 'static>(
    b: &'a RecordBatch,
    name: &str,
    path: &str,
) -> Result<&'a T, FollowError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| bad(path, format!("no column {name} of the expected type")))
}

/// The finest H3 column of a batch (`h3_r{res}`, the highest res).
fn finest_cell_column(b: &RecordBatch) -> Option<String> {
    b.schema()
        .fields()
        .iter()
        .filter_map(|f| {
            let res: u8 = f.name().strip_prefix("h3_r")?.parse().ok()?;
            Some((res, f.name().clone()))
        })
        .max()
        .map(|(_, name)| name)
}

/// The newest valid row per device of a stream table's file, from rows received at or after
/// `cutoff_ms`.
fn valid_rows(
    path: &str,
    bytes: Bytes,
    cutoff_ms: i64,
) -> Result<HashMap<Key, ValidRow>, FollowError> {
    let mut columns = vec!["device_key", "receive_time", "event_time", "lat", "lng"];
    let cells: Vec<String> = (0..=15).map(|r| format!("h3_r{r}")).collect();
    columns.extend(cells.iter().map(String::as_str));
    let mut out: HashMap<Key, ValidRow> = HashMap::new();
    for b in hexpulse_lake::store::decode_parquet(bytes, Some(&columns))? {
        let keys = column::<StringArray>(&b, "device_key", path)?;
        let received = column::<TimestampMillisecondArray>(&b, "receive_time", path)?;
        let events = column::<TimestampMillisecondArray>(&b, "event_time", path)?;
        let lat = column::<Float64Array>(&b, "lat", path)?;
        let lng = column::<Float64Array>(&b, "lng", path)?;
        let cell_name = finest_cell_column(&b).ok_or_else(|| bad(path, "no h3_r* column"))?;
        let cell = column::<UInt64Array>(&b, &cell_name, path)?;
        for i in 0..b.num_rows() {
            if keys.is_null(i) || received.is_null(i) {
                continue;
            }
            let receive_ms = received.value(i);
            if receive_ms < cutoff_ms {
                continue;
            }
            let Some(key) = parse_key(keys.value(i)) else {
                return Err(bad(path, format!("device key {:?}", keys.value(i))));
            };
            let seen = Seen {
                receive_ms,
                event_ms: events.value(i),
            };
            let row = ValidRow {
                seen,
                place: Place {
                    seen,
                    lat: lat.value(i),
                    lng: lng.value(i),
                    cell: cell.value(i),
                },
            };
            out.entry(key)
                .and_modify(|r| {
                    if row.seen.newer_than(&r.seen) {
                        *r = row;
                    }
                })
                .or_insert(row);
        }
    }
    Ok(out)
}

/// Rejections per device of a `rejected` file (rows without a device key name no device), from
/// rows received at or after `cutoff_ms`.
fn rejected_rows(
    path: &str,
    bytes: Bytes,
    cutoff_ms: i64,
) -> Result<HashMap<Key, RejectedRows>, FollowError> {
    let columns = ["device_key", "receive_time", "reason", "kind"];
    let mut out: HashMap<Key, RejectedRows> = HashMap::new();
    for b in hexpulse_lake::store::decode_parquet(bytes, Some(&columns))? {
        let keys = column::<StringArray>(&b, "device_key", path)?;
        let received = column::<TimestampMillisecondArray>(&b, "receive_time", path)?;
        let reasons = column::<StringArray>(&b, "reason", path)?;
        let kinds = column::<StringArray>(&b, "kind", path)?;
        for i in 0..b.num_rows() {
            if keys.is_null(i) || received.is_null(i) {
                continue;
            }
            // A rejected row's key may be anything the device sent (`malformed`): only keys that
            // parse name a device.
            let Some(key) = parse_key(keys.value(i)) else {
                continue;
            };
            let receive_ms = received.value(i);
            if receive_ms < cutoff_ms {
                continue;
            }
            let reason = reasons.value(i);
            let r = out.entry(key).or_default();
            if r.kind.is_none() && !kinds.is_null(i) {
                r.kind = super::KINDS
                    .iter()
                    .position(|k| *k == kinds.value(i))
                    .map(|k| k as u8);
            }
            let hour = receive_ms.div_euclid(HOUR_MS) as i32;
            *r.counts.entry((hour, reason.to_string())).or_default() += 1;
            // The newest; of rows received at once, the greatest reason (read order must not matter).
            if r.last
                .as_ref()
                .is_none_or(|l| (receive_ms, reason) > (l.0, l.1.as_str()))
            {
                r.last = Some((receive_ms, reason.to_string()));
            }
        }
    }
    Ok(out)
}

/// A file's rows, read and decoded off the I/O threads. `None`: the file is gone (vacuumed).
async fn read_file(
    cache: &StatusCache,
    table: usize,
    file: &DataFile,
    cutoff_ms: i64,
) -> Result<Option<Rows>, FollowError> {
    let Some(bytes) = cache.lake.get(&file.path).await? else {
        return Ok(None);
    };
    let path = file.path.clone();
    let rows = tokio::task::spawn_blocking(move || {
        if table == REJECTED {
            rejected_rows(&path, bytes, cutoff_ms).map(Rows::Rejected)
        } else {
            valid_rows(&path, bytes, cutoff_ms).map(Rows::Valid)
        }
    })
    .await??;
    Ok(Some(rows))
}

/// `YYYY-MM-DD` of a time, UTC.
fn date_of(ms: i64) -> String {
    hexpulse_lake::store::date_hour(ms).0
}

impl StatusCache {
    /// Reads every table's new files into the cache.
    pub async fn refresh(&self) -> Result<(), FollowError> {
        let now = hexpulse_common::time::now_ms();
        let cutoff = now.saturating_sub(self.cfg.window.as_millis() as i64);
        for (t, name) in TABLES.iter().enumerate() {
            let table = self.lake.table(name);
            let read_to = self.inner.read().expect("lock").versions[t];
            // The files of new rows since the version read, or (first, or where the log no longer
            // holds a commit not read) the snapshot's files whose partitions can hold rows received
            // in the window: the stream tables are partitioned by event date, which the rules
            // allow to lie up to `lateness` before the receive time.
            let (version, files, fresh) = match read_to {
                Some(v) => match table.added_since(v).await? {
                    Some(a) => (Some(a.version), a.files, false),
                    None => {
                        tracing::info!(
                            table = name,
                            after = v,
                            "the log no longer holds a commit the device status has not read; reading the snapshot"
                        );
                        let (v, files) = table.files().await?;
                        (v, files, true)
                    }
                },
                None => {
                    let (v, files) = table.files().await?;
                    (v, files, true)
                }
            };
            let since = if t == REJECTED {
                cutoff
            } else {
                cutoff.saturating_sub(self.lateness_ms)
            };
            let first_date = date_of(since);
            let mut valid: HashMap<Key, ValidRow> = HashMap::new();
            let mut rejected: HashMap<Key, RejectedRows> = HashMap::new();
            let mut gone = false;
            for f in &files {
                if fresh && f.date.as_deref().is_some_and(|d| d < first_date.as_str()) {
                    continue;
                }
                match read_file(self, t, f, cutoff).await? {
                    None => {
                        gone = true;
                        break;
                    }
                    Some(Rows::Valid(rows)) => {
                        for (k, r) in rows {
                            valid
                                .entry(k)
                                .and_modify(|x| {
                                    if r.seen.newer_than(&x.seen) {
                                        *x = r;
                                    }
                                })
                                .or_insert(r);
                        }
                    }
                    Some(Rows::Rejected(rows)) => {
                        for (k, r) in rows {
                            merge_rejected(rejected.entry(k).or_default(), r);
                        }
                    }
                }
            }
            let mut inner = self.inner.write().expect("lock");
            if gone {
                // A file was vacuumed before it was read: read the table's snapshot next time.
                tracing::info!(
                    table = name,
                    "a file of the lake went away before the device status read it; reading the snapshot next time"
                );
                inner.versions[t] = None;
                continue;
            }
            if t == REJECTED {
                inner.fold_rejected(rejected, fresh);
            } else {
                inner.fold_valid(t as u8, valid);
            }
            inner.versions[t] = version.or(Some(-1));
        }
        let mut inner = self.inner.write().expect("lock");
        let evicted = inner.prune(cutoff, self.cfg.max_devices);
        if evicted > 0 {
            metrics::counter!(super::STATUS_EVICTED).increment(evicted as u64);
        }
        inner.as_of_ms = Some(now);
        Ok(())
    }
}

fn merge_rejected(into: &mut RejectedRows, from: RejectedRows) {
    if into.kind.is_none() {
        into.kind = from.kind;
    }
    for (k, n) in from.counts {
        *into.counts.entry(k).or_default() += n;
    }
    if let Some(l) = from.last
        && into.last.as_ref().is_none_or(|x| (l.0, &l.1) > (x.0, &x.1))
    {
        into.last = Some(l);
    }
}
