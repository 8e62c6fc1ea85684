//! The object store fails writes for a while: the processor retries with backoff, commits nothing
//! meanwhile, and once the store recovers the lake holds every record exactly once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hexpulse_common::registry::Registry;
use hexpulse_lake::Lake;
use hexpulse_processors::ProcessConfig;
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use tokio_util::sync::CancellationToken;

use crate::faulty::Flaky;
use crate::support::*;

/// A scenario produced to a fresh topic of 2 partitions, and a processor's config for a local
/// lake that `flaky` wraps (`None`: no broker, the test skips).
struct Setup {
    sc: scenario::Scenario,
    kafka: hexpulse_common::kafka::KafkaConfig,
    _dir: tempfile::TempDir,
    local: Lake,
    flaky: Arc<Flaky>,
    cfg: ProcessConfig,
}

async fn setup(test: &str, topic: &str) -> Option<Setup> {
    let brokers = testenv::broker_or_skip(test)?;
    let now = now_ms();
    let sc = scenario::build(now, 20);
    let kafka = kafka(&brokers, topic, 2);
    produce(&kafka, &sc, now).await;
    let dir = tempfile::tempdir().unwrap();
    let lake_url = dir.path().to_str().unwrap().to_string();
    let local = Lake::open(&lake_url).unwrap();
    let flaky = Arc::new(Flaky::new(local.store().clone()));
    let mut cfg = ProcessConfig::for_tests(&lake_url);
    cfg.group_id = format!("{}-g", kafka.raw_topic);
    cfg.reverify_signatures = true;
    Some(Setup {
        sc,
        kafka,
        _dir: dir,
        local,
        flaky,
        cfg,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_loses_nothing() {
    let Some(Setup {
        sc,
        kafka,
        _dir,
        local,
        flaky,
        cfg,
    }) = setup("store_outage_loses_nothing", "it-proc-store").await
    else {
        return;
    };
    flaky.failing.store(true, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg,
        kafka.clone(),
        Registry::from_devices(sc.devices.clone()).unwrap(),
        Lake::from_store(flaky.clone()),
        stop.clone(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        flaky.refused.load(Ordering::SeqCst) > 1,
        "the processor tried (and retried) to write"
    );
    let during = hexpulse_testkit::inspect::summarize(&local).await.unwrap();
    assert_eq!(
        during.distinct_records(),
        0,
        "nothing published while the store fails"
    );
    flaky.failing.store(false, Ordering::SeqCst);
    let summary = wait_for(&local, sc.records.len(), Duration::from_secs(60)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    assert_matches(&summary, &sc);
}

/// A write the store refuses for good (permission denied): the partitions stop after one try
/// instead of retrying forever, `/readyz` says which and why, nothing reaches the lake, and a
/// processor with a store that accepts its writes then stores every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_store_error_stops_the_partitions_loudly_and_a_restart_resumes() {
    let Some(Setup {
        sc,
        kafka,
        _dir,
        local,
        flaky: denied,
        cfg,
    }) = setup(
        "a_permanent_store_error_stops_the_partitions",
        "it-proc-denied",
    )
    .await
    else {
        return;
    };
    denied.denied.store(true, Ordering::SeqCst);
    let registry = Registry::from_devices(sc.devices.clone()).unwrap();
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg.clone(),
        kafka.clone(),
        registry.clone(),
        Lake::from_store(denied.clone()),
        stop.clone(),
    )
    .await
    .unwrap();

    // Both partitions stop, each named on /readyz with the store's refusal.
    let readyz = format!("http://{}/readyz", p.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let failing = loop {
        let r = reqwest::get(&readyz).await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        let failing = body["failing"].as_object().cloned().unwrap_or_default();
        if failing.len() == 2 {
            assert_eq!(status, 503, "{body}");
            break failing;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partitions did not stop within 60 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for p in ["partition:0", "partition:1"] {
        let why = failing[p].as_str().unwrap_or_default();
        assert!(
            why.contains("injected: this process may not write here"),
            "{p}: {why}"
        );
    }
    // Stopped, not retrying: no more writes are tried.
    let refused = denied.refused.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        denied.refused.load(Ordering::SeqCst),
        refused,
        "a stopped partition tried to write again"
    );
    let during = hexpulse_testkit::inspect::summarize(&local).await.unwrap();
    assert_eq!(during.distinct_records(), 0);
    stop.cancel();
    p.wait().await.unwrap();

    // The operator fixes the permission and restarts: every record, once.
    let stop = CancellationToken::new();
    let p =
        hexpulse_processors::run::start(cfg, kafka.clone(), registry, local.clone(), stop.clone())
            .await
            .unwrap();
    let summary = wait_for(&local, sc.records.len(), Duration::from_secs(60)).await;
    stop.cancel();
    p.wait().await.unwrap();
    assert_matches(&summary, &sc);
}

/// Rows of each partition in the processor's live tier, by asking its `/v1/live/{table}`.
async fn live_rows_by_partition(
    addr: std::net::SocketAddr,
) -> std::collections::BTreeMap<i32, usize> {
    let mut rows = std::collections::BTreeMap::new();
    for table in hexpulse_lake::unit::STREAM_TABLES {
        let body = reqwest::get(format!("http://{addr}/v1/live/{table}"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (header, _, batches) = hexpulse_lake::live::decode(&body).unwrap();
        for (segment, batch) in header.segments.iter().zip(&batches) {
            *rows.entry(segment.partition).or_default() += batch.num_rows();
        }
    }
    rows
}

/// A unit whose commit hangs (the store fails every write) does not stop the consumer loop: the
/// partition goes on buffering its next unit, whose rows go live (up to twice the roll bounds,
/// no more: the consumer then waits). Before units were written apart from the loop, a
/// partition's live rows stopped at its first unit. Once the store recovers, every record is
/// stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_commit_does_not_stop_the_consumer() {
    let Some(Setup {
        sc,
        kafka,
        _dir,
        local,
        flaky,
        mut cfg,
    }) = setup(
        "a_hanging_commit_does_not_stop_the_consumer",
        "it-proc-hang",
    )
    .await
    else {
        return;
    };
    const ROLL: usize = 20;
    cfg.roll_rows = ROLL;
    flaky.failing.store(true, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg,
        kafka.clone(),
        Registry::from_devices(sc.devices.clone()).unwrap(),
        Lake::from_store(flaky.clone()),
        stop.clone(),
    )
    .await
    .unwrap();
    // Some partition gets past its first unit, while nothing can be committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let live = loop {
        let live = live_rows_by_partition(p.addr).await;
        if live.values().any(|n| *n > ROLL) {
            break live;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no partition's live rows went past its first unit of {ROLL} while its commit hung: \
             {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("live rows by partition while the commits hung: {live:?}");
    let during = hexpulse_testkit::inspect::summarize(&local).await.unwrap();
    assert_eq!(
        during.distinct_records(),
        0,
        "nothing committed while the store fails"
    );
    flaky.failing.store(false, Ordering::SeqCst);
    let summary = wait_for(&local, sc.records.len(), Duration::from_secs(60)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    assert_matches(&summary, &sc);
}
