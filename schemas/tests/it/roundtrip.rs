//! Property tests: random readings survive encode → sign → verify → decode, in both payload formats.

use ed25519_dalek::SigningKey;
use hexpulse_schemas::check::check_item;
use hexpulse_schemas::json::{JsonBatch, JsonSignedReading, to_reading_document};
use hexpulse_schemas::sign;
use hexpulse_schemas::wire::{
    Heartbeat, Kind, Location, Measurement, PayloadFormat, Reading, ReadingBatch, Road, Sensor,
    SignedReading, SpeedTest,
};
use proptest::prelude::*;
use prost::Message;

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (
            0i32..5,
            -130.0f32..0.0,
            proptest::option::of((0.0f32..2000.0, 0.0f32..500.0, 0.0f32..900.0))
        )
            .prop_map(|(radio, signal_dbm, st)| Kind::Heartbeat(Heartbeat {
                radio,
                signal_dbm,
                speed_test: st.map(|(d, u, l)| SpeedTest {
                    download_mbps: d,
                    upload_mbps: u,
                    latency_ms: l
                }),
            })),
        // One measurement per metric (WIRE.md, check order).
        proptest::collection::btree_map(1i32..9, -100.0f64..5000.0, 1..5).prop_map(|ms| {
            Kind::Sensor(Sensor {
                measurements: ms
                    .into_iter()
                    .map(|(metric, value)| Measurement { metric, value })
                    .collect(),
            })
        }),
        (0i32..6, 0.0f32..360.0, 0.0f32..200.0, 0.0f32..1.0).prop_map(|(o, h, s, c)| Kind::Road(
            Road {
                observation: o,
                heading_deg: h,
                speed_kmh: s,
                confidence: c,
            }
        )),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    (
        any::<i64>(),
        // Every valid sequence number (larger ones are `malformed`: `check::MAX_SEQ`).
        0..=hexpulse_schemas::check::MAX_SEQ,
        -90.0f64..90.0,
        -180.0f64..180.0,
        0.0f32..1000.0,
        kind(),
    )
        .prop_map(|(t, seq, lat, lng, acc, kind)| Reading {
            schema_version: 1,
            device_time_ms: t,
            seq,
            location: Some(Location {
                lat,
                lng,
                accuracy_m: acc,
            }),
            kind: Some(kind),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn protobuf_payload_round_trips(r in reading(), seed in any::<[u8; 32]>()) {
        let key = SigningKey::from_bytes(&seed);
        let payload = r.encode_to_vec();
        let item = SignedReading {
            public_key: key.verifying_key().to_bytes().to_vec().into(),
            signature: sign::sign(&key, &payload).to_vec().into(),
            payload: payload.into(),
            format: PayloadFormat::Protobuf as i32,
        };
        // Through the batch envelope and back.
        let batch = ReadingBatch { readings: vec![item.clone()] }.encode_to_vec();
        let back = ReadingBatch::decode(batch.as_slice()).unwrap();
        let decoded = check_item(&back.readings[0]).unwrap();
        prop_assert_eq!(decoded.reading, r);
        prop_assert_eq!(decoded.key, key.verifying_key());
    }

    #[test]
    fn json_payload_round_trips(r in reading(), seed in any::<[u8; 32]>()) {
        let key = SigningKey::from_bytes(&seed);
        let doc = serde_json::to_vec(&to_reading_document(&r)).unwrap();
        let item = SignedReading {
            public_key: key.verifying_key().to_bytes().to_vec().into(),
            signature: sign::sign(&key, &doc).to_vec().into(),
            payload: doc.into(),
            format: PayloadFormat::Json as i32,
        };
        let body = serde_json::to_vec(&JsonBatch { readings: vec![JsonSignedReading::from_signed(&item)] }).unwrap();
        let back: JsonBatch = serde_json::from_slice(&body).unwrap();
        let decoded = check_item(&back.readings[0].to_signed().unwrap()).unwrap();
        prop_assert_eq!(decoded.reading, r);
    }

    #[test]
    fn any_flipped_payload_bit_is_refused(r in reading(), bit in any::<prop::sample::Index>()) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let payload = r.encode_to_vec();
        let sig = sign::sign(&key, &payload);
        let mut tampered = payload.clone();
        let i = bit.index(tampered.len() * 8);
        tampered[i / 8] ^= 1 << (i % 8);
        let item = SignedReading {
            public_key: key.verifying_key().to_bytes().to_vec().into(),
            signature: sig.to_vec().into(),
            payload: tampered.into(),
            format: PayloadFormat::Protobuf as i32,
        };
        prop_assert!(check_item(&item).is_err());
    }
}
