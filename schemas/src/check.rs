//! Stateless checks of one `SignedReading`, shared by ingest, processors and the test vectors.
//!
//! Order (each step only runs if the previous passed):
//! 1. envelope: key is 32 bytes, signature 64 bytes — else `malformed`;
//! 2. payload decodes in its declared format, `seq` is below 2^63, its numbers are finite, and a
//!    sensor reading has at most [`MAX_MEASUREMENTS`], one per metric ([`shape_problem`]) — else
//!    `malformed`;
//! 3. schema version is supported and a known kind is set — else `unsupported_kind_or_version`;
//! 4. public key is a valid point and not of small order — else `weak_key`;
//! 5. (stateful, done by the caller: device known, registered kind matches);
//! 6. signature verifies over `DOMAIN_PREFIX || payload` — else `bad_signature`.
//!
//! Steps 1–4 are [`decode_item`]; step 6 is [`crate::sign::verify`] or [`crate::sign::verify_batch`].

use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;

use crate::json::{self, JsonReadingError};
use crate::reasons::RejectReason;
use crate::sign::{self, PUBLIC_KEY_LEN};
use crate::wire::{KindName, PayloadFormat, Reading, SCHEMA_VERSION, SignedReading};

/// An item refused by a check, with a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The stable reason code (REASONS.md).
    pub reason: RejectReason,
    /// What exactly was wrong, for people.
    pub message: String,
}

