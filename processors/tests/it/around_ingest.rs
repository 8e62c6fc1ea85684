//! Finding 8 of round two: records produced straight to Kafka, around ingest. With re-verification
//! on and an envelope key, processors trust nothing of a record but the signed bytes and ingest's
//! tag: a record without a tag, with a wrong tag or without an envelope claims no receive time and
//! is rejected, and a copy of a device's record in another partition (where that partition's
//! duplicate check would not see the original) is rejected too. The originals land once.

use std::time::Duration;

use hexpulse_lake::Lake;
use hexpulse_schemas::wire::envelope::{self, EnvelopeKey};
use hexpulse_schemas::wire::partition_of;
use hexpulse_testkit::scenario::{self, Fate, ScenarioRecord};
use hexpulse_testkit::testenv;
use rdkafka::producer::FutureRecord;

use crate::support::*;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_around_ingest_are_rejected() {
    let Some(brokers) = testenv::broker_or_skip("records_produced_around_ingest_are_rejected")
    else {
        return;
    };
    let now = now_ms();
    let key_hex = "5a".repeat(32);
    let key = EnvelopeKey::from_hex(&key_hex).unwrap();
    let wrong = EnvelopeKey::from_hex(&"a5".repeat(32)).unwrap();
    let mut kafka = kafka(&brokers, "it-around-ingest", PARTITIONS);
    kafka.envelope_key = Some(key_hex);
    let mut sc = scenario::build(now, 5);

    // The scenario as ingest writes it: tagged envelopes, keyed by device.
    let producer = producer(&kafka).await;
    let send = |value: Vec<u8>, rkey: Vec<u8>, partition: Option<i32>| {
        let producer = producer.clone();
        let topic = kafka.raw_topic.clone();
        async move {
            let mut rec = FutureRecord::to(&topic).key(&rkey).payload(&value);
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            producer
                .send(rec, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("acknowledged");
        }
    };
    for r in &sc.records {
        send(
            envelope::encode(now, "ingest-0", &r.value, Some(&key)),
            r.key.clone(),
            None,
        )
        .await;
    }

    // Copies of four valid heartbeats, produced around ingest.
    let originals: Vec<ScenarioRecord> = sc
        .records
        .iter()
        .filter(|r| matches!(&r.fate, Fate::Valid { kind, .. } if kind.as_str() == "heartbeat"))
        .take(4)
        .cloned()
        .collect();
    let late_claim = now - 30_000;
    let forged = [
        // An envelope without a tag, claiming its own receive time.
        (
            envelope::encode(late_claim, "ingest-0", &originals[0].value, None),
            None,
            "bad_signature",
        ),
        // Tagged with another key.
        (
            envelope::encode(late_claim, "ingest-0", &originals[1].value, Some(&wrong)),
            None,
            "bad_signature",
        ),
        // No envelope at all.
        (originals[2].value.clone(), None, "bad_signature"),
        // Exactly what ingest wrote, copied into another partition than its device's.
        (
            envelope::encode(now, "ingest-0", &originals[3].value, Some(&key)),
            Some((partition_of(&originals[3].key, PARTITIONS) + 1) % PARTITIONS),
            "malformed",
        ),
    ];
    for ((value, partition, reason), original) in forged.into_iter().zip(&originals) {
        send(value, original.key.clone(), partition).await;
        sc.records.push(ScenarioRecord {
            fate: Fate::Rejected(reason),
            ..original.clone()
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap().to_string();
    let (p, stop) = start_processor(&kafka, &format!("{}-g", kafka.raw_topic), &sc, &url).await;
    let lake = Lake::open(&url).unwrap();
    let summary = wait_for(&lake, sc.records.len(), Duration::from_secs(90)).await;
    stop.cancel();
    p.task.await.unwrap().unwrap();
    assert_matches(&summary, &sc);
}
