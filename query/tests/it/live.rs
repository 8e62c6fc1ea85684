//! The live tier end to end: a real processor serves the rows it has validated, and the query
//! service answers them with its lake snapshot, each row once, also at the moment a unit commits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexpulse_common::registry::Device;
use hexpulse_lake::Lake;
use hexpulse_load_tests::fleet::{device_key, sign_reading};
use hexpulse_query::{Query, QueryConfig};
use hexpulse_schemas::wire::{KindName, envelope};
use hexpulse_testkit::scenario::{Fate, Scenario, ScenarioRecord, heartbeat, reading};
use hexpulse_testkit::testenv;
use prost::Message;
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const BERLIN: (f64, f64) = (52.52, 13.405);

/// `devices` heartbeat devices, each sending `per_device` valid readings one second apart in
/// device time (well inside the rate and lateness rules), interleaved by sequence number.
fn heartbeats(seed: u64, devices: u64, per_device: u64, now: i64) -> Scenario {
    let keys: Vec<_> = (0..devices).map(|i| device_key(seed, i)).collect();
    let mut records = Vec::new();
    let t0 = now - 120_000;
    for s in 1..=per_device {
        for k in &keys {
            let r = reading(s, t0 + s as i64 * 1000, BERLIN, heartbeat());
            let signed = sign_reading(k, &r);
            records.push(ScenarioRecord {
                key: signed.public_key.to_vec(),
                value: signed.encode_to_vec(),
                fate: Fate::Valid {
                    kind: KindName::Heartbeat,
                    key: hex::encode(k.verifying_key().as_bytes()),
                    seq: s,
                },
            });
        }
    }
    let devices = keys
        .iter()
        .map(|k| Device {
            public_key: hex::encode(k.verifying_key().as_bytes()),
            kind: KindName::Heartbeat,
            lat: BERLIN.0,
            lng: BERLIN.1,
            owner: "live".into(),
        })
        .collect();
    Scenario { devices, records }
}

async fn count(client: &reqwest::Client, base: &str) -> u64 {
    let r = client
        .post(format!("{base}/v1/sql"))
        .header("accept", "application/json")
        .body("SELECT count(*) AS n FROM heartbeat")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v[0]["n"].as_u64().unwrap()
}

fn live_query(url: &str, processor: std::net::SocketAddr) -> QueryConfig {
    let mut q = QueryConfig::for_tests(url);
    q.live.sources = vec![format!("http://{processor}")];
    q
}

