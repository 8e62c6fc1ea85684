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

/// Kafka record headers set by ingest on every raw reading.
pub mod headers {
    /// Receive time at ingest, milliseconds since the Unix epoch, as decimal ASCII.
    pub const RECEIVED_MS: &str = "hexpulse-received-ms";
    /// Name of the ingest node that accepted the reading.
    pub const INGEST_NODE: &str = "hexpulse-ingest-node";
}
