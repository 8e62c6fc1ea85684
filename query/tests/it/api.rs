//! The SQL and epoch endpoints over a processor-written, sealed lake.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use hexpulse_lake::Lake;
use hexpulse_lake::epoch::EpochConfig;
use hexpulse_lake::epoch::seal::{self, SealRequest};
use hexpulse_lake::rules::Rules;
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;
use crate::{sql, sql_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_epochs_over_a_processed_lake() {
    let Some(brokers) = testenv::broker_or_skip("sql_and_epochs_over_a_processed_lake") else {
        return;
    };
    let now = now_ms();
    let sc = scenario::build(now, 20);
    let kafka = kafka(&brokers, "it-query", 2);
    produce(&kafka, &sc, now).await;
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let (p, stop) = start_processor(&kafka, &format!("{}-g", kafka.raw_topic), &sc, &url).await;
    let lake = Lake::open(&url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    assert_matches(&summary, &sc);

    // Day-long epochs whose current one ends a few seconds after the data: only an ended epoch
    // can be sealed, and the readings stay recent for the endpoints' default time windows.
    let ecfg = EpochConfig {
        length: Duration::from_secs(86_400),
        origin: hexpulse_query::params::rfc3339(now + 8_000 - 86_400_000),
        ..EpochConfig::default()
    };
    let rules = Rules::load(None).unwrap();
    let id = ecfg.id_of(now - 30_000).unwrap();
    let end = ecfg.bounds(id).unwrap().1;
    tokio::time::sleep(Duration::from_millis((end - now_ms()).max(0) as u64 + 100)).await;
    let m = seal::seal(SealRequest {
        input: &lake,
        output: &lake,
        cfg: &ecfg,
        rules: &rules,
        epoch: id,
        force: true,
        topic: &kafka.raw_topic,
        partitions: 2,
    })
    .await
    .unwrap()
    .manifest()
    .clone();
    hexpulse_lake::epoch::publish::publish(&lake, &m)
        .await
        .unwrap();

    let mut qcfg = QueryConfig::for_tests(&url);
    qcfg.epoch = ecfg.clone();
    qcfg.max_rows = 50;
    qcfg.query_timeout = Duration::from_secs(2);
    let q = Query::start(qcfg, Lake::open(&url).unwrap(), stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", q.addr);

    // Every stored cell column is what `h3_lake_cell` (TABLES.md's parent rule) gives.
    let (status, v) = sql_json(
        &base,
        "SELECT count(*) AS n, sum(CASE WHEN h3_r8 <> h3_lake_cell(lat, lng, 8) OR h3_r12 <> \
         h3_lake_cell(lat, lng, 12) THEN 1 ELSE 0 END) AS off FROM heartbeat",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v[0]["n"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert_eq!(v[0]["off"].as_u64(), Some(0), "{v}");

    // Counts match what the processors wrote.
    let heartbeats = sc
        .expected_valid()
        .iter()
        .filter(|v| v.0 == "heartbeat")
        .count();
    let (status, v) = sql_json(&base, "SELECT count(*) AS n FROM heartbeat").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["n"].as_u64().unwrap() as usize, heartbeats);
    let (_, v) = sql_json(
        &base,
        "SELECT reason, count(*) AS n FROM rejected GROUP BY reason ORDER BY reason",
    )
    .await;
    let rejected: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_u64().unwrap())
        .sum();
    assert_eq!(rejected as usize, sc.expected_rejected().len());

    // Sensor aggregates over the sealed epoch read its `sensor_hex_hourly` rows (query::preagg),
    // and answer what raw rows answer (a filter on `value` that keeps every row stops the rewrite).
    let per_metric = |filter: &str| {
        format!(
            "SELECT metric, count(*) AS n, min(value) AS lo, max(value) AS hi, avg(value) AS mean \
             FROM sensor {filter} GROUP BY metric ORDER BY metric"
        )
    };
    let (_, plan) = sql_json(&base, &format!("EXPLAIN {}", per_metric(""))).await;
    assert!(plan.to_string().contains("sensor_hex_hourly"), "{plan}");
    let (_, raw_plan) = sql_json(
        &base,
        &format!("EXPLAIN {}", per_metric("WHERE value > -1e300")),
    )
    .await;
    assert!(
        !raw_plan.to_string().contains("sensor_hex_hourly"),
        "{raw_plan}"
    );
    let (status, pre) = sql_json(&base, &per_metric("")).await;
    assert_eq!(status, 200, "{pre}");
    let (_, raw) = sql_json(&base, &per_metric("WHERE value > -1e300")).await;
    let (pre, raw) = (pre.as_array().unwrap(), raw.as_array().unwrap());
    assert!(!pre.is_empty());
    assert_eq!(pre.len(), raw.len(), "{pre:?} vs {raw:?}");
    for (p, r) in pre.iter().zip(raw) {
        for k in ["metric", "n", "lo", "hi"] {
            assert_eq!(p[k], r[k], "{k}: {p} vs {r}");
        }
        let (a, b) = (p["mean"].as_f64().unwrap(), r["mean"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{p} vs {r}");
    }

    // CSV and Arrow IPC answers.
    let q5 = "SELECT device_key, seq FROM heartbeat ORDER BY device_key, seq LIMIT 5";
    let csv = sql(&base, q5, "text/csv").await.text().await.unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv.starts_with("device_key,seq"));
    let arrow = sql(&base, q5, "application/vnd.apache.arrow.stream")
        .await
        .bytes()
        .await
        .unwrap();
    let reader = datafusion_arrow_reader(arrow.to_vec());
    assert_eq!(reader, 5);

    // Read-only, bounded, and clear about why.
    for (q, status, code) in [
        (
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
            403,
            "read_only",
        ),
        (
            "COPY (SELECT 1) TO '/tmp/hexpulse-copy.csv'",
            403,
            "read_only",
        ),
        (
            "INSERT INTO heartbeat SELECT * FROM heartbeat",
            403,
            "read_only",
        ),
        ("SET datafusion.execution.batch_size = 1", 403, "read_only"),
        // A function's own refusal is the query's error, not a read-only refusal (its message
        // says "not allowed", which the classification once matched).
        ("SELECT substr('abc', 1, -1)", 400, "sql_error"),
        ("SELECT * FROM '/etc/passwd'", 400, "sql_plan"),
        ("SELEC 1", 400, "sql_syntax"),
        ("SELECT * FROM heartbeat", 413, "row_limit"),
        (
            "SELECT count(*) FROM generate_series(1, 100000000000)",
            408,
            "time_limit",
        ),
    ] {
        let (got, v) = sql_json(&base, q).await;
        assert_eq!(
            (got, v["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{q}: {v}"
        );
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(!std::path::Path::new("/tmp/hexpulse-copy.csv").exists());

    // Epochs: list, manifest, summaries in three formats, a proof that verifies.
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap() }
    };
    let list: Value = get("/v1/epochs".into()).await.json().await.unwrap();
    assert_eq!(list["epochs"][0]["epoch"].as_i64(), Some(id));
    assert_eq!(
        list["epochs"][0]["merkle_root"].as_str(),
        Some(m.merkle_root.as_str())
    );
    assert_eq!(list["epochs"][0]["status"], "sealed");
    let listed: Vec<i64> = list["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let status = e["status"].as_str().unwrap();
            assert!(
                ["sealed", "open", "awaiting_watermark", "sealable"].contains(&status),
                "{e}"
            );
            e["epoch"].as_i64().unwrap()
        })
        .collect();
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "{listed:?}");
    let manifest: seal::Manifest = get(format!("/v1/epochs/{id}/manifest"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(manifest, m);
    let json: Value = get(format!("/v1/epochs/{id}/devices"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json.as_array().unwrap().len() as u64, m.merkle_leaves);
    let csv = get(format!("/v1/epochs/{id}/devices?format=csv"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count() as u64, m.merkle_leaves + 1);
    let mut csv_keys: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    let mut json_keys: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["device_key"].as_str().unwrap())
        .collect();
    csv_keys.sort_unstable();
    json_keys.sort_unstable();
    assert!(csv.starts_with("epoch,device_key,"), "{csv}");
    assert_eq!(
        csv_keys, json_keys,
        "the CSV export reads back to the same devices"
    );
    let parquet = get(format!("/v1/epochs/{id}/devices?format=parquet"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        hex_sha256(&parquet),
        m.output("device_summary").unwrap().sha256,
        "the Parquet export is the sealed file"
    );
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet.clone())
            .unwrap()
            .build()
            .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(
        rows as u64, m.merkle_leaves,
        "the Parquet export reads back"
    );
    let device = json[0]["device_key"].as_str().unwrap().to_string();
    let device = device.as_str();
    let proof: seal::Proof = get(format!("/v1/epochs/{id}/proof/{device}"))
        .await
        .json()
        .await
        .unwrap();
    proof.verify(&m.merkle_root).unwrap();
    // Every device's proof, checked by the verifier written from schemas/EPOCHS.md alone.
    if let Some(python) = testenv::python_or_skip("api: the EPOCHS.md verifier") {
        let repo = testenv::repo_root();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proof.json");
        for row in json.as_array().unwrap() {
            let key = row["device_key"].as_str().unwrap();
            let text = get(format!("/v1/epochs/{id}/proof/{key}"))
                .await
                .text()
                .await
                .unwrap();
            std::fs::write(&file, text).unwrap();
            let out = std::process::Command::new(&python)
                .arg(repo.join("scripts/verify_epoch.py"))
                .arg("proof")
                .arg(repo.join("schemas/EPOCHS.md"))
                .arg(&file)
                .args(["--root", &m.merkle_root])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "device {key}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert_eq!(
        get(format!("/v1/epochs/{}/manifest", id + 1))
            .await
            .status(),
        404
    );

    // A fixed device's hexes in the epoch: as many as its summary counts.
    for kind in ["heartbeat", "sensor"] {
        let row = json
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap();
        let key = row["device_key"].as_str().unwrap();
        let hexes: Value = get(format!("/v1/epochs/{id}/devices/{key}/hexes"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            hexes["features"].as_array().unwrap().len() as u64,
            row["distinct_hexes"].as_u64().unwrap(),
            "{kind} {key}: {hexes}"
        );
    }

    // The epoch tables are queryable too.
    let (_, v) = sql_json(&base, "SELECT count(*) AS n FROM device_summary").await;
    assert_eq!(v[0]["n"].as_u64(), Some(m.merkle_leaves));

    maps_sensors_road_and_tiles(&base, &heartbeats_sql(&base).await).await;
    crate::pilots::report_matches_sql(&base).await;
    auth_and_openapi(&url, &stop, id, device).await;

    stop.cancel();
    p.task.await.unwrap().unwrap();
}

async fn get_json(url: String) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// RFC 7946: a Polygon whose exterior ring is closed, [lng, lat] ordered and counter-clockwise; the
/// scenario's data is in Berlin, so positions near (13.4, 52.5) also prove the order.
fn assert_valid_hex_geometry(f: &Value) {
    assert_eq!(f["type"], "Feature");
    assert_eq!(f["geometry"]["type"], "Polygon");
    let rings = f["geometry"]["coordinates"].as_array().unwrap();
    assert_eq!(rings.len(), 1);
    let ring: Vec<(f64, f64)> = rings[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert!(
        ring.len() >= 7,
        "a hexagon has 6 vertices and a closing position"
    );
    assert_eq!(ring.first(), ring.last(), "closed ring");
    for (lng, lat) in &ring {
        assert!(
            (12.5..14.5).contains(lng) && (52.0..53.0).contains(lat),
            "lng, lat order: {ring:?}"
        );
    }
    let area2: f64 = ring
        .windows(2)
        .map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1)
        .sum();
    assert!(area2 > 0.0, "exterior ring counter-clockwise: {ring:?}");
}

fn features(fc: &Value) -> &Vec<Value> {
    fc["features"].as_array().expect("a FeatureCollection")
}

fn sum(fc: &Value, k: &str) -> u64 {
    features(fc)
        .iter()
        .map(|f| f["properties"][k].as_u64().unwrap())
        .sum()
}

/// (cell at res 8, distinct devices, heartbeats) from SQL over the raw table.
async fn heartbeats_sql(base: &str) -> Vec<(String, u64, u64)> {
    let (status, v) = sql_json(
        base,
        "SELECT h3_cell_to_string(h3_r8) AS cell, count(DISTINCT device_key) AS d, count(*) AS n \
         FROM heartbeat GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["cell"].as_str().unwrap().to_string(),
                r["d"].as_u64().unwrap(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

const WORLD: &str = "bbox=-180,-85,180,85";

async fn maps_sensors_road_and_tiles(base: &str, by_cell: &[(String, u64, u64)]) {
    // Coverage at res 8 is exactly what SQL counts per cell.
    let (status, cov8) = get_json(format!("{base}/v1/coverage?{WORLD}&res=8")).await;
    assert_eq!(status, 200, "{cov8}");
    assert_eq!(cov8["type"], "FeatureCollection");
    let got: Vec<(String, u64, u64)> = features(&cov8)
        .iter()
        .map(|f| {
            let p = &f["properties"];
            (
                p["cell"].as_str().unwrap().to_string(),
                p["devices"].as_u64().unwrap(),
                p["heartbeats"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, by_cell);
    for f in features(&cov8) {
        assert_valid_hex_geometry(f);
    }
    // Median signal per hex is exact: the middle value, or the mean of the two middle values.
    let (status, v) = sql_json(
        base,
        "SELECT h3_cell_to_string(h3_r8) AS cell, array_agg(signal_dbm) AS s FROM heartbeat GROUP BY 1",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let mut signals: HashMap<String, Vec<f64>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = r["s"].as_array().unwrap().iter().filter_map(Value::as_f64);
            (r["cell"].as_str().unwrap().to_string(), s.collect())
        })
        .collect();
    let mut even = 0;
    for f in features(&cov8) {
        let p = &f["properties"];
        let s = signals.get_mut(p["cell"].as_str().unwrap()).unwrap();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let want = if n % 2 == 1 {
            s[n / 2]
        } else {
            even += 1;
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let got = p["median_signal_dbm"].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-9,
            "{p}: median {got}, want {want} of {s:?}"
        );
    }
    assert!(
        even > 0,
        "no hex with an even count: the check of two middle values did not run"
    );
    assert!(
        cov8["freshness"]["newest_event_time"].is_string(),
        "{}",
        cov8["freshness"]
    );
    assert!(
        cov8["freshness"]["watermark"].is_string(),
        "{}",
        cov8["freshness"]
    );

    // Coarser resolutions are rollups of the finer cells.
    let (_, cov5) = get_json(format!("{base}/v1/coverage?{WORLD}&res=5")).await;
    assert_eq!(sum(&cov5, "heartbeats"), sum(&cov8, "heartbeats"));
    for f in features(&cov5) {
        let parent = h3o::CellIndex::from_str(f["properties"]["cell"].as_str().unwrap()).unwrap();
        let children: u64 = by_cell
            .iter()
            .filter(|(c, _, _)| {
                h3o::CellIndex::from_str(c)
                    .unwrap()
                    .parent(h3o::Resolution::Five)
                    == Some(parent)
            })
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(f["properties"]["heartbeats"].as_u64().unwrap(), children);
    }
    // A box that holds none of the data answers an empty collection; bad parameters say which.
    let (_, empty) = get_json(format!("{base}/v1/coverage?bbox=-10,-10,-9,-9")).await;
    assert!(features(&empty).is_empty());
    for (q, param) in [
        ("bbox=1,2,3", "bbox"),
        ("bbox=-10,-10,-9,-9&res=16", "res"),
        ("bbox=-10,-10,-9,-9&res=13", "res"),
        ("bbox=-10,-10,-9,-9&from=yesterday", "from"),
        ("bbox=-10,-10,-9,-9&metric=nope", "metric"),
    ] {
        let (status, v) = get_json(format!("{base}/v1/coverage?{q}")).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("bad_param")),
            "{q}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(param),
            "{q}: {v}"
        );
    }

    // Dead zones: uncovered hexes next to covered ones, most covered neighbours first.
    let (status, dz) = get_json(format!("{base}/v1/deadzones?{WORLD}&res=8")).await;
    assert_eq!(status, 200, "{dz}");
    let covered: Vec<&str> = by_cell.iter().map(|(c, _, _)| c.as_str()).collect();
    assert!(!features(&dz).is_empty());
    let mut last = u64::MAX;
    for f in features(&dz) {
        assert_valid_hex_geometry(f);
        let p = &f["properties"];
        let cell = h3o::CellIndex::from_str(p["cell"].as_str().unwrap()).unwrap();
        assert!(!covered.contains(&p["cell"].as_str().unwrap()));
        let n = p["covered_neighbours"].as_u64().unwrap();
        let real = cell
            .grid_disk::<Vec<_>>(1)
            .iter()
            .filter(|c| covered.contains(&c.to_string().as_str()))
            .count() as u64;
        assert_eq!(n, real);
        assert!(n >= 1 && n <= last);
        last = n;
    }

    // Sensors: series and hexes count what SQL counts.
    let (_, v) = sql_json(
        base,
        "SELECT count(*) AS n, avg(value) AS m FROM sensor WHERE metric = 'pm2_5'",
    )
    .await;
    let pm_count = v[0]["n"].as_u64().unwrap();
    assert!(pm_count > 0);
    let (status, series) = get_json(format!(
        "{base}/v1/sensors/series?metric=pm2_5&{WORLD}&interval=1m"
    ))
    .await;
    assert_eq!(status, 200, "{series}");
    let points = series["points"].as_array().unwrap();
    let counted: u64 = points.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, pm_count);
    assert!(series["freshness"]["newest_event_time"].is_string());
    let (_, sh) = get_json(format!(
        "{base}/v1/sensors/hexes?metric=pm2_5&{WORLD}&res=8"
    ))
    .await;
    assert_eq!(sum(&sh, "count"), pm_count);
    let cell = features(&sh)[0]["properties"]["cell"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, one) = get_json(format!(
        "{base}/v1/sensors/series?metric=pm2_5&cell={cell}&interval=1h"
    ))
    .await;
    let one_count: u64 = one["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        one_count,
        features(&sh)[0]["properties"]["count"].as_u64().unwrap()
    );
    let (status, v) = get_json(format!("{base}/v1/sensors/series?metric=pm2_5")).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_param")),
        "{v}"
    );

    // Road: only hexes with at least k = 3 distinct dashcams, exactly as SQL over the raw rows finds.
    for res in [5u8, 8] {
        let (_, v) = sql_json(
            base,
            &format!(
                "SELECT h3_cell_to_string(h3_cell_to_parent(h3_r8, {res})) AS cell, \
                 count(DISTINCT device_key) AS d FROM road GROUP BY 1 ORDER BY 1"
            ),
        )
        .await;
        let all: Vec<(String, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["cell"].as_str().unwrap().to_string(),
                    r["d"].as_u64().unwrap(),
                )
            })
            .collect();
        let public: Vec<&String> = all
            .iter()
            .filter(|(_, d)| *d >= 3)
            .map(|(c, _)| c)
            .collect();
        let (status, road) = get_json(format!("{base}/v1/road/hexes?{WORLD}&res={res}")).await;
        assert_eq!(status, 200, "{road}");
        let got: Vec<String> = features(&road)
            .iter()
            .map(|f| f["properties"]["cell"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), public, "res {res}");
        assert_eq!(road["k"], 3);
        if res == 8 {
            assert!(
                all.len() > got.len(),
                "the scenario's dashcams are apart at res 8: {all:?}"
            );
        }
        for f in features(&road) {
            assert!(f["properties"]["devices"].as_u64().unwrap() >= 3);
        }
        // #20.6: times are whole hours, so moving `to` within the hour changes nothing, and each
        // observation type shown in a hex has k distinct dashcams of its own.
        if let Some(newest) = road["freshness"]["newest_event_time"].as_str() {
            assert!(newest.ends_with(":00:00.000Z"), "newest {newest}");
        }
        let now = now_ms();
        let at = |to: i64| {
            let base = base.to_string();
            async move {
                get_json(format!(
                    "{base}/v1/road/hexes?{WORLD}&res={res}&from={}&to={to}",
                    now - 86_400_000
                ))
                .await
                .1
            }
        };
        let hour_end = (now.div_euclid(3_600_000) + 1) * 3_600_000;
        let (a, b) = (at(hour_end - 3_000).await, at(hour_end - 1_000).await);
        assert_eq!(
            (&a["features"], &a["freshness"]["newest_event_time"]),
            (&b["features"], &b["freshness"]["newest_event_time"]),
            "stepping `to` within an hour"
        );
        let (_, per_type) = sql_json(
            base,
            &format!(
                "SELECT h3_cell_to_string(h3_cell_to_parent(h3_r8, {res})) AS cell, observation, \
                 count(DISTINCT device_key) AS d FROM road GROUP BY 1, 2"
            ),
        )
        .await;
        let mut hidden = 0;
        for f in features(&road) {
            let cell = f["properties"]["cell"].as_str().unwrap();
            for r in per_type
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["cell"] == cell)
            {
                let (t, d) = (r["observation"].as_str().unwrap(), r["d"].as_u64().unwrap());
                let shown = f["properties"].get(t).is_some();
                assert_eq!(shown, d >= 3, "{cell}: type {t} with {d} dashcams");
                hidden += usize::from(!shown);
            }
        }
        eprintln!("res {res}: {hidden} observation types hidden in public hexes");
    }

    // Vector tiles: the tile under a covered hex holds it; an unchanged lake answers 304.
    let first = h3o::CellIndex::from_str(&by_cell[0].0).unwrap();
    let ll = h3o::LatLng::from(first);
    let z = 12u32;
    let n = f64::from(1u32 << z);
    let x = ((ll.lng() + 180.0) / 360.0 * n) as u32;
    let lat = ll.lat().to_radians();
    let y = ((1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n) as u32;
    let now = now_ms();
    let url = format!(
        "{base}/v1/tiles/coverage/{z}/{x}/{y}.mvt?from={}&to={}",
        now - 86_400_000,
        now + 60_000
    );
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.mapbox-vector-tile"
    );
    assert!(r.headers().contains_key("x-hexpulse-newest-event-time"));
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body = r.bytes().await.unwrap();
    let tile = <hexpulse_query::mvt::Tile as prost::Message>::decode(body.as_ref()).unwrap();
    assert_eq!(tile.layers[0].name, "coverage");
    assert!(!tile.layers[0].features.is_empty());
    assert!(tile.layers[0].features.iter().any(|f| {
        f.id == Some(u64::from(
            first
                .parent(
                    hexpulse_query::params::resolution_for_zoom(z as u8)
                        .try_into()
                        .unwrap(),
                )
                .unwrap_or(first),
        ))
    }));
    let again = reqwest::Client::new()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    // Without from/to the window slides in whole minutes: within the minute, 304 too (and a list of
    // ETags matches any of them).
    let sliding = format!("{base}/v1/tiles/coverage/{z}/{x}/{y}.mvt");
    loop {
        let minute = now_ms() / 60_000;
        let r = reqwest::get(&sliding).await.unwrap();
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let again = reqwest::Client::new()
            .get(&sliding)
            .header("if-none-match", format!("\"other\", {etag}"))
            .send()
            .await
            .unwrap();
        if now_ms() / 60_000 != minute {
            continue; // the window moved between the two requests
        }
        assert_eq!(again.status(), 304);
        break;
    }
    for bad in ["coverage/3/9/0.mvt", "nope/1/0/0.mvt", "coverage/1/0/0.png"] {
        let (status, v) = get_json(format!("{base}/v1/tiles/{bad}")).await;
        assert_eq!(status, 404, "{bad}: {v}");
    }
    let (status, air) = get_json(format!(
        "{base}/v1/sensors/hexes?metric=no_such_metric&{WORLD}"
    ))
    .await;
    assert_eq!(status, 200);
    assert!(features(&air).is_empty());
}

async fn auth_and_openapi(url: &str, stop: &CancellationToken, epoch: i64, device: &str) {
    let mut cfg = QueryConfig::for_tests(url);
    let mut auth = crate::pg::roles(&[
        ("operator", &["coverage", "epochs"]),
        ("planner", &["coverage", "sensors", "road", "sql"]),
        ("admin", &["*"]),
    ]);
    auth.public = vec!["meta".into()];
    cfg.auth = auth;
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.alerts.webhook_hosts = vec!["hooks.example.com".into()];
    let q = Query::start(cfg, Lake::open(url).unwrap(), stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", q.addr);
    // The operators' listener: metrics without a token, and nothing else but health.
    let admin = format!("http://{}", q.admin_addr.expect("admin listener bound"));
    let r = reqwest::get(format!("{admin}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("hexpulse_query"));
    let r = reqwest::get(format!("{admin}/v1/coverage?{WORLD}"))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "data is never served on the admin listener"
    );
    let client = reqwest::Client::new();
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<&str>| {
        let mut rb = if method == "POST" {
            client
                .post(format!("{base}{path}"))
                .body(body.unwrap_or("").to_string())
        } else {
            client.get(format!("{base}{path}"))
        };
        if let Some(t) = token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        async move {
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text)
        }
    };
    let code = |text: &str| -> String {
        serde_json::from_str::<Value>(text).unwrap()["error"]["code"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let cov = format!("/v1/coverage?{WORLD}");
    let (s, t) = call("GET", &cov, None, None).await;
    assert_eq!((s, code(&t).as_str()), (401, "unauthorized"));
    let (s, t) = call("GET", &cov, Some("not-a-token"), None).await;
    assert_eq!((s, code(&t).as_str()), (401, "unauthorized"));
    let (s, _) = call("GET", &cov, Some("secret-operator"), None).await;
    assert_eq!(s, 200);
    let (s, t) = call("POST", "/v1/sql", Some("secret-operator"), Some("SELECT 1")).await;
    assert_eq!((s, code(&t).as_str()), (403, "forbidden"));
    let (s, _) = call(
        "POST",
        "/v1/sql",
        Some("secret-planner"),
        Some("SELECT count(*) FROM heartbeat"),
    )
    .await;
    assert_eq!(s, 200);
    // Raw dashcam rows stay private below admin, however the query is dressed up.
    for q in [
        "SELECT lat, lng FROM road",
        "WITH r AS (SELECT * FROM road) SELECT count(*) FROM r",
        "SELECT (SELECT max(lat) FROM road) AS x",
        "SELECT device_key FROM heartbeat WHERE device_key IN (SELECT device_key FROM road)",
        "SELECT raw FROM rejected",
        "EXPLAIN SELECT * FROM road",
        "SELECT count(*) FROM hexpulse.lake.road",
        "SELECT count(*) FROM ROAD",
        "DESCRIBE road",
        "SHOW COLUMNS FROM rejected",
    ] {
        let (s, t) = call("POST", "/v1/sql", Some("secret-planner"), Some(q)).await;
        assert_eq!((s, code(&t).as_str()), (403, "private"), "{q}: {t}");
    }
    // Nor do the catalog's own views name them, their columns or files, below admin; admin sees all.
    let catalog_views = "SELECT table_name FROM information_schema.tables \
        WHERE table_schema = 'lake' UNION ALL SELECT DISTINCT table_name \
        FROM information_schema.columns WHERE table_schema = 'lake' ORDER BY table_name";
    for (token, private_seen) in [("secret-planner", false), ("secret-admin", true)] {
        let (s, t) = call("POST", "/v1/sql", Some(token), Some(catalog_views)).await;
        assert_eq!(s, 200, "{t}");
        assert!(t.contains("\"heartbeat\""), "{token}: {t}");
        for private in ["\"road\"", "\"rejected\""] {
            assert_eq!(t.contains(private), private_seen, "{token}: {t}");
        }
    }
    // No role learns the lake's object paths.
    for token in ["secret-planner", "secret-admin"] {
        let q = "SELECT count(*) FROM heartbeat WHERE input_file_name() LIKE '%x%'";
        let (s, t) = call("POST", "/v1/sql", Some(token), Some(q)).await;
        assert_eq!((s, code(&t).as_str()), (400, "unsupported"), "{token}: {t}");
    }
    let (s, _) = call(
        "GET",
        &format!("/v1/road/hexes?{WORLD}"),
        Some("secret-planner"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, t) = call(
        "POST",
        "/v1/sql",
        Some("secret-admin"),
        Some("SELECT count(*) AS n FROM road"),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let (s, _) = call("GET", "/healthz", None, None).await;
    assert_eq!(s, 200);
    let (s, t) = call("GET", "/metrics", Some("secret-planner"), None).await;
    assert_eq!((s, code(&t).as_str()), (403, "forbidden"));

    // The OpenAPI document is public here and describes every route; each described path answers.
    let (s, doc) = call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 26, "the router serves 26 routes");
    // A pilot for its path to name.
    let pilot = client
        .post(format!("{base}/v1/pilots"))
        .bearer_auth("secret-admin")
        .json(&serde_json::json!({"name": "openapi", "start": "2026-12-01T00:00:00Z",
            "area": {"type": "Polygon", "coordinates": [[[13.38, 52.48], [13.44, 52.48], [13.44, 52.54], [13.38, 52.54], [13.38, 52.48]]]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(pilot.status(), 201);
    let pilot: Value = pilot.json().await.unwrap();
    let pilot = pilot["id"].as_str().unwrap().to_string();
    // And an alert rule.
    let rule = client
        .post(format!("{base}/v1/alerts/rules"))
        .bearer_auth("secret-admin")
        .json(&serde_json::json!({"name": "openapi",
            "condition": {"kind": "device_offline", "devices": [device], "after": "10m"},
            "webhook": {"url": "https://hooks.example.com/x", "secret": "0123456789abcdef"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(rule.status(), 201);
    let rule: Value = rule.json().await.unwrap();
    assert!(rule["webhook"].get("secret").is_none(), "{rule}");
    let rule = rule["id"].as_str().unwrap().to_string();
    for (path, item) in paths {
        let id = if path.starts_with("/v1/pilots") {
            pilot.clone()
        } else if path.starts_with("/v1/alerts") {
            rule.clone()
        } else {
            epoch.to_string()
        };
        let concrete = path
            .replace("{layer}", "coverage")
            .replace("{z}", "1")
            .replace("{x}", "1")
            .replace("{y}", "0.mvt")
            .replace("{id}", &id)
            .replace("{device}", device)
            .replace("{file}", "app.js");
        let with_query = if concrete.contains("sensors") {
            format!("{concrete}?{WORLD}&metric=pm2_5")
        } else if item.to_string().contains("\"bbox\"") && !concrete.contains("tiles") {
            format!("{concrete}?{WORLD}")
        } else {
            concrete
        };
        let method = if item.get("post").is_some() && item.get("get").is_none() {
            "POST"
        } else {
            "GET"
        };
        // (The device status cache answers 503 until its first read of the lake ends.)
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let (s, t) = loop {
            let (s, t) = call(method, &with_query, Some("secret-admin"), Some("SELECT 1")).await;
            if s != 503 || std::time::Instant::now() > deadline {
                break (s, t);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(s, 200, "{method} {with_query}: {t}");
    }
    let (s, t) = call("GET", "/v1/nothing", Some("secret-admin"), None).await;
    assert_eq!((s, code(&t).as_str()), (404, "not_found"));
    schemathesis(&base, "secret-admin").await;
}

/// schemathesis (PyPI) against `/openapi.json`, as an admin, for a bounded time: every answer must
/// conform to the document (status codes, content types, headers, bodies) and none may be a 5xx.
async fn schemathesis(base: &str, token: &str) {
    let Some(python) = testenv::python_or_skip("api: schemathesis") else {
        return;
    };
    let st = std::path::Path::new(&python).with_file_name("st");
    let secs = std::env::var("HEXPULSE_SCHEMATHESIS_SECS").unwrap_or_else(|_| "60".into());
    // It keeps a cache in its working directory.
    let cwd = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&st)
        .current_dir(cwd.path())
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // positive_data_acceptance (a request the document allows must not get a 400) cannot hold:
        // the document states each parameter's own rules, while the rules between parameters
        // (west < east, from < to, cell or bbox, valid SQL, a real H3 cell) are in descriptions
        // only, and their 400 is documented.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        // One worker: schemathesis's workers are threads, and CPython 3.11.7 (this machine's) keeps
        // ast.parse's recursion depth in state that threads share (fixed in 3.11.8, gh-106905).
        // Two workers describing hypothesis lambdas at once failed a run with "AST constructor
        // recursion depth mismatch", an error of the tool and not of the service.
        .args(["--max-time", &secs, "--workers", "1"])
        .args(["--request-timeout", "20", "--seed", "1", "--no-color"])
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis (scripts/requirements.txt) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found mismatches (above)"
    );
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Rows of an Arrow IPC stream.
fn datafusion_arrow_reader(bytes: Vec<u8>) -> usize {
    let r = hexpulse_query::datafusion::arrow::ipc::reader::StreamReader::try_new(
        std::io::Cursor::new(bytes),
        None,
    )
    .unwrap();
    r.map(|b| b.unwrap().num_rows()).sum()
}
