//! Reading an epoch's rows from the lake and aggregating them into the epoch tables.
//!
//! Memory: the rows go through buckets (by device, then by cell, see [`compute`]), so a seal holds
//! one bucket of rows at a time, within [`SealMemory`]; what grows with the epoch is only the
//! tables themselves (a row per device and per cell group).
//!
//! Determinism: every aggregate is keyed by a `BTreeMap`, every floating-point reduction runs over
//! values sorted by total order, and every table is sorted by its key, so neither file order, nor
//! partitioning (which changes provenance), nor the buckets can change a bit of the output.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMillisecondType, UInt64Type,
};
use hexpulse_schemas::reasons::RejectReason;
use hexpulse_schemas::tables;
use hexpulse_schemas::wire::KindName;

use super::spill::{Buckets, Reader, Writer};
use super::{EpochConfig, EpochError, median};
use crate::rules::{RewardRules, Rules};
use crate::store::ParquetStream;
use crate::{COMPACTED_ZSTD_LEVEL, Lake, column, decode_parquet, encode_parquet_with};
use crate::{HOUR_MS, date_hour};
use hexpulse_rewards::merkle::{self, Hash};
use hexpulse_rewards::points::{self, DeviceFacts};

#[derive(Debug, Clone)]
struct Hb {
    key: String,
    seq: u64,
    /// The UTC hour (ms since the epoch / 3,600,000) the reading was received in, when that hour is
    /// in the epoch: the hour it makes active.
    active: Option<i64>,
    cell: u64,
    dist: f64,
    signal: f64,
    down: Option<f64>,
    up: Option<f64>,
    latency: Option<f64>,
}

#[derive(Debug, Clone)]
struct Sensor {
    key: String,
    t: i64,
    /// The UTC hour (ms since the epoch / 3,600,000) the reading was received in, when that hour is
    /// in the epoch: the hour it makes active.
    active: Option<i64>,
    seq: u64,
    cell: u64,
    dist: f64,
    metric: String,
    value: f64,
}

#[derive(Debug, Clone)]
struct Road {
    key: String,
    seq: u64,
    /// The UTC hour (ms since the epoch / 3,600,000) the reading was received in, when that hour is
    /// in the epoch: the hour it makes active.
    active: Option<i64>,
    cell: u64,
    observation: String,
}

mod outputs;
mod scan;

pub use outputs::{Encoded, EpochTables};
use scan::Scan;

const HB: u8 = 0;
const SENSOR: u8 = 1;
const ROAD: u8 = 2;
const REJECTED: u8 = 3;

impl Hb {
    fn write(&self, w: &mut Writer) {
        w.u8(HB);
        w.str(&self.key);
        w.u64(self.seq);
        w.opt_i64(self.active);
        w.u64(self.cell);
        w.f64(self.dist);
        w.f64(self.signal);
        w.opt_f64(self.down);
        w.opt_f64(self.up);
        w.opt_f64(self.latency);
    }

    fn read(r: &mut Reader) -> Hb {
        Hb {
            key: r.str(),
            seq: r.u64(),
            active: r.opt_i64(),
            cell: r.u64(),
            dist: r.f64(),
            signal: r.f64(),
            down: r.opt_f64(),
            up: r.opt_f64(),
            latency: r.opt_f64(),
        }
    }
}

impl Sensor {
    fn write(&self, w: &mut Writer) {
        w.u8(SENSOR);
        w.str(&self.key);
        w.i64(self.t);
        w.opt_i64(self.active);
        w.u64(self.seq);
        w.u64(self.cell);
        w.f64(self.dist);
        w.str(&self.metric);
        w.f64(self.value);
    }

    fn read(r: &mut Reader) -> Sensor {
        Sensor {
            key: r.str(),
            t: r.i64(),
            active: r.opt_i64(),
            seq: r.u64(),
            cell: r.u64(),
            dist: r.f64(),
            metric: r.str(),
            value: r.f64(),
        }
    }
}

impl Road {
    fn write(&self, w: &mut Writer) {
        w.u8(ROAD);
        w.str(&self.key);
        w.u64(self.seq);
        w.opt_i64(self.active);
        w.u64(self.cell);
        w.str(&self.observation);
    }

    fn read(r: &mut Reader) -> Road {
        Road {
            key: r.str(),
            seq: r.u64(),
            active: r.opt_i64(),
            cell: r.u64(),
            observation: r.str(),
        }
    }
}

/// The rows of one bucket.
#[derive(Debug, Default)]
struct EpochRows {
    hb: Vec<Hb>,
    sensor: Vec<Sensor>,
    road: Vec<Road>,
    /// (device key, reason) of rejected rows that name a device.
    rejected: Vec<(String, String)>,
}

