//! Resuming at a committed offset inside a record batch loses nothing.
//!
//! tansu 0.6 answers a fetch from inside a record batch with the next batch, so a consumer that
//! resumes at such an offset would never see the rest of the batch, and if nothing follows it sees
//! nothing at all. Kafka serves any offset; the processor must be right on both.

use std::time::Duration;

use hexpulse_lake::Lake;
use hexpulse_testkit::scenario;
use hexpulse_testkit::testenv;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::*;

/// Commits `offset` for partition 0 in `group` without consuming.
fn commit(kafka: &hexpulse_common::kafka::KafkaConfig, group: &str, offset: i64) {
    let c: BaseConsumer = kafka.consumer_config(group, "it-commit").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&kafka.raw_topic, 0, Offset::Offset(offset))
        .unwrap();
    c.assign(&tpl).unwrap();
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
}

async fn run_until_complete(
    kafka: &hexpulse_common::kafka::KafkaConfig,
    group: &str,
    sc: &scenario::Scenario,
) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let (p, stop) = start_processor(kafka, group, sc, &url).await;
    let lake = Lake::open(&url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(60)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    assert_matches(&summary, sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_inside_a_record_batch_loses_nothing() {
    let Some(brokers) = testenv::broker_or_skip("resuming_inside_a_record_batch") else {
        return;
    };
    let now = now_ms();
    let sc = scenario::build(now, 30);
    let kafka = kafka(&brokers, "it-resume", 1);
    // Two produce calls: two record batches (the producer waits for the first before the second).
    let half = sc.records.len() / 2;
    let part = |r: &[scenario::ScenarioRecord]| scenario::Scenario {
        devices: sc.devices.clone(),
        records: r.to_vec(),
    };
    let producer = producer(&kafka).await;
    produce_with(&producer, &kafka, &part(&sc.records[..half]), now).await;
    produce_with(&producer, &kafka, &part(&sc.records[half..]), now).await;

    // A group whose committed offset lies inside the first batch, over an empty lake (as after a
    // crash that lost the lake's claims for that range): everything must still be read.
    let g1 = format!("{}-inside-first", kafka.raw_topic);
    commit(&kafka, &g1, (half / 2) as i64);
    run_until_complete(&kafka, &g1, &sc).await;

    // Committed inside the last batch, nothing after it: the partition must not stay silent.
    let g2 = format!("{}-inside-last", kafka.raw_topic);
    commit(&kafka, &g2, (half + half / 2) as i64);
    run_until_complete(&kafka, &g2, &sc).await;
}
