//! Coverage for network operators: `GET /v1/coverage` (hexes with their devices, heartbeats,
//! signal and speed tests) and `GET /v1/deadzones` (uncovered hexes next to covered ones).

// Errors here are finished HTTP answers on the cold path of a refused request; boxing them would
// only add an allocation where it does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::Response;
use h3o::CellIndex;
use serde_json::{Value, json};

use super::area::{Area, area, cell_expr_and_filter, freshness, geojson};
use super::error::{ApiResult, error, too_many};
use super::state::AppState;
use crate::catalog::Snapshot;
use crate::columns::{f64s, i64s, u64s};
use crate::geo::{Hex, centre_in, feature_collection};
use crate::params;

/// Coverage per hex: devices, heartbeats, best and median signal, speed tests. Medians are exact
/// (the mean of the two middle values for an even count), as in the epochs' `hex_coverage`.
pub(crate) struct Coverage {
    pub(crate) hexes: Vec<(CellIndex, CoverageStats)>,
    pub(crate) newest_ms: Option<i64>,
}

#[derive(Clone, Copy)]
pub(crate) struct CoverageStats {
    devices: u64,
    heartbeats: u64,
    best_signal_dbm: Option<f64>,
    median_signal_dbm: Option<f64>,
    speed_tests: u64,
    median_download_mbps: Option<f64>,
}

pub(crate) async fn coverage_cells(
    st: &AppState,
    snap: &Snapshot,
    a: &Area,
) -> ApiResult<Coverage> {
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

pub(crate) fn coverage_props(h: &mut Hex, s: &CoverageStats) {
    h.set("devices", s.devices);
    h.set("heartbeats", s.heartbeats);
    h.set("best_signal_dbm", s.best_signal_dbm);
    h.set("median_signal_dbm", s.median_signal_dbm);
    h.set("speed_tests", s.speed_tests);
    h.set("median_download_mbps", s.median_download_mbps);
}

/// `GET /v1/coverage?bbox=&res=|zoom=&from=&to=&metric=`
pub(crate) async fn coverage(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.gate.catalog.context().1;
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
    Ok(geojson(feature_collection(
        hexes,
        freshness(&snap, cov.newest_ms),
        json!({"metric": metric, "res": a.res}),
    )))
}

/// `GET /v1/deadzones?bbox=&res=&from=&to=&weak_dbm=&limit=`: hexes with no or weak coverage that
/// border covered ones, most covered neighbours first.
pub(crate) async fn deadzones(
    State(st): State<Arc<AppState>>,
    QueryParams(p): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let snap = st.gate.catalog.context().1;
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
    Ok(geojson(feature_collection(
        hexes,
        freshness(&snap, cov.newest_ms),
        json!({"res": a.res, "weak_dbm": weak_dbm, "candidates": total}),
    )))
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

#[cfg(test)]
mod tests {
    use super::*;
    use h3o::{LatLng, Resolution};

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
