//! Every kind of bad input gets its specific status or reason code, and none of it reaches Kafka.

use hexpulse_ingest::IngestConfig;
use hexpulse_schemas::sign;
use hexpulse_testkit::testenv;
use prost::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_answers_and_never_reaches_kafka() {
    let Some(brokers) = testenv::broker_or_skip("bad_input_gets_specific_answers") else {
        return;
    };
    let mut cfg = IngestConfig::for_tests();
    cfg.max_items = 20;
    cfg.max_body_bytes = 64 << 10;
    cfg.max_decompressed_bytes = 256 << 10;
    let node = Node::start("it-ingest-answers", &brokers, cfg, registry(3)).await;

    // A mixed batch: one good item; the rest each bad in one way.
    let good = signed(&device_key(0), 1);
    let mut bad_sig = signed(&device_key(0), 2);
    let mut sig = bad_sig.signature.to_vec();
    sig[10] ^= 0xff;
    bad_sig.signature = sig.into();
    let mut other_key = signed(&device_key(1), 3);
    other_key.signature = sign::sign(&device_key(2), &other_key.payload)
        .to_vec()
        .into();
    let unknown = signed(&device_key(77), 4);
    let mut truncated = signed(&device_key(0), 5);
    truncated.payload = truncated.payload.slice(..truncated.payload.len() - 2);
    let (status, body, _) = node
        .post(
            "application/x-protobuf",
            batch(&[good.clone(), bad_sig, other_key, unknown.clone(), truncated]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(
        rejections(&body),
        vec![
            (1, "bad_signature".into()),
            (2, "bad_signature".into()),
            (3, "unknown_device".into()),
            (4, "malformed".into())
        ]
    );

    // A batch entirely from unknown devices: 401.
    let (status, body, _) = node
        .post(
            "application/x-protobuf",
            batch(&[unknown.clone(), signed(&device_key(78), 1)]),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unknown_device");

    // Undecodable bodies: 400.
    let (status, body, _) = node
        .post("application/x-protobuf", vec![0x0a, 0xff, 0xff, 0x01, 0x02])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("undecodable_body")),
        "{body}"
    );
    let (status, body, _) = node
        .post("application/json", b"{\"readings\": [".to_vec())
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("undecodable_body")),
        "{body}"
    );

    // Wrong content type: 415.
    let (status, body, _) = node
        .post("text/plain", batch(std::slice::from_ref(&good)))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{body}"
    );

    // Oversize body: 413.
    let (status, body, _) = node
        .post("application/x-protobuf", vec![0u8; 100 << 10])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );

    // Zip bomb: small on the wire, huge inflated: 413.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut e, &vec![0u8; 50 << 20]).unwrap();
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 64 << 10, "bomb is {} bytes", bomb.len());
    let r = node
        .http
        .post(node.url("/v1/readings"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Over the item limit: 413.
    let many: Vec<_> = (0..21).map(|i| signed(&device_key(0), 100 + i)).collect();
    let (status, body, _) = node.post("application/x-protobuf", batch(&many)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit is 20"),
        "{body}"
    );

    // Only the one good item is in Kafka.
    let kafka = node.kafka.clone();
    node.shutdown().await;
    let got = tokio::task::spawn_blocking(move || read_all(&kafka))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "only the good item reached Kafka");
    assert_eq!(got[0].value, good.encode_to_vec());
}

/// #20.14 and #20.15: a NaN or infinite number anywhere in a reading, more measurements than
/// metrics, or a metric measured twice is `malformed` at ingest (and in the processors, which run
/// the same check), so it can neither earn a reward tier nor flood the sensor table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_numbers_and_measurement_floods_are_malformed() {
    use hexpulse_schemas::wire::{Kind, Measurement, Sensor, SpeedTest};
    let Some(brokers) = testenv::broker_or_skip("non_finite_numbers") else {
        return;
    };
    let node = Node::start(
        "it-ingest-finite",
        &brokers,
        IngestConfig::for_tests(),
        registry(1),
    )
    .await;
    let key = device_key(0);
    let mut nan_speed = reading(1);
    if let Some(Kind::Heartbeat(h)) = &mut nan_speed.kind {
        h.speed_test = Some(SpeedTest {
            download_mbps: f32::NAN,
            upload_mbps: 10.0,
            latency_ms: 20.0,
        });
    }
    let mut inf_accuracy = reading(2);
    inf_accuracy.location.as_mut().unwrap().accuracy_m = f32::INFINITY;
    let sensor = |n: usize, same_metric: bool| {
        let mut r = reading(3);
        r.kind = Some(Kind::Sensor(Sensor {
            measurements: (0..n)
                .map(|i| Measurement {
                    metric: if same_metric { 1 } else { 1 + (i as i32 % 8) },
                    value: 10.0,
                })
                .collect(),
        }));
        r
    };
    let mut huge_seq = reading(4);
    huge_seq.seq = 1 << 63;
    let items = [
        sign_reading(&key, &nan_speed),
        sign_reading(&key, &inf_accuracy),
        sign_reading(&key, &sensor(5_000, false)),
        sign_reading(&key, &sensor(2, true)),
        sign_reading(&key, &huge_seq),
        signed(&key, 9),
    ];
    let (status, body, _) = node.post("application/x-protobuf", batch(&items)).await;
    assert_eq!(status, 200, "{body}");
    let got = rejections(&body);
    let want: Vec<(u64, String)> = (0..5).map(|i| (i, "malformed".to_string())).collect();
    assert_eq!(got, want, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    node.shutdown().await;
}
