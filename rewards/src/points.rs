//! The reward formula (`[rewards]` of the rules file). Integer arithmetic throughout, so every
//! implementation gets the same points:
//!
//! ```text
//! base   = hour_points[kind] * active_hours
//!        + hex_points * min(distinct_hexes, max_hexes)                          heartbeat devices only
//!        + road_observation_points * min(road_observations, max_road_observations)
//! points = floor(floor(base * trust_bp / 10000) * tier_bp / 10000)
//! ```
//!
//! `active_hours` counts the UTC hours of the epoch in which a valid reading of the device was
//! received (ingest's clock), never the hours its readings claim.
//!
//! Location trust (heartbeat and sensor devices, from the median distance to the asserted location):
//! `<= full_m` → `full_bp`; `<= partial_m` → `partial_bp`; farther → `far_bp`; road devices, and
//! devices without a distance, → `full_bp`. Speed tier (heartbeat devices, from their speed tests):
//! no test → `none`; median download `< silver_mbps` → `bronze`; `>= gold_mbps` with median latency
//! `<= gold_max_latency_ms` → `gold`; otherwise `silver`. Other kinds: tier `none` at 10000 bp.

use hexpulse_schemas::wire::KindName;
use serde::{Deserialize, Serialize};

/// The `[rewards]` section of the rules file (`config/rules.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewardRules {
    /// Points per active hour of a heartbeat device.
    pub heartbeat_hour_points: u64,
    /// Points per active hour of a sensor.
    pub sensor_hour_points: u64,
    /// Points per active hour of a dashcam.
    pub road_hour_points: u64,
    /// Points per distinct hex a heartbeat device was seen in, up to `max_hexes`.
    pub hex_points: u64,
    /// The most hexes that count.
    pub max_hexes: u64,
    /// Points per road observation, up to `max_road_observations`.
    pub road_observation_points: u64,
    /// The most road observations that count.
    pub max_road_observations: u64,
    /// Location trust.
    pub trust: TrustRules,
    /// Speed tiers.
    pub speed: SpeedTierRules,
}

/// Location trust in basis points, by the median distance to the asserted location.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustRules {
    /// Up to this distance (m): `full_bp`.
    pub full_m: f64,
    /// Trust within `full_m`.
    pub full_bp: u64,
    /// Up to this distance (m): `partial_bp`.
    pub partial_m: f64,
    /// Trust within `partial_m`.
    pub partial_bp: u64,
    /// Trust farther away.
    pub far_bp: u64,
}

/// Speed tiers of heartbeat devices, from their speed tests, in basis points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpeedTierRules {
    /// Below this median download (Mbps): bronze.
    pub silver_mbps: f64,
    /// At or above this median download (Mbps), with the latency below: gold.
    pub gold_mbps: f64,
    /// The highest median latency (ms) of gold.
    pub gold_max_latency_ms: f64,
    /// No speed test.
    pub none_bp: u64,
    /// Bronze.
    pub bronze_bp: u64,
    /// Silver.
    pub silver_bp: u64,
    /// Gold.
    pub gold_bp: u64,
}

/// What the formula needs of a device's epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceFacts {
    /// The device's kind.
    pub kind: KindName,
    /// UTC hours of the epoch with a valid reading received.
    pub active_hours: u32,
    /// Distinct hexes (at the epoch resolution) of its valid readings.
    pub distinct_hexes: u64,
    /// Valid road observations.
    pub road_observations: u64,
    /// Median distance from the asserted location (m), if any.
    pub median_distance_m: Option<f64>,
    /// Median download of its speed tests (Mbps), if any.
    pub median_download_mbps: Option<f64>,
    /// Median latency of its speed tests (ms), if any.
    pub median_latency_ms: Option<f64>,
}

/// The formula's result for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Award {
    /// Location trust, basis points.
    pub trust_bp: u64,
    /// Speed tier: `none`, `bronze`, `silver` or `gold`.
    pub tier: &'static str,
    /// The tier's factor, basis points.
    pub tier_bp: u64,
    /// The epoch's points.
    pub points: u64,
}

/// Location trust (see the module docs).
pub fn location_trust_bp(r: &RewardRules, kind: KindName, median_distance_m: Option<f64>) -> u64 {
    match (kind, median_distance_m) {
        (KindName::Road, _) | (_, None) => r.trust.full_bp,
        (_, Some(d)) if d <= r.trust.full_m => r.trust.full_bp,
        (_, Some(d)) if d <= r.trust.partial_m => r.trust.partial_bp,
        _ => r.trust.far_bp,
    }
}

/// Speed tier and its factor (see the module docs).
pub fn speed_tier(r: &RewardRules, f: &DeviceFacts) -> (&'static str, u64) {
    if f.kind != KindName::Heartbeat {
        return ("none", 10_000);
    }
    let s = &r.speed;
    match f.median_download_mbps {
        None => ("none", s.none_bp),
        Some(d) if d < s.silver_mbps => ("bronze", s.bronze_bp),
        Some(d)
            if d >= s.gold_mbps
                && f.median_latency_ms
                    .is_some_and(|l| l <= s.gold_max_latency_ms) =>
        {
            ("gold", s.gold_bp)
        }
        Some(_) => ("silver", s.silver_bp),
    }
}

