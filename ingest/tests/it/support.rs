//! Shared helpers: devices with known keys, signed batches, an ingest node on a fresh topic, and a
//! reader of everything a topic holds.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use hexpulse_common::kafka::KafkaConfig;
use hexpulse_common::registry::{Device, Registry};
use hexpulse_ingest::IngestConfig;
use hexpulse_ingest::server::Ingest;
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::{
    Heartbeat, Kind, KindName, Location, PayloadFormat, Reading, ReadingBatch, SignedReading,
    envelope,
};
use hexpulse_testkit::testenv;
use prost::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub fn device_key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i.wrapping_add(100); 32])
}

pub fn registry(n: u8) -> Registry {
    Registry::from_devices(
        (0..n)
            .map(|i| Device {
                public_key: hex::encode(device_key(i).verifying_key().as_bytes()),
                kind: KindName::Heartbeat,
                lat: 52.5,
                lng: 13.4,
                owner: "test".into(),
            })
            .collect(),
    )
    .unwrap()
}

pub fn reading(seq: u64) -> Reading {
    Reading {
        schema_version: 1,
        device_time_ms: 1_767_225_600_000 + seq as i64,
        seq,
        location: Some(Location {
            lat: 52.5,
            lng: 13.4,
            accuracy_m: 4.0,
        }),
        kind: Some(Kind::Heartbeat(Heartbeat {
            radio: 1,
            signal_dbm: -60.0,
            speed_test: None,
        })),
    }
}

pub fn signed(key: &SigningKey, seq: u64) -> SignedReading {
    sign_reading(key, &reading(seq))
}

/// `r` as a device signs it, in protobuf.
pub fn sign_reading(key: &SigningKey, r: &Reading) -> SignedReading {
    let payload = r.encode_to_vec();
    SignedReading {
        public_key: key.verifying_key().to_bytes().to_vec().into(),
        signature: sign::sign(key, &payload).to_vec().into(),
        payload: payload.into(),
        format: PayloadFormat::Protobuf as i32,
    }
}

pub fn batch(items: &[SignedReading]) -> Vec<u8> {
    ReadingBatch {
        readings: items.to_vec(),
    }
    .encode_to_vec()
}

/// The `(index, code)` of every item in an answer's `rejected` list.
pub fn rejections(body: &serde_json::Value) -> Vec<(u64, String)> {
    body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub struct Node {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub kafka: KafkaConfig,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub http: reqwest::Client,
}

/// The envelope key every test node tags its records with.
pub const ENVELOPE_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

impl Node {
    pub async fn start(test: &str, brokers: &str, cfg: IngestConfig, registry: Registry) -> Node {
        let kafka = KafkaConfig {
            envelope_key: Some(ENVELOPE_KEY.into()),
            sasl_username: None,
            sasl_password: None,
            brokers: brokers.into(),
            raw_topic: testenv::unique_topic(test),
            partitions: 3,
            replication: 1,
            extra: Default::default(),
        };
        let stop = CancellationToken::new();
        let running = Ingest::start(cfg, kafka.clone(), registry, stop.clone())
            .await
            .expect("ingest starts");
        Node {
            addr: running.addr,
            admin_addr: running.admin_addr,
            kafka,
            stop,
            task: running.task,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(
        &self,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .post(self.url("/v1/readings"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, json, headers)
    }

    /// `POST /v1/readings` of a protobuf batch as if from `from` (an `X-Forwarded-For` entry, for a
    /// node with `trusted_proxies` holding loopback).
    pub async fn post_from(&self, from: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(self.url("/v1/readings"))
            .header("content-type", "application/x-protobuf")
            .header("x-forwarded-for", from)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("stops in time")
            .unwrap();
    }
}

/// One record read back from Kafka, its envelope opened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub key: Vec<u8>,
    /// The device's signed bytes.
    pub value: Vec<u8>,
    pub node: String,
    pub received_ms: i64,
    /// Kafka headers (ingest sets none).
    pub headers: usize,
}

/// Everything the topic holds, read from the beginning of each partition until nothing new arrives for
/// 3 s. (tansu 0.6 reports high watermarks below the records it serves, so they cannot bound the read.)
pub fn read_all(kafka: &KafkaConfig) -> Vec<Record> {
    let consumer: BaseConsumer = kafka
        .consumer_config(&format!("{}-reader", kafka.raw_topic), "reader")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(&kafka.raw_topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&kafka.raw_topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut idle_since = std::time::Instant::now();
    while std::time::Instant::now() < deadline && idle_since.elapsed() < Duration::from_secs(3) {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            idle_since = std::time::Instant::now();
            let value = m.payload().unwrap_or_default();
            let e = envelope::decode(value).expect("every record is enveloped");
            // As a re-verifying processor checks it: ingest's tag, in the device's partition.
            let key = envelope::EnvelopeKey::from_hex(ENVELOPE_KEY).unwrap();
            assert!(e.authentic(&key), "every envelope carries ingest's tag");
            let rkey = m.key().unwrap_or_default();
            assert_eq!(
                m.partition(),
                hexpulse_schemas::wire::partition_of(rkey, partitions.len() as i32),
                "every record sits in its device's partition"
            );
            out.push(Record {
                key: m.key().unwrap_or_default().to_vec(),
                value: e.signed.to_vec(),
                node: e.node.to_string(),
                received_ms: e.received_ms,
                headers: m.headers().map_or(0, |h| h.count()),
            });
        }
    }
    out
}