impl EpochRows {
    /// The records of a bucket (see [`spill`](super::spill)).
    fn read(bytes: &[u8]) -> EpochRows {
        let mut rows = EpochRows::default();
        let mut r = Reader(bytes);
        while !r.is_empty() {
            match r.u8() {
                HB => rows.hb.push(Hb::read(&mut r)),
                SENSOR => rows.sensor.push(Sensor::read(&mut r)),
                ROAD => rows.road.push(Road::read(&mut r)),
                REJECTED => rows.rejected.push((r.str(), r.str())),
                tag => unreachable!("record tag {tag} was never written"),
            }
        }
        rows
    }
}

/// An input file of an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// The stream table.
    pub table: String,
    /// The file's path under the lake root.
    pub path: String,
    /// Rows, from the file's statistics in the table log.
    pub rows: Option<u64>,
}

fn in_hours(path: &str, from: &(String, u32), to: &(String, u32)) -> bool {
    let mut parts = path.split('/').skip(1);
    let date = parts.next().and_then(|d| d.strip_prefix("date="));
    let hour = parts
        .next()
        .and_then(|h| h.strip_prefix("hour="))
        .and_then(|h| h.parse::<u32>().ok());
    match (date, hour) {
        (Some(d), Some(h)) => {
            (d, h) >= (from.0.as_str(), from.1) && (d, h) <= (to.0.as_str(), to.1)
        }
        _ => false,
    }
}

/// The data files of `table`'s Delta snapshot whose hour overlaps `[from_ms, to_ms)`, with the
/// snapshot's version: the newest, or the version `at`. `None` version: the table does not exist.
pub async fn files_between(
    lake: &Lake,
    table: &str,
    from_ms: i64,
    to_ms: i64,
    at: Option<i64>,
) -> Result<(Option<i64>, Vec<InputFile>), EpochError> {
    let (from, to) = (date_hour(from_ms), date_hour(to_ms - 1));
    let t = lake.table(table);
    let (version, files) = match at {
        Some(v) => (Some(v), t.files_at(v).await?),
        None => t.files().await?,
    };
    Ok((
        version,
        files
            .into_iter()
            .filter(|f| in_hours(&f.path, &from, &to))
            .map(|f| InputFile {
                table: table.to_string(),
                path: f.path,
                rows: f.rows,
            })
            .collect(),
    ))
}

/// Every input file of epoch `id`: the valid tables' hours of the epoch, and the `rejected` hours
/// from its start to its end plus the lateness and clock skew (rejected rows are filed by receive time).
pub async fn epoch_files(
    lake: &Lake,
    cfg: &EpochConfig,
    rules: &Rules,
    id: i64,
) -> Result<Vec<InputFile>, EpochError> {
    Ok(epoch_inputs(lake, cfg, rules, id, None).await?.0)
}

/// [`epoch_files`], read at the Delta versions `at` (a sealed manifest's `input_versions`) or at
/// each table's newest, with the version each table was read at.
pub async fn epoch_inputs(
    lake: &Lake,
    cfg: &EpochConfig,
    rules: &Rules,
    id: i64,
    at: Option<&BTreeMap<String, i64>>,
) -> Result<(Vec<InputFile>, BTreeMap<String, i64>), EpochError> {
    let (start, end) = cfg.bounds(id)?;
    let tail = (rules.time.allowed_lateness + rules.time.max_future_skew).as_millis() as i64;
    let mut files = Vec::new();
    let mut versions = BTreeMap::new();
    let tables = KindName::ALL
        .map(|k| (k.as_str(), end))
        .into_iter()
        .chain([(tables::REJECTED_TABLE, end + tail + HOUR_MS)]);
    for (table, to) in tables {
        let pinned = match at {
            Some(at) => match at.get(table) {
                Some(v) => Some(*v),
                // Not in the pinned set: the table did not exist when the epoch was sealed.
                None => continue,
            },
            None => None,
        };
        let (version, found) = files_between(lake, table, start, to, pinned).await?;
        if let Some(v) = version {
            versions.insert(table.to_string(), v);
        }
        files.extend(found);
    }
    Ok((files, versions))
}

/// How many bytes a row takes while its bucket is aggregated: its record read back, decoded with its
/// strings, and its place in the one-per-reading map (`bench seal`: about 300). It sizes the buckets.
const ROW_BYTES: u64 = 320;

