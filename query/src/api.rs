//! The map, sensor and road endpoints: hex aggregates over the lake as GeoJSON, vector tiles and
//! time series, each answer stating its freshness.
//!
//! Hex numbers do not depend on the box asked for: a hex is aggregated over all its readings (the
//! box is grown by two hex edges before filtering), and it is part of an answer when its centre
//! lies in the box. Coarser resolutions are rollups of the finest stored cells
//! (`h3_cell_to_parent`), so a parent's counts are those of its children's readings.

// Errors here are finished HTTP answers on the cold path of a refused request; boxing them would
// only add an allocation where it does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use h3o::{CellIndex, LatLng};
use serde_json::{Value, json};

use crate::catalog::Snapshot;
use crate::mvt;
use crate::params::{self, Bbox, TimeRange};
use crate::server::{AppState, error};

const DAY_MS: i64 = 86_400_000;

/// A refused request or a failed query, already an HTTP answer.
pub type ApiResult<T> = Result<T, Response>;

fn bad_param(e: params::BadParam) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_param",
        format!("{}: {}", e.param, e.message),
    )
}

/// Freshness of an answer: the newest event time it includes and the lake's watermark.
pub fn freshness(snap: &Snapshot, newest_ms: Option<i64>) -> Value {
    json!({
        "newest_event_time": newest_ms.map(params::rfc3339),
        "watermark": snap.watermark_ms.map(params::rfc3339),
        "catalog_built_at": params::rfc3339(snap.built_at_ms),
        "data_version": snap.version,
    })
}

fn f64s(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let Some(c) = b.column_by_name(name) else {
        return vec![None; b.num_rows()];
    };
    let c = cast(c, &DataType::Float64).expect("numeric column");
    c.as_primitive::<Float64Type>().iter().collect()
}

fn u64s(b: &RecordBatch, name: &str) -> Vec<u64> {
    let Some(c) = b.column_by_name(name) else {
        return vec![0; b.num_rows()];
    };
    let c = cast(c, &DataType::UInt64).expect("integer column");
    c.as_primitive::<UInt64Type>()
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect()
}

fn i64s(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let Some(c) = b.column_by_name(name) else {
        return vec![None; b.num_rows()];
    };
    let c = cast(c, &DataType::Int64).expect("integer column");
    c.as_primitive::<Int64Type>().iter().collect()
}

