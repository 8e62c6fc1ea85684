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
    pub table: String,
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

/// Pass 1: the epoch's rows, read file by file into the buckets of their devices.
struct Scan {
    start: i64,
    end: i64,
    id: i64,
    cell_col: String,
    devices: Buckets,
    budget: usize,
    /// Cells of the valid rows, sampled (`CELL_SAMPLE` at most) for the cell buckets' bounds.
    cells: Vec<u64>,
    cells_seen: u64,
    inputs: BTreeMap<(String, i32), (i64, i64, u64)>,
    unattributed_rejections: u64,
}

impl Scan {
    fn new(cfg: &EpochConfig, id: i64, buckets: usize, budget: usize) -> Result<Scan, EpochError> {
        let (start, end) = cfg.bounds(id)?;
        Ok(Scan {
            start,
            end,
            id,
            cell_col: tables::h3_column(cfg.hex_resolution),
            devices: Buckets::new(buckets, budget),
            budget,
            cells: Vec::new(),
            cells_seen: 0,
            inputs: BTreeMap::new(),
            unattributed_rejections: 0,
        })
    }

    fn saw(&mut self, topic: &str, partition: i32, offset: i64) {
        let e = self
            .inputs
            .entry((topic.to_string(), partition))
            .or_insert((offset, offset, 0));
        e.0 = e.0.min(offset);
        e.1 = e.1.max(offset);
        e.2 += 1;
    }

    /// Keeps `cell` in the sample with the same chance as every other cell seen (reservoir
    /// sampling; the choice is a hash of the count, so a re-run samples the same).
    fn sample(&mut self, cell: u64) {
        self.cells_seen += 1;
        if self.cells.len() < CELL_SAMPLE {
            self.cells.push(cell);
        } else {
            let j = hash_of(self.cells_seen) % self.cells_seen;
            if let Some(slot) = self.cells.get_mut(j as usize) {
                *slot = cell;
            }
        }
    }

    fn put(&mut self, key: &str, write: impl FnOnce(&mut Writer)) -> Result<(), EpochError> {
        let bucket = self.devices.of(hash_of(key));
        self.devices.push(bucket, write).map_err(spill_error)
    }