/// The formula's result for a device (see the module docs).
pub fn award(r: &RewardRules, f: &DeviceFacts) -> Award {
    let hour_points = match f.kind {
        KindName::Heartbeat => r.heartbeat_hour_points,
        KindName::Sensor => r.sensor_hour_points,
        KindName::Road => r.road_hour_points,
    };
    let mut base = hour_points as u128 * f.active_hours as u128;
    if f.kind == KindName::Heartbeat {
        base += r.hex_points as u128 * f.distinct_hexes.min(r.max_hexes) as u128;
    }
    base += r.road_observation_points as u128
        * f.road_observations.min(r.max_road_observations) as u128;
    let trust_bp = location_trust_bp(r, f.kind, f.median_distance_m);
    let (tier, tier_bp) = speed_tier(r, f);
    let points = base * trust_bp as u128 / 10_000 * tier_bp as u128 / 10_000;
    Award {
        trust_bp,
        tier,
        tier_bp,
        points: points.min(u64::MAX as u128) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[rewards]` section of the default rules file.
    fn default_rewards() -> RewardRules {
        let text = include_str!("../../config/rules.toml");
        let mut file: toml::Table = toml::from_str(text).unwrap();
        file.remove("rewards").unwrap().try_into().unwrap()
    }

    fn facts(kind: KindName, hours: u32, hexes: u64, road: u64) -> DeviceFacts {
        DeviceFacts {
            kind,
            active_hours: hours,
            distinct_hexes: hexes,
            road_observations: road,
            median_distance_m: None,
            median_download_mbps: None,
            median_latency_ms: None,
        }
    }

    /// Hand-computed with the default rules: heartbeat 100/h, sensor 60/h, road 20/h, hex 10 (max
    /// 24), road observation 1 (max 1000); trust 10000 / 5000 (<= 300 m) / 2500; tiers none 9000,
    /// bronze 10000, silver 12500, gold 15000 (>= 200 Mbps and <= 30 ms).
    #[test]
    fn points_match_the_hand_computed_table() {
        let r = default_rewards();
        let hb = |h, x, d: Option<f64>, down: Option<f64>, lat: Option<f64>| DeviceFacts {
            median_distance_m: d,
            median_download_mbps: down,
            median_latency_ms: lat,
            ..facts(KindName::Heartbeat, h, x, 0)
        };
        #[rustfmt::skip]
        let table: Vec<(&str, DeviceFacts, u64, &str, u64)> = vec![
            // name, facts, trust bp, tier, points
            // 1. full trust, no speed test: (24*100 + 10*10) = 2500 * 1.0 * 0.9 = 2250
            ("hb full none", hb(24, 10, Some(20.0), None, None), 10_000, "none", 2_250),
            // 2. exactly full_m is full; bronze: (10*100 + 5*10) = 1050 * 1.0 * 1.0
            ("hb edge bronze", hb(10, 5, Some(100.0), Some(20.0), Some(40.0)), 10_000, "bronze", 1_050),
            // 3. partial trust, silver: (24*100 + 24*10) = 2640 * 0.5 = 1320 * 1.25 = 1650
            ("hb partial silver", hb(24, 30, Some(250.0), Some(80.0), Some(20.0)), 5_000, "silver", 1_650),
            // 4. far, gold: (12*100 + 3*10) = 1230 * 0.25 = 307 (floor 307.5) * 1.5 = 460 (floor 460.5)
            ("hb far gold", hb(12, 3, Some(900.0), Some(250.0), Some(25.0)), 2_500, "gold", 460),
            // 5. fast but latency too high: silver, not gold: (1*100 + 1*10) = 110 * 1.25 = 137
            ("hb fast laggy", hb(1, 1, Some(0.0), Some(500.0), Some(80.0)), 10_000, "silver", 137),
            // 6. hexes capped at 24: (2*100 + 24*10) = 440 * 0.9 = 396
            ("hb hex cap", hb(2, 100, Some(5.0), None, None), 10_000, "none", 396),
            // 7. heartbeat without a distance: full trust: (3*100 + 2*10) = 320 * 0.9 = 288
            ("hb no distance", hb(3, 2, None, None, None), 10_000, "none", 288),
            // 8. sensor, full trust: 24*60 = 1440; hexes do not count for sensors
            ("sensor full", DeviceFacts { median_distance_m: Some(10.0), ..facts(KindName::Sensor, 24, 7, 0) }, 10_000, "none", 1_440),
            // 9. sensor, partial: 5*60 = 300 * 0.5 = 150
            ("sensor partial", DeviceFacts { median_distance_m: Some(300.0), ..facts(KindName::Sensor, 5, 1, 0) }, 5_000, "none", 150),
            // 10. sensor, far: 7*60 = 420 * 0.25 = 105
            ("sensor far", DeviceFacts { median_distance_m: Some(301.0), ..facts(KindName::Sensor, 7, 1, 0) }, 2_500, "none", 105),
            // 11. road, observations: 3*20 + 250*1 = 310; trust always full (moving devices)
            ("road", DeviceFacts { median_distance_m: Some(5000.0), ..facts(KindName::Road, 3, 40, 250) }, 10_000, "none", 310),
            // 12. road, observations capped at 1000: 1*20 + 1000 = 1020
            ("road cap", facts(KindName::Road, 1, 1, 5000), 10_000, "none", 1_020),
            // 13. nothing active: 0
            ("idle", hb(0, 0, Some(1.0), None, None), 10_000, "none", 0),
        ];
        for (name, f, trust, tier, points) in table {
            let a = award(&r, &f);
            assert_eq!(a.trust_bp, trust, "{name}: trust");
            assert_eq!(a.tier, tier, "{name}: tier");
            assert_eq!(a.points, points, "{name}: points");
        }
    }
}