fn strs(b: &RecordBatch, name: &str) -> Vec<String> {
    let Some(c) = b.column_by_name(name) else {
        return vec![String::new(); b.num_rows()];
    };
    let c = cast(c, &DataType::Utf8).expect("text column");
    c.as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

fn ring(cell: CellIndex) -> Vec<(f64, f64)> {
    cell.boundary().iter().map(|p| (p.lat(), p.lng())).collect()
}

fn geometry(cell: CellIndex) -> Value {
    json!({"type": "Polygon", "coordinates": [crate::udf::cell_ring(cell)]})
}

fn centre_in(bbox: &Bbox, cell: CellIndex) -> bool {
    let c = LatLng::from(cell);
    bbox.contains(c.lat(), c.lng())
}

/// One hex of an answer: its cell and properties.
struct Hex {
    cell: CellIndex,
    props: serde_json::Map<String, Value>,
}

impl Hex {
    fn new(cell: CellIndex) -> Hex {
        let mut props = serde_json::Map::new();
        props.insert("cell".into(), cell.to_string().into());
        props.insert("res".into(), u8::from(cell.resolution()).into());
        Hex { cell, props }
    }
    fn set(&mut self, k: &str, v: impl Into<Value>) {
        self.props.insert(k.into(), v.into());
    }
}

/// Adds a hex to a vector-tile layer with the same properties its GeoJSON feature has (NULLs are
/// left out: MVT has no null).
fn add_to_tile(lb: &mut mvt::LayerBuilder, h: &Hex) {
    let props: Vec<(&str, mvt::Prop)> = h
        .props
        .iter()
        .filter_map(|(k, v)| {
            let p = match v {
                Value::String(s) => mvt::Prop::Str(s.clone()),
                Value::Number(n) => match n.as_u64() {
                    Some(u) => mvt::Prop::U64(u),
                    None => mvt::Prop::F64(n.as_f64()?),
                },
                _ => return None,
            };
            Some((k.as_str(), p))
        })
        .collect();
    lb.add(u64::from(h.cell), &ring(h.cell), &props);
}

fn feature_collection(hexes: Vec<Hex>, fresh: Value, extra: Value) -> Response {
    let features: Vec<Value> = hexes
        .into_iter()
        .map(|h| {
            json!({
                "type": "Feature",
                "id": h.cell.to_string(),
                "geometry": geometry(h.cell),
                "properties": Value::Object(h.props),
            })
        })
        .collect();
    let mut body = json!({"type": "FeatureCollection", "features": features, "freshness": fresh});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    (
        [(header::CONTENT_TYPE, "application/geo+json")],
        body.to_string(),
    )
        .into_response()
}

/// The common area parameters: box, resolution, time range.
struct Area {
    bbox: Bbox,
    res: u8,
    range: TimeRange,
}

fn area(
    snap: &Snapshot,
    p: &HashMap<String, String>,
    default_res: u8,
    bbox: Option<Bbox>,
) -> ApiResult<Area> {
    area_at(snap, p, default_res, bbox, hexpulse_common::time::now_ms())
}

/// [`area`], with the default time window ending relative to `now_ms`.
fn area_at(
    snap: &Snapshot,
    p: &HashMap<String, String>,
    default_res: u8,
    bbox: Option<Bbox>,
    now_ms: i64,
) -> ApiResult<Area> {
    let bbox = match bbox {
        Some(b) => b,
        None => Bbox::parse(p.get("bbox").map(String::as_str).unwrap_or("")).map_err(bad_param)?,
    };
    let res =
        params::resolution(p, default_res.min(snap.finest()), snap.finest()).map_err(bad_param)?;
    let range = TimeRange::parse(p, now_ms, DAY_MS).map_err(bad_param)?;
    Ok(Area { bbox, res, range })
}

/// The SQL expression of the cell at `res` and the filter of a grown box and the time range.
fn cell_expr_and_filter(snap: &Snapshot, a: &Area) -> ApiResult<(String, String)> {
    let Some((stored, col)) = snap.column_for(a.res) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_param",
            format!("res: the lake stores no resolution as fine as {}", a.res),
        ));
    };
    let expr = if stored == a.res {
        col
    } else {
        format!("h3_cell_to_parent({col}, {})", a.res)
    };
    let grown = a.bbox.grown(params::edge_km(a.res) * 2.0);
    Ok((expr, format!("{} AND {}", grown.sql(), a.range.sql())))
}

/// Coverage per hex: devices, heartbeats, best and median signal, speed tests. Medians are exact
/// (the mean of the two middle values for an even count), as in the epochs' `hex_coverage`.
struct Coverage {
    hexes: Vec<(CellIndex, CoverageStats)>,
    newest_ms: Option<i64>,
}

#[derive(Clone, Copy)]
struct CoverageStats {
    devices: u64,
    heartbeats: u64,
    best_signal_dbm: Option<f64>,
    median_signal_dbm: Option<f64>,
    speed_tests: u64,
    median_download_mbps: Option<f64>,
}

async fn coverage_cells(st: &AppState, snap: &Snapshot, a: &Area) -> ApiResult<Coverage> {
    let (cell, filter) = cell_expr_and_filter(snap, a)?;
    let sql = format!(
        "SELECT {cell} AS cell, count(DISTINCT device_key) AS devices, count(*) AS heartbeats, \
         max(signal_dbm) AS best, median(signal_dbm) AS median, \
         count(download_mbps) AS speed_tests, median(download_mbps) AS download, \
         CAST(max(event_time) AS BIGINT) AS newest \
         FROM heartbeat WHERE {filter} GROUP BY 1"
    );
    let batches = st.internal_query(sql).await?;
    let mut hexes = Vec::new();
    let mut newest: Option<i64> = None;
    for b in &batches {
        let (cells, devices, hb) = (u64s(b, "cell"), u64s(b, "devices"), u64s(b, "heartbeats"));
        let (best, median, st_, dl, nw) = (
            f64s(b, "best"),
            f64s(b, "median"),
            u64s(b, "speed_tests"),
            f64s(b, "download"),
            i64s(b, "newest"),
        );
        for i in 0..b.num_rows() {
            let Ok(c) = CellIndex::try_from(cells[i]) else {
                continue;
            };
            if !centre_in(&a.bbox, c) {
                continue;
            }
            newest = newest.max(nw[i]);
            hexes.push((
                c,
                CoverageStats {
                    devices: devices[i],
                    heartbeats: hb[i],
                    best_signal_dbm: best[i],
                    median_signal_dbm: median[i],
                    speed_tests: st_[i],
                    median_download_mbps: dl[i],
                },
            ));
        }
    }
    hexes.sort_by_key(|(c, _)| u64::from(*c));
    Ok(Coverage {
        hexes,
        newest_ms: newest,
    })
}