    /// The epoch's rows of one input file (of `table`, at `path`).
    fn file(&mut self, table: &str, path: &str, bytes: bytes::Bytes) -> Result<(), EpochError> {
        let (start, end) = (self.start, self.end);
        for b in decode_parquet(bytes, None)? {
            if table != tables::REJECTED_TABLE && b.column_by_name(&self.cell_col).is_none() {
                return Err(EpochError::Config(format!(
                    "{path} has no column {}: the epoch hex_resolution must be one of the \
                     processors' h3_resolutions",
                    self.cell_col
                )));
            }
            let topic = column(&b, "src_topic").as_string::<i32>();
            let part = column(&b, "src_partition").as_primitive::<Int32Type>();
            let off = column(&b, "src_offset").as_primitive::<Int64Type>();
            let key = column(&b, "device_key").as_string::<i32>();
            if table == tables::REJECTED_TABLE {
                let et = column(&b, "event_time").as_primitive::<TimestampMillisecondType>();
                let rt = column(&b, "receive_time").as_primitive::<TimestampMillisecondType>();
                let reason = column(&b, "reason").as_string::<i32>();
                for i in 0..b.num_rows() {
                    let t = if et.is_null(i) {
                        rt.value(i)
                    } else {
                        et.value(i)
                    };
                    if t < start || t >= end {
                        continue;
                    }
                    self.saw(topic.value(i), part.value(i), off.value(i));
                    if key.is_null(i) {
                        self.unattributed_rejections += 1;
                    } else {
                        let k = key.value(i);
                        self.put(k, |w| {
                            w.u8(REJECTED);
                            w.str(k);
                            w.str(reason.value(i));
                        })?;
                    }
                }
                continue;
            }
            let t = column(&b, "event_time").as_primitive::<TimestampMillisecondType>();
            let cell = column(&b, &self.cell_col).as_primitive::<UInt64Type>();
            // Files written before this column existed have no distance: NaN, left out of the median.
            let dist = b
                .column_by_name("asserted_distance_m")
                .map(|c| c.as_primitive::<Float64Type>());
            let dist_at = |i: usize| dist.map_or(f64::NAN, |d| d.value(i));
            let seq = column(&b, "seq").as_primitive::<UInt64Type>();
            // An hour is active by a reading received in it, never by a claimed event time:
            // backdated readings make no hour active that the device was not heard in.
            let rt = column(&b, "receive_time").as_primitive::<TimestampMillisecondType>();
            let active = |i: usize| {
                let r = rt.value(i);
                (r >= start && r < end).then(|| r.div_euclid(HOUR_MS))
            };
            let rows = (0..b.num_rows()).filter(|i| t.value(*i) >= start && t.value(*i) < end);
            match table {
                "heartbeat" => {
                    let sig = column(&b, "signal_dbm").as_primitive::<Float32Type>();
                    let down = column(&b, "download_mbps").as_primitive::<Float32Type>();
                    let up = column(&b, "upload_mbps").as_primitive::<Float32Type>();
                    let lat = column(&b, "latency_ms").as_primitive::<Float32Type>();
                    let opt = |a: &arrow::array::Float32Array, i: usize| {
                        (!a.is_null(i)).then(|| a.value(i) as f64)
                    };
                    for i in rows {
                        self.saw(topic.value(i), part.value(i), off.value(i));
                        let h = Hb {
                            key: key.value(i).to_string(),
                            seq: seq.value(i),
                            active: active(i),
                            cell: cell.value(i),
                            dist: dist_at(i),
                            signal: sig.value(i) as f64,
                            down: opt(down, i),
                            up: opt(up, i),
                            latency: opt(lat, i),
                        };
                        self.sample(h.cell);
                        self.put(&h.key, |w| h.write(w))?;
                    }
                }
                "sensor" => {
                    let metric = column(&b, "metric").as_string::<i32>();
                    let value = column(&b, "value").as_primitive::<Float64Type>();
                    for i in rows {
                        self.saw(topic.value(i), part.value(i), off.value(i));
                        let s = Sensor {
                            key: key.value(i).to_string(),
                            t: t.value(i),
                            active: active(i),
                            seq: seq.value(i),
                            cell: cell.value(i),
                            dist: dist_at(i),
                            metric: metric.value(i).to_string(),
                            value: value.value(i),
                        };
                        self.sample(s.cell);
                        self.put(&s.key, |w| s.write(w))?;
                    }
                }
                "road" => {
                    let obs = column(&b, "observation").as_string::<i32>();
                    for i in rows {
                        self.saw(topic.value(i), part.value(i), off.value(i));
                        let o = Road {
                            key: key.value(i).to_string(),
                            seq: seq.value(i),
                            active: active(i),
                            cell: cell.value(i),
                            observation: obs.value(i).to_string(),
                        };
                        self.sample(o.cell);
                        self.put(&o.key, |w| o.write(w))?;
                    }
                }
                other => return Err(EpochError::Invalid(format!("unexpected table {other}"))),
            }
        }
        Ok(())
    }

    /// Passes 2 and 3, and the tables.
    fn finish(self, rules: &Rules) -> Result<Computed, EpochError> {
        let buckets = self.devices.len();
        let ranges = CellRanges::from_sample(self.cells, buckets);
        let (tables, spilled_bytes) =
            aggregate_buckets(self.devices, &ranges, self.id, rules, self.budget)?;
        Ok(Computed {
            tables,
            inputs: self.inputs,
            unattributed_rejections: self.unattributed_rejections,
            buckets,
            spilled_bytes,
        })
    }
}

/// Rows per batch handed to an output's Parquet writer: a multiple of the writer's step (1,024) that
/// divides its row groups, so the file's bytes do not depend on how the rows arrived.
const CHUNK_ROWS: usize = 8192;

