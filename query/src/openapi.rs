//! The OpenAPI 3.1 description served at `/openapi.json`. A test checks that every route the
//! router serves is described here and that every described path answers something other than 404.

use serde_json::{Value, json};

/// A parameter whose value is `schema`.
fn typed(name: &str, location: &str, required: bool, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": location, "required": required, "description": description,
           "schema": schema})
}

/// A non-empty text parameter.
fn param(name: &str, location: &str, required: bool, description: &str) -> Value {
    typed(
        name,
        location,
        required,
        description,
        json!({"type": "string", "minLength": 1}),
    )
}

/// A sensor metric or observation name (`params::name`).
fn name_param(name: &str, required: bool, description: &str) -> Value {
    typed(
        name,
        "query",
        required,
        description,
        json!({"type": "string", "pattern": "^[a-z0-9_]{1,32}$"}),
    )
}

/// A time: RFC 3339 or milliseconds since 1970.
fn time_param(name: &str, description: &str) -> Value {
    typed(
        name,
        "query",
        false,
        description,
        json!({"anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "integer", "minimum": 0, "maximum": 253_402_300_799_999_i64}
        ]}),
    )
}

/// A box: four decimal numbers, west,south,east,north (within -180..180 and -90..90, west < east,
/// south < north: rules the description states, the pattern cannot).
fn bbox_param(required: bool, description: &str) -> Value {
    typed(
        "bbox",
        "query",
        required,
        description,
        json!({"type": "string", "pattern": crate::params::BBOX_PATTERN}),
    )
}

fn epoch_id() -> Value {
    typed(
        "id",
        "path",
        true,
        "epoch id",
        json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
    )
}

fn device_key() -> Value {
    typed(
        "device",
        "path",
        true,
        "device key: 64 hex digits (its Ed25519 public key)",
        json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
    )
}

fn pilot_id() -> Value {
    typed(
        "id",
        "path",
        true,
        "pilot id: 16 lowercase hex digits",
        json!({"type": "string", "pattern": "^[0-9a-f]{16}$"}),
    )
}

fn rule_id() -> Value {
    typed(
        "id",
        "path",
        true,
        "alert rule id: 16 lowercase hex digits",
        json!({"type": "string", "pattern": "^[0-9a-f]{16}$"}),
    )
}

/// `POST /v1/alerts/rules`'s body (schemas/ALERTS.md).
fn rule_body() -> Value {
    let span =
        json!({"type": "string", "description": "a duration, 1m to 7days (\"90s\", \"1h\")"});
    json!({
        "type": "object",
        "required": ["name", "condition", "webhook"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 120},
            "condition": {"oneOf": [
                {"type": "object", "additionalProperties": false, "required": ["kind", "devices", "after"], "properties": {
                    "kind": {"const": "device_offline"},
                    "devices": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}},
                    "after": span}},
                {"type": "object", "additionalProperties": false, "required": ["kind", "metric", "above", "for"], "properties": {
                    "kind": {"const": "hex_metric"},
                    "metric": {"type": "string", "description": "a sensor metric of the validation rules' [ranges] (pm2_5, no2, ...)"},
                    "above": {"type": "number"},
                    "for": span,
                    "resolution": {"type": "integer", "minimum": 0, "maximum": 15, "default": 8},
                    "cells": {"type": ["array", "null"], "items": {"type": "string"}}}},
                {"type": "object", "additionalProperties": false, "required": ["kind", "pilot", "drop_percent"], "properties": {
                    "kind": {"const": "pilot_coverage_drop"},
                    "pilot": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "drop_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                    "window": span}}
            ]},
            "webhook": {"type": "object", "additionalProperties": false, "required": ["url", "secret"], "properties": {
                "url": {"type": "string", "format": "uri", "description": "scheme and host must be allowed by [query.alerts] webhook_schemes and webhook_hosts"},
                "secret": {"type": "string", "minLength": 16, "maxLength": 256, "description": "the HMAC-SHA256 key of X-Hexpulse-Signature; never answered back"}}}
        }
    })
}

