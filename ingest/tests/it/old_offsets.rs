//! #21: a durable local broker (tansu 0.6 on sqlite, as `make up` runs it) holding 50,000 records as
//! ingest writes them streams a read from an old offset.
//!
//! With the receive time and node in two Kafka headers per record (before the envelope, WIRE.md
//! "Raw topic records") the same read returned nothing in 40 s and the broker stopped answering:
//! tansu looks a record's headers up with a scan of its whole header table, for every record it
//! serves. Set `HEXPULSE_OLD_OFFSET_HEADERS=1` to produce that way and see it (not in `make test`:
//! it hangs the broker it starts).

use std::time::{Duration, Instant};

use hexpulse_common::kafka::KafkaConfig;
use hexpulse_ingest::IngestConfig;
use hexpulse_ingest::produce::Sink;
use hexpulse_testkit::testenv;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::{device_key, signed};

const RECORDS: usize = 50_000;
const FROM: i64 = 5_000;

/// Produces `RECORDS` signed readings the way ingest does (its `Sink`), or, with `headers`, the
/// way ingest did before envelopes.
async fn produce(kafka: &KafkaConfig, headers: bool) {
    let key = device_key(0);
    let pk = key.verifying_key().as_bytes().to_vec();
    let values: Vec<Vec<u8>> = (0..RECORDS as u64)
        .map(|seq| signed(&key, seq + 1).encode_to_vec())
        .collect();
    if headers {
        let producer: FutureProducer = kafka
            .producer_config("old-offsets", Duration::from_secs(60))
            .create()
            .unwrap();
        for chunk in values.chunks(5_000) {
            let mut pending = Vec::new();
            for v in chunk {
                let h = OwnedHeaders::new()
                    .insert(Header {
                        key: "hexpulse-received-ms",
                        value: Some("1767225600000"),
                    })
                    .insert(Header {
                        key: "hexpulse-ingest-node",
                        value: Some("test-node"),
                    });
                let r = FutureRecord::to(&kafka.raw_topic)
                    .key(&pk)
                    .payload(v)
                    .headers(h);
                pending.push(producer.send_result(r).map_err(|(e, _)| e).unwrap());
            }
            for p in pending {
                p.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
        return;
    }
    let mut cfg = IngestConfig::for_tests();
    cfg.delivery_timeout = Duration::from_secs(60);
    let sink = Sink::new(kafka, &cfg).unwrap();
    for chunk in values.chunks(5_000) {
        let items: Vec<(bytes::Bytes, bytes::Bytes)> = chunk
            .iter()
            .map(|v| {
                (
                    bytes::Bytes::from(pk.clone()),
                    bytes::Bytes::from(v.clone()),
                )
            })
            .collect();
        let results = sink.produce_all(&items, 1_767_225_600_000).await;
        assert!(
            results.iter().all(Result::is_ok),
            "{} of {} not delivered",
            results.iter().filter(|r| r.is_err()).count(),
            results.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_offset_read_from_the_durable_broker_streams() {
    let cache = tempfile::tempdir().unwrap();
    let Some(broker) = testenv::OwnBroker::for_test("old_offsets", cache.path()) else {
        return;
    };
    broker.start();
    let kafka = KafkaConfig {
        envelope_key: None,
        sasl_username: None,
        sasl_password: None,
        brokers: broker.address(),
        raw_topic: testenv::unique_topic("old-offsets"),
        partitions: 1,
        replication: 1,
        extra: Default::default(),
    };
    kafka.ensure_topics(&[&kafka.raw_topic]).await.unwrap();
    let headers = std::env::var_os("HEXPULSE_OLD_OFFSET_HEADERS").is_some();
    let started = Instant::now();
    produce(&kafka, headers).await;
    eprintln!("produced {RECORDS} records in {:?}", started.elapsed());

    let k = kafka.clone();
    let (got, took) = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = k
            .consumer_config("old-offsets-reader", "old-offsets-reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&k.raw_topic, 0, Offset::Offset(FROM))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let started = Instant::now();
        let (mut got, mut last) = (0usize, -1i64);
        while got < RECORDS - FROM as usize && started.elapsed() < Duration::from_secs(90) {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                if m.offset() > last {
                    last = m.offset();
                    got += 1;
                }
            }
        }
        (got, started.elapsed())
    })
    .await
    .unwrap();
    eprintln!("read {got} records from offset {FROM} in {took:?}");
    assert_eq!(
        got,
        RECORDS - FROM as usize,
        "an old-offset read of the durable broker stalled after {took:?}"
    );
}