/// How many cells [`Scan`] samples to place the cell buckets' bounds.
const CELL_SAMPLE: usize = 65_536;

/// The bounds of the cell buckets: bucket `i` holds the cells from `bounds[i - 1]` up to (not
/// including) `bounds[i]`, so the buckets, taken in order, hold the cells in order.
struct CellRanges {
    bounds: Vec<u64>,
}

impl CellRanges {
    /// `buckets` ranges with about as many sampled cells in each.
    fn from_sample(mut sample: Vec<u64>, buckets: usize) -> CellRanges {
        sample.sort_unstable();
        let bounds = if sample.is_empty() {
            Vec::new()
        } else {
            (1..buckets.max(1))
                .map(|i| sample[i * sample.len() / buckets])
                .collect()
        };
        CellRanges { bounds }
    }

    fn len(&self) -> usize {
        self.bounds.len() + 1
    }

    fn of(&self, cell: u64) -> usize {
        self.bounds.partition_point(|b| *b <= cell)
    }
}

/// One output table, written as its rows arrive (in key order) in batches of [`CHUNK_ROWS`].
struct TableOut<R> {
    stream: ParquetStream,
    pending: Vec<R>,
    batch: fn(&[R], i64) -> Result<RecordBatch, EpochError>,
    id: i64,
}

impl<R> TableOut<R> {
    fn new(
        schema: arrow::datatypes::SchemaRef,
        batch: fn(&[R], i64) -> Result<RecordBatch, EpochError>,
        id: i64,
        rules: &Rules,
    ) -> Result<TableOut<R>, EpochError> {
        Ok(TableOut {
            stream: ParquetStream::new(schema, COMPACTED_ZSTD_LEVEL, footer(id, rules))?,
            pending: Vec::with_capacity(CHUNK_ROWS),
            batch,
            id,
        })
    }

