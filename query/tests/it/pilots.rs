//! Pilots over HTTP (issue #25): an operator creates them, planners and oracles read them, every
//! bad area gets a 400 with its reason, and they survive a restart of the service (stored next to
//! the lake on its object store, here a local directory).

use hexpulse_lake::Lake;
use hexpulse_query::{Query, QueryConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn start(url: &str) -> (String, CancellationToken) {
    let mut cfg = QueryConfig::for_tests(url);
    cfg.auth = crate::pg::roles(&[
        ("operator", &["pilots", "pilots_write"]),
        ("planner", &["pilots", "sql"]),
        ("oracle", &["epochs"]),
    ]);
    cfg.pilots.max_area_cells = 500;
    let stop = CancellationToken::new();
    let q = Query::start(cfg, Lake::open(url).unwrap(), stop.clone())
        .await
        .unwrap();
    (format!("http://{}", q.addr), stop)
}

pub(crate) async fn call(
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut rb = match method {
        "POST" => client.post(url),
        "PATCH" => client.patch(url),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    }
    .bearer_auth(format!("secret-{token}"));
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn square(west: f64, south: f64, size: f64) -> Value {
    json!({"type": "Polygon", "coordinates": [[[west, south], [west + size, south],
        [west + size, south + size], [west, south + size], [west, south]]]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pilots_are_kept_checked_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let (base, stop) = start(&url).await;
    let pilots = format!("{base}/v1/pilots");

    let kreuzberg = json!({
        "name": "Kreuzberg rooftops",
        "area": {"type": "Feature", "properties": {}, "geometry": square(13.38, 52.48, 0.06)},
        "start": "2026-12-01T00:00:00Z",
        "end": "2027-03-01T00:00:00Z",
    });
    let (s, a) = call("POST", &pilots, "operator", Some(kreuzberg)).await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let cells = a["cells"].as_array().unwrap().len();
    assert!((25..=50).contains(&cells), "{a}");
    assert_eq!(a["resolution"], 8);
    assert_eq!(a["created_by"], "operator-token");
    assert_eq!(a["baseline"]["cost_per_site_usd"], 300_000.0);
    assert_eq!(a["baseline_is_default"], true);

    // The same area as cells, with a baseline of its own.
    let listed = json!({
        "name": "Kreuzberg by cells",
        "cells": a["cells"],
        "start": "2026-12-01T00:00:00+01:00",
        "baseline": {"cost_per_site_usd": 250000, "days_to_deploy": 120},
    });
    let (s, b) = call("POST", &pilots, "operator", Some(listed)).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["cells"], a["cells"]);
    assert_eq!(b["start"], "2026-11-30T23:00:00.000Z");
    assert_eq!(b["baseline_is_default"], false);

    // Planners read; only operators write; others see nothing.
    let (s, list) = call("GET", &pilots, "planner", None).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = list["pilots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Kreuzberg rooftops", "Kreuzberg by cells"]);
    assert_eq!(list["pilots"][0]["cell_count"], cells);
    let (s, _) = call("POST", &pilots, "planner", Some(json!({}))).await;
    assert_eq!(s, 403);
    let (s, _) = call("GET", &pilots, "oracle", None).await;
    assert_eq!(s, 403);
    let (s, _) = call("DELETE", &format!("{pilots}/{id}"), "planner", None).await;
    assert_eq!(s, 403);

    // Bad input: a clear 400 and its reason, and nothing stored.
    let bowtie = json!({"type": "Polygon", "coordinates": [[[13.3, 52.4], [13.5, 52.6],
        [13.5, 52.4], [13.3, 52.6], [13.3, 52.4]]]});
    for (area, code, words) in [
        (bowtie, "bad_area", "self-intersection"),
        (
            json!({"type": "Polygon", "coordinates": [[[13.3, 52.4], [13.5, 52.4]]]}),
            "bad_area",
            "at least 4 positions",
        ),
        (
            json!({"type": "LineString", "coordinates": [[13.3, 52.4], [13.5, 52.4]]}),
            "bad_area",
            "has no area",
        ),
        (square(13.0, 52.0, 1.0), "area_too_large", "max_area_cells"),
        (square(200.0, 52.0, 0.1), "bad_area", "longitude"),
    ] {
        let body = json!({"name": "bad", "area": area, "start": "2026-12-01T00:00:00Z"});
        let (s, e) = call("POST", &pilots, "operator", Some(body)).await;
        assert_eq!((s, e["error"]["code"].as_str()), (400, Some(code)), "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{words}: {message}");
    }
    for (body, words) in [
        (
            json!({"name": "x", "start": "2026-12-01T00:00:00Z"}),
            "one of them",
        ),
        (
            json!({"name": "x", "cells": ["zz"], "start": "2026-12-01T00:00:00Z"}),
            "not an H3 cell",
        ),
        (
            json!({"name": "x", "area": square(13.38, 52.48, 0.06), "start": "yesterday"}),
            "RFC 3339",
        ),
        (
            json!({"name": "x", "area": square(13.38, 52.48, 0.06), "start": "2026-12-01T00:00:00Z", "colour": "red"}),
            "unknown field",
        ),
    ] {
        let (s, e) = call("POST", &pilots, "operator", Some(body)).await;
        assert_eq!(s, 400, "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{words}: {message}");
    }
    let (s, e) = call("GET", &format!("{pilots}/not-an-id"), "planner", None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("bad_param")));
    let (s, e) = call(
        "GET",
        &format!("{pilots}/0123456789abcdef"),
        "planner",
        None,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("unknown_pilot"))
    );

    // The end can be set later, and cleared; nothing else changes, and a bad end is refused.
    let one = format!("{pilots}/{id}");
    let (s, ended) = call(
        "PATCH",
        &one,
        "operator",
        Some(json!({"end": "2027-02-01T00:00:00+01:00"})),
    )
    .await;
    assert_eq!(s, 200, "{ended}");
    assert_eq!(ended["end"], "2027-01-31T23:00:00.000Z", "{ended}");
    let mut same = ended.clone();
    same["end"] = a["end"].clone();
    same["end_ms"] = a["end_ms"].clone();
    assert_eq!(same, a, "only the end changed");
    let (s, _) = call("PATCH", &one, "planner", Some(json!({"end": null}))).await;
    assert_eq!(s, 403, "a planner cannot end a pilot");
    for (body, words) in [
        (json!({"end": "2020-01-01T00:00:00Z"}), "after start"),
        (json!({"end": "tomorrow"}), "RFC 3339"),
        (json!({"end": null, "name": "renamed"}), "only the end"),
    ] {
        let (s, e) = call("PATCH", &one, "operator", Some(body)).await;
        assert_eq!(s, 400, "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{words}: {message}");
    }
    let (s, e) = call(
        "PATCH",
        &format!("{pilots}/0123456789abcdef"),
        "operator",
        Some(json!({"end": null})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("unknown_pilot"))
    );
    let (s, open) = call("PATCH", &one, "operator", Some(json!({"end": null}))).await;
    assert_eq!(
        (s, &open["end"], &open["end_ms"]),
        (200, &Value::Null, &Value::Null)
    );
    let (s, back) = call("PATCH", &one, "operator", Some(json!({"end": a["end"]}))).await;
    assert_eq!((s, &back), (200, &a), "the end as made again");

    // A restart keeps them; a deletion is kept too.
    stop.cancel();
    let (base, stop) = start(&url).await;
    let pilots = format!("{base}/v1/pilots");
    let (s, again) = call("GET", &format!("{pilots}/{id}"), "planner", None).await;
    assert_eq!(s, 200);
    assert_eq!(again, a);
    let (s, _) = call("DELETE", &format!("{pilots}/{id}"), "operator", None).await;
    assert_eq!(s, 204);
    let (s, _) = call("DELETE", &format!("{pilots}/{id}"), "operator", None).await;
    assert_eq!(s, 404);
    let (_, list) = call("GET", &pilots, "planner", None).await;
    assert_eq!(list["pilots"].as_array().unwrap().len(), 1, "{list}");
    // Third parties read them as plain JSON next to the tables.
    let stored = std::fs::read_dir(dir.path().join("_pilots"))
        .unwrap()
        .count();
    assert_eq!(stored, 1);
    stop.cancel();
}

