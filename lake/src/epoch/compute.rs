//! Reading an epoch's rows from the lake and aggregating them into the epoch tables.
//!
//! Determinism: rows are gathered into plain vectors, every aggregate is keyed by a `BTreeMap`, and
//! every floating-point reduction runs over values sorted by total order, so neither file order nor
//! partitioning (which changes provenance) can change a bit of the output.

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

use super::merkle::{self, Hash};
use super::points::{self, DeviceFacts};
use super::{EpochConfig, EpochError, median};
use crate::date_hour;
use crate::rules::Rules;
use crate::{Lake, column, decode_parquet};

type Prov = (String, i32, i64);

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

/// The rows of one epoch, and the input offsets they came from.
#[derive(Debug, Default)]
pub struct EpochRows {
    hb: Vec<Hb>,
    sensor: Vec<Sensor>,
    road: Vec<Road>,
    /// (device key, reason) of rejected rows that name a device.
    rejected: Vec<(String, String)>,
    /// (topic, partition) -> (first offset, last offset, rows).
    pub inputs: BTreeMap<(String, i32), (i64, i64, u64)>,
    /// Rejected rows without a device key (malformed records): counted, not attributed.
    pub unattributed_rejections: u64,
}

impl EpochRows {
    fn saw(&mut self, p: &Prov) {
        let e = self
            .inputs
            .entry((p.0.clone(), p.1))
            .or_insert((p.2, p.2, 0));
        e.0 = e.0.min(p.2);
        e.1 = e.1.max(p.2);
        e.2 += 1;
    }

    pub fn valid_rows(&self) -> usize {
        self.hb.len() + self.sensor.len() + self.road.len()
    }
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
) -> Result<(Option<i64>, Vec<String>), EpochError> {
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
            .map(|f| f.path)
            .filter(|p| in_hours(p, &from, &to))
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
) -> Result<Vec<(String, String)>, EpochError> {
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
) -> Result<(Vec<(String, String)>, BTreeMap<String, i64>), EpochError> {
    let (start, end) = cfg.bounds(id)?;
    let tail = (rules.time.allowed_lateness + rules.time.max_future_skew).as_millis() as i64;
    let mut files = Vec::new();
    let mut versions = BTreeMap::new();
    let tables = KindName::ALL
        .map(|k| (k.as_str(), end))
        .into_iter()
        .chain([(tables::REJECTED_TABLE, end + tail + 3_600_000)]);
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
        files.extend(found.into_iter().map(|f| (table.to_string(), f)));
    }
    Ok((files, versions))
}