    fn push(&mut self, rows: impl IntoIterator<Item = R>) -> Result<(), EpochError> {
        for r in rows {
            self.pending.push(r);
            if self.pending.len() == CHUNK_ROWS {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EpochError> {
        let b = (self.batch)(&self.pending, self.id)?;
        self.stream.write(&b)?;
        self.pending.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<Encoded, EpochError> {
        // An empty table is still a file with the table's schema (one empty batch, as before).
        if !self.pending.is_empty() || self.stream.rows() == 0 {
            self.flush()?;
        }
        let rows = self.stream.rows();
        Ok(Encoded {
            bytes: self.stream.finish()?,
            rows,
        })
    }
}

/// The footer of every output: the epoch and the rules it was computed under (also in the manifest).
fn footer(id: i64, rules: &Rules) -> Vec<(String, String)> {
    vec![
        ("hexpulse.epoch".into(), id.to_string()),
        ("hexpulse.rules_version".into(), rules.version.clone()),
        ("hexpulse.rules_hash".into(), rules.hash.clone()),
    ]
}

/// Passes 2 and 3 over the device buckets: the epoch tables, and the bytes both passes spilled.
fn aggregate_buckets(
    mut devices: Buckets,
    ranges: &CellRanges,
    id: i64,
    rules: &Rules,
    budget: usize,
) -> Result<(EpochTables, u64), EpochError> {
    let mut cells = Buckets::new(ranges.len(), budget);
    let mut summaries = Vec::new();
    for b in 0..devices.len() {
        let rows = EpochRows::read(&devices.take(b).map_err(spill_error)?);
        let once = Readings::of(&rows);
        summaries.extend(device_rows(&rows, &once, &rules.rewards));
        for h in &once.hb {
            cells
                .push(ranges.of(h.cell), |w| h.write(w))
                .map_err(spill_error)?;
        }
        for s in &once.sensor {
            cells
                .push(ranges.of(s.cell), |w| s.write(w))
                .map_err(spill_error)?;
        }
        for o in &once.road {
            cells
                .push(ranges.of(o.cell), |w| o.write(w))
                .map_err(spill_error)?;
        }
    }
    // The cell tables, bucket by bucket in cell order, straight into their files.
    let mut coverage = TableOut::new(tables::hex_coverage_schema(), coverage_batch, id, rules)?;
    let mut hourly = TableOut::new(tables::sensor_hex_hourly_schema(), hourly_batch, id, rules)?;
    let mut road = TableOut::new(tables::road_hex_schema(), road_batch, id, rules)?;
    let mut names = Names::default();
    for b in 0..cells.len() {
        let rows = EpochRows::read(&cells.take(b).map_err(spill_error)?);
        // One per reading already (pass 2).
        let once = Readings {
            hb: rows.hb.iter().collect(),
            sensor: rows.sensor.iter().collect(),
            road: rows.road.iter().collect(),
        };
        coverage.push(coverage_rows(&once))?;
        hourly.push(hourly_rows(&once, &mut names))?;
        road.push(road_rows(&once, rules.privacy.road_min_devices, &mut names))?;
    }
    // A row per device: sorted here, since the device buckets are by hash.
    summaries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let summary = summary_batch(&summaries, id, rules)?;
    drop(summaries);
    let leaves = (0..summary.num_rows())
        .map(|i| merkle::encode_row(&summary, i).map(|e| merkle::leaf_hash(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let device_summary = Encoded {
        rows: summary.num_rows() as u64,
        bytes: encode_parquet_with(&summary, COMPACTED_ZSTD_LEVEL, footer(id, rules))?,
    };
    let tables = EpochTables {
        device_summary,
        hex_coverage: coverage.finish()?,
        sensor_hex_hourly: hourly.finish()?,
        road_hex: road.finish()?,
        leaves,
    };
    Ok((tables, devices.spilled + cells.spilled))
}

/// One epoch table's Parquet file.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub bytes: bytes::Bytes,
    pub rows: u64,
}

/// The epoch tables, and the Merkle leaves of the device summaries.
#[derive(Debug)]
pub struct EpochTables {
    pub device_summary: Encoded,
    pub hex_coverage: Encoded,
    pub sensor_hex_hourly: Encoded,
    pub road_hex: Encoded,
    pub leaves: Vec<Hash>,
}

/// What one device did in the epoch, from [`Readings`] (one row per reading).
#[derive(Default)]
struct Dev {
    heartbeats: u64,
    /// Each sensor reading (sequence number) once, with its asserted distance: the smallest of its
    /// rows' (a reused sequence number can carry two), so that no row order picks one.
    sensor_seqs: BTreeMap<u64, f64>,
    road: u64,
    hours: BTreeSet<i64>,
    cells: BTreeSet<u64>,
    dists: Vec<f64>,
    downs: Vec<f64>,
    latencies: Vec<f64>,
    rejected: BTreeMap<String, u64>,
}

impl Dev {
    fn kind(&self) -> KindName {
        if self.heartbeats > 0 {
            KindName::Heartbeat
        } else if !self.sensor_seqs.is_empty() {
            KindName::Sensor
        } else {
            KindName::Road
        }
    }
}

fn sorted_sum(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.iter().sum()
}

fn f64_col(v: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    let mut b = Float64Builder::new();
    for x in v {
        b.append_option(x);
    }
    Arc::new(b.finish())
}

fn cmp_opt(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

/// One row per reading: `id` names the reading (device, sequence number, and for sensors the
/// metric); of rows naming the same one (a record stored twice, a reused sequence number) the
/// least under `cmp`, a total order over the row, stays, so no row order decides.
fn one_per_reading<'a, T, K: Ord>(
    rows: &'a [T],
    id: impl Fn(&'a T) -> K,
    cmp: impl Fn(&T, &T) -> Ordering,
) -> Vec<&'a T> {
    let mut kept: BTreeMap<K, &'a T> = BTreeMap::new();
    for r in rows {
        kept.entry(id(r))
            .and_modify(|e| {
                if cmp(r, e).is_lt() {
                    *e = r;
                }
            })
            .or_insert(r);
    }
    kept.into_values().collect()
}

/// The epoch's rows, one per reading (WIRE.md: a device never repeats a sequence number, so a
/// reading counts once whatever reached the lake).
struct Readings<'a> {
    hb: Vec<&'a Hb>,
    sensor: Vec<&'a Sensor>,
    road: Vec<&'a Road>,
}

impl<'a> Readings<'a> {
    fn of(rows: &'a EpochRows) -> Readings<'a> {
        Readings {
            hb: one_per_reading(
                &rows.hb,
                |h| (h.key.as_str(), h.seq),
                |a, b| {
                    (a.cell, a.active)
                        .cmp(&(b.cell, b.active))
                        .then(a.signal.total_cmp(&b.signal))
                        .then(a.dist.total_cmp(&b.dist))
                        .then(cmp_opt(a.down, b.down))
                        .then(cmp_opt(a.up, b.up))
                        .then(cmp_opt(a.latency, b.latency))
                },
            ),
            sensor: one_per_reading(
                &rows.sensor,
                |s| (s.key.as_str(), s.seq, s.metric.as_str()),
                |a, b| {
                    (a.t, a.cell, a.active)
                        .cmp(&(b.t, b.cell, b.active))
                        .then(a.value.total_cmp(&b.value))
                        .then(a.dist.total_cmp(&b.dist))
                },
            ),
            road: one_per_reading(
                &rows.road,
                |o| (o.key.as_str(), o.seq),
                |a, b| (a.cell, &a.observation, a.active).cmp(&(b.cell, &b.observation, b.active)),
            ),
        }
    }
}

/// One device's row of `device_summary`.
struct SummaryRow {
    key: String,
    kind: &'static str,
    heartbeats: u64,
    sensor_readings: u64,
    road_observations: u64,
    active_hours: u32,
    distinct_hexes: u64,
    median_distance_m: Option<f64>,
    trust: f64,
    speed_tests: u64,
    median_download_mbps: Option<f64>,
    tier: &'static str,
    rejected: BTreeMap<String, u64>,
    points: u64,
}

/// The summaries of the devices of one bucket: `once` are its readings, `all` its rows (for the
/// rejected ones).
fn device_rows(all: &EpochRows, once: &Readings, r: &RewardRules) -> Vec<SummaryRow> {
    let mut devs: BTreeMap<&str, Dev> = BTreeMap::new();
    for h in &once.hb {
        let d = devs.entry(&h.key).or_default();
        d.heartbeats += 1;
        d.hours.extend(h.active);
        d.cells.insert(h.cell);
        if !h.dist.is_nan() {
            d.dists.push(h.dist);
        }
        if let Some(x) = h.down {
            d.downs.push(x);
        }
        if let Some(x) = h.latency {
            d.latencies.push(x);
        }
    }
    for s in &once.sensor {
        let d = devs.entry(&s.key).or_default();
        let dist = d.sensor_seqs.entry(s.seq).or_insert(f64::NAN);
        if !s.dist.is_nan() && (dist.is_nan() || s.dist < *dist) {
            *dist = s.dist;
        }
        d.hours.extend(s.active);
        d.cells.insert(s.cell);
    }
    for o in &once.road {
        let d = devs.entry(&o.key).or_default();
        d.road += 1;
        d.hours.extend(o.active);
        d.cells.insert(o.cell);
    }
    for d in devs.values_mut() {
        let dists = d.sensor_seqs.values().filter(|x| !x.is_nan());
        d.dists.extend(dists);
    }
    for (key, reason) in &all.rejected {
        if let Some(d) = devs.get_mut(key.as_str()) {
            *d.rejected.entry(reason.clone()).or_default() += 1;
        }
    }
    devs.into_iter()
        .map(|(k, mut d)| {
            let kd = d.kind();
            let md = if kd == KindName::Road {
                None
            } else {
                median(&mut d.dists)
            };
            let facts = DeviceFacts {
                kind: kd,
                active_hours: d.hours.len() as u32,
                distinct_hexes: d.cells.len() as u64,
                road_observations: d.road,
                median_distance_m: md,
                median_download_mbps: median(&mut d.downs),
                median_latency_ms: median(&mut d.latencies),
            };
            let a = points::award(r, &facts);
            SummaryRow {
                key: k.to_string(),
                kind: kd.as_str(),
                heartbeats: d.heartbeats,
                sensor_readings: d.sensor_seqs.len() as u64,
                road_observations: d.road,
                active_hours: facts.active_hours,
                distinct_hexes: facts.distinct_hexes,
                median_distance_m: md,
                trust: a.trust_bp as f64 / 10_000.0,
                speed_tests: d.downs.len() as u64,
                median_download_mbps: facts.median_download_mbps,
                tier: a.tier,
                rejected: d.rejected,
                points: a.points,
            }
        })
        .collect()
}

/// `device_summary` from its rows, in key order.
fn summary_batch(rows: &[SummaryRow], id: i64, rules: &Rules) -> Result<RecordBatch, EpochError> {
    let n = rows.len();
    let u64s = |f: fn(&SummaryRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![id; n])),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.key))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
        u64s(|r| r.heartbeats),
        u64s(|r| r.sensor_readings),
        u64s(|r| r.road_observations),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.active_hours),
        )),
        u64s(|r| r.distinct_hexes),
        f64_col(rows.iter().map(|r| r.median_distance_m)),
        f64_col(rows.iter().map(|r| Some(r.trust))),
        u64s(|r| r.speed_tests),
        f64_col(rows.iter().map(|r| r.median_download_mbps)),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.tier))),
        u64s(|r| r.rejected.values().sum::<u64>()),
    ];
    for reason in RejectReason::ALL {
        cols.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter()
                .map(|r| r.rejected.get(reason.as_str()).copied().unwrap_or(0)),
        )));
    }
    cols.push(u64s(|r| r.points));
    cols.push(Arc::new(StringArray::from(vec![rules.version.as_str(); n])));
    cols.push(Arc::new(StringArray::from(vec![rules.hash.as_str(); n])));
    Ok(RecordBatch::try_new(tables::device_summary_schema(), cols)?)
}