async fn sql_rows(base: &str, q: &str) -> Vec<Value> {
    let (status, v) = crate::sql_json(base, q).await;
    assert_eq!(status, 200, "{q}: {v}");
    v.as_array().unwrap().clone()
}

/// A pilot over the busiest cells of a processed, sealed lake (`api.rs` builds it), its start at
/// the median heartbeat: every number of its report equals SQL written apart from the report's own
/// (cells by `h3_lake_cell` of the coordinates, medians, set differences).
pub(crate) async fn report_matches_sql(base: &str) {
    let top = sql_rows(
        base,
        "SELECT h3_cell_to_string(h3_lake_cell(lat, lng, 8)) AS c, count(*) AS n FROM heartbeat \
         GROUP BY 1 ORDER BY n DESC, c LIMIT 40",
    )
    .await;
    let cells: Vec<String> = top
        .iter()
        .map(|r| r["c"].as_str().unwrap().to_string())
        .collect();
    let start = sql_rows(
        base,
        "SELECT CAST(median(CAST(event_time AS BIGINT)) AS BIGINT) AS s FROM heartbeat",
    )
    .await[0]["s"]
        .as_i64()
        .unwrap();
    let start = hexpulse_query::params::rfc3339(start);
    let body = json!({"name": "busiest cells", "cells": cells, "start": start});
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/pilots"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pilot: Value = r.json().await.unwrap();
    let id = pilot["id"].as_str().unwrap();
    let report: Value = reqwest::get(format!("{base}/v1/pilots/{id}/report"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["status"], "running", "{report}");
    let w = &report["windows"];
    let (before_from, s, e) = (
        w["before"]["from"].as_str().unwrap(),
        w["during"]["from"].as_str().unwrap(),
        w["during"]["to"].as_str().unwrap(),
    );
    let list: Vec<String> = cells.iter().map(|c| format!("'{c}'")).collect();
    let area = format!(
        "h3_cell_to_string(h3_lake_cell(lat, lng, 8)) IN ({})",
        list.join(", ")
    );
    let during = format!("{area} AND event_time >= '{s}' AND event_time < '{e}'");
    let before = format!("{area} AND event_time >= '{before_from}' AND event_time < '{s}'");
    let one = |q: String| async move { sql_rows(base, &q).await[0].clone() };

    let d = one(format!(
        "SELECT count(DISTINCT h3_lake_cell(lat, lng, 8)) AS cells, count(DISTINCT device_key) AS devices, \
         count(download_mbps) AS tests, median(CAST(download_mbps AS DOUBLE)) AS down, \
         median(CAST(signal_dbm AS DOUBLE)) AS signal FROM heartbeat WHERE {during}"
    ))
    .await;
    let b = one(format!(
        "SELECT count(DISTINCT h3_lake_cell(lat, lng, 8)) AS cells, count(DISTINCT device_key) AS devices \
         FROM heartbeat WHERE {before}"
    ))
    .await;
    assert!(d["cells"].as_u64().unwrap() > 0, "{d}");
    assert!(b["cells"].as_u64().unwrap() > 0, "{b}");
    let cov = &report["coverage"];
    assert_eq!(cov["covered_cells_during"], d["cells"], "{report}");
    assert_eq!(cov["covered_cells_before"], b["cells"], "{report}");
    let share = d["cells"].as_f64().unwrap() / cells.len() as f64;
    assert!((cov["covered_share_during"].as_f64().unwrap() - share).abs() < 1e-12);
    let dead = one(format!(
        "SELECT count(*) AS n FROM (SELECT DISTINCT h3_lake_cell(lat, lng, 8) AS c FROM heartbeat \
         WHERE {during} EXCEPT SELECT DISTINCT h3_lake_cell(lat, lng, 8) AS c FROM heartbeat WHERE {before})"
    ))
    .await;
    assert_eq!(
        cov["dead_to_covered"].as_array().unwrap().len() as u64,
        dead["n"].as_u64().unwrap()
    );
    let dep = &report["deployment"];
    assert_eq!(dep["active_devices_during"], d["devices"]);
    assert_eq!(dep["active_devices_before"], b["devices"]);
    let q = &report["quality"]["during"];
    assert_eq!(q["speed_tests"], d["tests"]);
    let close = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-3 * y.abs().max(1.0),
        _ => a.is_null() && b.is_null(),
    };
    assert!(close(&q["download_mbps"]["p50"], &d["down"]), "{q} {d}");
    assert!(close(&q["signal_dbm"]["p50"], &d["signal"]), "{q} {d}");
    // Time to half the final coverage: the first heartbeat of the ⌈N/2⌉-th cell.
    let firsts = sql_rows(
        base,
        &format!(
            "SELECT min(CAST(event_time AS BIGINT)) AS f FROM heartbeat WHERE {during} \
             GROUP BY h3_lake_cell(lat, lng, 8) ORDER BY f"
        ),
    )
    .await;
    let n = firsts.len();
    let start_ms = chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis();
    let half = firsts[n.div_ceil(2) - 1]["f"].as_i64().unwrap();
    let hours = (half - start_ms) as f64 / 3_600_000.0;
    assert!(
        (dep["hours_to_50pct_coverage"].as_f64().unwrap() - hours).abs() < 1e-9,
        "{dep} {hours}"
    );
    // The rewards of the area's devices in the sealed epoch.
    let points = one(format!(
        "SELECT CAST(coalesce(sum(reward_points), 0) AS BIGINT) AS p FROM device_summary \
         WHERE device_key IN (SELECT device_key FROM heartbeat WHERE {during})"
    ))
    .await;
    let cost = &report["cost"];
    assert_eq!(cost["points"], points["p"], "{cost}");
    assert_eq!(
        cost["rests_on"]["epochs"].as_array().unwrap().len(),
        1,
        "{cost}"
    );
    let usd = points["p"].as_f64().unwrap() * 0.01;
    assert!((cost["rewards_usd"].as_f64().unwrap() - usd).abs() < 1e-9);
    // The series holds every heartbeat of both windows once.
    let all = one(format!(
        "SELECT count(*) AS n FROM heartbeat WHERE {area} AND event_time >= '{before_from}' \
         AND event_time < '{e}'"
    ))
    .await;
    let in_series: u64 = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["heartbeats"].as_u64().unwrap())
        .sum();
    assert_eq!(in_series, all["n"].as_u64().unwrap());
    assert!(
        report["freshness"]["newest_event_time"].is_string(),
        "{report}"
    );
    // CSV: the series, a header and one line per bucket.
    let csv = reqwest::get(format!("{base}/v1/pilots/{id}/report?format=csv"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv.lines().count(),
        report["series"].as_array().unwrap().len() + 1,
        "{csv}"
    );
    assert!(csv.starts_with("bucket_start,phase,covered_cells"));
}