pub(crate) const COVERAGE_METRICS: [&str; 6] = [
    "devices",
    "heartbeats",
    "best_signal_dbm",
    "median_signal_dbm",
    "speed_tests",
    "median_download_mbps",
];

fn coverage_props(h: &mut Hex, s: &CoverageStats) {
    h.set("devices", s.devices);
    h.set("heartbeats", s.heartbeats);
    h.set("best_signal_dbm", s.best_signal_dbm);
    h.set("median_signal_dbm", s.median_signal_dbm);
    h.set("speed_tests", s.speed_tests);
    h.set("median_download_mbps", s.median_download_mbps);
}

fn too_many(n: usize, max: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_hexes",
        format!(
            "the answer has {n} hexes, more than {max}; ask for a smaller bbox or a coarser res"
        ),
    )
}

/// `GET /v1/coverage?bbox=&res=|zoom=&from=&to=&metric=`
pub(crate) async fn coverage(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.catalog.context().1;
    let a = area(&snap, &p, 8, None)?;
    let metric = p.get("metric").map(String::as_str).unwrap_or("devices");
    if !COVERAGE_METRICS.contains(&metric) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_param",
            format!("metric: one of {COVERAGE_METRICS:?}"),
        ));
    }
    let cov = coverage_cells(&st, &snap, &a).await?;
    if cov.hexes.len() > st.cfg.max_features {
        return Err(too_many(cov.hexes.len(), st.cfg.max_features));
    }
    let hexes = cov
        .hexes
        .iter()
        .map(|(c, s)| {
            let mut h = Hex::new(*c);
            coverage_props(&mut h, s);
            let v = h.props.get(metric).cloned().unwrap_or(Value::Null);
            h.set("value", v);
            h
        })
        .collect();
    Ok(feature_collection(
        hexes,
        freshness(&snap, cov.newest_ms),
        json!({"metric": metric, "res": a.res}),
    ))
}

/// `GET /v1/deadzones?bbox=&res=&from=&to=&weak_dbm=&limit=`: hexes with no or weak coverage that
/// border covered ones, most covered neighbours first.
pub(crate) async fn deadzones(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.catalog.context().1;
    let a = area(&snap, &p, 8, None)?;
    let weak_dbm: f64 = match p.get("weak_dbm") {
        Some(s) => s
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_param",
                    "weak_dbm: a number such as -110",
                )
            })?,
        None => -110.0,
    };
    let limit: usize = match p.get("limit") {
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=st.cfg.max_features).contains(n))
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_param",
                    format!("limit: 1..={}", st.cfg.max_features),
                )
            })?,
        None => 200,
    };
    // Covered hexes just outside the box still count as neighbours of hexes inside it.
    let outer = Area {
        bbox: a.bbox.grown(params::edge_km(a.res) * 3.0),
        res: a.res,
        range: a.range,
    };
    let cov = coverage_cells(&st, &snap, &outer).await?;
    let stats: HashMap<CellIndex, CoverageStats> = cov.hexes.iter().copied().collect();
    let best: Vec<(CellIndex, Option<f64>)> = cov
        .hexes
        .iter()
        .map(|(c, s)| (*c, s.best_signal_dbm))
        .collect();
    let mut ranked = rank_dead_zones(&best, weak_dbm, &|c| centre_in(&a.bbox, c));
    let total = ranked.len();
    ranked.truncate(limit);
    let hexes = ranked
        .into_iter()
        .enumerate()
        .map(|(rank, (c, n))| {
            let mut h = Hex::new(c);
            h.set("rank", rank + 1);
            h.set("covered_neighbours", n);
            match stats.get(&c) {
                Some(s) => {
                    h.set("status", "weak");
                    coverage_props(&mut h, s);
                }
                None => h.set("status", "none"),
            }
            h
        })
        .collect();
    Ok(feature_collection(
        hexes,
        freshness(&snap, cov.newest_ms),
        json!({"res": a.res, "weak_dbm": weak_dbm, "candidates": total}),
    ))
}

