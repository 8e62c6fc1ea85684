//! The epoch tables' rows, computed from one bucket's readings, and their Arrow batches:
//! `device_summary`, `hex_coverage`, `sensor_hex_hourly`, `road_hex`.

use super::*;

/// One epoch table's Parquet file.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The Parquet file.
    pub bytes: bytes::Bytes,
    /// Its rows.
    pub rows: u64,
}

/// The epoch tables, and the Merkle leaves of the device summaries.
#[derive(Debug)]
pub struct EpochTables {
    /// One row per device: what it did, and its points (the Merkle leaves).
    pub device_summary: Encoded,
    /// One row per cell: heartbeats, devices, signal.
    pub hex_coverage: Encoded,
    /// One row per cell, hour and metric.
    pub sensor_hex_hourly: Encoded,
    /// One row per cell and observation type, under the k-anonymity rule.
    pub road_hex: Encoded,
    /// The Merkle leaves of `device_summary`, in its order.
    pub leaves: Vec<Hash>,
}

/// What one device did in the epoch, from [`Readings`] (one row per reading).
#[derive(Default)]
pub(super) struct Dev {
    pub(super) heartbeats: u64,
    /// Each sensor reading (sequence number) once, with its asserted distance: the smallest of its
    /// rows' (a reused sequence number can carry two), so that no row order picks one.
    pub(super) sensor_seqs: BTreeMap<u64, f64>,
    pub(super) road: u64,
    pub(super) hours: BTreeSet<i64>,
    pub(super) cells: BTreeSet<u64>,
    pub(super) dists: Vec<f64>,
    pub(super) downs: Vec<f64>,
    pub(super) latencies: Vec<f64>,
    pub(super) rejected: BTreeMap<String, u64>,
}

impl Dev {
    pub(super) fn kind(&self) -> KindName {
        if self.heartbeats > 0 {
            KindName::Heartbeat
        } else if !self.sensor_seqs.is_empty() {
            KindName::Sensor
        } else {
            KindName::Road
        }
    }
}

pub(super) fn sorted_sum(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.iter().sum()
}

pub(super) fn f64_col(v: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    let mut b = Float64Builder::new();
    for x in v {
        b.append_option(x);
    }
    Arc::new(b.finish())
}

pub(super) fn cmp_opt(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

/// One row per reading: `id` names the reading (device, sequence number, and for sensors the
/// metric); of rows naming the same one (a record stored twice, a reused sequence number) the
/// least under `cmp`, a total order over the row, stays, so no row order decides.
pub(super) fn one_per_reading<'a, T, K: Ord>(
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
pub(super) struct Readings<'a> {
    pub(super) hb: Vec<&'a Hb>,
    pub(super) sensor: Vec<&'a Sensor>,
    pub(super) road: Vec<&'a Road>,
}

impl<'a> Readings<'a> {
    pub(super) fn of(rows: &'a EpochRows) -> Readings<'a> {
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
pub(super) struct SummaryRow {
    pub(super) key: String,
    pub(super) kind: &'static str,
    pub(super) heartbeats: u64,
    pub(super) sensor_readings: u64,
    pub(super) road_observations: u64,
    pub(super) active_hours: u32,
    pub(super) distinct_hexes: u64,
    pub(super) median_distance_m: Option<f64>,
    pub(super) trust: f64,
    pub(super) speed_tests: u64,
    pub(super) median_download_mbps: Option<f64>,
    pub(super) tier: &'static str,
    pub(super) rejected: BTreeMap<String, u64>,
    pub(super) points: u64,
}

/// The summaries of the devices of one bucket: `once` are its readings, `all` its rows (for the
/// rejected ones).
pub(super) fn device_rows(all: &EpochRows, once: &Readings, r: &RewardRules) -> Vec<SummaryRow> {
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
pub(super) fn summary_batch(
    rows: &[SummaryRow],
    id: i64,
    rules: &Rules,
) -> Result<RecordBatch, EpochError> {
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
pub(super) struct CoverageRow {
    pub(super) cell: u64,
    pub(super) devices: u64,
    pub(super) heartbeats: u64,
    pub(super) best: Option<f64>,
    pub(super) median: Option<f64>,
    pub(super) tests: u64,
    pub(super) down: Option<f64>,
    pub(super) up: Option<f64>,
    pub(super) latency: Option<f64>,
}

/// The `hex_coverage` rows of the cells of one bucket.
pub(super) fn coverage_rows(rows: &Readings) -> Vec<CoverageRow> {
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

pub(super) fn coverage_batch(rows: &[CoverageRow], id: i64) -> Result<RecordBatch, EpochError> {
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
pub(super) struct HourlyRow {
    pub(super) cell: u64,
    pub(super) hour: i64,
    pub(super) metric: Arc<str>,
    pub(super) count: u64,
    pub(super) mean: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) p95: f64,
}

/// The names that many output rows repeat (metrics, observation types), each kept once.
#[derive(Default)]
pub(super) struct Names(BTreeSet<Arc<str>>);

impl Names {
    pub(super) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(n.clone());
        n
    }
}

/// The `sensor_hex_hourly` rows of the cells of one bucket.
pub(super) fn hourly_rows(rows: &Readings, names: &mut Names) -> Vec<HourlyRow> {
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

pub(super) fn hourly_batch(rows: &[HourlyRow], id: i64) -> Result<RecordBatch, EpochError> {
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
pub(super) struct RoadRow {
    pub(super) cell: u64,
    pub(super) observation: Arc<str>,
    pub(super) count: u64,
    pub(super) devices: u64,
}

/// The `road_hex` rows of the cells of one bucket: a (cell, type) only where that type has `k`
/// distinct dashcams.
pub(super) fn road_rows(rows: &Readings, k: u64, names: &mut Names) -> Vec<RoadRow> {
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

pub(super) fn road_batch(rows: &[RoadRow], id: i64) -> Result<RecordBatch, EpochError> {
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
