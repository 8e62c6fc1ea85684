//! The object store fails writes for a while: the processor retries with backoff, commits nothing
//! meanwhile, and once the store recovers the lake holds every record exactly once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hexpulse_common::registry::Registry;
use hexpulse_common::testenv;
use hexpulse_lake::Lake;
use hexpulse_load_tests::scenario;
use hexpulse_processors::ProcessConfig;
use tokio_util::sync::CancellationToken;

use crate::faulty::Flaky;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_loses_nothing() {
    let Some(brokers) = testenv::broker_or_skip("store_outage_loses_nothing") else {
        return;
    };
    let now = now_ms();
    let sc = scenario::build(now, 20);
    let kafka = kafka(&brokers, "it-proc-store", 2);
    produce(&kafka, &sc, now).await;

    let dir = tempfile::tempdir().unwrap();
    let lake_url = dir.path().to_str().unwrap().to_string();
    let local = Lake::open(&lake_url).unwrap();
    let flaky = Arc::new(Flaky::new(local.store().clone()));
    flaky.failing.store(true, Ordering::SeqCst);
    let mut cfg = ProcessConfig::for_tests(&lake_url);
    cfg.group_id = format!("{}-g", kafka.raw_topic);
    cfg.reverify_signatures = true;
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
    let during = hexpulse_processors::inspect::summarize(&local)
        .await
        .unwrap();
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