/// Rows counted through the query service while units commit (every 300 ms per partition) equal
/// the ledger at every sampled instant: never more than was sent, never fewer than a moment
/// before (a row missed at the seam shows as a dip), never fewer than was acknowledged a bound
/// ago, and in the end exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seam_counts_each_row_once_while_units_commit() {
    let Some(brokers) = testenv::broker_or_skip("the_seam_counts_each_row_once_while_units_commit")
    else {
        return;
    };
    // The freshness bound of this test: generous, for a loaded 2-core CI machine (the benchmark
    // measures the real figure); the seam itself is checked exactly.
    const BOUND: Duration = Duration::from_secs(5);
    let now = now_ms();
    let sc = heartbeats(77, 100, 60, now);
    let total = sc.records.len();
    let kafka = kafka(&brokers, "it-live-seam", 2);
    let producer = producer(&kafka).await;
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let (p, stop) = start_processor(&kafka, &format!("{}-g", kafka.raw_topic), &sc, &url).await;
    let q = Query::start(
        live_query(&url, p.addr),
        Lake::open(&url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", q.addr);
    let lake = Lake::open(&url).unwrap();

    // The ledger: records handed to the producer so far, and when each chunk was acknowledged.
    let sent = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    let producing = {
        let (sent, acked, kafka, records) = (
            sent.clone(),
            acked.clone(),
            kafka.clone(),
            sc.records.clone(),
        );
        tokio::spawn(async move {
            let mut done = 0;
            for chunk in records.chunks(50) {
                sent.fetch_add(chunk.len(), Ordering::SeqCst);
                let mut pending = Vec::new();
                for r in chunk {
                    let value = envelope::encode(now_ms(), "live-test", &r.value, None);
                    let rec = FutureRecord::to(&kafka.raw_topic)
                        .key(&r.key)
                        .payload(&value);
                    pending.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
                }
                for p in pending {
                    p.await.unwrap().map_err(|(e, _)| e).unwrap();
                }
                done += chunk.len();
                acked.lock().unwrap().push((Instant::now(), done));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let acked_by = |t: Instant| {
        acked
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map_or(0, |(_, n)| *n)
    };
    let version_before = lake
        .table("heartbeat")
        .version()
        .await
        .unwrap()
        .unwrap_or(-1);
    let client = reqwest::Client::new();
    let (mut last, mut samples, mut worst_lag) = (0u64, 0usize, Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let asked = Instant::now();
        let n = count(&client, &base).await;
        let sent_now = sent.load(Ordering::SeqCst) as u64;
        samples += 1;
        assert!(
            n <= sent_now,
            "sample {samples}: {n} rows counted, only {sent_now} sent"
        );
        assert!(
            n >= last,
            "sample {samples}: {n} rows counted after {last}: a row was missed"
        );
        let owed = asked.checked_sub(BOUND).map_or(0, |t| acked_by(t) as u64);
        assert!(
            n >= owed,
            "sample {samples}: {n} rows counted, {owed} were acknowledged {BOUND:?} before"
        );
        // How long ago the first row not counted yet was acknowledged.
        if let Some((at, _)) = acked
            .lock()
            .unwrap()
            .iter()
            .find(|(_, done)| *done as u64 > n)
        {
            worst_lag = worst_lag.max(asked.saturating_duration_since(*at));
        }
        last = n;
        if n as usize == total && producing.is_finished() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {total} rows after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let commits = lake
        .table("heartbeat")
        .version()
        .await
        .unwrap()
        .unwrap_or(-1)
        - version_before;
    eprintln!(
        "live seam: {samples} samples, {commits} heartbeat commits, worst lag behind the \
         acknowledgement {worst_lag:?}"
    );
    assert!(commits >= 10, "the sampling saw only {commits} commits");
    // And the lake alone holds every row once.
    let summary = wait_for(&lake, total, Duration::from_secs(60)).await;
    assert_eq!(summary.distinct_records(), total);
    assert_eq!(summary.valid.len(), total);
    stop.cancel();
}

/// With no unit committed, readings are answered from the live tier alone, by SQL, the coverage
/// map and its tiles, and the answers say how fresh they are; when the processor stops (and its
/// shutdown commits the unit) the same rows are answered from the lake, none lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_rows_answer_before_their_unit_commits() {
    let Some(brokers) = testenv::broker_or_skip("live_rows_answer_before_their_unit_commits")
    else {
        return;
    };
    let now = now_ms();
    let sc = heartbeats(78, 20, 10, now);
    let total = sc.records.len() as u64;
    let kafka = kafka(&brokers, "it-live-early", 2);
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let (p, stop_processor) = start_processor_with(
        &kafka,
        &format!("{}-g", kafka.raw_topic),
        &sc,
        &url,
        |cfg| {
            cfg.roll_age = Duration::from_secs(600);
            cfg.roll_rows = 1_000_000;
        },
    )
    .await;
    let stop_query = CancellationToken::new();
    let q = Query::start(
        live_query(&url, p.addr),
        Lake::open(&url).unwrap(),
        stop_query.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", q.addr);
    let lake = Lake::open(&url).unwrap();
    produce(&kafka, &sc, now_ms()).await;

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&client, &base).await < total {
        assert!(Instant::now() < deadline, "the live rows never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&client, &base).await, total);
    assert_eq!(
        lake.table("heartbeat").version().await.unwrap(),
        None,
        "no unit may have committed yet: the answer came from the live tier"
    );
    let b = "13.3,52.4,13.5,52.6";
    let r = client
        .get(format!("{base}/v1/coverage?bbox={b}&res=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let features = v["features"].as_array().unwrap();
    assert!(!features.is_empty(), "{v}");
    let live_as_of = v["freshness"]["live_as_of"].as_str().expect("live_as_of");
    let as_of = chrono::DateTime::parse_from_rfc3339(live_as_of)
        .unwrap()
        .timestamp_millis();
    assert!(now_ms() - as_of < 10_000, "live_as_of {live_as_of} is old");
    let tile = client
        .get(format!("{base}/v1/tiles/coverage/10/550/335.mvt"))
        .send()
        .await
        .unwrap();
    assert_eq!(tile.status(), 200);
    assert!(
        !tile.bytes().await.unwrap().is_empty(),
        "the tile holds the live hexes"
    );

    // The processor stops; its shutdown commits the unit. Until the catalog has the commit the
    // count may drop (freshness), never rise past the total; then the lake answers all of them.
    stop_processor.cancel();
    p.task.await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(&client, &base).await;
        assert!(n <= total, "{n} rows of {total}");
        if n == total && lake.table("heartbeat").version().await.unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {total} rows after the processor stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&client, &base).await, total);
    stop_query.cancel();
}