impl Rejection {
    /// A rejection for `reason`, saying `message`.
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// An item that passed steps 1–4: decoded, of a known kind, with a usable key.
#[derive(Debug, Clone)]
pub struct DecodedItem {
    /// The device's public key, checked to be a usable (not weak) Ed25519 point.
    pub key: VerifyingKey,
    /// The signature over the payload's bytes, not verified yet.
    pub signature: Signature,
    /// The decoded payload.
    pub reading: Reading,
    /// The reading's kind.
    pub kind: KindName,
}

/// Decodes the payload of `item` in its declared format.
pub fn decode_payload(item: &SignedReading) -> Result<Reading, Rejection> {
    match PayloadFormat::try_from(item.format) {
        Ok(PayloadFormat::Protobuf) => Reading::decode(item.payload.as_ref())
            .map_err(|e| Rejection::new(RejectReason::Malformed, format!("payload: {e}"))),
        Ok(PayloadFormat::Json) => json::parse_reading(&item.payload).or_else(|e| match e {
            JsonReadingError::Malformed(m) => Err(Rejection::new(
                RejectReason::Malformed,
                format!("payload_json: {m}"),
            )),
            // Reported by the kind check below, like a protobuf payload without a known kind.
            JsonReadingError::NoKnownKind => Ok(Reading {
                schema_version: 0,
                kind: None,
                ..Default::default()
            }),
        }),
        Err(_) => Err(Rejection::new(
            RejectReason::UnsupportedKindOrVersion,
            format!("unknown payload format {}", item.format),
        )),
    }
}

/// Steps 1–3 of the module docs: what decoding yields before the key is looked at.
#[derive(Debug, Clone)]
pub struct DecodedEnvelope {
    /// The signature over the payload's bytes, not verified yet.
    pub signature: Signature,
    /// The decoded payload.
    pub reading: Reading,
    /// The reading's kind.
    pub kind: KindName,
}

/// Steps 1–4 of the module docs.
pub fn decode_item(item: &SignedReading) -> Result<DecodedItem, Rejection> {
    let DecodedEnvelope {
        signature,
        reading,
        kind,
    } = decode_envelope(item)?;
    let key = parse_key(item)?;
    Ok(DecodedItem {
        key,
        signature,
        reading,
        kind,
    })
}

/// Step 4: the public key as a curve point of large order. Decompressing a key costs about a fifth of
/// a verification, so services that know the device take its parsed key from the registry instead.
pub fn parse_key(item: &SignedReading) -> Result<VerifyingKey, Rejection> {
    sign::parse_public_key(&item.public_key)
        .map_err(|e| Rejection::new(RejectReason::WeakKey, e.to_string()))
}

/// The most measurements one sensor reading may carry (one per metric, and there are fewer metrics).
pub const MAX_MEASUREMENTS: usize = 16;

/// The largest sequence number (2^63 - 1): Delta tables have no unsigned integers, so every
/// outside reader reads `seq` as a signed 64-bit `long`.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Why a decoded reading's `seq`, numbers or measurements are malformed, if they are: every
/// number must be finite (a NaN or infinity would pass range checks and poison averages and reward
/// tiers), a sensor reading carries at most [`MAX_MEASUREMENTS`], at most one per metric, and `seq`
/// is at most [`MAX_SEQ`].
pub fn shape_problem(r: &Reading) -> Option<String> {
    use crate::wire::Kind;
    if r.seq > MAX_SEQ {
        return Some(format!(
            "seq {} is above {MAX_SEQ}: the lake stores it as a signed 64-bit integer",
            r.seq
        ));
    }
    let mut numbers: Vec<(&str, f64)> = Vec::new();
    if let Some(l) = &r.location {
        numbers.extend([
            ("location.lat", l.lat),
            ("location.lng", l.lng),
            ("location.accuracy_m", f64::from(l.accuracy_m)),
        ]);
    }
    match &r.kind {
        Some(Kind::Heartbeat(h)) => {
            numbers.push(("heartbeat.signal_dbm", f64::from(h.signal_dbm)));
            if let Some(t) = &h.speed_test {
                numbers.extend([
                    ("speed_test.download_mbps", f64::from(t.download_mbps)),
                    ("speed_test.upload_mbps", f64::from(t.upload_mbps)),
                    ("speed_test.latency_ms", f64::from(t.latency_ms)),
                ]);
            }
        }
        Some(Kind::Sensor(s)) => {
            if s.measurements.len() > MAX_MEASUREMENTS {
                return Some(format!(
                    "{} measurements in one reading; at most {MAX_MEASUREMENTS}",
                    s.measurements.len()
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for m in &s.measurements {
                if !seen.insert(m.metric) {
                    return Some(format!("metric {} measured twice in one reading", m.metric));
                }
                numbers.push(("measurement.value", m.value));
            }
        }
        Some(Kind::Road(d)) => numbers.extend([
            ("road.heading_deg", f64::from(d.heading_deg)),
            ("road.speed_kmh", f64::from(d.speed_kmh)),
            ("road.confidence", f64::from(d.confidence)),
        ]),
        None => {}
    }
    numbers
        .into_iter()
        .find(|(_, v)| !v.is_finite())
        .map(|(field, v)| format!("{field} is {v}; numbers must be finite"))
}

/// Steps 1–3 of the module docs.
pub fn decode_envelope(item: &SignedReading) -> Result<DecodedEnvelope, Rejection> {
    if item.public_key.len() != PUBLIC_KEY_LEN {
        return Err(Rejection::new(
            RejectReason::Malformed,
            format!(
                "public_key must be {PUBLIC_KEY_LEN} bytes, got {}",
                item.public_key.len()
            ),
        ));
    }
    let signature = sign::parse_signature(&item.signature)
        .map_err(|e| Rejection::new(RejectReason::Malformed, e.to_string()))?;
    let reading = decode_payload(item)?;
    if let Some(problem) = shape_problem(&reading) {
        return Err(Rejection::new(RejectReason::Malformed, problem));
    }
    let Some(kind) = reading.kind.as_ref().map(KindName::of) else {
        return Err(Rejection::new(
            RejectReason::UnsupportedKindOrVersion,
            "payload carries no kind this version knows (heartbeat, sensor, road)",
        ));
    };
    if reading.schema_version != SCHEMA_VERSION {
        return Err(Rejection::new(
            RejectReason::UnsupportedKindOrVersion,
            format!(
                "schema_version {} is not supported (expected {SCHEMA_VERSION})",
                reading.schema_version
            ),
        ));
    }
    Ok(DecodedEnvelope {
        signature,
        reading,
        kind,
    })
}

/// All stateless checks of one item, with a single signature verification.
pub fn check_item(item: &SignedReading) -> Result<DecodedItem, Rejection> {
    let decoded = decode_item(item)?;
    sign::verify(&decoded.key, &item.payload, &decoded.signature)
        .map_err(|e| Rejection::new(RejectReason::BadSignature, e.to_string()))?;
    Ok(decoded)
}