/// Reads the rows of epoch `id` from `files` (as `epoch_files` lists them, in any order).
pub async fn load_rows(
    lake: &Lake,
    cfg: &EpochConfig,
    id: i64,
    files: &[(String, String)],
) -> Result<EpochRows, EpochError> {
    let (start, end) = cfg.bounds(id)?;
    let cell_col = tables::h3_column(cfg.hex_resolution);
    let mut rows = EpochRows::default();
    for (table, path) in files {
        let Some(bytes) = lake.get(path).await? else {
            return Err(EpochError::Invalid(format!(
                "{path} vanished while sealing"
            )));
        };
        for b in decode_parquet(bytes, None)? {
            if table != tables::REJECTED_TABLE && b.column_by_name(&cell_col).is_none() {
                return Err(EpochError::Config(format!(
                    "{path} has no column {cell_col}: the epoch hex_resolution must be one of the \
                     processors' h3_resolutions"
                )));
            }
            let topic = column(&b, "src_topic").as_string::<i32>();
            let part = column(&b, "src_partition").as_primitive::<Int32Type>();
            let off = column(&b, "src_offset").as_primitive::<Int64Type>();
            let prov = |i: usize| (topic.value(i).to_string(), part.value(i), off.value(i));
            if table == tables::REJECTED_TABLE {
                let et = column(&b, "event_time").as_primitive::<TimestampMillisecondType>();
                let rt = column(&b, "receive_time").as_primitive::<TimestampMillisecondType>();
                let key = column(&b, "device_key").as_string::<i32>();
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
                    rows.saw(&prov(i));
                    if key.is_null(i) {
                        rows.unattributed_rejections += 1;
                    } else {
                        rows.rejected
                            .push((key.value(i).to_string(), reason.value(i).to_string()));
                    }
                }
                continue;
            }
            let t = column(&b, "event_time").as_primitive::<TimestampMillisecondType>();
            let key = column(&b, "device_key").as_string::<i32>();
            let cell = column(&b, &cell_col).as_primitive::<UInt64Type>();
            // Files written before this column existed have no distance: NaN, left out of the median.
            let dist = b
                .column_by_name("asserted_distance_m")
                .map(|c| c.as_primitive::<Float64Type>());
            let dist_at = |i: usize| dist.map_or(f64::NAN, |d| d.value(i));
            let keep = |i: usize| t.value(i) >= start && t.value(i) < end;
            let seq = column(&b, "seq").as_primitive::<UInt64Type>();
            // An hour is active by a reading received in it, never by a claimed event time:
            // backdated readings make no hour active that the device was not heard in.
            let rt = column(&b, "receive_time").as_primitive::<TimestampMillisecondType>();
            let active = |i: usize| {
                let r = rt.value(i);
                (r >= start && r < end).then(|| r.div_euclid(3_600_000))
            };
            match table.as_str() {
                "heartbeat" => {
                    let sig = column(&b, "signal_dbm").as_primitive::<Float32Type>();
                    let down = column(&b, "download_mbps").as_primitive::<Float32Type>();
                    let up = column(&b, "upload_mbps").as_primitive::<Float32Type>();
                    let lat = column(&b, "latency_ms").as_primitive::<Float32Type>();
                    let opt = |a: &arrow::array::Float32Array, i: usize| {
                        (!a.is_null(i)).then(|| a.value(i) as f64)
                    };
                    for i in (0..b.num_rows()).filter(|i| keep(*i)) {
                        rows.saw(&prov(i));
                        rows.hb.push(Hb {
                            key: key.value(i).to_string(),
                            seq: seq.value(i),
                            active: active(i),
                            cell: cell.value(i),
                            dist: dist_at(i),
                            signal: sig.value(i) as f64,
                            down: opt(down, i),
                            up: opt(up, i),
                            latency: opt(lat, i),
                        });
                    }
                }
                "sensor" => {
                    let metric = column(&b, "metric").as_string::<i32>();
                    let value = column(&b, "value").as_primitive::<Float64Type>();
                    for i in (0..b.num_rows()).filter(|i| keep(*i)) {
                        rows.saw(&prov(i));
                        rows.sensor.push(Sensor {
                            key: key.value(i).to_string(),
                            t: t.value(i),
                            active: active(i),
                            seq: seq.value(i),
                            cell: cell.value(i),
                            dist: dist_at(i),
                            metric: metric.value(i).to_string(),
                            value: value.value(i),
                        });
                    }
                }
                "road" => {
                    let obs = column(&b, "observation").as_string::<i32>();
                    for i in (0..b.num_rows()).filter(|i| keep(*i)) {
                        rows.saw(&prov(i));
                        rows.road.push(Road {
                            key: key.value(i).to_string(),
                            seq: seq.value(i),
                            active: active(i),
                            cell: cell.value(i),
                            observation: obs.value(i).to_string(),
                        });
                    }
                }
                other => return Err(EpochError::Invalid(format!("unexpected table {other}"))),
            }
        }
    }
    Ok(rows)
}