/// The memory a seal may use, and how it is shared: a quarter for the buffers of the buckets not
/// yet on disk (an eighth for the device buckets, an eighth for the cell buckets), a quarter for
/// the rows of the one bucket being aggregated, and the rest for the input file being read and the
/// epoch tables, which grow with devices and cells, not with rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealMemory {
    /// The whole budget, bytes.
    pub bytes: u64,
}

impl SealMemory {
    /// Buckets for an epoch of about `rows` rows: enough that one bucket's rows fit in a quarter.
    fn buckets(self, rows: u64) -> usize {
        let quarter = (self.bytes / 4).max(1);
        rows.saturating_mul(ROW_BYTES)
            .div_ceil(quarter)
            .clamp(1, 65_536) as usize
    }

    /// The buffers of one set of buckets (by device, or by cell).
    fn buffer_bytes(self) -> usize {
        (self.bytes / 8) as usize
    }
}

/// What computing an epoch produced: its tables, the inputs it read, and how it spilled.
#[derive(Debug)]
pub struct Computed {
    /// The epoch tables.
    pub tables: EpochTables,
    /// (topic, partition) -> (first offset, last offset, rows).
    pub inputs: BTreeMap<(String, i32), (i64, i64, u64)>,
    /// Rejected rows without a device key (malformed records): counted, not attributed.
    pub unattributed_rejections: u64,
    /// Buckets the rows were split into (by device, then by cell).
    pub buckets: usize,
    /// Bytes written to temporary files (0: the epoch fitted in memory).
    pub spilled_bytes: u64,
}

/// Computes epoch `id` from `files` (as [`epoch_inputs`] lists them, in any order) within
/// `memory`.
///
/// Three passes, each holding at most one input file or one bucket of rows:
/// 1. every row of the epoch goes to the bucket of its device;
/// 2. each device bucket's rows become one per reading ([`Readings`]), its devices' summaries, and
///    records in the bucket of their cell;
/// 3. each cell bucket's readings become its cells' rows of the other tables.
///
/// Every device and every cell lies in one bucket, and each table is sorted by its key at the end,
/// so the buckets' number and order change nothing in the output.
pub async fn compute(
    lake: &Lake,
    cfg: &EpochConfig,
    rules: &Rules,
    id: i64,
    files: &[InputFile],
    memory: SealMemory,
) -> Result<Computed, EpochError> {
    let rows: u64 = files.iter().map(|f| f.rows.unwrap_or(0)).sum();
    let mut scan = Scan::new(cfg, id, memory.buckets(rows), memory.buffer_bytes())?;
    for f in files {
        let Some(bytes) = lake.get(&f.path).await? else {
            return Err(EpochError::Invalid(format!(
                "{} vanished while sealing",
                f.path
            )));
        };
        let table = f.table.clone();
        let path = f.path.clone();
        scan = blocking(move || {
            scan.file(&table, &path, bytes)?;
            Ok(scan)
        })
        .await?;
    }
    let rules = rules.clone();
    blocking(move || scan.finish(&rules)).await
}

/// Runs `f` on the blocking pool: aggregation and the buckets' file I/O must not hold an I/O thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EpochError> + Send + 'static,
) -> Result<T, EpochError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EpochError::Invalid(format!("the sealing task failed: {e}")))?
}

fn hash_of(v: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(v)
}

fn spill_error(e: std::io::Error) -> EpochError {
    EpochError::Invalid(format!("the seal's temporary files: {e}"))
}

#[cfg(test)]
mod tests {
    use super::outputs::*;
    use super::scan::*;
    use super::*;

    fn rows() -> EpochRows {
        let hb = |key: &str, t: i64, cell: u64, dist: f64, signal: f64| Hb {
            key: key.into(),
            seq: t as u64,
            active: Some(t / 3_600_000),
            cell,
            dist,
            signal,
            down: Some(signal + 200.0),
            up: None,
            latency: Some(t as f64 / 1e6),
        };
        let sensor = |key: &str, seq: u64, dist: f64, metric: &str, value: f64| Sensor {
            key: key.into(),
            t: 3_600_000 + seq as i64 * 1_000,
            active: Some(1),
            seq,
            cell: 600 + seq % 3,
            dist,
            metric: metric.into(),
            value,
        };
        let road = |key: &str, seq: u64, cell: u64, observation: &str| Road {
            key: key.into(),
            seq,
            active: None,
            cell,
            observation: observation.into(),
        };
        EpochRows {
            hb: vec![
                hb("a", 10, 1, 5.0, -70.0),
                hb("a", 3_600_010, 2, 7.5, -71.0),
                hb("b", 20, 1, f64::NAN, -90.5),
                hb("b", 30, 1, 2.0, -60.25),
            ],
            sensor: vec![
                sensor("s", 1, 10.0, "pm25", 3.5),
                sensor("s", 1, 10.0, "pm10", 9.0),
                // Sequence number 2 reused by two readings with different positions.
                sensor("s", 2, 40.0, "pm25", 4.0),
                sensor("s", 2, 900.0, "pm25", 80.0),
                sensor("s", 3, f64::NAN, "pm25", 0.1),
                sensor("t", 1, 3.0, "no2", 12.0),
            ],
            road: vec![
                road("r1", 1, 5, "pothole"),
                road("r2", 1, 5, "pothole"),
                // The same reading stored twice, and a sequence number reused at another cell.
                road("r1", 1, 5, "pothole"),
                road("r2", 2, 6, "sign"),
                road("r2", 2, 7, "sign"),
            ],
            rejected: vec![
                ("a".into(), "duplicate".into()),
                ("s".into(), "stale".into()),
                ("a".into(), "duplicate".into()),
            ],
        }
    }

