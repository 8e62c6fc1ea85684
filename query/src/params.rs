//! Query-string parameters shared by the map, sensor and road endpoints, checked up front so that a
//! bad request gets a 400 naming the parameter, and nothing unchecked ever reaches SQL text.

use std::collections::HashMap;

use h3o::Resolution;

/// A refused parameter: the name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParam {
    pub param: &'static str,
    pub message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> BadParam {
    BadParam {
        param,
        message: message.into(),
    }
}

/// The form of a `bbox` parameter (the OpenAPI document states it): four decimal numbers.
pub const BBOX_PATTERN: &str = r"^-?[0-9]+(\.[0-9]+)?(,-?[0-9]+(\.[0-9]+)?){3}$";

/// West, south, east, north in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bbox {
    pub west: f64,
    pub south: f64,
    pub east: f64,
    pub north: f64,
}

impl Bbox {
    /// Four decimal numbers (`-?digits[.digits]`, as [`BBOX_PATTERN`] says), west,south,east,north.
    pub fn parse(s: &str) -> Result<Bbox, BadParam> {
        let decimal = |x: &str| {
            let x = x.strip_prefix('-').unwrap_or(x);
            let (int, frac) = x.split_once('.').unwrap_or((x, "0"));
            !int.is_empty()
                && !frac.is_empty()
                && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        };
        let v: Vec<f64> = s
            .split(',')
            .map(|x| {
                if decimal(x) {
                    x.parse::<f64>().ok()
                } else {
                    None
                }
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("bbox", "bbox must be four numbers: west,south,east,north"))?;
        let [west, south, east, north] = v[..] else {
            return Err(bad(
                "bbox",
                "bbox must be four numbers: west,south,east,north",
            ));
        };
        if !(-180.0..=180.0).contains(&west) || !(-180.0..=180.0).contains(&east) {
            return Err(bad("bbox", "longitudes must be within -180..180"));
        }
        if !(-90.0..=90.0).contains(&south) || !(-90.0..=90.0).contains(&north) {
            return Err(bad("bbox", "latitudes must be within -90..90"));
        }
        if west >= east || south >= north {
            return Err(bad(
                "bbox",
                "bbox must have west < east and south < north (boxes across the antimeridian: ask for two)",
            ));
        }
        Ok(Bbox {
            west,
            south,
            east,
            north,
        })
    }

    pub fn contains(&self, lat: f64, lng: f64) -> bool {
        (self.south..=self.north).contains(&lat) && (self.west..=self.east).contains(&lng)
    }

    /// The box grown by `margin_km` on every side (clamped to the globe).
    pub fn grown(&self, margin_km: f64) -> Bbox {
        let dlat = margin_km / 111.0;
        let mid = ((self.south + self.north) / 2.0)
            .to_radians()
            .cos()
            .max(0.05);
        let dlng = margin_km / (111.0 * mid);
        Bbox {
            west: (self.west - dlng).max(-180.0),
            south: (self.south - dlat).max(-90.0),
            east: (self.east + dlng).min(180.0),
            north: (self.north + dlat).min(90.0),
        }
    }

    /// SQL predicate on `lat`/`lng` columns (the numbers are parsed floats, never request text).
    pub fn sql(&self) -> String {
        format!(
            "lat BETWEEN {} AND {} AND lng BETWEEN {} AND {}",
            self.south, self.north, self.west, self.east
        )
    }
}

/// SQL predicate: `column` (an H3 cell column) is one of `cells` (H3 cells as hex strings, written
/// into the SQL as the numbers they parse to; strings that are no cell are left out, never written).
pub fn cells_sql(column: &str, cells: &[String]) -> String {
    let numbers: Vec<String> = cells
        .iter()
        .filter_map(|c| c.parse::<h3o::CellIndex>().ok())
        .map(|c| u64::from(c).to_string())
        .collect();
    format!("{column} IN ({})", numbers.join(", "))
}

/// A time range `[from, to)` in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The span of a nanosecond timestamp (`i64` ns since 1970), in whole ms within it.
const NS_TIMESTAMP_MS: (i64, i64) = (i64::MIN / 1_000_000 + 1, i64::MAX / 1_000_000);

/// The latest time a parameter may name: the end of year 9999 (RFC 3339's last year), ms.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

fn parse_time(param: &'static str, s: &str) -> Result<i64, BadParam> {
    if let Ok(ms) = s.parse::<i64>() {
        if !(0..=MAX_TIME_MS).contains(&ms) {
            return Err(bad(
                param,
                format!("{param} must be between 1970 and the end of 9999 ({MAX_TIME_MS} ms)"),
            ));
        }
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
        bad(
            param,
            format!("{param} must be RFC 3339 (2026-11-22T10:00:00Z) or milliseconds since 1970"),
        )
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad(param, "times before 1970 are not supported"))?;
    Ok(d.as_millis() as i64)
}

pub fn rfc3339(ms: i64) -> String {
    let ms = ms.clamp(0, MAX_TIME_MS);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl TimeRange {
    /// `from` and `to`; defaults: the last `default_span_ms` up to a minute from now.
    pub fn parse(
        params: &HashMap<String, String>,
        now_ms: i64,
        default_span_ms: i64,
    ) -> Result<TimeRange, BadParam> {
        let to_ms = match params.get("to") {
            Some(s) => parse_time("to", s)?,
            None => now_ms + 60_000,
        };
        let from_ms = match params.get("from") {
            Some(s) => parse_time("from", s)?,
            None => to_ms.saturating_sub(default_span_ms).max(0),
        };
        if from_ms >= to_ms {
            return Err(bad("from", "from must be before to"));
        }
        Ok(TimeRange { from_ms, to_ms })
    }

    /// The SQL filter on `event_time`. Times outside what a nanosecond timestamp holds (1677..2262)
    /// are clamped to its ends: no stored row lies beyond them, and DataFusion refuses such literals.
    pub fn sql(&self) -> String {
        let clamp = |ms: i64| ms.clamp(NS_TIMESTAMP_MS.0, NS_TIMESTAMP_MS.1);
        format!(
            "event_time >= '{}' AND event_time < '{}'",
            rfc3339(clamp(self.from_ms)),
            rfc3339(clamp(self.to_ms))
        )
    }
}

/// The hex resolution for a web-map zoom level: about ten hexes across a 512-px tile.
pub fn resolution_for_zoom(zoom: u8) -> u8 {
    ((u32::from(zoom) * 2) / 3).min(15) as u8
}

/// `res` (0..=15) or `zoom` (0..=24), capped at `finest` (the finest resolution the lake stores).
pub fn resolution(
    params: &HashMap<String, String>,
    default: u8,
    finest: u8,
) -> Result<u8, BadParam> {
    let res = match (params.get("res"), params.get("zoom")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "zoom",
                "res and zoom are alternatives: give one of them",
            ));
        }
        (Some(r), None) => r
            .parse::<u8>()
            .ok()
            .filter(|r| *r <= 15)
            .ok_or_else(|| bad("res", "res must be an H3 resolution, 0..=15"))?,
        (None, Some(z)) => {
            let z = z
                .parse::<u8>()
                .ok()
                .filter(|z| *z <= 24)
                .ok_or_else(|| bad("zoom", "zoom must be 0..=24"))?;
            resolution_for_zoom(z).min(finest)
        }
        (None, None) => default,
    };
    if res > finest {
        return Err(bad(
            "res",
            format!(
                "the lake stores cells down to resolution {finest}; ask for {finest} or coarser"
            ),
        ));
    }
    Ok(res)
}

