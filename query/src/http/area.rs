//! What the hex endpoints share: the area parameters (box, resolution, time range), the SQL of
//! cells at a resolution, the freshness every answer states, and the GeoJSON answer.
//!
//! Hex numbers do not depend on the box asked for: a hex is aggregated over all its readings (the
//! box is grown by two hex edges before filtering), and it is part of an answer when its centre
//! lies in the box. Coarser resolutions are rollups of the finest stored cells
//! (`h3_cell_to_parent`), so a parent's counts are those of its children's readings.

// Errors here are finished HTTP answers on the cold path of a refused request; boxing them would
// only add an allocation where it does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiResult, bad_param, error};
use crate::catalog::Snapshot;
use crate::params::{self, Bbox, TimeRange};

pub(crate) const DAY_MS: i64 = 86_400_000;

/// Freshness of an answer: the newest event time it includes and the lake's watermark.
pub fn freshness(snap: &Snapshot, newest_ms: Option<i64>) -> Value {
    json!({
        "newest_event_time": newest_ms.map(params::rfc3339),
        "watermark": snap.watermark_ms.map(params::rfc3339),
        "catalog_built_at": params::rfc3339(snap.built_at_ms),
        "data_version": snap.data_version(),
        // Rows the processors have validated but not yet committed are in the answer up to here.
        "live_as_of": snap.live_as_of_ms().map(params::rfc3339),
    })
}

/// A GeoJSON answer ([`crate::geo::feature_collection`]'s body).
pub(crate) fn geojson(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/geo+json")],
        body.to_string(),
    )
        .into_response()
}

/// The common area parameters: box, resolution, time range.
pub(crate) struct Area {
    pub(crate) bbox: Bbox,
    pub(crate) res: u8,
    pub(crate) range: TimeRange,
}

pub(crate) fn area(
    snap: &Snapshot,
    p: &HashMap<String, String>,
    default_res: u8,
    bbox: Option<Bbox>,
) -> ApiResult<Area> {
    area_at(snap, p, default_res, bbox, hexpulse_common::time::now_ms())
}

/// [`area`], with the default time window ending relative to `now_ms`.
pub(crate) fn area_at(
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
pub(crate) fn cell_expr_and_filter(snap: &Snapshot, a: &Area) -> ApiResult<(String, String)> {
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