/// One cell's row of `hex_coverage`.
struct CoverageRow {
    cell: u64,
    devices: u64,
    heartbeats: u64,
    best: Option<f64>,
    median: Option<f64>,
    tests: u64,
    down: Option<f64>,
    up: Option<f64>,
    latency: Option<f64>,
}

/// The `hex_coverage` rows of the cells of one bucket.
fn coverage_rows(rows: &Readings) -> Vec<CoverageRow> {
    #[derive(Default)]
    struct Cell<'a> {
        devices: BTreeSet<&'a str>,
        signals: Vec<f64>,
        downs: Vec<f64>,
        ups: Vec<f64>,
        lats: Vec<f64>,
    }
    let mut cells: BTreeMap<u64, Cell> = BTreeMap::new();
    for h in &rows.hb {
        let c = cells.entry(h.cell).or_default();
        c.devices.insert(&h.key);
        c.signals.push(h.signal);
        c.downs.extend(h.down);
        c.ups.extend(h.up);
        c.lats.extend(h.latency);
    }
    cells
        .into_iter()
        .map(|(cell, mut c)| {
            let median_signal = median(&mut c.signals);
            CoverageRow {
                cell,
                devices: c.devices.len() as u64,
                heartbeats: c.signals.len() as u64,
                best: c.signals.last().copied(),
                median: median_signal,
                tests: c.downs.len() as u64,
                down: median(&mut c.downs),
                up: median(&mut c.ups),
                latency: median(&mut c.lats),
            }
        })
        .collect()
}

