//! The OpenAPI 3.1 description served at `/openapi.json`. A test checks that every route the
//! router serves is described here and that every described path answers something other than 404.

use serde_json::{Value, json};

fn param(name: &str, location: &str, required: bool, description: &str) -> Value {
    json!({"name": name, "in": location, "required": required, "description": description,
           "schema": {"type": "string"}})
}

fn area_params() -> Vec<Value> {
    vec![
        param("bbox", "query", true, "west,south,east,north in degrees"),
        param(
            "res",
            "query",
            false,
            "H3 resolution (default 8; at most the finest the lake stores)",
        ),
        param("zoom", "query", false, "web-map zoom, instead of res"),
        param(
            "from",
            "query",
            false,
            "RFC 3339 or ms since 1970 (default: to minus 24 h)",
        ),
        param(
            "to",
            "query",
            false,
            "RFC 3339 or ms since 1970 (default: now)",
        ),
    ]
}

fn op(summary: &str, group: &str, params: Vec<Value>, content: &str) -> Value {
    json!({
        "summary": summary,
        "x-hexpulse-group": group,
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": {content: {}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "413": {"$ref": "#/components/responses/Error"},
            "503": {"$ref": "#/components/responses/Error"}
        }
    })
}

/// The document.
pub fn document() -> Value {
    let geo = "application/geo+json";
    let mut cov = area_params();
    cov.push(param("metric", "query", false, "devices | heartbeats | best_signal_dbm | median_signal_dbm | speed_tests | median_download_mbps"));
    let mut dead = area_params();
    dead.push(param(
        "weak_dbm",
        "query",
        false,
        "best signal below this counts as weak (default -110)",
    ));
    dead.push(param(
        "limit",
        "query",
        false,
        "at most this many hexes (default 200)",
    ));
    let mut sens = area_params();
    sens.push(param("metric", "query", true, "sensor metric, e.g. pm2_5"));
    let series = vec![
        param("metric", "query", true, "sensor metric, e.g. pm2_5"),
        param("cell", "query", false, "an H3 cell (or give bbox)"),
        param(
            "bbox",
            "query",
            false,
            "west,south,east,north (or give cell)",
        ),
        param("from", "query", false, "RFC 3339 or ms"),
        param("to", "query", false, "RFC 3339 or ms"),
        param(
            "interval",
            "query",
            false,
            "bucket length, e.g. 15m or 1h (default 1h)",
        ),
    ];
    let mut road = area_params();
    road.push(param(
        "type",
        "query",
        false,
        "observation type, e.g. pothole",
    ));
    let tile = vec![
        param("layer", "path", true, "coverage | air | road"),
        param("z", "path", true, "zoom"),
        param("x", "path", true, "tile column"),
        param("y", "path", true, "tile row, with the .mvt suffix"),
        param("metric", "query", false, "air layer metric (default pm2_5)"),
        param("from", "query", false, "RFC 3339 or ms"),
        param("to", "query", false, "RFC 3339 or ms"),
    ];
    let id = param("id", "path", true, "epoch id");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hexpulse query service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Coverage maps, sensor and road aggregates, epochs for reward oracles, and read-only SQL over the Hexpulse lake. Errors are JSON {\"error\": code, \"message\": text}. Data answers carry freshness: the newest event time included and the lake's watermark (in the body, or x-hexpulse-* headers for tiles). Each operation's x-hexpulse-group is the endpoint group roles are granted.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "an error", "content": {"application/json": {"schema": {
                "type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}}}}}
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/coverage": {"get": op("Coverage per hex as GeoJSON (coarser resolutions are rollups of the finest cells)", "coverage", cov, geo)},
            "/v1/deadzones": {"get": op("Hexes with no or weak coverage bordering covered ones, most covered neighbours first", "coverage", dead, geo)},
            "/v1/sensors/hexes": {"get": op("Sensor metric per hex: count, mean, min, max, p95", "sensors", sens, geo)},
            "/v1/sensors/series": {"get": op("Sensor metric time series for a cell or a box", "sensors", series, "application/json")},
            "/v1/road/hexes": {"get": op("Road observations per hex, only hexes (and observation types within them) with at least k distinct dashcams; the time window is widened to whole hours and the newest time is given to the hour", "road", road, geo)},
            "/v1/tiles/{layer}/{z}/{x}/{y}": {"get": op("Mapbox vector tile of a hex layer; ETag follows the data version", "coverage|sensors|road", tile, "application/vnd.mapbox-vector-tile")},
            "/v1/sql": {"post": {
                "summary": "Read-only SQL (SELECT, WITH, EXPLAIN); the answer by Accept: JSON, text/csv or application/vnd.apache.arrow.stream. H3 functions: h3_latlng_to_cell, h3_cell_to_parent, h3_cell_to_string, h3_string_to_cell, h3_cell_to_boundary, h3_grid_disk, h3_grid_distance, h3_cell_resolution, h3_cell_to_lat, h3_cell_to_lng. Tables road and rejected need the raw group.",
                "x-hexpulse-group": "sql",
                "requestBody": {"required": true, "content": {"text/plain": {}, "application/json": {"schema": {"type": "object", "properties": {"sql": {"type": "string"}}}}}},
                "responses": {"200": {"description": "rows"}, "400": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}, "408": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}}
            }},
            "/v1/epochs": {"get": op("Sealed epochs with their Merkle roots", "epochs", vec![], "application/json")},
            "/v1/epochs/{id}/manifest": {"get": op("An epoch's manifest", "epochs", vec![id.clone()], "application/json")},
            "/v1/epochs/{id}/devices": {"get": op("Per-device summaries: JSON, CSV or Parquet (Accept or ?format=)", "epochs", vec![id.clone(), param("format", "query", false, "json | csv | parquet")], "application/json")},
            "/v1/epochs/{id}/proof/{device}": {"get": op("A device's Merkle inclusion proof", "epochs", vec![id, param("device", "path", true, "device key, hex")], "application/json")},
            "/v1/epochs/{id}/devices/{device}/hexes": {"get": op("The cells where a fixed device reported during an epoch (GeoJSON; never dashcam tracks)", "epochs", vec![param("id", "path", true, "epoch id"), param("device", "path", true, "device key, hex")], geo)},
            "/": {"get": op("The map page", "map", vec![], "text/html")},
            "/assets/{file}": {"get": op("The map page's assets (embedded)", "map", vec![param("file", "path", true, "app.js, app.css, vendor/...")], "text/javascript")},
            "/map/config.json": {"get": op("The map page's start-up settings", "map", vec![], "application/json")},
            "/openapi.json": {"get": op("This document", "meta", vec![], "application/json")},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Readiness and the catalog snapshot", "security": [], "responses": {"200": {"description": "ready"}}}},
            "/metrics": {"get": op("Prometheus metrics", "metrics", vec![], "text/plain")}
        }
    })
}
