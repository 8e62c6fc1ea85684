//! The rejection reasons shared by every stage, with stable string codes.
//!
//! Codes are part of the public contract (HTTP answers, the `rejected` table, metrics labels). Never
//! rename one; add new variants at the end.

use serde::{Deserialize, Serialize};

/// Why an item was refused. `as_str` gives the stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The item (envelope or payload) could not be decoded, or a field has the wrong length.
    Malformed,
    /// No kind set, a kind this version does not know, or an unsupported schema version.
    UnsupportedKindOrVersion,
    /// The public key is not in the device registry (at ingest or, if it changed since, later).
    UnknownDevice,
    /// The device is registered with another kind than the reading carries.
    KindMismatch,
    /// The public key is not a valid point, or is of small order.
    WeakKey,
    /// The Ed25519 signature does not verify over the domain prefix and the payload as sent.
    BadSignature,
    /// Device time beyond the allowed clock skew.
    FutureTimestamp,
    /// Older than the allowed lateness for its epoch, or its epoch is already sealed.
    Late,
    /// Same device and sequence number, or an identical signature, already seen.
    Duplicate,
    /// Latitude/longitude out of range, not finite, or null island.
    LocationInvalid,
    /// A heartbeat or sensor reading too far from the device's asserted location.
    TooFarFromAsserted,
    /// The reading and its neighbours in device time imply a speed above the kind's limit.
    ImpossibleSpeed,
    /// A sensor metric outside its physical range.
    ValueOutOfRange,
    /// More readings per device per interval than allowed.
    RateExceeded,
}

impl RejectReason {
    /// Every reason, in the order REASONS.md lists them.
    pub const ALL: [RejectReason; 14] = [
        RejectReason::Malformed,
        RejectReason::UnsupportedKindOrVersion,
        RejectReason::UnknownDevice,
        RejectReason::KindMismatch,
        RejectReason::WeakKey,
        RejectReason::BadSignature,
        RejectReason::FutureTimestamp,
        RejectReason::Late,
        RejectReason::Duplicate,
        RejectReason::LocationInvalid,
        RejectReason::TooFarFromAsserted,
        RejectReason::ImpossibleSpeed,
        RejectReason::ValueOutOfRange,
        RejectReason::RateExceeded,
    ];

    /// The stable string code.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnsupportedKindOrVersion => "unsupported_kind_or_version",
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::KindMismatch => "kind_mismatch",
            RejectReason::WeakKey => "weak_key",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::Late => "late",
            RejectReason::Duplicate => "duplicate",
            RejectReason::LocationInvalid => "location_invalid",
            RejectReason::TooFarFromAsserted => "too_far_from_asserted",
            RejectReason::ImpossibleSpeed => "impossible_speed",
            RejectReason::ValueOutOfRange => "value_out_of_range",
            RejectReason::RateExceeded => "rate_exceeded",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RejectReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RejectReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown rejection reason code {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_serde() {
        for r in RejectReason::ALL {
            assert_eq!(r.as_str().parse::<RejectReason>().unwrap(), r);
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
    }
}
