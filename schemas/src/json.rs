//! The JSON form of a batch, for devices that cannot speak protobuf.
//!
//! ```json
//! {"readings": [
//!   {"public_key": "<64 hex chars>", "signature": "<128 hex chars>", "payload": "<base64 of a protobuf Reading>"},
//!   {"public_key": "<64 hex chars>", "signature": "<128 hex chars>", "payload_json": "{\"schema_version\":1,...}"}
//! ]}
//! ```
//!
//! Exactly one of `payload` (standard base64, padded, of the protobuf `Reading` bytes) and
//! `payload_json` (a JSON reading document, as a string) is present. The signature covers the bytes
//! that field carries: the decoded base64 bytes, or the UTF-8 bytes of the `payload_json` string value
//! (after JSON string unescaping). The JSON reading document is described in `schemas/WIRE.md`.
//! Either way ingest forwards a protobuf `SignedReading` whose `payload` holds those same signed bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::wire::{
    self, Heartbeat, Kind, Location, Measurement, Metric, ObservationType, PayloadFormat,
    RadioTech, Reading, Road, Sensor, SignedReading, SpeedTest,
};

/// Body of `POST /v1/readings` with `Content-Type: application/json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonBatch {
    /// The batch's items, in order (verdicts name them by index).
    pub readings: Vec<JsonSignedReading>,
}

/// One signed reading in JSON form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSignedReading {
    /// The device's Ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// The Ed25519 signature of the payload's bytes (with the domain prefix), 128 hex characters.
    pub signature: String,
    /// Standard base64 (padded) of the protobuf `Reading` bytes; or else `payload_json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// A JSON reading document ([`JsonReading`]) as a string, signed as its UTF-8 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<String>,
}

impl JsonSignedReading {
    /// The protobuf envelope carrying the same signed bytes. Errors describe a malformed item.
    pub fn to_signed(&self) -> Result<SignedReading, String> {
        let public_key = hex::decode(&self.public_key).map_err(|e| format!("public_key: {e}"))?;
        let signature = hex::decode(&self.signature).map_err(|e| format!("signature: {e}"))?;
        let (payload, format) = match (&self.payload, &self.payload_json) {
            (Some(b64), None) => (
                STANDARD.decode(b64).map_err(|e| format!("payload: {e}"))?,
                PayloadFormat::Protobuf,
            ),
            (None, Some(doc)) => (doc.as_bytes().to_vec(), PayloadFormat::Json),
            _ => return Err("exactly one of payload and payload_json must be present".into()),
        };
        Ok(SignedReading {
            public_key: public_key.into(),
            payload: payload.into(),
            signature: signature.into(),
            format: format as i32,
        })
    }

    /// The JSON form of a protobuf envelope.
    pub fn from_signed(item: &SignedReading) -> Self {
        let json = item.format == PayloadFormat::Json as i32;
        JsonSignedReading {
            public_key: hex::encode(&item.public_key),
            signature: hex::encode(&item.signature),
            payload: (!json).then(|| STANDARD.encode(&item.payload)),
            payload_json: json.then(|| String::from_utf8_lossy(&item.payload).into_owned()),
        }
    }
}

/// The JSON reading document (`payload_json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JsonReading {
    /// Payload schema version (1).
    pub schema_version: u32,
    /// Device clock, milliseconds since the Unix epoch, UTC.
    pub device_time_ms: i64,
    /// Per-device sequence number, strictly increasing and never repeated, even across reboots.
    pub seq: u64,
    /// Where the reading was taken.
    pub location: JsonLocation,
    /// A hotspot's liveness: exactly one of `heartbeat`, `sensor` and `road` is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<JsonHeartbeat>,
    /// An environmental sensor's measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<JsonSensor>,
    /// A dashcam's observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub road: Option<JsonRoad>,
}

/// A point on the WGS84 ellipsoid with the device's own accuracy estimate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonLocation {
    /// Degrees, -90..90.
    pub lat: f64,
    /// Degrees, -180..180.
    pub lng: f64,
    /// Horizontal accuracy radius in metres (0: unknown).
    #[serde(default)]
    pub accuracy_m: f32,
}

/// A hotspot's liveness.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonHeartbeat {
    /// `wifi`, `lte`, `nr5g`, `lorawan` or `unspecified`.
    pub radio: String,
    /// Received signal strength of the hotspot's own beacon, dBm (e.g. -70).
    pub signal_dbm: f32,
    /// A speed test taken with this heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_test: Option<JsonSpeedTest>,
}

/// A speed test: throughput both ways and the round-trip latency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSpeedTest {
    /// Download throughput, Mbit/s.
    pub download_mbps: f32,
    /// Upload throughput, Mbit/s.
    pub upload_mbps: f32,
    /// Round-trip latency, ms.
    pub latency_ms: f32,
}

/// An environmental sensor reading: one or more metrics measured at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSensor {
    /// The metrics measured.
    pub measurements: Vec<JsonMeasurement>,
}

/// One metric's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonMeasurement {
    /// `pm2_5`, `pm10`, `no2`, `o3`, `co2`, `noise_db`, `temperature_c`, `humidity_pct`.
    pub metric: String,
    /// In the metric's unit: µg/m³ (pm2_5, pm10), ppb (no2, o3), ppm (co2), dB(A), °C, %RH.
    pub value: f64,
}

/// A dashcam's observation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonRoad {
    /// `pothole`, `congestion`, `speed`, `sign`, `construction`.
    pub observation: String,
    /// Degrees clockwise from true north, 0..360.
    pub heading_deg: f32,
    /// Vehicle speed, km/h.
    pub speed_kmh: f32,
    /// Detector confidence, 0..1.
    pub confidence: f32,
}

