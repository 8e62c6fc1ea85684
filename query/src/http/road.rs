//! Road data under the k-anonymity rule: `GET /v1/road/hexes`, observation counts per hex for
//! hexes with at least k distinct dashcams, in whole hours.

// Errors here are finished HTTP answers on the cold path of a refused request; boxing them would
// only add an allocation where it does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::response::Response;
use h3o::CellIndex;
use serde_json::json;

use super::area::{Area, area, cell_expr_and_filter, freshness, geojson};
use super::error::{ApiResult, bad_param, too_many};
use super::state::AppState;
use crate::catalog::Snapshot;
use crate::columns::{i64s, strs, u64s};
use crate::geo::{Hex, centre_in, feature_collection};
use crate::params::{self, TimeRange};

pub(crate) struct RoadHex {
    pub(crate) cell: CellIndex,
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
pub(crate) async fn road_cells(
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

pub(crate) fn road_props(h: &mut Hex, r: &RoadHex) {
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
    let snap = st.gate.catalog.context().1;
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
    Ok(geojson(feature_collection(
        out,
        freshness(&snap, newest),
        json!({
            "res": a.res, "k": st.road_min_devices,
            "window": {
                "from": params::rfc3339(road_window(&a.range).from_ms),
                "to": params::rfc3339(road_window(&a.range).to_ms),
            },
        }),
    )))
}