/// `GET /v1/epochs/{id}/devices/{device}/hexes`: the cells (at the epoch hex resolution) where a
/// fixed device (hotspot or sensor) reported valid readings during the epoch, as GeoJSON. Dashcam
/// tracks are never listed: road rows are not read here.
pub(crate) async fn device_hexes(
    State(st): State<Arc<AppState>>,
    Path((id, device)): Path<(u64, String)>,
) -> ApiResult<Response> {
    let id = crate::server::epoch_id(id);
    let snap = st.catalog.context().1;
    let device = device.to_ascii_lowercase();
    if device.len() != 64 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_param",
            "device: 64 hex digits",
        ));
    }
    let (start, end) = st.cfg.epoch.bounds(id).map_err(|e| {
        error(
            StatusCode::NOT_FOUND,
            "no_epoch",
            format!("epoch {id}: {e}"),
        )
    })?;
    let res = st.cfg.epoch.hex_resolution.min(snap.finest());
    let a = Area {
        bbox: Bbox {
            west: -180.0,
            south: -90.0,
            east: 180.0,
            north: 90.0,
        },
        res,
        range: TimeRange {
            from_ms: start,
            to_ms: end,
        },
    };
    let (cell, _) = cell_expr_and_filter(&snap, &a)?;
    let time = a.range.sql();
    let sql = format!(
        "SELECT cell, sum(n) AS n, CAST(max(newest) AS BIGINT) AS newest FROM ( \
             SELECT {cell} AS cell, count(*) AS n, max(event_time) AS newest FROM heartbeat \
             WHERE device_key = '{device}' AND {time} GROUP BY 1 UNION ALL \
             SELECT {cell} AS cell, count(*) AS n, max(event_time) AS newest FROM sensor \
             WHERE device_key = '{device}' AND {time} GROUP BY 1) GROUP BY cell"
    );
    let batches = st.internal_query(sql).await?;
    let mut hexes = Vec::new();
    let mut newest = None;
    for b in &batches {
        let (c, n, nw) = (u64s(b, "cell"), u64s(b, "n"), i64s(b, "newest"));
        for i in 0..b.num_rows() {
            if let Ok(cell) = CellIndex::try_from(c[i]) {
                newest = newest.max(nw[i]);
                let mut h = Hex::new(cell);
                h.set("readings", n[i]);
                hexes.push(h);
            }
        }
    }
    hexes.sort_by_key(|h| u64::from(h.cell));
    Ok(feature_collection(
        hexes,
        freshness(&snap, newest),
        json!({"epoch": id, "device_key": device, "res": res}),
    ))
}

