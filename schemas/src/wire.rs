//! Generated protobuf types (package `hexpulse.v1`) and small helpers around them.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/hexpulse.v1.rs"));
}

pub use v1::{
    BatchAnswer, Heartbeat, IngestResponse, ItemRejection, Location, Measurement, Metric,
    ObservationType, PayloadFormat, RadioTech, Reading, ReadingBatch, Refusal, Road, Sensor,
    SignedReading, SpeedTest, batch_answer, reading::Kind,
};

/// The payload schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// The kind of a reading, as a stable lower-case name (`heartbeat`, `sensor`, `road`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    /// A hotspot's liveness (the `heartbeat` table).
    Heartbeat,
    /// An environmental sensor reading (the `sensor` table).
    Sensor,
    /// A dashcam observation (the `road` table).
    Road,
}

impl KindName {
    /// Every kind, in table order.
    pub const ALL: [KindName; 3] = [KindName::Heartbeat, KindName::Sensor, KindName::Road];

    /// The kind's name, which is also its table's.
    pub const fn as_str(self) -> &'static str {
        match self {
            KindName::Heartbeat => "heartbeat",
            KindName::Sensor => "sensor",
            KindName::Road => "road",
        }
    }

    /// The kind of a reading's `kind` field.
    pub fn of(kind: &Kind) -> KindName {
        match kind {
            Kind::Heartbeat(_) => KindName::Heartbeat,
            Kind::Sensor(_) => KindName::Sensor,
            Kind::Road(_) => KindName::Road,
        }
    }
}

impl std::fmt::Display for KindName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KindName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KindName::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown kind {s:?} (expected heartbeat, sensor or road)"))
    }
}

/// The value of a record on the raw topic: what ingest adds (receive time, node) in front of the
/// device's signed bytes, which follow unchanged (schemas/WIRE.md, "Raw topic records").
///
/// Ingest puts these in the value rather than in Kafka headers: tansu 0.6's SQL engines look up a
/// record's headers without an index, so every header stored makes every fetch slower, and a read
/// from an old offset stopped the broker (ARCHITECTURE.md, tansu behaviours).
///
/// Layout: `E1 01` (magic and version), the receive time (i64, big-endian, ms since the Unix
/// epoch), the node name's length (one byte) and the name (UTF-8), then the `SignedReading` bytes.
///
/// Authenticated layout (ingest with a `[kafka] envelope_key`): `E1 02`, the same fields, then a
/// 32-byte tag, HMAC-SHA256 under the key over every byte before the tag followed by the
/// `SignedReading` bytes. Processors that re-verify signatures and hold the key accept only
/// authenticated envelopes, so a record produced around ingest cannot claim a receive time.
pub mod envelope {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    /// The first two bytes of an enveloped value: a magic byte and the layout's version. (A
    /// `SignedReading` cannot start with them: `E1 01` would be field 28, which it does not have.)
    pub const MAGIC: [u8; 2] = [0xE1, 0x01];
    /// The first two bytes of an authenticated envelope (version 2, with a tag).
    pub const MAGIC_AUTHENTICATED: [u8; 2] = [0xE1, 0x02];
    /// The longest node name an envelope carries (longer names are cut at a character boundary).
    pub const MAX_NODE: usize = 255;
    /// Length of an authenticated envelope's tag.
    pub const TAG_LEN: usize = 32;
    const HEAD: usize = MAGIC.len() + 8 + 1;

    /// The key that ingest tags envelopes with and processors check them with (32 bytes, given as
    /// 64 hex digits). Its `Debug` form never shows it.
    #[derive(Clone, PartialEq, Eq)]
    pub struct EnvelopeKey([u8; 32]);

