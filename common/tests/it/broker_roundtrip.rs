//! Proves the toolchain: signed readings produced with rdkafka (idempotent, acks=all) come back
//! byte-identical through a consumer group, keyed by device, and still verify.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_schemas::check::check_item;
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::{Heartbeat, Kind, Location, PayloadFormat, Reading, SignedReading};
use hexpulse_testkit::testenv;
use prost::Message;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const N: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_readings_round_trip_byte_identical() {
    let Some(brokers) = testenv::broker_or_skip("signed_readings_round_trip_byte_identical") else {
        return;
    };
    let topic = testenv::unique_topic("it-roundtrip");
    let cfg = KafkaConfig {
        envelope_key: None,
        sasl_username: None,
        sasl_password: None,
        brokers,
        raw_topic: topic.clone(),
        partitions: 3,
        replication: 1,
        extra: Default::default(),
    };
    cfg.ensure_topics(&[&topic]).await.expect("create topic");
    // Creating twice is fine.
    cfg.ensure_topics(&[&topic])
        .await
        .expect("create topic again");

    let producer: FutureProducer = cfg
        .producer_config("it-producer", Duration::from_secs(30))
        .create()
        .expect("producer");
    let keys: Vec<SigningKey> = (0u8..8)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
        .collect();
    let mut sent: BTreeMap<(Vec<u8>, u64), Vec<u8>> = BTreeMap::new();
    let mut deliveries = Vec::new();
    for seq in 0..N {
        let key = &keys[(seq % keys.len() as u64) as usize];
        let reading = Reading {
            schema_version: 1,
            device_time_ms: 1_767_225_600_000 + seq as i64,
            seq,
            location: Some(Location {
                lat: 48.85,
                lng: 2.35,
                accuracy_m: 3.0,
            }),
            kind: Some(Kind::Heartbeat(Heartbeat {
                radio: 1,
                signal_dbm: -70.0,
                speed_test: None,
            })),
        };
        let payload = reading.encode_to_vec();
        let item = SignedReading {
            public_key: key.verifying_key().to_bytes().to_vec().into(),
            signature: sign::sign(key, &payload).to_vec().into(),
            payload: payload.into(),
            format: PayloadFormat::Protobuf as i32,
        };
        let value = item.encode_to_vec();
        let pk = key.verifying_key().to_bytes().to_vec();
        sent.insert((pk.clone(), seq), value.clone());
        let producer = producer.clone();
        let topic = topic.clone();
        deliveries.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&pk).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
        }));
    }
    for d in deliveries {
        d.await.unwrap().expect("acknowledged by the broker");
    }

    let consumer: StreamConsumer = cfg
        .consumer_config(&format!("{topic}-group"), "it-consumer")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut received: BTreeMap<(Vec<u8>, u64), Vec<u8>> = BTreeMap::new();
    let mut partitions_by_device: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("all records consumed within 60 s")
            .expect("stream open")
            .expect("no consumer error");
        let value = msg.payload().expect("value").to_vec();
        let key = msg.key().expect("key").to_vec();
        let item = SignedReading::decode(value.as_slice()).expect("decodes");
        let checked = check_item(&item).expect("verifies after the round trip");
        assert_eq!(
            item.public_key.as_ref(),
            key.as_slice(),
            "keyed by device public key"
        );
        partitions_by_device
            .entry(key.clone())
            .or_default()
            .insert(msg.partition());
        let dup = received.insert((key, checked.reading.seq), value);
        assert!(dup.is_none(), "record delivered twice to one consumer");
    }
    assert_eq!(received, sent, "every record arrives byte-identical");
    for (device, parts) in partitions_by_device {
        assert_eq!(
            parts.len(),
            1,
            "device {} spread over partitions {parts:?}",
            hex::encode(device)
        );
    }
}