/// Dead-zone candidates: hexes that are not covered (no data, or best signal below `weak_dbm`) and
/// border covered ones, with their number of covered neighbours; most first, then by cell.
pub fn rank_dead_zones(
    best_signal: &[(CellIndex, Option<f64>)],
    weak_dbm: f64,
    inside: &dyn Fn(CellIndex) -> bool,
) -> Vec<(CellIndex, u32)> {
    let covered: HashSet<CellIndex> = best_signal
        .iter()
        .filter(|(_, b)| b.is_some_and(|b| b >= weak_dbm))
        .map(|(c, _)| *c)
        .collect();
    let mut candidates: BTreeMap<CellIndex, u32> = BTreeMap::new();
    for c in &covered {
        for n in c.grid_disk::<Vec<_>>(1) {
            if n != *c && !covered.contains(&n) && inside(n) {
                *candidates.entry(n).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(CellIndex, u32)> = candidates.into_iter().collect();
    ranked.sort_by(|x, y| y.1.cmp(&x.1).then(u64::from(x.0).cmp(&u64::from(y.0))));
    ranked
}

fn metric_param(p: &HashMap<String, String>) -> ApiResult<String> {
    match p.get("metric") {
        Some(m) => params::name("metric", m).map_err(bad_param),
        None => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_param",
            "metric: required (for example pm2_5, no2, noise_db)",
        )),
    }
}

struct SensorHex {
    cell: CellIndex,
    count: u64,
    mean: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    p95: Option<f64>,
}

async fn sensor_cells(
    st: &AppState,
    snap: &Snapshot,
    a: &Area,
    metric: &str,
) -> ApiResult<(Vec<SensorHex>, Option<i64>)> {
    let (cell, filter) = cell_expr_and_filter(snap, a)?;
    let sql = format!(
        "SELECT {cell} AS cell, count(*) AS n, avg(value) AS mean, min(value) AS min, \
         max(value) AS max, approx_percentile_cont(value, 0.95) AS p95, \
         CAST(max(event_time) AS BIGINT) AS newest \
         FROM sensor WHERE metric = '{metric}' AND {filter} GROUP BY 1"
    );
    let batches = st.internal_query(sql).await?;
    let mut out = Vec::new();
    let mut newest = None;
    for b in &batches {
        let (cells, n, mean, min, max, p95, nw) = (
            u64s(b, "cell"),
            u64s(b, "n"),
            f64s(b, "mean"),
            f64s(b, "min"),
            f64s(b, "max"),
            f64s(b, "p95"),
            i64s(b, "newest"),
        );
        for i in 0..b.num_rows() {
            let Ok(c) = CellIndex::try_from(cells[i]) else {
                continue;
            };
            if centre_in(&a.bbox, c) {
                newest = newest.max(nw[i]);
                out.push(SensorHex {
                    cell: c,
                    count: n[i],
                    mean: mean[i],
                    min: min[i],
                    max: max[i],
                    p95: p95[i],
                });
            }
        }
    }
    out.sort_by_key(|h| u64::from(h.cell));
    Ok((out, newest))
}

fn sensor_props(h: &mut Hex, s: &SensorHex) {
    h.set("count", s.count);
    h.set("mean", s.mean);
    h.set("min", s.min);
    h.set("max", s.max);
    h.set("p95", s.p95);
    h.set("value", s.mean);
}

/// `GET /v1/sensors/hexes?metric=&bbox=&res=&from=&to=`
pub(crate) async fn sensor_hexes(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.catalog.context().1;
    let metric = metric_param(&p)?;
    let a = area(&snap, &p, 8, None)?;
    let (hexes, newest) = sensor_cells(&st, &snap, &a, &metric).await?;
    if hexes.len() > st.cfg.max_features {
        return Err(too_many(hexes.len(), st.cfg.max_features));
    }
    let out = hexes
        .iter()
        .map(|s| {
            let mut h = Hex::new(s.cell);
            sensor_props(&mut h, s);
            h
        })
        .collect();
    Ok(feature_collection(
        out,
        freshness(&snap, newest),
        json!({"metric": metric, "res": a.res}),
    ))
}

/// `GET /v1/sensors/series?metric=&cell=|bbox=&from=&to=&interval=`: count, mean, min and max per
/// interval, for one cell (any stored resolution or coarser) or a box.
pub(crate) async fn sensor_series(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.catalog.context().1;
    let metric = metric_param(&p)?;
    let range = TimeRange::parse(&p, hexpulse_common::time::now_ms(), DAY_MS).map_err(bad_param)?;
    let secs = params::interval(p.get("interval"), 3600, 60, 7 * 86_400).map_err(bad_param)?;
    let place = match (p.get("cell"), p.get("bbox")) {
        (Some(c), None) => {
            let cell = CellIndex::from_str(c).map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_param",
                    "cell: an H3 cell such as 881f1d4b7ffffff",
                )
            })?;
            let res = u8::from(cell.resolution());
            let Some((stored, col)) = snap.column_for(res) else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_param",
                    format!(
                        "cell: finer than the finest stored resolution {}",
                        snap.finest()
                    ),
                ));
            };
            let v = u64::from(cell);
            if stored == res {
                format!("{col} = {v}")
            } else {
                format!("h3_cell_to_parent({col}, {res}) = {v}")
            }
        }
        (None, Some(b)) => Bbox::parse(b).map_err(bad_param)?.sql(),
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_param",
                "give exactly one of cell and bbox",
            ));
        }
    };
    // Every parameter is checked before the answer's size: a malformed request is a 400.
    let buckets = (range.to_ms - range.from_ms) / (secs as i64 * 1000);
    if buckets > st.cfg.max_features as i64 {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_points",
            format!("{buckets} intervals; ask for a longer interval or a shorter range"),
        ));
    }
    let ms = secs * 1000;
    let sql = format!(
        "SELECT CAST(event_time AS BIGINT) / {ms} * {ms} AS t, count(*) AS n, avg(value) AS mean, \
             min(value) AS min, max(value) AS max, CAST(max(event_time) AS BIGINT) AS newest \
             FROM sensor WHERE metric = '{metric}' AND {place} AND {} GROUP BY 1 ORDER BY 1",
        range.sql()
    );
    let batches = st.internal_query(sql).await?;
    let mut points = Vec::new();
    let mut newest = None;
    for b in &batches {
        let (t, n, mean, min, max, nw) = (
            i64s(b, "t"),
            u64s(b, "n"),
            f64s(b, "mean"),
            f64s(b, "min"),
            f64s(b, "max"),
            i64s(b, "newest"),
        );
        for i in 0..b.num_rows() {
            newest = newest.max(nw[i]);
            points.push(json!({
                "t": t[i].map(params::rfc3339), "count": n[i], "mean": mean[i],
                "min": min[i], "max": max[i],
            }));
        }
    }
    Ok(axum::Json(json!({
        "metric": metric, "interval_s": secs, "from": params::rfc3339(range.from_ms),
        "to": params::rfc3339(range.to_ms), "points": points,
        "freshness": freshness(&snap, newest),
    }))
    .into_response())
}

