//! Pilots (`pilots` group to read, `pilots_write` to create, end and delete): `GET`/`POST
//! /v1/pilots`, `GET`/`PATCH`/`DELETE /v1/pilots/{id}` over the store of [`crate::pilots`], and
//! `GET /v1/pilots/{id}/report` ([`crate::pilots::report`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::area::{freshness, geojson};
use super::error::{error, json_body, object_error};
use super::state::AppState;
use crate::auth::Caller;
use crate::geo::{Hex, feature_collection};
use crate::pilots::report::{self, Answers, Window};
use crate::pilots::{NewPilot, Pilot};

/// A pilot without its cells, for lists: the cells are in `GET /v1/pilots/{id}`.
fn summary(p: &Pilot) -> serde_json::Value {
    json!({
        "id": p.id,
        "name": p.name,
        "resolution": p.resolution,
        "cell_count": p.cells.len(),
        "start": p.start,
        "end": p.end,
        "baseline": p.baseline,
        "baseline_is_default": p.baseline_is_default,
        "created": p.created,
        "created_by": p.created_by,
    })
}

pub(crate) async fn list(State(st): State<Arc<AppState>>) -> Response {
    match st.pilots.list().await {
        Ok(all) => Json(json!({
            "pilots": all.iter().map(summary).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => object_error(e),
    }
}

/// 400 for a path that cannot name a pilot.
fn bad_id(id: &str) -> Option<Response> {
    (!crate::pilots::valid_id(id)).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_param",
            "id: a pilot id is 16 lowercase hexadecimal digits",
        )
    })
}

pub(crate) async fn get(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if let Some(r) = bad_id(&id) {
        return r;
    }
    match st.pilots.get(&id).await {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => not_found(&id),
        Err(e) => object_error(e),
    }
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_pilot",
        format!("no pilot {id:?} (GET /v1/pilots lists them)"),
    )
}

pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    body: Bytes,
) -> Response {
    let new: NewPilot = match json_body(
        &body,
        "bad_pilot",
        "a JSON pilot: {\"name\", \"area\" (GeoJSON polygon) or \"cells\", \"start\", \
         optional \"end\" and \"baseline\"}",
    ) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let by = caller.map_or_else(
        || "anonymous".to_string(),
        |axum::Extension(c)| c.label().to_string(),
    );
    let now = hexpulse_common::time::now_ms();
    match st.pilots.create(new, &by, now).await {
        Ok(p) => {
            tracing::info!(id = %p.id, name = %p.name, cells = p.cells.len(), by = %by, "pilot created");
            (StatusCode::CREATED, Json(p)).into_response()
        }
        Err(e) => object_error(e),
    }
}

/// `PATCH /v1/pilots/{id}`'s body: the end to set, or `null` to clear it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEnd {
    end: Option<String>,
}

/// `PATCH /v1/pilots/{id}`: sets or clears the pilot's end (`{"end": "2026-12-31T00:00:00Z"}` or
/// `{"end": null}`); the rest of a pilot does not change once made.
pub(crate) async fn edit(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = bad_id(&id) {
        return r;
    }
    let new: NewEnd = match json_body(
        &body,
        "bad_pilot",
        "{\"end\": an RFC 3339 time or null} (only the end of a pilot can change)",
    ) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match st.pilots.set_end(&id, new.end.as_deref()).await {
        Ok(Some(p)) => {
            tracing::info!(id = %p.id, end = ?p.end, "pilot end set");
            Json(p).into_response()
        }
        Ok(None) => not_found(&id),
        Err(e) => object_error(e),
    }
}

pub(crate) async fn delete(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if let Some(r) = bad_id(&id) {
        return r;
    }
    match st.pilots.delete(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&id),
        Err(e) => object_error(e),
    }
}