/// Outcome of parsing a JSON reading document.
#[derive(Debug, PartialEq)]
pub enum JsonReadingError {
    /// Not a valid document.
    Malformed(String),
    /// Valid JSON but no kind this version knows.
    NoKnownKind,
}

/// Short enum names: the protobuf name without its prefix, lower-cased (`RADIO_TECH_WIFI` -> `wifi`).
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

fn from_short<T>(
    name: &str,
    prefix: &str,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<T, JsonReadingError> {
    parse(&format!("{prefix}{}", name.to_ascii_uppercase()))
        .ok_or_else(|| JsonReadingError::Malformed(format!("unknown {what} {name:?}")))
}

/// Parses a JSON reading document into the protobuf `Reading` it stands for.
pub fn parse_reading(bytes: &[u8]) -> Result<Reading, JsonReadingError> {
    let doc: JsonReading =
        serde_json::from_slice(bytes).map_err(|e| JsonReadingError::Malformed(e.to_string()))?;
    let kinds = [
        doc.heartbeat.is_some(),
        doc.sensor.is_some(),
        doc.road.is_some(),
    ];
    let kind = match kinds.iter().filter(|k| **k).count() {
        0 => return Err(JsonReadingError::NoKnownKind),
        1 => {
            if let Some(h) = doc.heartbeat {
                Kind::Heartbeat(Heartbeat {
                    radio: from_short(&h.radio, "RADIO_TECH_", RadioTech::from_str_name, "radio")?
                        as i32,
                    signal_dbm: h.signal_dbm,
                    speed_test: h.speed_test.map(|s| SpeedTest {
                        download_mbps: s.download_mbps,
                        upload_mbps: s.upload_mbps,
                        latency_ms: s.latency_ms,
                    }),
                })
            } else if let Some(s) = doc.sensor {
                let measurements = s
                    .measurements
                    .into_iter()
                    .map(|m| {
                        Ok(Measurement {
                            metric: from_short(
                                &m.metric,
                                "METRIC_",
                                Metric::from_str_name,
                                "metric",
                            )? as i32,
                            value: m.value,
                        })
                    })
                    .collect::<Result<_, JsonReadingError>>()?;
                Kind::Sensor(Sensor { measurements })
            } else if let Some(r) = doc.road {
                Kind::Road(Road {
                    observation: from_short(
                        &r.observation,
                        "OBSERVATION_TYPE_",
                        ObservationType::from_str_name,
                        "observation",
                    )? as i32,
                    heading_deg: r.heading_deg,
                    speed_kmh: r.speed_kmh,
                    confidence: r.confidence,
                })
            } else {
                unreachable!("one kind is set")
            }
        }
        _ => {
            return Err(JsonReadingError::Malformed(
                "more than one kind present".into(),
            ));
        }
    };
    Ok(Reading {
        schema_version: doc.schema_version,
        device_time_ms: doc.device_time_ms,
        seq: doc.seq,
        location: Some(Location {
            lat: doc.location.lat,
            lng: doc.location.lng,
            accuracy_m: doc.location.accuracy_m,
        }),
        kind: Some(kind),
    })
}

/// The JSON reading document for a protobuf `Reading` (used by simulators and the vector generator).
pub fn to_reading_document(r: &Reading) -> JsonReading {
    let loc = r.location.unwrap_or_default();
    let mut doc = JsonReading {
        schema_version: r.schema_version,
        device_time_ms: r.device_time_ms,
        seq: r.seq,
        location: JsonLocation {
            lat: loc.lat,
            lng: loc.lng,
            accuracy_m: loc.accuracy_m,
        },
        heartbeat: None,
        sensor: None,
        road: None,
    };
    match &r.kind {
        Some(Kind::Heartbeat(h)) => {
            doc.heartbeat = Some(JsonHeartbeat {
                radio: short_name(h.radio().as_str_name(), "RADIO_TECH_"),
                signal_dbm: h.signal_dbm,
                speed_test: h.speed_test.map(|s| JsonSpeedTest {
                    download_mbps: s.download_mbps,
                    upload_mbps: s.upload_mbps,
                    latency_ms: s.latency_ms,
                }),
            })
        }
        Some(Kind::Sensor(s)) => {
            doc.sensor = Some(JsonSensor {
                measurements: s
                    .measurements
                    .iter()
                    .map(|m| JsonMeasurement {
                        metric: short_name(m.metric().as_str_name(), "METRIC_"),
                        value: m.value,
                    })
                    .collect(),
            })
        }
        Some(Kind::Road(x)) => {
            doc.road = Some(JsonRoad {
                observation: short_name(x.observation().as_str_name(), "OBSERVATION_TYPE_"),
                heading_deg: x.heading_deg,
                speed_kmh: x.speed_kmh,
                confidence: x.confidence,
            })
        }
        None => {}
    }
    doc
}

/// Metric short name, as used in JSON and in the `sensor` table (`pm2_5`, ...).
pub fn metric_name(m: wire::Metric) -> String {
    short_name(m.as_str_name(), "METRIC_")
}

/// Radio technology short name (`wifi`, ...).
pub fn radio_name(r: wire::RadioTech) -> String {
    short_name(r.as_str_name(), "RADIO_TECH_")
}

/// Observation type short name (`pothole`, ...).
pub fn observation_name(o: wire::ObservationType) -> String {
    short_name(o.as_str_name(), "OBSERVATION_TYPE_")
}
