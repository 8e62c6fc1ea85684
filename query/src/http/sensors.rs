//! Air quality and noise for city planners: `GET /v1/sensors/hexes` (a metric's aggregates per
//! hex) and `GET /v1/sensors/series` (per interval, for a cell or a box).

// Errors here are finished HTTP answers on the cold path of a refused request; boxing them would
// only add an allocation where it does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use h3o::CellIndex;
use serde_json::json;

use super::area::{Area, DAY_MS, area, cell_expr_and_filter, freshness, geojson};
use super::error::{ApiResult, bad_param, error, too_many};
use super::state::AppState;
use crate::catalog::Snapshot;
use crate::columns::{f64s, i64s, u64s};
use crate::geo::{Hex, centre_in, feature_collection};
use crate::params::{self, Bbox, TimeRange};

pub(crate) fn metric_param(p: &HashMap<String, String>) -> ApiResult<String> {
    match p.get("metric") {
        Some(m) => params::name("metric", m).map_err(bad_param),
        None => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_param",
            "metric: required (for example pm2_5, no2, noise_db)",
        )),
    }
}

pub(crate) struct SensorHex {
    pub(crate) cell: CellIndex,
    count: u64,
    mean: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    p95: Option<f64>,
}

pub(crate) async fn sensor_cells(
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

pub(crate) fn sensor_props(h: &mut Hex, s: &SensorHex) {
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
    let snap = st.gate.catalog.context().1;
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
    Ok(geojson(feature_collection(
        out,
        freshness(&snap, newest),
        json!({"metric": metric, "res": a.res}),
    )))
}

/// `GET /v1/sensors/series?metric=&cell=|bbox=&from=&to=&interval=`: count, mean, min and max per
/// interval, for one cell (any stored resolution or coarser) or a box.
pub(crate) async fn sensor_series(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.gate.catalog.context().1;
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