/// The average edge length of a hex at `res`, km.
pub fn edge_km(res: u8) -> f64 {
    Resolution::try_from(res)
        .map(|r| r.edge_length_km())
        .unwrap_or(1.0)
}

/// A sensor metric or observation name: lower-case letters, digits and `_`, at most 32.
pub fn name(param: &'static str, s: &str) -> Result<String, BadParam> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(bad(
            param,
            format!("{param} must be a name like pm2_5 (a-z, 0-9, _; at most 32)"),
        ))
    }
}

/// A duration such as `15m` or `1h`, within `min..=max`.
pub fn interval(
    s: Option<&String>,
    default_s: u64,
    min_s: u64,
    max_s: u64,
) -> Result<u64, BadParam> {
    let Some(s) = s else {
        return Ok(default_s);
    };
    // A whole number of minutes, hours or days (the OpenAPI pattern), nothing looser.
    let secs = [("m", 60), ("h", 3600), ("d", 86_400)]
        .iter()
        .find_map(|(suffix, unit)| Some((s.strip_suffix(suffix)?, *unit)))
        .filter(|(digits, _)| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(digits, unit)| digits.parse::<u64>().ok()?.checked_mul(unit))
        .ok_or_else(|| bad("interval", "interval must be a duration like 15m, 1h or 1d"))?;
    if !(min_s..=max_s).contains(&secs) {
        return Err(bad(
            "interval",
            format!("interval must be between {min_s} s and {max_s} s"),
        ));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_sql_writes_cell_numbers_and_leaves_out_the_rest() {
        let cell = "881f1d4887fffff";
        let n = u64::from(cell.parse::<h3o::CellIndex>().unwrap());
        let cells = [cell.to_string(), "0; DROP TABLE x".to_string()];
        assert_eq!(cells_sql("h3_r8", &cells), format!("h3_r8 IN ({n})"));
    }

    fn p(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bbox_and_times_and_resolutions() {
        let b = Bbox::parse("2.2,48.8,2.5,48.9").unwrap();
        assert!(b.contains(48.85, 2.3));
        assert!(!b.contains(48.85, 2.6));
        assert_eq!(Bbox::parse("1,2,3").unwrap_err().param, "bbox");
        for loose in [
            "1, 2,3,4",
            "+1,2,3,4",
            "1e0,2,3,4",
            ".5,2,3,4",
            "1.,2,3,4",
            "inf,2,3,4",
        ] {
            assert!(Bbox::parse(loose).is_err(), "{loose}");
        }
        assert!(Bbox::parse("-1.5,2,3,4.25").is_ok());
        assert!(Bbox::parse("3,2,1,4").is_err());
        assert!(Bbox::parse("0,-91,1,1").is_err());
        let g = b.grown(1.0);
        assert!(g.west < b.west && g.north > b.north);

        let t = TimeRange::parse(
            &p(&[("from", "2026-11-22T00:00:00Z"), ("to", "1795392000000")]),
            0,
            1,
        )
        .unwrap();
        assert_eq!(t.from_ms, 1_795_305_600_000);
        assert!(TimeRange::parse(&p(&[("from", "yesterday")]), 0, 1).is_err());
        assert!(TimeRange::parse(&p(&[("from", "10"), ("to", "5")]), 0, 1).is_err());
        let far = TimeRange::parse(&p(&[("to", "253402300799998")]), 0, 1).unwrap();
        assert_eq!(
            far.sql(),
            "event_time >= '2262-04-11T23:47:16.854Z' AND event_time < '2262-04-11T23:47:16.854Z'"
        );

        assert_eq!(resolution(&p(&[]), 8, 12), Ok(8));
        assert_eq!(resolution(&p(&[("zoom", "13")]), 8, 12), Ok(8));
        assert_eq!(resolution(&p(&[("zoom", "22")]), 8, 12), Ok(12));
        assert_eq!(
            resolution(&p(&[("res", "13")]), 8, 12).unwrap_err().param,
            "res"
        );
        assert!(resolution(&p(&[("res", "x")]), 8, 12).is_err());
        assert_eq!(
            resolution(&p(&[("res", "0"), ("zoom", "")]), 8, 12)
                .unwrap_err()
                .param,
            "zoom"
        );

        assert!(name("metric", "pm2_5").is_ok());
        assert!(name("metric", "pm2_5'; DROP").is_err());
        assert_eq!(interval(Some(&"15m".into()), 3600, 60, 86400), Ok(900));
        assert!(interval(Some(&"1s".into()), 3600, 60, 86400).is_err());
        assert_eq!(
            interval(Some(&"2d".into()), 3600, 60, 7 * 86400),
            Ok(172_800)
        );
        for loose in [
            "90s",
            "1h 30m",
            "+5m",
            "m",
            "15 m",
            "99999999999999999999m",
            "\u{e6}",
            "5\u{e6}",
        ] {
            assert!(
                interval(Some(&loose.into()), 3600, 60, 86400).is_err(),
                "{loose}"
            );
        }
    }
}
