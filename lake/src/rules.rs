//! The versioned validation rules file (`config/rules.toml` is the default, compiled in).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use hexpulse_rewards::points::{RewardRules, SpeedTierRules, TrustRules};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The default rules, compiled in.
pub const DEFAULT_RULES: &str = include_str!("../../config/rules.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub version: String,
    pub time: TimeRules,
    pub location: LocationRules,
    pub speed: SpeedRules,
    pub rate: RateRules,
    pub ranges: BTreeMap<String, [f64; 2]>,
    pub rewards: RewardRules,
    pub privacy: PrivacyRules,
    /// SHA-256 of the file's bytes (computed, not read).
    #[serde(skip)]
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeRules {
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocationRules {
    pub max_distance_from_asserted_m: f64,
    pub null_island_epsilon_deg: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpeedRules {
    pub min_distance_m: f64,
    pub heartbeat_max_kmh: f64,
    pub sensor_max_kmh: f64,
    pub road_max_kmh: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateRules {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub max_per_window: u32,
}

/// The road aggregates' k-anonymity: a hex is shown only with this many distinct dashcams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRules {
    pub road_min_devices: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("reading rules file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("rules: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("rules: {0}")]
    Invalid(String),
}

impl Rules {
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