struct RoadHex {
    cell: CellIndex,
    devices: u64,
    observations: BTreeMap<String, u64>,
}

/// The time grain of public road answers: windows are widened to whole hours and the newest
/// observation time is given to the hour, so that moving `from`/`to` cannot single out one
/// dashcam's observation times (k-anonymity holds per place, and now per hour too).
pub const ROAD_TIME_GRAIN_MS: i64 = 3_600_000;

/// `range` widened to whole [`ROAD_TIME_GRAIN_MS`].
pub fn road_window(range: &TimeRange) -> TimeRange {
    let g = ROAD_TIME_GRAIN_MS;
    TimeRange {
        from_ms: range.from_ms.div_euclid(g) * g,
        to_ms: range
            .to_ms
            .div_euclid(g)
            .saturating_add(1)
            .saturating_mul(g)
            .min(params::MAX_TIME_MS),
    }
}

/// Road observations per hex, only for hexes with at least k distinct devices, and per observation
/// type only where that type has at least k distinct devices in the hex. Times are whole hours
/// ([`road_window`]); the newest observation time is floored to the hour.
async fn road_cells(
    st: &AppState,
    snap: &Snapshot,
    a: &Area,
    kind: Option<&str>,
) -> ApiResult<(Vec<RoadHex>, Option<i64>)> {
    let a = Area {
        bbox: a.bbox,
        res: a.res,
        range: road_window(&a.range),
    };
    let a = &a;
    let (cell, filter) = cell_expr_and_filter(snap, a)?;
    let kind = kind
        .map(|k| format!(" AND observation = '{k}'"))
        .unwrap_or_default();
    let k = st.road_min_devices;
    let base = format!(
        "SELECT {cell} AS cell, observation, device_key, event_time FROM road WHERE {filter}{kind}"
    );
    let cells_sql = format!(
        "SELECT cell, count(DISTINCT device_key) AS devices, CAST(max(event_time) AS BIGINT) AS newest \
         FROM ({base}) GROUP BY cell HAVING count(DISTINCT device_key) >= {k}"
    );
    let obs_sql = format!(
        "SELECT cell, observation, count(*) AS n FROM ({base}) GROUP BY cell, observation \
         HAVING count(DISTINCT device_key) >= {k}"
    );
    let cells = st.internal_query(cells_sql).await?;
    let obs = st.internal_query(obs_sql).await?;
    let mut out: BTreeMap<u64, RoadHex> = BTreeMap::new();
    let mut newest = None;
    for b in &cells {
        let (c, d, nw) = (u64s(b, "cell"), u64s(b, "devices"), i64s(b, "newest"));
        for i in 0..b.num_rows() {
            let Ok(cell) = CellIndex::try_from(c[i]) else {
                continue;
            };
            if centre_in(&a.bbox, cell) {
                newest = newest
                    .max(nw[i].map(|t| t.div_euclid(ROAD_TIME_GRAIN_MS) * ROAD_TIME_GRAIN_MS));
                out.insert(
                    c[i],
                    RoadHex {
                        cell,
                        devices: d[i],
                        observations: BTreeMap::new(),
                    },
                );
            }
        }
    }
    for b in &obs {
        let (c, o, n) = (u64s(b, "cell"), strs(b, "observation"), u64s(b, "n"));
        for i in 0..b.num_rows() {
            if let Some(h) = out.get_mut(&c[i]) {
                h.observations.insert(o[i].clone(), n[i]);
            }
        }
    }
    Ok((out.into_values().collect(), newest))
}

