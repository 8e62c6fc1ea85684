//! Generated protobuf types (package `hexpulse.v1`) and small helpers around them.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/hexpulse.v1.rs"));
}

pub use v1::{
    Heartbeat, IngestResponse, ItemRejection, Location, Measurement, Metric, ObservationType,
    PayloadFormat, RadioTech, Reading, ReadingBatch, Road, Sensor, SignedReading, SpeedTest,
    reading::Kind,
};

/// The payload schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// The kind of a reading, as a stable lower-case name (`heartbeat`, `sensor`, `road`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    Heartbeat,
    Sensor,
    Road,
}

impl KindName {
    pub const ALL: [KindName; 3] = [KindName::Heartbeat, KindName::Sensor, KindName::Road];

    pub const fn as_str(self) -> &'static str {
        match self {
            KindName::Heartbeat => "heartbeat",
            KindName::Sensor => "sensor",
            KindName::Road => "road",
        }
    }

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
pub mod envelope {
    /// The first two bytes of an enveloped value: a magic byte and the layout's version. (A
    /// `SignedReading` cannot start with them: `E1 01` would be field 28, which it does not have.)
    pub const MAGIC: [u8; 2] = [0xE1, 0x01];
    /// The longest node name an envelope carries (longer names are cut at a character boundary).
    pub const MAX_NODE: usize = 255;
    const HEAD: usize = MAGIC.len() + 8 + 1;

    /// A decoded envelope, borrowing from the record's value.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Envelope<'a> {
        pub received_ms: i64,
        pub node: &'a str,
        pub signed: &'a [u8],
    }

    /// The value of `signed`, received at `received_ms` by `node`.
    pub fn encode(received_ms: i64, node: &str, signed: &[u8]) -> Vec<u8> {
        let mut cut = node.len().min(MAX_NODE);
        while !node.is_char_boundary(cut) {
            cut -= 1;
        }
        let node = &node.as_bytes()[..cut];
        let mut out = Vec::with_capacity(HEAD + node.len() + signed.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&received_ms.to_be_bytes());
        out.push(node.len() as u8);
        out.extend_from_slice(node);
        out.extend_from_slice(signed);
        out
    }

    /// The envelope of `value`, or `None` when `value` is not one (a record that did not come
    /// through ingest, or was written before envelopes).
    pub fn decode(value: &[u8]) -> Option<Envelope<'_>> {
        if value.len() < HEAD || value[..2] != MAGIC {
            return None;
        }
        let received_ms = i64::from_be_bytes(value[2..10].try_into().ok()?);
        let n = usize::from(value[10]);
        let node = std::str::from_utf8(value.get(HEAD..HEAD + n)?).ok()?;
        Some(Envelope {
            received_ms,
            node,
            signed: &value[HEAD + n..],
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trip_keeps_the_signed_bytes_exact() {
            let signed = [0x0a, 0x03, 1, 2, 3, 0xff];
            let v = encode(1_700_000_000_123, "ingest-0", &signed);
            let e = decode(&v).unwrap();
            assert_eq!(
                (e.received_ms, e.node, e.signed),
                (1_700_000_000_123, "ingest-0", &signed[..])
            );
            assert_eq!(decode(&signed), None);
            assert_eq!(decode(&v[..5]), None);
            let long = "é".repeat(200);
            let e2 = encode(1, &long, b"x");
            assert_eq!(decode(&e2).unwrap().node.len(), 254);
        }
    }
}