/// `POST /v1/pilots`'s body.
fn pilot_body() -> Value {
    json!({
        "type": "object",
        "required": ["name", "start"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 120},
            "area": {"description": "a GeoJSON Polygon, MultiPolygon or Feature holding one, [longitude, latitude] in degrees; or give cells", "type": ["object", "null"]},
            "cells": {"description": "H3 cells (coarser ones stand for their children, finer ones for their parent); or give area", "type": ["array", "null"], "items": {"type": "string"}},
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": ["string", "null"], "format": "date-time"},
            "baseline": {"type": ["object", "null"], "additionalProperties": false, "required": ["cost_per_site_usd", "days_to_deploy"], "properties": {
                "cost_per_site_usd": {"type": "number", "exclusiveMinimum": 0},
                "days_to_deploy": {"type": "number", "exclusiveMinimum": 0}
            }}
        }
    })
}

fn area_params() -> Vec<Value> {
    vec![
        bbox_param(
            true,
            "west,south,east,north in degrees (-180..180, -90..90; west < east, south < north)",
        ),
        typed(
            "res",
            "query",
            false,
            "H3 resolution (default 8; at most the finest the lake stores)",
            json!({"type": "integer", "minimum": 0, "maximum": 15}),
        ),
        typed(
            "zoom",
            "query",
            false,
            "web-map zoom, instead of res (giving both is a 400)",
            json!({"type": "integer", "minimum": 0, "maximum": 24}),
        ),
        time_param(
            "from",
            "RFC 3339 or ms since 1970 (default: to minus 24 h; before to)",
        ),
        time_param(
            "to",
            "RFC 3339 or ms since 1970 (default: a minute from now)",
        ),
    ]
}

/// An operation answering 200 with one of the media types `content` lists (separated by ", ").
fn op(summary: &str, group: &str, params: Vec<Value>, content: &str) -> Value {
    let mut v = op_without_404(summary, group, params, content);
    let has_path = v["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "path"));
    if has_path {
        v["responses"]["404"] = json!({"$ref": "#/components/responses/Error"});
    }
    v
}

fn op_without_404(summary: &str, group: &str, params: Vec<Value>, content: &str) -> Value {
    json!({
        "summary": summary,
        "x-hexpulse-group": group,
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": content
                .split(", ")
                .map(|c| (c.to_string(), json!({})))
                .collect::<serde_json::Map<_, _>>()},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "413": {"$ref": "#/components/responses/Error"},
            "503": {"$ref": "#/components/responses/Error"}
        }
    })
}

