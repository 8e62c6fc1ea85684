//! The versioned validation rules file (`config/rules.toml` is the default, compiled in).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use hexpulse_rewards::points::{RewardRules, SpeedTierRules, TrustRules};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The default rules, compiled in.
pub const DEFAULT_RULES: &str = include_str!("../../config/rules.toml");

/// The validation and reward rules (`config/rules.toml` documents each threshold).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Stamped on every lake row and sealed epoch.
    pub version: String,
    /// Clock skew and lateness.
    pub time: TimeRules,
    /// Distance from the asserted location, and null island.
    pub location: LocationRules,
    /// Impossible moves.
    pub speed: SpeedRules,
    /// Readings per device per window.
    pub rate: RateRules,
    /// Physical ranges of sensor metrics, `[min, max]` inclusive, by metric name.
    pub ranges: BTreeMap<String, [f64; 2]>,
    /// The points formula of sealed epochs.
    pub rewards: RewardRules,
    /// What the road aggregates may show.
    pub privacy: PrivacyRules,
    /// SHA-256 of the file's bytes (computed, not read).
    #[serde(skip)]
    pub hash: String,
}

/// Clock rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeRules {
    /// How far a device clock may run ahead of ingest's receive time.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// A reading older than this (receive time minus device time) is `late`; an epoch is sealed
    /// once every watermark is this far past its end.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
}

/// Location rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocationRules {
    /// Heartbeats and sensor readings farther than this from the device's asserted location are
    /// `too_far_from_asserted`.
    pub max_distance_from_asserted_m: f64,
    /// (0, 0) within this many degrees is `location_invalid`.
    pub null_island_epsilon_deg: f64,
}

/// Impossible-move rules, between a reading and the device's valid neighbours in device time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpeedRules {
    /// Moves shorter than this never count (GPS jitter).
    pub min_distance_m: f64,
    /// Top plausible speed of a hotspot, km/h.
    pub heartbeat_max_kmh: f64,
    /// Of a sensor, km/h.
    pub sensor_max_kmh: f64,
    /// Of a dashcam, km/h.
    pub road_max_kmh: f64,
}

/// Rate rules: fixed windows of device time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateRules {
    /// The window's length.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Valid readings a device may have per window; more are `rate_exceeded`.
    pub max_per_window: u32,
}

/// The road aggregates' k-anonymity: a hex is shown only with this many distinct dashcams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRules {
    /// k: distinct dashcams a hex (and an observation type in it) needs to be shown.
    pub road_min_devices: u64,
}

/// Why a rules file is refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("reading rules file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The read's error.
        source: std::io::Error,
    },
    /// It is not TOML of the rules' shape.
    #[error("rules: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of its range.
    #[error("rules: {0}")]
    Invalid(String),
}

impl Rules {
    /// Rules from a file's text (its hash is the text's).
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let mut rules: Rules = toml::from_str(text)?;
        rules.hash = hex::encode(Sha256::digest(text.as_bytes()));
        for (metric, [lo, hi]) in &rules.ranges {
            if lo > hi {
                return Err(RulesError::Invalid(format!(
                    "range of {metric} has min > max"
                )));
            }
        }
        if rules.rate.window.is_zero() {
            return Err(RulesError::Invalid("rate.window must be positive".into()));
        }
        Ok(rules)
    }

    /// The rules file at `path`, or the compiled-in defaults ([`DEFAULT_RULES`]).
    pub fn load(path: Option<&Path>) -> Result<Rules, RulesError> {
        match path {
            None => Rules::parse(DEFAULT_RULES),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| RulesError::Io {
                    path: p.display().to_string(),
                    source,
                })?;
                Rules::parse(&text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_parse_and_hash_is_of_the_bytes() {
        let r = Rules::load(None).unwrap();
        assert_eq!(r.version, "2026.11.3");
        assert_eq!(r.hash.len(), 64);
        let r2 = Rules::parse(&format!("{DEFAULT_RULES}\n")).unwrap();
        assert_ne!(r.hash, r2.hash, "any byte change changes the hash");
        assert!(
            Rules::parse(&DEFAULT_RULES.replace("pm10 = [0.0, 2000.0]", "pm10 = [5.0, 1.0]"))
                .is_err()
        );
    }
}
