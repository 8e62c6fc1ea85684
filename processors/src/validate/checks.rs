//! Pure checks: location, ranges, speed.

use hexpulse_schemas::json::metric_name;
use hexpulse_schemas::wire::{KindName, Metric, Sensor};

use hexpulse_lake::rules::Rules;

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle (haversine) distance in metres.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dp = p2 - p1;
    let dl = (b.1 - a.1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Why a location is invalid, if it is.
pub fn location_problem(lat: f64, lng: f64, null_eps: f64) -> Option<String> {
    if !lat.is_finite() || !lng.is_finite() {
        return Some("latitude/longitude not finite".into());
    }
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lng) {
        return Some(format!("({lat}, {lng}) out of range"));
    }
    if lat.abs() < null_eps && lng.abs() < null_eps {
        return Some("null island (0, 0)".into());
    }
    None
}

/// Why a sensor reading is out of range, if it is.
pub fn range_problem(s: &Sensor, rules: &Rules) -> Option<String> {
    if s.measurements.is_empty() {
        return Some("sensor reading without measurements".into());
    }
    for m in &s.measurements {
        let metric = Metric::try_from(m.metric).unwrap_or(Metric::Unspecified);
        let name = metric_name(metric);
        let Some([lo, hi]) = rules.ranges.get(&name) else {
            return Some(format!("metric {name} ({}) has no known range", m.metric));
        };
        if !m.value.is_finite() || m.value < *lo || m.value > *hi {
            return Some(format!("{name} = {} outside [{lo}, {hi}]", m.value));
        }
    }
    None
}

/// Why the move from `prev` to `next` (both `(time_ms, lat, lng)`) is impossible, if it is.
pub fn speed_problem(
    prev: (i64, f64, f64),
    next: (i64, f64, f64),
    kind: KindName,
    rules: &Rules,
) -> Option<String> {
    let d = distance_m((prev.1, prev.2), (next.1, next.2));
    if d <= rules.speed.min_distance_m {
        return None;
    }
    let limit = match kind {
        KindName::Heartbeat => rules.speed.heartbeat_max_kmh,
        KindName::Sensor => rules.speed.sensor_max_kmh,
        KindName::Road => rules.speed.road_max_kmh,
    };
    let dt_h = ((next.0 - prev.0).abs().max(1) as f64) / 3_600_000.0;
    let kmh = d / 1000.0 / dt_h;
    (kmh > limit).then(|| {
        format!(
            "{:.0} m in {} ms is {kmh:.0} km/h (limit {limit})",
            d,
            (next.0 - prev.0).abs()
        )
    })
}