    impl EnvelopeKey {
        /// A key from 64 hex digits (32 bytes); the error says what is wrong, without the key.
        pub fn from_hex(s: &str) -> Result<EnvelopeKey, String> {
            let bytes =
                hex::decode(s.trim()).map_err(|e| format!("envelope_key: not hex ({e})"))?;
            let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                format!(
                    "envelope_key: {} bytes, expected 32 (64 hex digits)",
                    b.len()
                )
            })?;
            Ok(EnvelopeKey(key))
        }

        fn mac(&self) -> Hmac<Sha256> {
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
        }
    }

    impl std::fmt::Debug for EnvelopeKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("EnvelopeKey(<redacted>)")
        }
    }

    /// A decoded envelope, borrowing from the record's value.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Envelope<'a> {
        /// When ingest received the reading, ms since the Unix epoch.
        pub received_ms: i64,
        /// The ingest node that received it.
        pub node: &'a str,
        /// The device's `SignedReading`, as its protobuf bytes.
        pub signed: &'a [u8],
        /// The tag and the bytes before it, in an authenticated envelope.
        tagged: Option<(&'a [u8], &'a [u8])>,
    }

    impl Envelope<'_> {
        /// Whether the envelope carries a tag (it was written by an ingest that holds a key).
        pub fn is_tagged(&self) -> bool {
            self.tagged.is_some()
        }

        /// Whether the envelope is tagged, and its tag is right under `key`: its receive time and
        /// node were written by an ingest that holds the key, for exactly these signed bytes.
        pub fn authentic(&self, key: &EnvelopeKey) -> bool {
            let Some((head, tag)) = self.tagged else {
                return false;
            };
            let mut mac = key.mac();
            mac.update(head);
            mac.update(self.signed);
            mac.verify_slice(tag).is_ok()
        }
    }

    /// The value of `signed`, received at `received_ms` by `node`; tagged when `key` is given.
    pub fn encode(
        received_ms: i64,
        node: &str,
        signed: &[u8],
        key: Option<&EnvelopeKey>,
    ) -> Vec<u8> {
        let mut cut = node.len().min(MAX_NODE);
        while !node.is_char_boundary(cut) {
            cut -= 1;
        }
        let node = &node.as_bytes()[..cut];
        let mut out = Vec::with_capacity(HEAD + node.len() + TAG_LEN + signed.len());
        out.extend_from_slice(if key.is_some() {
            &MAGIC_AUTHENTICATED
        } else {
            &MAGIC
        });
        out.extend_from_slice(&received_ms.to_be_bytes());
        out.push(node.len() as u8);
        out.extend_from_slice(node);
        if let Some(key) = key {
            let mut mac = key.mac();
            mac.update(&out);
            mac.update(signed);
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        out.extend_from_slice(signed);
        out
    }

    /// The envelope of `value`, or `None` when `value` is not one (a record that did not come
    /// through ingest, or was written before envelopes).
    pub fn decode(value: &[u8]) -> Option<Envelope<'_>> {
        if value.len() < HEAD || (value[..2] != MAGIC && value[..2] != MAGIC_AUTHENTICATED) {
            return None;
        }
        let received_ms = i64::from_be_bytes(value[2..10].try_into().ok()?);
        let n = usize::from(value[10]);
        let node = std::str::from_utf8(value.get(HEAD..HEAD + n)?).ok()?;
        if value[..2] == MAGIC {
            return Some(Envelope {
                received_ms,
                node,
                signed: &value[HEAD + n..],
                tagged: None,
            });
        }
        let body = HEAD + n + TAG_LEN;
        Some(Envelope {
            received_ms,
            node,
            signed: value.get(body..)?,
            tagged: Some((&value[..HEAD + n], &value[HEAD + n..body])),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trip_keeps_the_signed_bytes_exact() {
            let signed = [0x0a, 0x03, 1, 2, 3, 0xff];
            let v = encode(1_700_000_000_123, "ingest-0", &signed, None);
            let e = decode(&v).unwrap();
            assert_eq!(
                (e.received_ms, e.node, e.signed),
                (1_700_000_000_123, "ingest-0", &signed[..])
            );
            assert_eq!(decode(&signed), None);
            assert_eq!(decode(&v[..5]), None);
            let long = "é".repeat(200);
            let e2 = encode(1, &long, b"x", None);
            assert_eq!(decode(&e2).unwrap().node.len(), 254);
        }

        #[test]
        fn a_tag_binds_receive_time_node_and_signed_bytes_to_the_key() {
            let key = EnvelopeKey::from_hex(&"ab".repeat(32)).unwrap();
            let other = EnvelopeKey::from_hex(&"cd".repeat(32)).unwrap();
            let signed = [0x0a, 0x03, 1, 2, 3];
            let v = encode(1_700_000_000_123, "ingest-0", &signed, Some(&key));
            let e = decode(&v).unwrap();
            assert_eq!(
                (e.received_ms, e.node, e.signed),
                (1_700_000_000_123, "ingest-0", &signed[..])
            );
            assert!(e.is_tagged() && e.authentic(&key));
            assert!(!e.authentic(&other), "another key");
            assert!(
                !decode(&encode(1, "n", &signed, None))
                    .unwrap()
                    .authentic(&key)
            );
            // Every byte matters: a changed receive time, node, tag or signed byte fails.
            for i in 2..v.len() {
                let mut forged = v.clone();
                forged[i] ^= 0x01;
                assert!(
                    decode(&forged).is_none_or(|f| !f.authentic(&key)),
                    "byte {i} changed"
                );
            }
            assert!(decode(&v[..20]).is_none_or(|f| !f.authentic(&key)));
            assert!(EnvelopeKey::from_hex("abcd").is_err());
            assert!(!format!("{key:?}").contains("ab"));
        }
    }
}

/// The raw topic's partition of a record keyed by a device's `public_key`, among `partitions`:
/// CRC-32 (IEEE) of the key, modulo the count. This is librdkafka's `consistent_random`
/// partitioner for a non-empty key, which ingest's producer pins; processors that re-verify
/// signatures reject a record found in another partition, so that a copy of a device's record in
/// another partition cannot slip past the partition's duplicate check.
pub fn partition_of(public_key: &[u8], partitions: i32) -> i32 {
    let n = partitions.max(1) as u32;
    (crc32fast::hash(public_key) % n) as i32
}

#[cfg(test)]
mod partition_tests {
    use super::partition_of;

    /// librdkafka's `rd_crc32` of "123456789" is the CRC-32 check value 0xCBF43926.
    #[test]
    fn partition_of_is_crc32_modulo_the_count() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(partition_of(b"123456789", 7), (0xCBF4_3926u32 % 7) as i32);
        assert_eq!(partition_of(b"x", 1), 0);
        assert_eq!(partition_of(b"x", 0), 0);
    }
}
