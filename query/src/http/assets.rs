//! The map page: a single page served at `/` from assets compiled into the binary. It talks only
//! to this service (vector tiles, GeoJSON endpoints, epochs); MapLibre GL JS comes from npm through
//! `scripts/assets.sh` and is embedded too, so the page works with no network beyond Hexpulse. So is
//! the basemap under the hexes (land, coastlines, borders, water and place names), unless the
//! configuration names a basemap style URL (`[query.map] style_url`).

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

use super::error::error;
use super::state::AppState;

const INDEX: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const PILOTS_JS: &str = include_str!("../../assets/pilots.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

/// The vendor files, by name, with their content type.
#[cfg(hexpulse_map_bundle)]
const VENDOR: [(&str, &str, &[u8]); 9] = [
    (
        "maplibre-gl.mjs",
        "text/javascript",
        include_bytes!("../../assets/vendor/maplibre-gl.mjs"),
    ),
    (
        "maplibre-gl-worker.mjs",
        "text/javascript",
        include_bytes!("../../assets/vendor/maplibre-gl-worker.mjs"),
    ),
    (
        "maplibre-gl-shared.mjs",
        "text/javascript",
        include_bytes!("../../assets/vendor/maplibre-gl-shared.mjs"),
    ),
    (
        "maplibre-gl.css",
        "text/css",
        include_bytes!("../../assets/vendor/maplibre-gl.css"),
    ),
    // The basemap: Natural Earth's land and countries at 1:10m (world-atlas), the library that
    // turns them into GeoJSON, and GeoNames' place names (web/places.mjs).
    (
        "countries-10m.json",
        "application/json",
        include_bytes!("../../assets/vendor/countries-10m.json"),
    ),
    (
        "topojson-client.min.js",
        "text/javascript",
        include_bytes!("../../assets/vendor/topojson-client.min.js"),
    ),
    (
        "places.json",
        "application/json",
        include_bytes!("../../assets/vendor/places.json"),
    ),
    // The pilot page's charts (uPlot).
    (
        "uPlot.esm.js",
        "text/javascript",
        include_bytes!("../../assets/vendor/uPlot.esm.js"),
    ),
    (
        "uPlot.min.css",
        "text/css",
        include_bytes!("../../assets/vendor/uPlot.min.css"),
    ),
];
#[cfg(not(hexpulse_map_bundle))]
const VENDOR: [(&str, &str, &[u8]); 0] = [];

/// Whether this binary carries the MapLibre bundle.
pub fn has_bundle() -> bool {
    !VENDOR.is_empty()
}

pub(crate) async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let cache = (header::CACHE_CONTROL, "public, max-age=300");
    match file.as_str() {
        "app.js" => ([(header::CONTENT_TYPE, "text/javascript"), cache], APP_JS).into_response(),
        "pilots.js" => (
            [(header::CONTENT_TYPE, "text/javascript"), cache],
            PILOTS_JS,
        )
            .into_response(),
        "app.css" => ([(header::CONTENT_TYPE, "text/css"), cache], APP_CSS).into_response(),
        f => {
            let Some(name) = f.strip_prefix("vendor/") else {
                return error(StatusCode::NOT_FOUND, "not_found", "no such asset");
            };
            match VENDOR.iter().find(|(n, _, _)| *n == name) {
                Some((_, ct, bytes)) => {
                    ([(header::CONTENT_TYPE, *ct), cache], *bytes).into_response()
                }
                None if !has_bundle() => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_map_bundle",
                    "this binary was built without the MapLibre bundle; run `make assets` (or \
                     scripts/assets.sh) and rebuild",
                ),
                None => error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
            }
        }
    }
}

/// The sensor metric names of the wire contract (`pm2_5`, ...), in enum order.
fn air_metrics() -> Vec<String> {
    use hexpulse_schemas::wire::Metric;
    (1..)
        .map_while(|i| Metric::try_from(i).ok())
        .map(hexpulse_schemas::json::metric_name)
        .collect()
}

/// `GET /map/config.json`: what the page needs to start.
pub(crate) async fn config(State(st): State<Arc<AppState>>) -> Response {
    let snap = st.gate.catalog.context().1;
    axum::Json(json!({
        "style_url": st.cfg.map.style_url,
        "center": st.cfg.map.center,
        "zoom": st.cfg.map.zoom,
        "finest_res": snap.finest(),
        "bundle": has_bundle(),
        "coverage_metrics": super::hexes::COVERAGE_METRICS,
        "air_metrics": air_metrics(),
        "road_k": st.road_min_devices,
    }))
    .into_response()
}