fn road_props(h: &mut Hex, r: &RoadHex) {
    h.set("devices", r.devices);
    let total: u64 = r.observations.values().sum();
    h.set("observations", total);
    h.set("value", total);
    for (k, v) in &r.observations {
        h.set(k, *v);
    }
}

/// `GET /v1/road/hexes?bbox=&res=&from=&to=&type=`: observation counts per hex, for hexes with at
/// least k distinct dashcams (k from the rules); others are left out entirely.
pub(crate) async fn road_hexes(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.catalog.context().1;
    let a = area(&snap, &p, 8, None)?;
    let kind = match p.get("type") {
        Some(t) => Some(params::name("type", t).map_err(bad_param)?),
        None => None,
    };
    let (hexes, newest) = road_cells(&st, &snap, &a, kind.as_deref()).await?;
    if hexes.len() > st.cfg.max_features {
        return Err(too_many(hexes.len(), st.cfg.max_features));
    }
    let out = hexes
        .iter()
        .map(|r| {
            let mut h = Hex::new(r.cell);
            road_props(&mut h, r);
            h
        })
        .collect();
    Ok(feature_collection(
        out,
        freshness(&snap, newest),
        json!({
            "res": a.res, "k": st.road_min_devices,
            "window": {
                "from": params::rfc3339(road_window(&a.range).from_ms),
                "to": params::rfc3339(road_window(&a.range).to_ms),
            },
        }),
    ))
}

/// The step in which a tile's default (sliding) time window moves.
const TILE_WINDOW_STEP_MS: i64 = 60_000;

