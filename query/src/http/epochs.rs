//! The epoch endpoints for reward oracles: `GET /v1/epochs` (sealed and open epochs),
//! `/v1/epochs/{id}/manifest`, `/v1/epochs/{id}/devices` (JSON, CSV, or the sealed Parquet file
//! itself, checked against the manifest's SHA-256), `/v1/epochs/{id}/proof/{device}` (a Merkle
//! proof) and `/v1/epochs/{id}/devices/{device}/hexes` (where a fixed device reported).

// Errors here are finished HTTP answers on the cold path of a refused request; boxing them would
// only add an allocation where it does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use h3o::CellIndex;
use hexpulse_lake::epoch::{seal, sealed_ids};
use hexpulse_schemas::tables;
use serde_json::json;

use super::area::{Area, cell_expr_and_filter, freshness, geojson};
use super::error::{ApiResult, error};
use super::sql::{respond, wanted_format};
use super::state::AppState;
use crate::columns::{i64s, u64s};
use crate::geo::{Hex, feature_collection};
use crate::params::{Bbox, TimeRange};

/// Unsealed epochs listed before the current one, at most.
const OPEN_EPOCHS_LISTED: i64 = 24;

/// `GET /v1/epochs`: sealed epochs with their roots, then the unsealed ones since the last seal
/// (at most a day's worth of epochs back) with where they stand: `open` (not ended),
/// `awaiting_watermark` (ended; some partition's watermark is not yet past end + lateness) or
/// `sealable` (the sealer will seal it on its next pass).
pub(crate) async fn list_epochs(State(s): State<Arc<AppState>>) -> Response {
    let lake = s.gate.catalog.lake();
    let ids = match sealed_ids(lake).await {
        Ok(ids) => ids,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "lake", e),
    };
    let mut out = Vec::new();
    for id in &ids {
        if let Ok(Some(m)) = seal::read_manifest(lake, *id).await {
            out.push(json!({
                "epoch": id, "status": "sealed", "forced": m.forced, "start": m.start, "end": m.end,
                "devices": m.merkle_leaves, "merkle_root": m.merkle_root,
                "rules_version": m.rules_version, "sealed_at": m.sealed_at,
            }));
        }
    }
    let snap = s.gate.catalog.context().1;
    let now = hexpulse_common::time::now_ms();
    let ecfg = &s.cfg.epoch;
    if let Ok(current) = ecfg.id_of(now) {
        let after_sealed = ids.last().map_or(i64::MIN, |l| l + 1);
        let first = after_sealed.max(current - OPEN_EPOCHS_LISTED);
        for id in first..=current {
            if ids.contains(&id) {
                continue;
            }
            let Ok((start, end)) = ecfg.bounds(id) else {
                continue;
            };
            let ready_at = end + s.lateness_ms;
            let status = if end > now {
                "open"
            } else if snap.watermark_ms.is_some_and(|w| w >= ready_at) {
                "sealable"
            } else {
                "awaiting_watermark"
            };
            out.push(json!({
                "epoch": id, "status": status,
                "start": crate::params::rfc3339(start), "end": crate::params::rfc3339(end),
                "sealable_when_watermark_reaches": crate::params::rfc3339(ready_at),
            }));
        }
    }
    axum::Json(json!({
        "epochs": out,
        "freshness": freshness(&snap, None),
    }))
    .into_response()
}

async fn load_manifest(s: &AppState, id: i64) -> Result<seal::Manifest, Response> {
    match seal::read_manifest(s.gate.catalog.lake(), id).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "not_sealed",
            format!("epoch {id} is not sealed"),
        )),
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "lake", e)),
    }
}

/// An epoch id from a path (unsigned there; ids past `i64::MAX` name no epoch).
pub(crate) fn epoch_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

pub(crate) async fn manifest(State(s): State<Arc<AppState>>, Path(id): Path<u64>) -> Response {
    let id = epoch_id(id);
    match load_manifest(&s, id).await {
        Ok(m) => axum::Json(m).into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn devices(
    State(s): State<Arc<AppState>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    let id = epoch_id(id);
    let m = match load_manifest(&s, id).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let format = match wanted_format(&headers, &params) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let lake = s.gate.catalog.lake();
    if format == "parquet" {
        let Some(out) = m.output(tables::DEVICE_SUMMARY_TABLE) else {
            return error(StatusCode::NOT_FOUND, "no_file", "no device_summary file");
        };
        // Checked against the manifest first: only what the manifest lists leaves here.
        if let Err(e) = seal::read_output(lake, &m, tables::DEVICE_SUMMARY_TABLE).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "integrity", e);
        }
        return match lake.get(&out.path).await {
            Ok(Some(bytes)) => (
                [(header::CONTENT_TYPE, "application/vnd.apache.parquet")],
                bytes,
            )
                .into_response(),
            _ => error(StatusCode::NOT_FOUND, "no_file", "device_summary vanished"),
        };
    }
    match seal::read_output(lake, &m, tables::DEVICE_SUMMARY_TABLE).await {
        Ok(batch) => respond(format, &batch.schema(), &[batch], s.cfg.max_answer_bytes),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "integrity", e),
    }
}

pub(crate) async fn proof(
    State(s): State<Arc<AppState>>,
    Path((id, device)): Path<(u64, String)>,
) -> Response {
    let id = epoch_id(id);
    match seal::build_proof(s.gate.catalog.lake(), id, &device.to_ascii_lowercase()).await {
        Ok(p) => axum::Json(p).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, "no_proof", e),
    }
}

/// `GET /v1/epochs/{id}/devices/{device}/hexes`: the cells (at the epoch hex resolution) where a
/// fixed device (hotspot or sensor) reported valid readings during the epoch, as GeoJSON. Dashcam
/// tracks are never listed: road rows are not read here.
pub(crate) async fn device_hexes(
    State(st): State<Arc<AppState>>,
    Path((id, device)): Path<(u64, String)>,
) -> ApiResult<Response> {
    let id = epoch_id(id);
    let snap = st.gate.catalog.context().1;
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
    Ok(geojson(feature_collection(
        hexes,
        freshness(&snap, newest),
        json!({"epoch": id, "device_key": device, "res": res}),
    )))
}
