//! Accepted items appear in Kafka exactly once each, byte-identical, keyed by device.

use hexpulse_ingest::IngestConfig;
use hexpulse_schemas::json::{JsonBatch, JsonSignedReading};
use hexpulse_testkit::testenv;
use prost::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_items_reach_kafka_exactly_once() {
    let Some(brokers) = testenv::broker_or_skip("accepted_items_reach_kafka_exactly_once") else {
        return;
    };
    let node = Node::start(
        "it-ingest-delivery",
        &brokers,
        IngestConfig::for_tests(),
        registry(5),
    )
    .await;

    let mut expected = Vec::new();
    // Protobuf batches.
    for b in 0..4u64 {
        let items: Vec<_> = (0..50)
            .map(|i| signed(&device_key((i % 5) as u8), b * 100 + i))
            .collect();
        let (status, body, _) = node.post("application/x-protobuf", batch(&items)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 50, "{body}");
        assert_eq!(body["rejected"].as_array().unwrap().len(), 0);
        expected.extend(
            items
                .iter()
                .map(|s| (s.public_key.to_vec(), s.encode_to_vec())),
        );
    }
    // A JSON batch carries the same signed bytes.
    let items: Vec<_> = (0..10).map(|i| signed(&device_key(1), 1000 + i)).collect();
    let json = JsonBatch {
        readings: items.iter().map(JsonSignedReading::from_signed).collect(),
    };
    let (status, body, _) = node
        .post("application/json", serde_json::to_vec(&json).unwrap())
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(10)),
        "{body}"
    );
    expected.extend(
        items
            .iter()
            .map(|s| (s.public_key.to_vec(), s.encode_to_vec())),
    );

    // gzip- and zstd-encoded bodies.
    for enc in ["gzip", "zstd"] {
        let items: Vec<_> = (0..5)
            .map(|i| {
                signed(
                    &device_key(2),
                    2000 + i + if enc == "zstd" { 100 } else { 0 },
                )
            })
            .collect();
        let raw = batch(&items);
        let body = if enc == "gzip" {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &raw).unwrap();
            e.finish().unwrap()
        } else {
            zstd::encode_all(raw.as_slice(), 1).unwrap()
        };
        let r = node
            .http
            .post(node.url("/v1/readings"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", enc)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{enc}");
        expected.extend(
            items
                .iter()
                .map(|s| (s.public_key.to_vec(), s.encode_to_vec())),
        );
    }

    let kafka = node.kafka.clone();
    node.shutdown().await;
    let mut got: Vec<(Vec<u8>, Vec<u8>)> = tokio::task::spawn_blocking(move || read_all(&kafka))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            // Receive time and node travel in the value's envelope, not in Kafka headers.
            assert_eq!((r.node.as_str(), r.headers), ("test-node", 0));
            assert!(r.received_ms > 1_600_000_000_000, "{}", r.received_ms);
            (r.key, r.value)
        })
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(
        got.len(),
        expected.len(),
        "exactly once: no loss, no duplicates"
    );
    assert_eq!(got, expected, "byte-identical and keyed by device");
}

/// HTTP/2 without TLS (h2c, prior knowledge) is served on the same port as HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let Some(brokers) = testenv::broker_or_skip("h2c_clients_are_served") else {
        return;
    };
    let node = Node::start(
        "it-ingest-h2c",
        &brokers,
        IngestConfig::for_tests(),
        registry(2),
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let items: Vec<_> = (0..5).map(|i| signed(&device_key(1), 500 + i)).collect();
    let r = h2
        .post(node.url("/v1/readings"))
        .header("content-type", "application/x-protobuf")
        .body(batch(&items))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 5);
    node.shutdown().await;
}