    /// The epoch tables of `rows`, through `buckets` buckets that keep `budget` bytes in memory.
    fn tables(rows: &EpochRows, rules: &Rules, buckets: usize, budget: usize) -> EpochTables {
        let mut b = Buckets::new(buckets, budget);
        let mut put = |key: &str, write: &dyn Fn(&mut Writer)| {
            b.push(b.of(hash_of(key)), |w| write(w)).unwrap();
        };
        for h in &rows.hb {
            put(&h.key, &|w| h.write(w));
        }
        for s in &rows.sensor {
            put(&s.key, &|w| s.write(w));
        }
        for o in &rows.road {
            put(&o.key, &|w| o.write(w));
        }
        for (k, reason) in &rows.rejected {
            put(k, &|w| {
                w.u8(REJECTED);
                w.str(k);
                w.str(reason);
            });
        }
        let cells = rows
            .hb
            .iter()
            .map(|h| h.cell)
            .chain(rows.sensor.iter().map(|s| s.cell))
            .chain(rows.road.iter().map(|o| o.cell))
            .collect();
        let ranges = CellRanges::from_sample(cells, buckets);
        aggregate_buckets(b, &ranges, 7, rules, budget).unwrap().0
    }

    /// A table's rows, read back from its file.
    fn rows_of(e: &Encoded) -> RecordBatch {
        let batches = decode_parquet(e.bytes.clone(), None).unwrap();
        let schema = batches[0].schema();
        arrow::compute::concat_batches(&schema, &batches).unwrap()
    }

    fn output(rows: &EpochRows, rules: &Rules) -> Vec<RecordBatch> {
        let t = tables(rows, rules, 1, usize::MAX);
        assert!(!t.leaves.is_empty());
        [
            &t.device_summary,
            &t.hex_coverage,
            &t.sensor_hex_hourly,
            &t.road_hex,
        ]
        .map(rows_of)
        .to_vec()
    }

    /// `road_hex` keeps a (cell, type) only where that type has k distinct dashcams, however many
    /// the cell has in all or the type's observations are.
    #[test]
    fn road_hex_keeps_a_type_only_where_it_has_k_dashcams() {
        let mut rules = Rules::load(None).unwrap();
        rules.privacy.road_min_devices = 2;
        let road = |key: &str, seq: u64, cell: u64, observation: &str| Road {
            key: key.into(),
            seq,
            active: None,
            cell,
            observation: observation.into(),
        };
        let rows = EpochRows {
            road: vec![
                // Cell 5: potholes from two dashcams; signs from one, many times.
                road("r1", 1, 5, "pothole"),
                road("r2", 1, 5, "pothole"),
                road("r1", 2, 5, "sign"),
                road("r1", 3, 5, "sign"),
                road("r1", 4, 5, "sign"),
                // Cell 6: one dashcam only.
                road("r3", 1, 6, "pothole"),
                road("r3", 2, 6, "pothole"),
            ],
            ..Default::default()
        };
        let t = tables(&rows, &rules, 3, 0);
        let b = &rows_of(&t.road_hex);
        let cells = b
            .column_by_name("h3_cell")
            .unwrap()
            .as_primitive::<UInt64Type>();
        let obs = b.column_by_name("observation").unwrap().as_string::<i32>();
        let kept: Vec<(u64, &str)> = (0..b.num_rows())
            .map(|i| (cells.value(i), obs.value(i)))
            .collect();
        assert_eq!(kept, [(5, "pothole")]);
    }