/// The document. `max_features`: the configured cap on hexes per answer.
pub fn document(max_features: usize) -> Value {
    let geo = "application/geo+json";
    let mut cov = area_params();
    cov.push(typed(
        "metric",
        "query",
        false,
        "the metric the map colours by (default devices)",
        json!({"enum": ["devices", "heartbeats", "best_signal_dbm", "median_signal_dbm", "speed_tests", "median_download_mbps"]}),
    ));
    let mut dead = area_params();
    dead.push(typed(
        "weak_dbm",
        "query",
        false,
        "best signal below this counts as weak (default -110)",
        json!({"type": "number"}),
    ));
    dead.push(typed(
        "limit",
        "query",
        false,
        "at most this many hexes (default 200)",
        json!({"type": "integer", "minimum": 1, "maximum": max_features}),
    ));
    let mut sens = area_params();
    sens.push(name_param("metric", true, "sensor metric, e.g. pm2_5"));
    let series = vec![
        name_param("metric", true, "sensor metric, e.g. pm2_5"),
        typed(
            "cell",
            "query",
            false,
            "an H3 cell, e.g. 881f1d4b7ffffff (give cell or bbox, not both)",
            json!({"type": "string", "pattern": "^[0-9a-fA-F]{15}$"}),
        ),
        bbox_param(false, "west,south,east,north (or give cell)"),
        time_param("from", "RFC 3339 or ms (default: to minus 24 h; before to)"),
        time_param("to", "RFC 3339 or ms (default: a minute from now)"),
        typed(
            "interval",
            "query",
            false,
            "bucket length from 1m to 7d, e.g. 15m or 1h (default 1h)",
            json!({"type": "string", "pattern": "^([1-9][0-9]{0,3}m|([1-9]|[1-9][0-9]|1[0-5][0-9]|16[0-8])h|[1-7]d)$"}),
        ),
    ];
    let mut road = area_params();
    road.push(name_param("type", false, "observation type, e.g. pothole"));
    let tile = vec![
        typed(
            "layer",
            "path",
            true,
            "the hex layer",
            json!({"enum": ["coverage", "air", "road"]}),
        ),
        typed(
            "z",
            "path",
            true,
            "zoom",
            json!({"type": "integer", "minimum": 0, "maximum": 24}),
        ),
        typed(
            "x",
            "path",
            true,
            "tile column, below 2^z",
            json!({"type": "integer", "minimum": 0, "maximum": 16_777_215}),
        ),
        typed(
            "y",
            "path",
            true,
            "tile row, below 2^z, with the .mvt suffix",
            json!({"type": "string", "pattern": "^[0-9]{1,8}\\.mvt$"}),
        ),
        name_param("metric", false, "air layer metric (default pm2_5)"),
        time_param("from", "RFC 3339 or ms (default: to minus 24 h; before to)"),
        time_param("to", "RFC 3339 or ms (default: a minute from now)"),
    ];
    let in_box = vec![
        bbox_param(
            true,
            "west,south,east,north in degrees (-180..180, -90..90; west < east, south < north)",
        ),
        typed(
            "kind",
            "query",
            false,
            "only devices of this kind",
            json!({"enum": crate::status::KINDS}),
        ),
        typed(
            "state",
            "query",
            false,
            "only devices in this state",
            json!({"enum": ["online", "stale", "offline"]}),
        ),
    ];
    let id = epoch_id();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hexpulse query service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Coverage maps, sensor and road aggregates, epochs for reward oracles, and read-only SQL over the Hexpulse lake. Errors are JSON {\"error\": {\"code\": code, \"message\": text, \"retry_after_s\": seconds}} (retry_after_s where a retry later may succeed, with the same Retry-After header), the same shape as ingest's. Data answers carry freshness: the newest event time included, the lake's watermark and live_as_of, up to when rows not yet committed are included (in the body, or x-hexpulse-* headers for tiles). Each operation's x-hexpulse-group is the endpoint group roles are granted.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "an error", "content": {"application/json": {"schema": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "stable machine-readable code"},
                        "message": {"type": "string", "description": "what went wrong, for people"},
                        "retry_after_s": {"type": "integer", "minimum": 1, "description": "where retrying later may succeed: seconds to wait (also the Retry-After header)"}
                    }}}}}}}}
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
                "summary": "Read-only SQL (SELECT, WITH, EXPLAIN); the answer by Accept: JSON, text/csv or application/vnd.apache.arrow.stream. H3 functions: h3_latlng_to_cell, h3_lake_cell (the cell the lake stores for a point: the parent rule of TABLES.md), h3_cell_to_parent, h3_cell_to_string, h3_string_to_cell, h3_cell_to_boundary, h3_grid_disk, h3_grid_distance, h3_cell_resolution, h3_cell_to_lat, h3_cell_to_lng. Tables road and rejected need the raw group.",
                "x-hexpulse-group": "sql",
                "requestBody": {"required": true, "content": {"text/plain": {"schema": {"type": "string", "minLength": 1}}, "application/json": {"schema": {"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string", "minLength": 1}}}}}},
                "responses": {"200": {"description": "rows", "content": {"application/json": {}, "text/csv": {}, "application/vnd.apache.arrow.stream": {}}}, "400": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}, "408": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}}
            }},
            "/v1/pilots": {
                "get": op_without_404("The pilots, without their cells (GET /v1/pilots/{id} has them)", "pilots", vec![], "application/json"),
                "post": {
                    "summary": "Creates a pilot: a name, an area (a GeoJSON Polygon or MultiPolygon in degrees, or H3 cells), a start, an optional end and an optional baseline (default: $300,000 and 180 days a site). The area is stored as its cells at [query.pilots] resolution; 400 for an invalid or self-intersecting polygon or an area past max_area_cells; 409 past max_pilots",
                    "x-hexpulse-group": "pilots_write",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": pilot_body()}}},
                    "responses": {"201": {"description": "the stored pilot", "content": {"application/json": {}}}, "400": {"$ref": "#/components/responses/Error"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}, "409": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}
                }
            },
            "/v1/pilots/{id}": {
                "get": op("A pilot with its cells", "pilots", vec![pilot_id()], "application/json"),
                "patch": {
                    "summary": "Sets or clears a pilot's end (the rest of a pilot does not change once made); 400 for an end not after the start or over ten years after it",
                    "x-hexpulse-group": "pilots_write",
                    "parameters": [pilot_id()],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["end"], "additionalProperties": false, "properties": {"end": {"type": ["string", "null"], "format": "date-time"}}}}}},
                    "responses": {"200": {"description": "the pilot as stored now", "content": {"application/json": {}}}, "400": {"$ref": "#/components/responses/Error"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}
                },
                "delete": {
                    "summary": "Deletes a pilot",
                    "x-hexpulse-group": "pilots_write",
                    "parameters": [pilot_id()],
                    "responses": {"204": {"description": "deleted"}, "400": {"$ref": "#/components/responses/Error"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}
                }
            },
            "/v1/pilots/{id}/report": {"get": op("A pilot's report over its cells, the window before the start against the pilot's (schemas/PILOTS.md): coverage share and the cells that went from dead to covered, speed-test and signal percentiles, active devices and the time to 50% and 90% of the final coverage, the rewards of the area's devices in the sealed epochs against the baseline; hourly or daily series; CSV: the series", "pilots", vec![pilot_id(), typed("format", "query", false, "json (default), csv (the series) or geojson (the area's cells, each with covered_before and covered_during)", json!({"enum": ["json", "csv", "geojson"]}))], "application/json, text/csv, application/geo+json")},
            "/v1/alerts/rules": {
                "get": op_without_404("The alert rules (without their webhooks' secrets)", "alerts", vec![], "application/json"),
                "post": {
                    "summary": "Creates an alert rule (schemas/ALERTS.md): device_offline, hex_metric or pilot_coverage_drop, with a webhook the alerts role POSTs each firing to, signed with the secret. 400 for an unknown metric or pilot, a bad duration, or a webhook URL whose scheme or host [query.alerts] does not allow; 409 past max_rules",
                    "x-hexpulse-group": "alerts_write",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": rule_body()}}},
                    "responses": {"201": {"description": "the stored rule, without its secret", "content": {"application/json": {}}}, "400": {"$ref": "#/components/responses/Error"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}, "409": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}
                }
            },
            "/v1/alerts/rules/{id}": {
                "get": op("An alert rule (without its webhook's secret)", "alerts", vec![rule_id()], "application/json"),
                "delete": {
                    "summary": "Deletes an alert rule and its firing state",
                    "x-hexpulse-group": "alerts_write",
                    "parameters": [rule_id()],
                    "responses": {"204": {"description": "deleted"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}
                }
            },
            "/v1/devices/{device}/status": {"get": op("A device's status: online, stale or offline by the age of its newest valid row; last heartbeat and last reading with their ages; last location and cell (road devices: raw group only); rejections by reason over the window. From a cache that follows the lake's commits; 404 for a device with no row in the window, 503 while the cache first reads the lake", "devices", vec![device_key()], "application/json")},
            "/v1/devices/status": {"get": op("The devices whose last location lies in a box, with their state (road devices only for the raw group); 413 past max_features", "devices", in_box, "application/json")},
            "/v1/epochs": {"get": op("Sealed epochs with their Merkle roots", "epochs", vec![], "application/json")},
            "/v1/epochs/{id}/manifest": {"get": op("An epoch's manifest", "epochs", vec![id.clone()], "application/json")},
            "/v1/epochs/{id}/devices": {"get": op("Per-device summaries: JSON, CSV or Parquet (Accept or ?format=)", "epochs", vec![id.clone(), typed("format", "query", false, "the answer format (default by Accept, else json)", json!({"enum": ["json", "csv", "parquet", "arrow"]}))], "application/json, text/csv, application/vnd.apache.parquet, application/vnd.apache.arrow.stream")},
            "/v1/epochs/{id}/proof/{device}": {"get": op("A device's Merkle inclusion proof", "epochs", vec![id, device_key()], "application/json")},
            "/v1/epochs/{id}/devices/{device}/hexes": {"get": op("The cells where a fixed device reported during an epoch (GeoJSON; never dashcam tracks)", "epochs", vec![epoch_id(), device_key()], geo)},
            "/": {"get": op("The map page", "map", vec![], "text/html")},
            "/assets/{file}": {"get": op("The map page's assets (embedded)", "map", vec![param("file", "path", true, "app.js, app.css, vendor/...")], "text/javascript, text/css")},
            "/map/config.json": {"get": op("The map page's start-up settings", "map", vec![], "application/json")},
            "/openapi.json": {"get": op("This document", "meta", vec![], "application/json")},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Readiness and the catalog snapshot", "security": [], "responses": {"200": {"description": "ready"}}}},
            "/metrics": {"get": op("Prometheus metrics", "metrics", vec![], "text/plain")}
        }
    })
}