fn coverage_batch(rows: &[CoverageRow], id: i64) -> Result<RecordBatch, EpochError> {
    let u64s = |f: fn(&CoverageRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let f64s = |f: fn(&CoverageRow) -> Option<f64>| f64_col(rows.iter().map(f));
    Ok(RecordBatch::try_new(
        tables::hex_coverage_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id; rows.len()])),
            u64s(|r| r.cell),
            u64s(|r| r.devices),
            u64s(|r| r.heartbeats),
            f64s(|r| r.best),
            f64s(|r| r.median),
            u64s(|r| r.tests),
            f64s(|r| r.down),
            f64s(|r| r.up),
            f64s(|r| r.latency),
        ],
    )?)
}

/// One (cell, hour, metric) row of `sensor_hex_hourly`.
struct HourlyRow {
    cell: u64,
    hour: i64,
    metric: Arc<str>,
    count: u64,
    mean: f64,
    min: f64,
    max: f64,
    p95: f64,
}

/// The names that many output rows repeat (metrics, observation types), each kept once.
#[derive(Default)]
struct Names(BTreeSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(n.clone());
        n
    }
}

/// The `sensor_hex_hourly` rows of the cells of one bucket.
fn hourly_rows(rows: &Readings, names: &mut Names) -> Vec<HourlyRow> {
    let mut groups: BTreeMap<(u64, i64, &str), Vec<f64>> = BTreeMap::new();
    for s in &rows.sensor {
        groups
            .entry((s.cell, s.t.div_euclid(HOUR_MS) * HOUR_MS, &s.metric))
            .or_default()
            .push(s.value);
    }
    groups
        .into_iter()
        .map(|((cell, hour, metric), mut v)| {
            let sum = sorted_sum(&mut v);
            let len = v.len();
            // Nearest rank: the ceil(0.95 n)-th smallest value.
            let rank = (len * 95).div_ceil(100).max(1);
            HourlyRow {
                cell,
                hour,
                metric: names.get(metric),
                count: len as u64,
                mean: sum / len as f64,
                min: v[0],
                max: v[len - 1],
                p95: v[rank - 1],
            }
        })
        .collect()
}

