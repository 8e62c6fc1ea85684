//! A stream with every invalid class ends exactly once in the lake, through two processors sharing
//! the partitions, one of which is stopped and restarted midway.

use std::time::Duration;

use hexpulse_common::registry::Registry;
use hexpulse_lake::Lake;
use hexpulse_processors::ProcessConfig;
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_mix_lands_exactly_once() {
    let Some(brokers) = testenv::broker_or_skip("known_mix_lands_exactly_once") else {
        return;
    };
    let now = now_ms();
    let sc = scenario::build(now, 40);
    let kafka = kafka(&brokers, "it-proc-mix", 3);
    produce(&kafka, &sc, now).await;

    let dir = tempfile::tempdir().unwrap();
    let lake_url = dir.path().to_str().unwrap().to_string();
    let registry = Registry::from_devices(sc.devices.clone()).unwrap();
    let mut cfg = ProcessConfig::for_tests(&lake_url);
    cfg.group_id = format!("{}-g", kafka.raw_topic);
    cfg.reverify_signatures = true;
    cfg.roll_rows = 50; // many small units

    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        cfg.clone(),
        kafka.clone(),
        registry.clone(),
        Lake::open(&lake_url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    let lake = Lake::open(&lake_url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    assert_matches(&summary, &sc);

    // Replaying from the beginning with a new group changes nothing: the claims fence every offset.
    let mut again = cfg.clone();
    again.group_id = format!("{}-g2", kafka.raw_topic);
    let stop = CancellationToken::new();
    let p = hexpulse_processors::run::start(
        again,
        kafka.clone(),
        registry,
        Lake::open(&lake_url).unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    let after = hexpulse_testkit::inspect::summarize(&lake).await.unwrap();
    assert_matches(&after, &sc);
    assert_eq!(after.files, summary.files, "a replay writes no new files");
}