    /// The buckets' number, and whether they spill to files, change no bit of the tables.
    #[test]
    fn buckets_and_spilling_never_change_the_epoch_tables() {
        let mut rules = Rules::load(None).unwrap();
        rules.privacy.road_min_devices = 1;
        let base = rows();
        let want = tables(&base, &rules, 1, usize::MAX);
        for (buckets, budget) in [(2, usize::MAX), (3, 0), (7, 64), (64, 0)] {
            let t = tables(&base, &rules, buckets, budget);
            assert_eq!(
                [
                    t.device_summary,
                    t.hex_coverage,
                    t.sensor_hex_hourly,
                    t.road_hex
                ],
                [
                    want.device_summary.clone(),
                    want.hex_coverage.clone(),
                    want.sensor_hex_hourly.clone(),
                    want.road_hex.clone()
                ],
                "{buckets} buckets, {budget} bytes in memory: the same bytes"
            );
            assert_eq!(t.leaves, want.leaves);
        }
    }

    /// Rows written to a table's file in chunks give the bytes of one batch of all of them, so
    /// neither the buckets nor the chunks change a file.
    #[test]
    fn chunked_output_files_are_the_bytes_of_one_batch() {
        let rules = Rules::load(None).unwrap();
        let rows: Vec<HourlyRow> = (0..3 * CHUNK_ROWS as u64 + 77)
            .map(|i| HourlyRow {
                cell: 600 + i / 24,
                hour: (i % 24) as i64 * 3_600_000,
                metric: Arc::from(["pm25", "no2"][(i % 2) as usize]),
                count: i % 7 + 1,
                mean: i as f64 / 3.0,
                min: 0.5,
                max: i as f64,
                p95: i as f64 * 0.95,
            })
            .collect();
        let one = encode_parquet_with(
            &hourly_batch(&rows, 7).unwrap(),
            COMPACTED_ZSTD_LEVEL,
            footer(7, &rules),
        )
        .unwrap();
        let mut out =
            TableOut::new(tables::sensor_hex_hourly_schema(), hourly_batch, 7, &rules).unwrap();
        for part in rows.chunks(1000) {
            out.push(part.iter().map(|r| HourlyRow {
                metric: r.metric.clone(),
                ..*r
            }))
            .unwrap();
        }
        let chunked = out.finish().unwrap();
        assert_eq!(chunked.rows, rows.len() as u64);
        assert_eq!(chunked.bytes, one);
    }

    /// A seal reads files in whatever order the log lists them; no order of the rows (here every
    /// rotation and the reversal of each list) may change a bit of the epoch tables, even where
    /// a device reused a sequence number.
    #[test]
    fn row_order_never_changes_the_epoch_tables() {
        let mut rules = Rules::load(None).unwrap();
        rules.privacy.road_min_devices = 1;
        let base = rows();
        let want = output(&base, &rules);
        let summary = &want[0];
        let keys = summary
            .column_by_name("device_key")
            .unwrap()
            .as_string::<i32>();
        let s = (0..keys.len()).find(|i| keys.value(*i) == "s").unwrap();
        let sensor = summary.column_by_name("sensor_readings").unwrap();
        assert_eq!(sensor.as_primitive::<UInt64Type>().value(s), 3);
        let md = summary.column_by_name("median_distance_m").unwrap();
        // Readings 1 (10 m), 2 (the nearer of 40 and 900 m); 3 has no distance.
        assert_eq!(md.as_primitive::<Float64Type>().value(s), 25.0);
        // Each road reading counts once: r1 stored one twice, r2 reused a sequence number.
        let road = summary.column_by_name("road_observations").unwrap();
        let road = road.as_primitive::<UInt64Type>();
        let counts: Vec<(&str, u64)> = (0..keys.len())
            .filter(|i| keys.value(*i).starts_with('r'))
            .map(|i| (keys.value(i), road.value(i)))
            .collect();
        assert_eq!(counts, [("r1", 1), ("r2", 2)]);

        let n = base.hb.len().max(base.sensor.len()).max(base.road.len());
        for turn in 0..n {
            for reverse in [false, true] {
                let mut r = rows();
                fn spin<T>(v: &mut [T], turn: usize) {
                    if !v.is_empty() {
                        let by = turn % v.len();
                        v.rotate_left(by);
                    }
                }
                spin(&mut r.hb, turn);
                spin(&mut r.sensor, turn);
                spin(&mut r.road, turn);
                spin(&mut r.rejected, turn);
                if reverse {
                    r.hb.reverse();
                    r.sensor.reverse();
                    r.road.reverse();
                    r.rejected.reverse();
                }
                assert_eq!(
                    output(&r, &rules),
                    want,
                    "rotation {turn}, reversed {reverse}"
                );
            }
        }
    }
}