/// `GET /v1/pilots/{id}/report?format=json|csv|geojson`: coverage, quality, deployment speed and
/// cost, before against during (schemas/PILOTS.md); CSV is the time series, GeoJSON the area's
/// cells with whether each was covered before and during.
pub(crate) async fn report(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
) -> Response {
    if let Some(r) = bad_id(&id) {
        return r;
    }
    let format = match params.get("format").map(String::as_str) {
        None | Some("json") => "json",
        Some("csv") => "csv",
        Some("geojson") => "geojson",
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_param",
                "format: json, csv or geojson",
            );
        }
    };
    let pilot = match st.pilots.get(&id).await {
        Ok(Some(p)) => p,
        Ok(None) => return not_found(&id),
        Err(e) => return object_error(e),
    };
    let (body, states) = match compute(&st, &pilot).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match format {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report::series_csv(&body),
        )
            .into_response(),
        "geojson" => {
            let hexes = pilot
                .cells
                .iter()
                .filter_map(|c| c.parse::<h3o::CellIndex>().ok())
                .map(|c| {
                    let (before, during) = states.get(&u64::from(c)).copied().unwrap_or_default();
                    let mut h = Hex::new(c);
                    h.set("covered_before", before);
                    h.set("covered_during", during);
                    h
                })
                .collect();
            geojson(feature_collection(
                hexes,
                body["freshness"].clone(),
                json!({"pilot": body["pilot"], "windows": body["windows"]}),
            ))
        }
        _ => Json(body).into_response(),
    }
}

/// The report and the covered cells' states.
async fn compute(
    st: &AppState,
    pilot: &Pilot,
) -> Result<
    (
        serde_json::Value,
        std::collections::BTreeMap<u64, (bool, bool)>,
    ),
    Response,
> {
    let snap = st.gate.catalog.context().1;
    let res = pilot.resolution;
    let Some((stored, col)) = snap.column_for(res) else {
        return Err(error(
            StatusCode::CONFLICT,
            "resolution_not_stored",
            format!("the lake stores no cell column as fine as the pilot's resolution {res}"),
        ));
    };
    let cell = if stored == res {
        col
    } else {
        format!("h3_cell_to_parent({col}, {res})")
    };
    let window = Window::of(pilot, hexpulse_common::time::now_ms());
    let started = window.end_ms > window.start_ms;
    let q = report::queries(pilot, &window, &cell);
    let (series, cells, quality) = if started {
        (
            st.internal_query(q.series).await?,
            st.internal_query(q.cells).await?,
            st.internal_query(q.quality).await?,
        )
    } else {
        Default::default()
    };
    // The sealed epochs that overlap the pilot and whose device summaries the catalog's snapshot
    // holds (the same snapshot the cost is summed over), with their roots.
    let overlapping: Vec<String> = snap
        .sealed_epochs
        .iter()
        .filter(|id| {
            st.cfg
                .epoch
                .bounds(**id)
                .is_ok_and(|(from, to)| started && from < window.end_ms && to > window.start_ms)
        })
        .map(i64::to_string)
        .collect();
    let published = if overlapping.is_empty() {
        Vec::new()
    } else {
        let sql = format!(
            "SELECT DISTINCT epoch FROM device_summary WHERE epoch IN ({}) ORDER BY epoch",
            overlapping.join(", ")
        );
        let batches = st.internal_query(sql).await?;
        batches
            .iter()
            .flat_map(|b| crate::columns::i64s(b, "epoch"))
            .flatten()
            .collect()
    };
    let lake = st.gate.catalog.lake();
    let mut epochs = Vec::new();
    for id in published {
        let Ok((from, to)) = st.cfg.epoch.bounds(id) else {
            continue;
        };
        let root = match hexpulse_lake::epoch::seal::read_manifest(lake, id).await {
            Ok(Some(m)) => m.merkle_root,
            Ok(None) => continue,
            Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "lake", e)),
        };
        epochs.push((id, from, to, root));
    }
    let ids: Vec<i64> = epochs.iter().map(|e| e.0).collect();
    let cost = match report::cost_query(pilot, &window, &cell, &ids) {
        Some(sql) => Some(st.internal_query(sql).await?),
        None => None,
    };
    let (mut body, newest) = report::assemble(
        pilot,
        &window,
        &Answers {
            series: &series,
            cells: &cells,
            quality: &quality,
            cost: cost.as_deref(),
            epochs: &epochs,
            price_per_point_usd: st.pilots.config().price_per_point_usd,
        },
    );
    body["freshness"] = freshness(&snap, newest);
    Ok((body, report::cell_states(&cells)))
}
