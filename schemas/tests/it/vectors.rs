//! `schemas/testdata/vectors.json`: every vector is checked against its expected verdict, and the file
//! is what the generator below produces (regenerate with `HEXPULSE_UPDATE_VECTORS=1 cargo test -p
//! hexpulse-schemas --test it vectors`).

use std::path::PathBuf;

use ed25519_dalek::{Signer, SigningKey};
use hexpulse_schemas::check::check_item;
use hexpulse_schemas::json::{JsonSignedReading, to_reading_document};
use hexpulse_schemas::sign::{self, DOMAIN_PREFIX};
use hexpulse_schemas::wire::{
    Heartbeat, Kind, Location, Measurement, Metric, ObservationType, PayloadFormat, RadioTech,
    Reading, Road, Sensor, SignedReading, SpeedTest,
};
use prost::Message;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct VectorFile {
    format: String,
    domain_prefix_hex: String,
    vectors: Vec<Vector>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Vector {
    name: String,
    description: String,
    /// RFC 8032 secret key (seed) of the signer, when there is one.
    secret_seed: Option<String>,
    public_key: String,
    payload_format: String,
    payload: String,
    signature: String,
    /// The reading the payload stands for, as a JSON reading document, when it decodes.
    reading: Option<serde_json::Value>,
    /// The same item in the JSON batch form.
    json_item: JsonSignedReading,
    /// `valid` or a rejection reason code.
    expected: String,
}

fn file_path() -> PathBuf {
    // At run time (cargo and nextest set it): a compiled-in path would follow a reused binary to
    // another checkout.
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("testdata/vectors.json")
}

fn seed(i: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (j, b) in s.iter_mut().enumerate() {
        *b = i.wrapping_mul(31).wrapping_add(j as u8);
    }
    s
}

fn base_reading(seq: u64, kind: Kind) -> Reading {
    Reading {
        schema_version: 1,
        device_time_ms: 1_767_225_600_000 + seq as i64 * 60_000, // 2026-01-01T00:00:00Z + seq minutes
        seq,
        location: Some(Location {
            lat: 52.520008,
            lng: 13.404954,
            accuracy_m: 5.0,
        }),
        kind: Some(kind),
    }
}

fn heartbeat(speed: bool) -> Kind {
    Kind::Heartbeat(Heartbeat {
        radio: RadioTech::Wifi as i32,
        signal_dbm: -67.5,
        speed_test: speed.then_some(SpeedTest {
            download_mbps: 120.5,
            upload_mbps: 22.25,
            latency_ms: 18.0,
        }),
    })
}

struct Case {
    name: &'static str,
    description: &'static str,
    seed: Option<[u8; 32]>,
    public_key: Vec<u8>,
    payload: Vec<u8>,
    format: PayloadFormat,
    signature: Vec<u8>,
    expected: &'static str,
}

fn signed(
    name: &'static str,
    description: &'static str,
    key_seed: u8,
    payload: Vec<u8>,
    format: PayloadFormat,
) -> Case {
    let s = seed(key_seed);
    let key = SigningKey::from_bytes(&s);
    Case {
        name,
        description,
        seed: Some(s),
        public_key: key.verifying_key().to_bytes().to_vec(),
        signature: sign::sign(&key, &payload).to_vec(),
        payload,
        format,
        expected: "valid",
    }
}

fn build() -> VectorFile {
    let hb = base_reading(1, heartbeat(false)).encode_to_vec();
    let mut cases = vec![
        signed(
            "valid_heartbeat",
            "A Wi-Fi heartbeat without speed test.",
            1,
            hb.clone(),
            PayloadFormat::Protobuf,
        ),
        signed(
            "valid_heartbeat_speed_test",
            "A heartbeat carrying a speed test.",
            1,
            base_reading(2, heartbeat(true)).encode_to_vec(),
            PayloadFormat::Protobuf,
        ),
        signed(
            "valid_sensor",
            "An air-quality sensor reading with three metrics.",
            2,
            base_reading(
                7,
                Kind::Sensor(Sensor {
                    measurements: vec![
                        Measurement {
                            metric: Metric::Pm25 as i32,
                            value: 12.5,
                        },
                        Measurement {
                            metric: Metric::Pm10 as i32,
                            value: 20.0,
                        },
                        Measurement {
                            metric: Metric::TemperatureC as i32,
                            value: 21.25,
                        },
                    ],
                }),
            )
            .encode_to_vec(),
            PayloadFormat::Protobuf,
        ),
        signed(
            "valid_road",
            "A dashcam pothole observation.",
            3,
            base_reading(
                9,
                Kind::Road(Road {
                    observation: ObservationType::Pothole as i32,
                    heading_deg: 271.5,
                    speed_kmh: 42.0,
                    confidence: 0.875,
                }),
            )
            .encode_to_vec(),
            PayloadFormat::Protobuf,
        ),
    ];
    let json_doc = serde_json::to_string(&to_reading_document(&base_reading(
        4,
        Kind::Sensor(Sensor {
            measurements: vec![Measurement {
                metric: Metric::NoiseDb as i32,
                value: 54.0,
            }],
        }),
    )))
    .unwrap();
    cases.push(signed(
        "valid_sensor_json_payload",
        "A noise reading whose payload is a JSON reading document (format json); the signature covers its UTF-8 bytes.",
        2,
        json_doc.clone().into_bytes(),
        PayloadFormat::Json,
    ));

    let mut c = signed(
        "bad_signature",
        "Valid heartbeat with the last signature byte flipped.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.signature[63] ^= 0x01;
    c.expected = "bad_signature";
    cases.push(c);

    let mut c = signed(
        "signature_by_other_key",
        "Signed by device 2's key, sent with device 1's public key.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.signature = sign::sign(&SigningKey::from_bytes(&seed(2)), &hb).to_vec();
    c.expected = "bad_signature";
    cases.push(c);

    let mut c = signed(
        "truncated_payload",
        "Signed heartbeat whose payload lost its last 3 bytes in transit.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.payload.truncate(c.payload.len() - 3);
    c.expected = "malformed";
    cases.push(c);

    let mut c = signed(
        "signature_over_reencoded_payload",
        "The payload decodes to the same reading, but is a different encoding (schema_version repeated at the end) than the bytes that were signed.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.payload.extend_from_slice(&[0x08, 0x01]);
    c.expected = "bad_signature";
    cases.push(c);

    let mut c = signed(
        "signature_without_domain_prefix",
        "Ed25519 over the payload alone, without the domain prefix.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.signature = SigningKey::from_bytes(&seed(1))
        .sign(&hb)
        .to_bytes()
        .to_vec();
    c.expected = "bad_signature";
    cases.push(c);

    let mut identity = vec![0u8; 32];
    identity[0] = 1;
    let mut c = signed(
        "weak_public_key",
        "Public key is the identity point (small order).",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.public_key = identity;
    c.seed = None;
    c.expected = "weak_key";
    cases.push(c);

    let not_a_point = (0u8..=255)
        .map(|i| [i; 32])
        .find(|k| sign::parse_public_key(k) == Err(sign::KeyError::NotAPoint))
        .expect("some constant 32-byte string is not a curve point");
    let mut c = signed(
        "public_key_not_on_curve",
        "Public key bytes that do not decode to a curve point.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.public_key = not_a_point.to_vec();
    c.seed = None;
    c.expected = "weak_key";
    cases.push(c);

    // Field 13 (a kind from the future) as an empty message, instead of heartbeat/sensor/road.
    let mut unknown = Reading {
        kind: None,
        ..base_reading(5, heartbeat(false))
    }
    .encode_to_vec();
    unknown.extend_from_slice(&[0x6a, 0x00]);
    let mut c = signed(
        "unknown_kind",
        "A properly signed payload whose kind (field 13) this version does not know.",
        1,
        unknown,
        PayloadFormat::Protobuf,
    );
    c.expected = "unsupported_kind_or_version";
    cases.push(c);

    let mut c = signed(
        "unsupported_schema_version",
        "A properly signed heartbeat with schema_version 2.",
        1,
        Reading {
            schema_version: 2,
            ..base_reading(6, heartbeat(false))
        }
        .encode_to_vec(),
        PayloadFormat::Protobuf,
    );
    c.expected = "unsupported_kind_or_version";
    cases.push(c);

    let mut c = signed(
        "short_signature",
        "A 63-byte signature.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.signature.pop();
    c.expected = "malformed";
    cases.push(c);

    let mut c = signed(
        "short_public_key",
        "A 31-byte public key.",
        1,
        hb.clone(),
        PayloadFormat::Protobuf,
    );
    c.public_key.pop();
    c.expected = "malformed";
    cases.push(c);

    let mut c = signed(
        "json_payload_reformatted",
        "A JSON payload re-serialised with a space after the first colon after signing.",
        2,
        json_doc.into_bytes(),
        PayloadFormat::Json,
    );
    let text = String::from_utf8(c.payload.clone())
        .unwrap()
        .replacen(':', ": ", 1);
    c.payload = text.into_bytes();
    c.expected = "bad_signature";
    cases.push(c);

    let vectors = cases
        .into_iter()
        .map(|c| {
            let item = SignedReading {
                public_key: c.public_key.clone().into(),
                payload: c.payload.clone().into(),
                signature: c.signature.clone().into(),
                format: c.format as i32,
            };
            let reading = hexpulse_schemas::check::decode_payload(&item)
                .ok()
                .filter(|r| r.kind.is_some())
                .map(|r| serde_json::to_value(to_reading_document(&r)).unwrap());
            Vector {
                name: c.name.into(),
                description: c.description.into(),
                secret_seed: c.seed.map(hex::encode),
                public_key: hex::encode(&c.public_key),
                payload_format: if c.format == PayloadFormat::Json {
                    "json"
                } else {
                    "protobuf"
                }
                .into(),
                payload: hex::encode(&c.payload),
                signature: hex::encode(&c.signature),
                reading,
                json_item: JsonSignedReading::from_signed(&item),
                expected: c.expected.into(),
            }
        })
        .collect();
    VectorFile {
        format: "hexpulse-wire-vectors/1".into(),
        domain_prefix_hex: hex::encode(DOMAIN_PREFIX),
        vectors,
    }
}

fn load() -> VectorFile {
    let text = std::fs::read_to_string(file_path()).expect("read testdata/vectors.json");
    serde_json::from_str(&text).expect("parse testdata/vectors.json")
}

fn item_of(v: &Vector) -> SignedReading {
    SignedReading {
        public_key: hex::decode(&v.public_key).unwrap().into(),
        payload: hex::decode(&v.payload).unwrap().into(),
        signature: hex::decode(&v.signature).unwrap().into(),
        format: match v.payload_format.as_str() {
            "protobuf" => PayloadFormat::Protobuf as i32,
            "json" => PayloadFormat::Json as i32,
            other => panic!("{}: unknown payload_format {other}", v.name),
        },
    }
}

fn verdict(item: &SignedReading) -> String {
    match check_item(item) {
        Ok(_) => "valid".into(),
        Err(r) => r.reason.as_str().into(),
    }
}

#[test]
fn vectors_file_is_what_the_generator_makes() {
    let generated = build();
    if std::env::var_os("HEXPULSE_UPDATE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(file_path(), text).unwrap();
    }
    assert_eq!(
        load(),
        generated,
        "regenerate with HEXPULSE_UPDATE_VECTORS=1"
    );
}

#[test]
fn every_vector_has_its_expected_verdict() {
    let file = load();
    assert!(file.vectors.len() >= 12, "at least 12 vectors");
    assert_eq!(file.domain_prefix_hex, hex::encode(DOMAIN_PREFIX));
    for v in &file.vectors {
        assert_eq!(verdict(&item_of(v)), v.expected, "vector {}", v.name);
        // The JSON form carries the same signed bytes, so it has the same verdict.
        let from_json = v
            .json_item
            .to_signed()
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(
            from_json,
            item_of(v),
            "vector {}: JSON form differs",
            v.name
        );
        if let Some(seed) = &v.secret_seed {
            let seed: [u8; 32] = hex::decode(seed).unwrap().try_into().unwrap();
            let key = SigningKey::from_bytes(&seed);
            if v.expected == "valid" {
                assert_eq!(
                    hex::encode(key.verifying_key().as_bytes()),
                    v.public_key,
                    "vector {}",
                    v.name
                );
            }
        }
    }
    // Each kind has a valid case, and each stateless reason appears.
    for needed in [
        "malformed",
        "unsupported_kind_or_version",
        "weak_key",
        "bad_signature",
    ] {
        assert!(
            file.vectors.iter().any(|v| v.expected == needed),
            "no vector for {needed}"
        );
    }
    for kind in ["heartbeat", "sensor", "road"] {
        assert!(
            file.vectors.iter().any(|v| v.expected == "valid"
                && v.reading.as_ref().is_some_and(|r| r.get(kind).is_some())),
            "no valid {kind} vector"
        );
    }
}
