//! Outside readers (DuckDB's `delta_scan` and Python `deltalake`, scripts/read_lake.py) read the
//! lake's Delta tables as the query service does: the same rows at the newest versions and at an
//! epoch's pinned versions, and never a row twice while compactions commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hexpulse_lake::Lake;
use hexpulse_lake::compact::{self, CompactOptions};
use hexpulse_lake::epoch::EpochConfig;
use hexpulse_query::{Query, QueryConfig};
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;

use crate::sql_json;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const TABLES: [&str; 4] = ["heartbeat", "sensor", "road", "rejected"];

/// What identifies a row (as `IDENTITY` in read_lake.py): its record, and a sensor row's metric.
fn identity(table: &str) -> &'static str {
    match table {
        "sensor" => "src_topic, src_partition, src_offset, seq, metric",
        "rejected" => "src_topic, src_partition, src_offset, reason",
        _ => "src_topic, src_partition, src_offset, seq",
    }
}

/// Every table's row identities, sorted, as the query service answers them over `/v1/sql`.
async fn service_rows(base: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for table in TABLES {
        let cols = identity(table);
        let order = cols
            .split(", ")
            .map(|c| format!("{c} NULLS FIRST"))
            .collect::<Vec<_>>()
            .join(", ");
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/sql"))
            .header("accept", "application/json")
            .body(format!("SELECT {cols} FROM {table} ORDER BY {order}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{table}");
        let rows: Vec<Value> = r.json().await.unwrap();
        let rows = rows
            .into_iter()
            .map(|row| Value::Array(cols.split(", ").map(|c| row[c].clone()).collect()))
            .collect();
        out.insert(table.to_string(), rows);
    }
    out
}

/// read_lake.py's report; panics with the report when the readers found a problem.
async fn read_lake(python: &str, lake: &Path, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(python)
        .arg(hexpulse_testkit::testenv::repo_root().join("scripts/read_lake.py"))
        .arg(lake)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run read_lake.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "read_lake.py {args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).expect("JSON report")
}

/// The readers' row identities per table, as [`service_rows`] shapes them.
fn reader_rows(report: &Value) -> BTreeMap<String, Vec<Value>> {
    TABLES
        .iter()
        .map(|t| {
            let rows = report["tables"][t]["identity"].as_array().cloned();
            (t.to_string(), rows.unwrap_or_default())
        })
        .collect()
}

/// The service shows the Delta partition columns `date` and `hour` with the rows DuckDB sees in
/// each, and a filter on them reads only that partition's files.
async fn partitions_agree_and_prune(base: &str, report: &Value) {
    for table in TABLES {
        let (status, v) = sql_json(
            base,
            &format!("SELECT date, hour, count(*) AS n FROM {table} GROUP BY date, hour ORDER BY date, hour"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let service: Vec<Value> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| serde_json::json!([r["date"], r["hour"], r["n"]]))
            .collect();
        assert_eq!(
            Value::Array(service.clone()),
            report["tables"][table]["partitions"],
            "{table}: rows per partition"
        );
        if table != "heartbeat" {
            continue;
        }
        assert!(service.len() >= 2, "partitions: {service:?}");
        // The last partition alone: the scan lists that partition's files and no other.
        let last = service.last().unwrap();
        let (date, hour) = (last[0].as_str().unwrap(), last[1].as_i64().unwrap());
        let q = format!(
            "SELECT sum(seq) AS m FROM heartbeat WHERE date = DATE '{date}' AND hour = {hour}"
        );
        let (_, plan) = sql_json(base, &format!("EXPLAIN {q}")).await;
        let plan = plan.to_string();
        let wanted = format!("date={date}/hour={hour:02}/");
        assert!(plan.contains(&wanted), "{wanted} in {plan}");
        assert_eq!(
            plan.matches("heartbeat/date=").count(),
            plan.matches(&format!("heartbeat/{wanted}")).count(),
            "only {wanted} is read: {plan}"
        );
        let (status, v) = sql_json(base, &q).await;
        assert_eq!(status, 200, "{v}");
        assert!(v[0]["m"].as_u64().is_some(), "{v}");
        let (_, none) = sql_json(
            base,
            "SELECT count(*) AS n FROM heartbeat WHERE date = DATE '1999-01-01'",
        )
        .await;
        assert_eq!(none[0]["n"], 0, "{none}");
    }
}

fn counts(rows: &BTreeMap<String, Vec<Value>>) -> Vec<(&str, usize)> {
    rows.iter().map(|(t, r)| (t.as_str(), r.len())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_readers_agree_with_the_service_at_newest_and_pinned_versions_through_compactions()
{
    let Some(python) = testenv::python_or_skip("outside_readers_agree_with_the_service") else {
        return;
    };
    let now = yesterday_noon();
    let sc = scenario::build(now, 10);
    let dir = write_lake(&sc, now, 2, 25).await;
    let url = dir.path().to_str().unwrap().to_string();
    let lake = Lake::open(&url).unwrap();
    // Readings two hours earlier too: more than one partition.
    let earlier = scenario::build(now - 2 * 3_600_000, 5);
    write_into(
        &lake,
        &earlier,
        now - 2 * 3_600_000,
        2,
        25,
        "earlier-readings",
    )
    .await;
    let ecfg = EpochConfig {
        length: Duration::from_secs(86_400),
        origin: "2026-01-01T00:00:00Z".into(),
        ..EpochConfig::default()
    };
    let id = ecfg.id_of(now - 30_000).unwrap();
    let m = force_seal(&lake, &lake, &ecfg, id).await.unwrap();
    hexpulse_lake::epoch::publish::publish(&lake, &m)
        .await
        .unwrap();
    let pinned = serde_json::to_string(&m.input_versions).unwrap();

    let stop = CancellationToken::new();
    let mut qcfg = QueryConfig::for_tests(&url);
    qcfg.epoch = ecfg;
    qcfg.max_rows = 1_000_000;
    let q = Query::start(qcfg, Lake::open(&url).unwrap(), stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", q.addr);

    // At the sealed versions: both readers list exactly the rows the service answers.
    let sealed = service_rows(&base).await;
    assert!(
        sealed.values().all(|r| !r.is_empty()),
        "{:?}",
        counts(&sealed)
    );
    let at_seal = read_lake(&python, dir.path(), &["--rows", "--versions", &pinned]).await;
    assert_eq!(reader_rows(&at_seal), sealed, "pinned versions");
    let newest = read_lake(&python, dir.path(), &["--rows"]).await;
    assert_eq!(reader_rows(&newest), sealed, "newest = sealed versions");
    assert_eq!(
        at_seal["tables"]["heartbeat"]["types"]["event_time"],
        "TIMESTAMP WITH TIME ZONE"
    );
    partitions_agree_and_prune(&base, &newest).await;
    // The sealed epoch's outputs, as Delta tables: the same rows for the readers and the service
    // (`road_hex` may be empty: a cell shows only with k dashcams).
    for table in hexpulse_query::catalog::EPOCH_TABLES {
        let (status, v) = sql_json(&base, &format!("SELECT count(*) AS n FROM {table}")).await;
        assert_eq!(status, 200, "{v}");
        let out = &newest["epoch_tables"][table];
        assert_eq!(out["rows"], v[0]["n"], "{table}: {out}");
        let listed = m.outputs.iter().find(|o| o.table == table).unwrap().rows;
        assert_eq!(out["rows"], listed, "{table}: the manifest's rows");
        let epochs = if listed > 0 { vec![id] } else { vec![] };
        assert_eq!(out["epochs"], serde_json::json!(epochs), "{table}: {out}");
    }

    // Late rows arrive and compactions commit while both readers read again and again.
    let watcher = {
        let (python, path) = (python.clone(), dir.path().to_path_buf());
        tokio::spawn(async move { read_lake(&python, &path, &["--watch", "12"]).await })
    };
    let mut compactions = 0;
    let mut round = 0;
    while !watcher.is_finished() {
        round += 1;
        let late = scenario::build(now - round * 60_000, 3);
        write_into(&lake, &late, now, 1, 10, &format!("late-{round}")).await;
        let done = compact::compact_closed(&lake, now + 3 * 3_600_000, &CompactOptions::default())
            .await
            .unwrap();
        compactions += done.len();
    }
    let watched = watcher.await.unwrap();
    eprintln!(
        "{} reads over {round} rounds and {compactions} compaction commits; last {}",
        watched["reads"], watched["last"]
    );
    assert!(
        compactions >= 4,
        "compactions committed during the reads: {compactions}"
    );
    assert!(watched["reads"].as_u64().unwrap() >= 3, "{watched}");

    // The log is cleaned with no retention: the outside readers still read the pinned versions
    // (from their own checkpoints) and the newest one.
    compact::checkpoint(&lake, 1).await.unwrap();
    let deleted = compact::clean_log(&lake, Duration::ZERO).await.unwrap();
    assert!(deleted > 100, "expired log entries deleted: {deleted}");

    // The service catches up with the newest versions, and both agree with the readers again.
    let newest = reader_rows(&read_lake(&python, dir.path(), &["--rows"]).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut service = service_rows(&base).await;
    while service != newest && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        service = service_rows(&base).await;
    }
    assert_eq!(counts(&service), counts(&newest));
    assert_eq!(service, newest, "newest versions");
    assert!(
        counts(&newest)
            .iter()
            .zip(counts(&sealed))
            .any(|(a, b)| a.1 > b.1),
        "late rows landed"
    );
    // The pinned versions still read as they were sealed.
    let at_seal = read_lake(&python, dir.path(), &["--rows", "--versions", &pinned]).await;
    assert_eq!(
        reader_rows(&at_seal),
        sealed,
        "pinned versions after late rows"
    );
    stop.cancel();
}
