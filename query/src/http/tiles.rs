//! Vector tiles of the map page: `GET /v1/tiles/{layer}/{z}/{x}/{y}.mvt` for the layers
//! `coverage`, `air` and `road`, built from the same hexes as the GeoJSON endpoints.

// Errors here are finished HTTP answers on the cold path of a refused request; boxing them would
// only add an allocation where it does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::area::area_at;
use super::error::{ApiResult, bad_param, error};
use super::hexes::{coverage_cells, coverage_props};
use super::road::{road_cells, road_props};
use super::sensors::{sensor_cells, sensor_props};
use super::state::AppState;
use crate::geo::{Hex, add_to_tile};
use crate::mvt;
use crate::params::{self, Bbox};

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
    let snap = st.gate.catalog.context().1;
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
            snap.data_version(),
            a.range.from_ms,
            a.range.to_ms
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
    if let Some(l) = snap
        .live_as_of_ms()
        .map(params::rfc3339)
        .and_then(|v| v.parse().ok())
    {
        h.insert("x-hexpulse-live-as-of", l);
    }
    Ok(resp)
}