/// The epoch tables, and the Merkle leaves of the device summaries.
#[derive(Debug)]
pub struct EpochTables {
    pub device_summary: RecordBatch,
    pub hex_coverage: RecordBatch,
    pub sensor_hex_hourly: RecordBatch,
    pub road_hex: RecordBatch,
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

/// Aggregates the rows of epoch `id` into its tables under `rules`.
pub fn aggregate(rows: &EpochRows, id: i64, rules: &Rules) -> Result<EpochTables, EpochError> {
    let r = &rules.rewards;
    let all = rows;
    let once = Readings::of(rows);
    let rows = &once;
    let mut devs: BTreeMap<&str, Dev> = BTreeMap::new();
    for h in &rows.hb {
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
    for s in &rows.sensor {
        let d = devs.entry(&s.key).or_default();
        let dist = d.sensor_seqs.entry(s.seq).or_insert(f64::NAN);
        if !s.dist.is_nan() && (dist.is_nan() || s.dist < *dist) {
            *dist = s.dist;
        }
        d.hours.extend(s.active);
        d.cells.insert(s.cell);
    }
    for o in &rows.road {
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

    // device_summary
    let n = devs.len();
    let mut cols: Vec<ArrayRef> = Vec::new();
    let mut key = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let (mut hb, mut sn, mut rd, mut hours, mut hexes) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut med_dist, mut trust, mut tests, mut med_down, mut tier) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut rejected_total = vec![];
    let mut by_reason: Vec<Vec<u64>> = vec![Vec::with_capacity(n); RejectReason::ALL.len()];
    let mut pts = vec![];
    for (k, d) in devs.iter_mut() {
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
        key.push(k.to_string());
        kind.push(kd.as_str());
        hb.push(d.heartbeats);
        sn.push(d.sensor_seqs.len() as u64);
        rd.push(d.road);
        hours.push(facts.active_hours);
        hexes.push(facts.distinct_hexes);
        med_dist.push(md);
        trust.push(Some(a.trust_bp as f64 / 10_000.0));
        tests.push(d.downs.len() as u64);
        med_down.push(facts.median_download_mbps);
        tier.push(a.tier);
        rejected_total.push(d.rejected.values().sum::<u64>());
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            by_reason[i].push(d.rejected.get(reason.as_str()).copied().unwrap_or(0));
        }
        pts.push(a.points);
    }
    cols.push(Arc::new(Int64Array::from(vec![id; n])));
    cols.push(Arc::new(StringArray::from(key)));
    cols.push(Arc::new(StringArray::from(kind)));
    cols.push(Arc::new(UInt64Array::from(hb)));
    cols.push(Arc::new(UInt64Array::from(sn)));
    cols.push(Arc::new(UInt64Array::from(rd)));
    cols.push(Arc::new(UInt32Array::from(hours)));
    cols.push(Arc::new(UInt64Array::from(hexes)));
    cols.push(f64_col(med_dist));
    cols.push(f64_col(trust));
    cols.push(Arc::new(UInt64Array::from(tests)));
    cols.push(f64_col(med_down));
    cols.push(Arc::new(StringArray::from(tier)));
    cols.push(Arc::new(UInt64Array::from(rejected_total)));
    for v in by_reason {
        cols.push(Arc::new(UInt64Array::from(v)));
    }
    cols.push(Arc::new(UInt64Array::from(pts)));
    cols.push(Arc::new(StringArray::from(vec![rules.version.as_str(); n])));
    cols.push(Arc::new(StringArray::from(vec![rules.hash.as_str(); n])));
    let device_summary = RecordBatch::try_new(tables::device_summary_schema(), cols)?;
    let leaves = (0..device_summary.num_rows())
        .map(|i| merkle::encode_row(&device_summary, i).map(|e| merkle::leaf_hash(&e)))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(EpochTables {
        device_summary,
        hex_coverage: hex_coverage(rows, id)?,
        sensor_hex_hourly: sensor_hourly(rows, id)?,
        road_hex: road_hex(rows, id, rules.privacy.road_min_devices)?,
        leaves,
    })
}

fn hex_coverage(rows: &Readings, id: i64) -> Result<RecordBatch, EpochError> {
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
    let n = cells.len();
    let (mut cell, mut devices, mut hbs, mut best, mut med) =
        (Vec::with_capacity(n), vec![], vec![], vec![], vec![]);
    let (mut tests, mut down, mut up, mut lat) = (vec![], vec![], vec![], vec![]);
    for (k, mut c) in cells {
        cell.push(k);
        devices.push(c.devices.len() as u64);
        hbs.push(c.signals.len() as u64);
        let m = median(&mut c.signals);
        best.push(c.signals.last().copied());
        med.push(m);
        tests.push(c.downs.len() as u64);
        down.push(median(&mut c.downs));
        up.push(median(&mut c.ups));
        lat.push(median(&mut c.lats));
    }
    Ok(RecordBatch::try_new(
        tables::hex_coverage_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id; n])),
            Arc::new(UInt64Array::from(cell)),
            Arc::new(UInt64Array::from(devices)),
            Arc::new(UInt64Array::from(hbs)),
            f64_col(best),
            f64_col(med),
            Arc::new(UInt64Array::from(tests)),
            f64_col(down),
            f64_col(up),
            f64_col(lat),
        ],
    )?)
}