/// `GET /v1/tiles/{layer}/{z}/{x}/{y}.mvt` for the layers `coverage`, `air` and `road`
/// (`?metric=` picks the air metric, default pm2_5; `from`/`to` as elsewhere). The ETag is the data
/// version, the request and its time window, so an unchanged lake answers 304 (within the minute, for
/// a window that slides).
pub(crate) async fn tile(
    State(st): State<Arc<AppState>>,
    Path((layer, z, x, y)): Path<(String, u8, u32, String)>,
    headers: HeaderMap,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.catalog.context().1;
    let Some(y) = y
        .strip_suffix(".mvt")
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "no_tile",
            "tiles are /v1/tiles/{layer}/{z}/{x}/{y}.mvt",
        ));
    };
    if !mvt::valid_tile(z, x, y) {
        return Err(error(
            StatusCode::NOT_FOUND,
            "no_tile",
            format!("no tile {z}/{x}/{y}"),
        ));
    }
    if !["coverage", "air", "road"].contains(&layer.as_str()) {
        return Err(error(
            StatusCode::NOT_FOUND,
            "no_layer",
            format!("layer {layer:?}: one of coverage, air, road"),
        ));
    }
    let (w, s, e, n) = mvt::tile_bounds(z, x, y);
    let bbox = Bbox {
        west: w,
        south: s.max(-90.0),
        east: e,
        north: n.min(90.0),
    };
    // Hexes crossing the tile's edge belong to every tile they touch (each tile draws its part),
    // so the box is grown by two hex edges for the centre test.
    let bbox = bbox.grown(params::edge_km(params::resolution_for_zoom(z).min(snap.finest())) * 2.0);
    // Without from/to the window slides with the clock: such tiles may be cached briefly only, and
    // their window moves in whole minutes, so that a tile is the same for a minute on an unchanged
    // lake (the ETag names the window).
    if let Some(m) = p.get("metric") {
        params::name("metric", m).map_err(bad_param)?;
    }
    let pinned = p.contains_key("from") && p.contains_key("to");
    let now = (hexpulse_common::time::now_ms() as u64).div_ceil(TILE_WINDOW_STEP_MS as u64) as i64
        * TILE_WINDOW_STEP_MS;
    let mut tp = p.clone();
    tp.remove("res");
    tp.insert("zoom".into(), z.to_string());
    let a = area_at(&snap, &tp, 8, Some(bbox), now)?;
    let mut query: Vec<(&String, &String)> = p.iter().collect();
    query.sort();
    let etag = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(format!(
            "{}|{layer}|{z}|{x}|{y}|{query:?}|{}|{}",
            snap.version, a.range.from_ms, a.range.to_ms
        ));
        format!("\"{}\"", hex::encode(&h.finalize()[..12]))
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let mut lb = mvt::LayerBuilder::new(&layer, z, x, y);
    let newest = match layer.as_str() {
        "coverage" => {
            let cov = coverage_cells(&st, &snap, &a).await?;
            for (c, s) in &cov.hexes {
                let mut h = Hex::new(*c);
                coverage_props(&mut h, s);
                add_to_tile(&mut lb, &h);
            }
            cov.newest_ms
        }
        "air" => {
            let metric = match p.get("metric") {
                Some(m) => params::name("metric", m).map_err(bad_param)?,
                None => "pm2_5".to_string(),
            };
            let (hexes, newest) = sensor_cells(&st, &snap, &a, &metric).await?;
            for s in &hexes {
                let mut h = Hex::new(s.cell);
                sensor_props(&mut h, s);
                h.set("metric", metric.as_str());
                add_to_tile(&mut lb, &h);
            }
            newest
        }
        _ => {
            let (hexes, newest) = road_cells(&st, &snap, &a, None).await?;
            for r in &hexes {
                let mut h = Hex::new(r.cell);
                road_props(&mut h, r);
                add_to_tile(&mut lb, &h);
            }
            newest
        }
    };
    let body = lb.encode();
    let cache = if pinned {
        "public, max-age=60"
    } else {
        "public, max-age=5"
    };
    let mut resp = (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.mapbox-vector-tile".to_string(),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache.to_string()),
        ],
        body,
    )
        .into_response();
    let h = resp.headers_mut();
    if let Some(n) = newest.map(params::rfc3339).and_then(|v| v.parse().ok()) {
        h.insert("x-hexpulse-newest-event-time", n);
    }
    if let Some(w) = snap
        .watermark_ms
        .map(params::rfc3339)
        .and_then(|v| v.parse().ok())
    {
        h.insert("x-hexpulse-watermark", w);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use h3o::Resolution;

    #[test]
    fn dead_zones_rank_holes_by_covered_neighbours() {
        let centre = LatLng::new(52.52, 13.405)
            .unwrap()
            .to_cell(Resolution::Eight);
        let ring: Vec<CellIndex> = centre
            .grid_disk::<Vec<_>>(1)
            .into_iter()
            .filter(|c| *c != centre)
            .collect();
        // A ring of good coverage around the centre, whose own signal is weak.
        let mut best: Vec<(CellIndex, Option<f64>)> =
            ring.iter().map(|c| (*c, Some(-80.0))).collect();
        best.push((centre, Some(-120.0)));
        let ranked = rank_dead_zones(&best, -110.0, &|_| true);
        assert_eq!(
            ranked[0],
            (centre, 6),
            "the weak hole is surrounded by six covered hexes"
        );
        assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(
            ranked.iter().all(|(c, _)| !ring.contains(c)),
            "covered hexes are not dead zones"
        );
        // Outer neighbours of the ring touch two or three ring hexes.
        assert!(ranked[1..].iter().all(|(_, n)| (1..=3).contains(n)));
        assert_eq!(ranked.len(), 1 + 12);
        // With the bar lowered the centre counts as covered and is no candidate.
        assert!(
            rank_dead_zones(&best, -130.0, &|_| true)
                .iter()
                .all(|(c, _)| *c != centre)
        );
        // Only candidates inside the area are returned.
        assert_eq!(
            rank_dead_zones(&best, -110.0, &|c| c == centre),
            vec![(centre, 6)]
        );
    }
}