fn hourly_batch(rows: &[HourlyRow], id: i64) -> Result<RecordBatch, EpochError> {
    let f64s = |f: fn(&HourlyRow) -> f64| f64_col(rows.iter().map(|r| Some(f(r))));
    Ok(RecordBatch::try_new(
        tables::sensor_hex_hourly_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id; rows.len()])),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.cell))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.hour))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.metric),
            )),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.count))),
            f64s(|r| r.mean),
            f64s(|r| r.min),
            f64s(|r| r.max),
            f64s(|r| r.p95),
        ],
    )?)
}

/// One (cell, observation type) row of `road_hex`.
struct RoadRow {
    cell: u64,
    observation: Arc<str>,
    count: u64,
    devices: u64,
}

/// The `road_hex` rows of the cells of one bucket: a (cell, type) only where that type has `k`
/// distinct dashcams.
fn road_rows(rows: &Readings, k: u64, names: &mut Names) -> Vec<RoadRow> {
    let mut groups: BTreeMap<(u64, &str), (u64, BTreeSet<&str>)> = BTreeMap::new();
    for o in &rows.road {
        let g = groups.entry((o.cell, &o.observation)).or_default();
        g.0 += 1;
        g.1.insert(&o.key);
    }
    groups
        .into_iter()
        .filter(|(_, g)| g.1.len() as u64 >= k)
        .map(|((cell, observation), (count, devices))| RoadRow {
            cell,
            observation: names.get(observation),
            count,
            devices: devices.len() as u64,
        })
        .collect()
}

fn road_batch(rows: &[RoadRow], id: i64) -> Result<RecordBatch, EpochError> {
    Ok(RecordBatch::try_new(
        tables::road_hex_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id; rows.len()])),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.cell))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.observation.as_ref()),
            )),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.count))),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.devices),
            )),
        ],
    )?)
}

#[cfg(test)]
mod tests {
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