fn sensor_hourly(rows: &Readings, id: i64) -> Result<RecordBatch, EpochError> {
    let mut groups: BTreeMap<(u64, i64, &str), Vec<f64>> = BTreeMap::new();
    for s in &rows.sensor {
        groups
            .entry((s.cell, s.t.div_euclid(3_600_000) * 3_600_000, &s.metric))
            .or_default()
            .push(s.value);
    }
    let n = groups.len();
    let (mut cell, mut hour, mut metric, mut count) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut mean, mut min, mut max, mut p95) = (vec![], vec![], vec![], vec![]);
    for ((c, h, m), mut v) in groups {
        let sum = sorted_sum(&mut v);
        let len = v.len();
        cell.push(c);
        hour.push(h);
        metric.push(m);
        count.push(len as u64);
        mean.push(Some(sum / len as f64));
        min.push(Some(v[0]));
        max.push(Some(v[len - 1]));
        // Nearest rank: the ceil(0.95 n)-th smallest value.
        let rank = (len * 95).div_ceil(100).max(1);
        p95.push(Some(v[rank - 1]));
    }
    Ok(RecordBatch::try_new(
        tables::sensor_hex_hourly_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id; n])),
            Arc::new(UInt64Array::from(cell)),
            Arc::new(TimestampMillisecondArray::from(hour).with_timezone("UTC")),
            Arc::new(StringArray::from(metric)),
            Arc::new(UInt64Array::from(count)),
            f64_col(mean),
            f64_col(min),
            f64_col(max),
            f64_col(p95),
        ],
    )?)
}

fn road_hex(rows: &Readings, id: i64, k: u64) -> Result<RecordBatch, EpochError> {
    let mut groups: BTreeMap<(u64, &str), (u64, BTreeSet<&str>)> = BTreeMap::new();
    for o in &rows.road {
        let g = groups.entry((o.cell, &o.observation)).or_default();
        g.0 += 1;
        g.1.insert(&o.key);
    }
    groups.retain(|_, g| g.1.len() as u64 >= k);
    let n = groups.len();
    let (mut cell, mut obs, mut count, mut devices) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((c, o), (cnt, devs)) in groups {
        cell.push(c);
        obs.push(o);
        count.push(cnt);
        devices.push(devs.len() as u64);
    }
    Ok(RecordBatch::try_new(
        tables::road_hex_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id; n])),
            Arc::new(UInt64Array::from(cell)),
            Arc::new(StringArray::from(obs)),
            Arc::new(UInt64Array::from(count)),
            Arc::new(UInt64Array::from(devices)),
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
            ..Default::default()
        }
    }

    fn output(rows: &EpochRows, rules: &Rules) -> Vec<RecordBatch> {
        let t = aggregate(rows, 7, rules).unwrap();
        assert!(!t.leaves.is_empty());
        vec![
            t.device_summary,
            t.hex_coverage,
            t.sensor_hex_hourly,
            t.road_hex,
        ]
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
