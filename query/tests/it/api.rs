//! The SQL and epoch endpoints over a processor-written, sealed lake.

use std::time::Duration;

use hexpulse_common::registry::Registry;
use hexpulse_common::testenv;
use hexpulse_load_tests::scenario;
use hexpulse_processors::ProcessConfig;
use hexpulse_processors::epoch::EpochConfig;
use hexpulse_processors::epoch::seal::{self, SealRequest};
use hexpulse_processors::lake::Lake;
use hexpulse_processors::rules::Rules;
use hexpulse_query::{Query, QueryConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;

async fn sql(base: &str, q: &str, accept: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/sql"))
        .header("accept", accept)
        .body(q.to_string())
        .send()
        .await
        .unwrap()
}

async fn sql_json(base: &str, q: &str) -> (u16, Value) {
    let r = sql(base, q, "application/json").await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

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
    let mut pcfg = ProcessConfig::for_tests(&url);
    pcfg.group_id = format!("{}-g", kafka.raw_topic);
    pcfg.reverify_signatures = true;
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        pcfg,
        kafka.clone(),
        Registry::from_devices(sc.devices.clone()).unwrap(),
        Lake::open(&url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    let lake = Lake::open(&url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    assert_matches(&summary, &sc);

    let ecfg = EpochConfig::default();
    let rules = Rules::load(None).unwrap();
    let id = ecfg.id_of(now - 30_000).unwrap();
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

    let mut qcfg = QueryConfig::for_tests(&url);
    qcfg.max_rows = 50;
    qcfg.query_timeout = Duration::from_secs(2);
    let q = Query::start(qcfg, Lake::open(&url).unwrap(), stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", q.addr);

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
    let reader =
        datafusion_arrow_reader(arrow.to_vec());
    assert_eq!(reader, 5);

    // Read-only, bounded, and clear about why.
    for (q, status, code) in [
        (
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
            403,
            "read_only",
        ),
        ("COPY (SELECT 1) TO '/tmp/hexpulse-copy.csv'", 403, "read_only"),
        ("INSERT INTO heartbeat SELECT * FROM heartbeat", 403, "read_only"),
        ("SET datafusion.execution.batch_size = 1", 403, "read_only"),
        ("SELECT * FROM '/etc/passwd'", 400, "sql_plan"),
        ("SELECT * FROM road", 400, "sql_plan"),
        ("SELEC 1", 400, "sql_syntax"),
        ("SELECT * FROM heartbeat", 413, "row_limit"),
        (
            "SELECT count(*) FROM generate_series(1, 100000000000)",
            408,
            "time_limit",
        ),
    ] {
        let (got, v) = sql_json(&base, q).await;
        assert_eq!((got, v["error"].as_str().unwrap_or("")), (status, code), "{q}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    assert!(!std::path::Path::new("/tmp/hexpulse-copy.csv").exists());

    // Epochs: list, manifest, summaries in three formats, a proof that verifies.
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap() }
    };
    let list: Value = get("/v1/epochs".into()).await.json().await.unwrap();
    assert_eq!(list["epochs"][0]["epoch"].as_i64(), Some(id));
    assert_eq!(list["epochs"][0]["merkle_root"].as_str(), Some(m.merkle_root.as_str()));
    let manifest: seal::Manifest = get(format!("/v1/epochs/{id}/manifest"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(manifest, m);
    let json: Value = get(format!("/v1/epochs/{id}/devices")).await.json().await.unwrap();
    assert_eq!(json.as_array().unwrap().len() as u64, m.merkle_leaves);
    let csv = get(format!("/v1/epochs/{id}/devices?format=csv"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count() as u64, m.merkle_leaves + 1);
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
    let device = json[0]["device_key"].as_str().unwrap();
    let proof: seal::Proof = get(format!("/v1/epochs/{id}/proof/{device}"))
        .await
        .json()
        .await
        .unwrap();
    seal::verify_proof(&proof, &m.merkle_root).unwrap();
    assert_eq!(get(format!("/v1/epochs/{}/manifest", id + 1)).await.status(), 404);

    // The epoch tables are queryable too.
    let (_, v) = sql_json(&base, "SELECT count(*) AS n FROM device_summary").await;
    assert_eq!(v[0]["n"].as_u64(), Some(m.merkle_leaves));

    stop.cancel();
    p.task.await.unwrap().unwrap();
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
