//! Pilots: an operator's trial of the network in an area (issue #25). A pilot is a name, an area
//! (a GeoJSON polygon, or a list of H3 cells), a start, an optional end and a baseline (what the
//! traditional way of building costs per site, and how long it takes).
//!
//! The area is stored as its cells at the pilots' resolution (`[query.pilots] resolution`, the
//! coverage resolution of the reports): a polygon's cells are those whose centre lies inside it
//! (h3o's tiler), a listed coarser cell stands for its children, a finer one for its parent.
//! Every check that can refuse an area runs before its cells are computed, or stops the
//! computation once the area is past its bound: a hostile polygon costs at most
//! `max_area_vertices` points and `max_area_cells` cells.
//!
//! Pilots live next to the lake's tables, one JSON object each under `_pilots/` (created with a
//! conditional put; only the end can be edited later), so they survive restarts and every replica
//! of the query service sees the same set.

use std::collections::BTreeSet;
use std::str::FromStr;

use ::geo::{Coord, LineString, MultiPolygon, Polygon, Validation};
use h3o::geom::{ContainmentMode, TilerBuilder};
use h3o::{CellIndex, Resolution};
use hexpulse_lake::Lake;

use crate::objects::{ObjectError, invalid};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub mod report;

/// Where pilots are stored, under the lake root.
pub const PREFIX: &str = "_pilots/";

/// How far a pilot's start may lie from now, and its end from its start: ten years.
const MAX_SPAN_MS: i64 = 10 * 366 * 86_400_000;

/// `[query.pilots]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PilotsConfig {
    /// The H3 resolution of pilot areas and of their reports' coverage (8: about 0.74 km² a cell,
    /// the epochs' `hex_resolution`).
    pub resolution: u8,
    /// An area's cells at most; a larger one is refused with 400 `area_too_large`.
    pub max_area_cells: usize,
    /// A polygon's points at most (all rings together).
    pub max_area_vertices: usize,
    /// Pilots stored at most; past it creating one is refused with 409 `too_many_pilots`.
    pub max_pilots: usize,
    /// What one reward point is worth, in US dollars: a report's cost is the points the area's
    /// devices earned during the pilot times this.
    pub price_per_point_usd: f64,
    /// The baseline of a pilot that names none.
    pub baseline: Baseline,
}

impl Default for PilotsConfig {
    fn default() -> Self {
        PilotsConfig {
            resolution: 8,
            max_area_cells: 20_000,
            max_area_vertices: 5_000,
            max_pilots: 1_000,
            price_per_point_usd: 0.01,
            baseline: Baseline::default(),
        }
    }
}

/// The traditional way of building that a pilot is measured against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// What one site costs to install, in US dollars (default: a small cell, about $300,000).
    pub cost_per_site_usd: f64,
    /// How long one site takes to deploy, permits included, in days (default 180: months of
    /// permits).
    pub days_to_deploy: f64,
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline {
            cost_per_site_usd: 300_000.0,
            days_to_deploy: 180.0,
        }
    }
}

/// A pilot as a caller asks for it (`POST /v1/pilots`): `area` or `cells`, not both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPilot {
    pub name: String,
    /// A GeoJSON Polygon or MultiPolygon (or a Feature holding one), in degrees.
    #[serde(default)]
    pub area: Option<Value>,
    /// H3 cells as strings.
    #[serde(default)]
    pub cells: Option<Vec<String>>,
    /// RFC 3339.
    pub start: String,
    /// RFC 3339, after `start`.
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub baseline: Option<Baseline>,
}

/// A stored pilot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pilot {
    pub id: String,
    pub name: String,
    /// The polygon as given, when the area was given as one.
    pub area: Option<Value>,
    /// The cells' resolution.
    pub resolution: u8,
    /// The area's cells at `resolution`, sorted.
    pub cells: Vec<String>,
    pub start: String,
    pub start_ms: i64,
    pub end: Option<String>,
    pub end_ms: Option<i64>,
    pub baseline: Baseline,
    /// Whether `baseline` is the configured default (the pilot named none).
    pub baseline_is_default: bool,
    pub created: String,
    /// The token's name, or `anonymous`.
    pub created_by: String,
}

/// Why a pilot was refused (`bad_area`, `bad_pilot`, `area_too_large`, `too_many_pilots`) or could
/// not be stored.
pub type PilotError = ObjectError;

fn bad_area(message: impl Into<String>) -> PilotError {
    invalid("bad_area", message)
}

/// The pilot store and its rules.
pub struct Pilots {
    store: crate::objects::Objects,
    cfg: PilotsConfig,
    res: Resolution,
}

impl Pilots {
    /// Checks the configuration.
    pub fn new(lake: Lake, cfg: PilotsConfig) -> Result<Pilots, String> {
        let res = Resolution::try_from(cfg.resolution)
            .map_err(|_| format!("[query.pilots] resolution {} is not 0..=15", cfg.resolution))?;
        if !(cfg.price_per_point_usd.is_finite() && cfg.price_per_point_usd >= 0.0) {
            return Err("[query.pilots] price_per_point_usd must be a number of at least 0".into());
        }
        if cfg.max_area_cells == 0 || cfg.max_area_vertices < 4 || cfg.max_pilots == 0 {
            return Err(
                "[query.pilots] max_area_cells and max_pilots must be positive, max_area_vertices \
                 at least 4"
                    .into(),
            );
        }
        Ok(Pilots {
            store: crate::objects::Objects::new(lake, PREFIX),
            cfg,
            res,
        })
    }

    pub fn config(&self) -> &PilotsConfig {
        &self.cfg
    }

    /// Checks `new`, computes its cells and stores it.
    pub async fn create(
        &self,
        new: NewPilot,
        created_by: &str,
        now_ms: i64,
    ) -> Result<Pilot, PilotError> {
        let pilot = self.build(new, created_by, now_ms)?;
        let stored = self.store.count().await?;
        if stored >= self.cfg.max_pilots {
            return Err(ObjectError::Full {
                code: "too_many_pilots",
                message: format!(
                    "{stored} pilots are stored, the most this service keeps (max_pilots)"
                ),
            });
        }
        if !self.store.create(&pilot.id, &pilot).await? {
            // The same name, area and times within the same millisecond: the same pilot twice.
            return Err(invalid(
                "bad_pilot",
                format!("pilot {} exists already", pilot.id),
            ));
        }
        Ok(pilot)
    }

    /// Sets (or, with `None`, clears) the end of pilot `id`: the pilot as stored now, or `None`
    /// when there is none. The same checks as at creation: after the start, within ten years of it.
    pub async fn set_end(&self, id: &str, end: Option<&str>) -> Result<Option<Pilot>, PilotError> {
        let Some(mut pilot) = self.get(id).await? else {
            return Ok(None);
        };
        let end_ms = end.map(|e| rfc3339_ms("end", e)).transpose()?;
        check_end(pilot.start_ms, end_ms)?;
        pilot.end_ms = end_ms;
        pilot.end = end_ms.map(ms_rfc3339);
        self.store.replace(&pilot.id, &pilot).await?;
        Ok(Some(pilot))
    }

    /// The pilot `new` describes, without storing it.
    fn build(&self, new: NewPilot, created_by: &str, now_ms: i64) -> Result<Pilot, PilotError> {
        let name = new.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 120 || name.chars().any(char::is_control) {
            return Err(invalid(
                "bad_pilot",
                "name: 1 to 120 characters, no control characters",
            ));
        }
        let start_ms = rfc3339_ms("start", &new.start)?;
        let end_ms = new
            .end
            .as_deref()
            .map(|e| rfc3339_ms("end", e))
            .transpose()?;
        // Reports cover the pilot and as long before it, in hours or days: bounded spans.
        if (start_ms - now_ms).abs() > MAX_SPAN_MS {
            return Err(invalid("bad_pilot", "start: within ten years of now"));
        }
        check_end(start_ms, end_ms)?;
        let (baseline, baseline_is_default) = match new.baseline {
            Some(b) => {
                let ok = |v: f64| v.is_finite() && v > 0.0;
                if !ok(b.cost_per_site_usd) || !ok(b.days_to_deploy) {
                    return Err(invalid(
                        "bad_pilot",
                        "baseline: cost_per_site_usd and days_to_deploy must be positive numbers",
                    ));
                }
                (b, false)
            }
            None => (self.cfg.baseline.clone(), true),
        };
        let cells = match (&new.area, &new.cells) {
            (Some(area), None) => self.polygon_cells(area)?,
            (None, Some(cells)) => self.listed_cells(cells)?,
            _ => {
                return Err(bad_area(
                    "give the area as `area` (a GeoJSON polygon) or as `cells` (H3 cells), one of them",
                ));
            }
        };
        if cells.is_empty() {
            return Err(bad_area(format!(
                "the area holds no cell at resolution {} (no cell's centre lies inside it): draw a \
                 larger one",
                self.cfg.resolution
            )));
        }
        let cells: Vec<String> = cells.iter().map(ToString::to_string).collect();
        let id = pilot_id(&name, &cells, start_ms, now_ms);
        Ok(Pilot {
            id,
            name,
            area: new.area,
            resolution: self.cfg.resolution,
            cells,
            start: ms_rfc3339(start_ms),
            start_ms,
            end: end_ms.map(ms_rfc3339),
            end_ms,
            baseline,
            baseline_is_default,
            created: ms_rfc3339(now_ms),
            created_by: created_by.to_string(),
        })
    }

    /// A GeoJSON polygon's cells: checked for shape and validity first, then tiled until the
    /// area is past its bound.
    fn polygon_cells(&self, area: &Value) -> Result<BTreeSet<CellIndex>, PilotError> {
        let shape = parse_geojson(area, self.cfg.max_area_vertices)?;
        for (i, polygon) in shape.0.iter().enumerate() {
            if let Err(e) = polygon.check_validation() {
                return Err(bad_area(format!("polygon {i}: {e}")));
            }
        }
        let mut tiler = TilerBuilder::new(self.res)
            .containment_mode(ContainmentMode::ContainsCentroid)
            .build();
        tiler
            .add_batch(shape.0)
            .map_err(|e| bad_area(format!("area: {e}")))?;
        // The tiler's estimate is from bounding boxes: far above the real count for a thin
        // diagonal shape, so only a wide margin refuses before tiling.
        if tiler.coverage_size_hint() > self.cfg.max_area_cells.saturating_mul(50) {
            return Err(self.too_large());
        }
        let mut cells = BTreeSet::new();
        for cell in tiler.into_coverage() {
            cells.insert(cell);
            if cells.len() > self.cfg.max_area_cells {
                return Err(self.too_large());
            }
        }
        Ok(cells)
    }

    /// The 400 of an area past `max_area_cells`.
    fn too_large(&self) -> PilotError {
        invalid(
            "area_too_large",
            format!(
                "the area holds more than {} cells at resolution {} (max_area_cells)",
                self.cfg.max_area_cells, self.cfg.resolution
            ),
        )
    }

    /// Listed cells at the pilots' resolution: a coarser cell stands for its children, a finer
    /// one for its parent.
    fn listed_cells(&self, listed: &[String]) -> Result<BTreeSet<CellIndex>, PilotError> {
        if listed.len() > self.cfg.max_area_cells {
            return Err(self.too_large());
        }
        let mut cells = BTreeSet::new();
        for (i, s) in listed.iter().enumerate() {
            let cell = CellIndex::from_str(s.trim())
                .map_err(|_| bad_area(format!("cells[{i}]: {s:?} is not an H3 cell")))?;
            if cell.resolution() <= self.res {
                if cell.children_count(self.res) > self.cfg.max_area_cells as u64 {
                    return Err(self.too_large());
                }
                cells.extend(cell.children(self.res));
            } else if let Some(parent) = cell.parent(self.res) {
                cells.insert(parent);
            }
            if cells.len() > self.cfg.max_area_cells {
                return Err(self.too_large());
            }
        }
        Ok(cells)
    }

    /// Every stored pilot, oldest first.
    pub async fn list(&self) -> Result<Vec<Pilot>, PilotError> {
        let mut out: Vec<Pilot> = self.store.list().await?;
        out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    /// One pilot, if stored.
    pub async fn get(&self, id: &str) -> Result<Option<Pilot>, PilotError> {
        Ok(self.store.get(id).await?)
    }

    /// Deletes a pilot; whether there was one.
    pub async fn delete(&self, id: &str) -> Result<bool, PilotError> {
        Ok(self.store.delete(id).await?)
    }
}

pub use crate::objects::valid_id;

/// A pilot's id: a digest of what it is and when it was made.
fn pilot_id(name: &str, cells: &[String], start_ms: i64, now_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    for c in cells {
        h.update(c.as_bytes());
    }
    h.update(start_ms.to_le_bytes());
    h.update(now_ms.to_le_bytes());
    hex::encode(&h.finalize()[..8])
}

/// An end after the start, within ten years of it (a report's span is bounded).
fn check_end(start_ms: i64, end_ms: Option<i64>) -> Result<(), PilotError> {
    if end_ms.is_some_and(|e| e <= start_ms) {
        return Err(invalid("bad_pilot", "end: must be after start"));
    }
    if end_ms.is_some_and(|e| e - start_ms > MAX_SPAN_MS) {
        return Err(invalid("bad_pilot", "end: at most ten years after start"));
    }
    Ok(())
}

fn rfc3339_ms(field: &str, s: &str) -> Result<i64, PilotError> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            invalid(
                "bad_pilot",
                format!("{field}: {s:?} is not an RFC 3339 time (like 2026-12-01T00:00:00Z)"),
            )
        })
}

fn ms_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A GeoJSON Polygon or MultiPolygon (bare or in a Feature) as geo's types, with every position
/// checked: two or three finite numbers, longitude in -180..=180, latitude in -90..=90, rings
/// closed, `max_vertices` points at most.
pub fn parse_geojson(v: &Value, max_vertices: usize) -> Result<MultiPolygon, PilotError> {
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    let coords = || {
        v.get("coordinates")
            .ok_or_else(|| bad_area(format!("area: a {kind} needs `coordinates`")))
    };
    let mut budget = max_vertices;
    match kind {
        "Feature" => match v.get("geometry") {
            Some(g) if g.get("type").and_then(Value::as_str) != Some("Feature") => {
                parse_geojson(g, max_vertices)
            }
            _ => Err(bad_area(
                "area: a Feature needs a Polygon or MultiPolygon geometry",
            )),
        },
        "Polygon" => Ok(MultiPolygon(vec![polygon(coords()?, 0, &mut budget)?])),
        "MultiPolygon" => {
            let polys = coords()?
                .as_array()
                .ok_or_else(|| bad_area("area: MultiPolygon coordinates must be an array"))?;
            if polys.is_empty() {
                return Err(bad_area("area: the MultiPolygon has no polygon"));
            }
            polys
                .iter()
                .enumerate()
                .map(|(i, p)| polygon(p, i, &mut budget))
                .collect::<Result<Vec<_>, _>>()
                .map(MultiPolygon)
        }
        "" => Err(bad_area(
            "area: a GeoJSON object with a `type` (Polygon, MultiPolygon or Feature)",
        )),
        other => Err(bad_area(format!(
            "area: a {other} has no area; give a Polygon or MultiPolygon"
        ))),
    }
}

fn polygon(v: &Value, index: usize, budget: &mut usize) -> Result<Polygon, PilotError> {
    let rings = v
        .as_array()
        .ok_or_else(|| bad_area(format!("polygon {index}: its coordinates must be rings")))?;
    let Some((outer, inner)) = rings.split_first() else {
        return Err(bad_area(format!("polygon {index}: no ring")));
    };
    let ring = |r: &Value, which: String, budget: &mut usize| -> Result<LineString, PilotError> {
        let points = r.as_array().ok_or_else(|| {
            bad_area(format!(
                "polygon {index}, {which}: not an array of positions"
            ))
        })?;
        if points.len() > *budget {
            return Err(bad_area(
                "area: more points than the configured max_area_vertices",
            ));
        }
        *budget -= points.len();
        if points.len() < 4 {
            return Err(bad_area(format!(
                "polygon {index}, {which}: a ring needs at least 4 positions (3 corners and the \
                 first again)"
            )));
        }
        let mut coords = Vec::with_capacity(points.len());
        for (j, p) in points.iter().enumerate() {
            let nums: Option<Vec<f64>> = p
                .as_array()
                .map(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                .unwrap_or(None);
            let Some(n) = nums.filter(|n| (2..=3).contains(&n.len())) else {
                return Err(bad_area(format!(
                    "polygon {index}, {which}, position {j}: [longitude, latitude] in degrees"
                )));
            };
            let (x, y) = (n[0], n[1]);
            if !(-180.0..=180.0).contains(&x) || !(-90.0..=90.0).contains(&y) {
                return Err(bad_area(format!(
                    "polygon {index}, {which}, position {j}: longitude must be in -180..=180 and \
                     latitude in -90..=90 (GeoJSON is [longitude, latitude])"
                )));
            }
            coords.push(Coord { x, y });
        }
        if coords.first() != coords.last() {
            return Err(bad_area(format!(
                "polygon {index}, {which}: the ring is not closed (its last position must repeat \
                 the first)"
            )));
        }
        Ok(LineString(coords))
    };
    let exterior = ring(outer, "exterior ring".into(), budget)?;
    let interiors = inner
        .iter()
        .enumerate()
        .map(|(k, r)| ring(r, format!("hole {k}"), budget))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Polygon::new(exterior, interiors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-12-01T00:00:00Z.
    const NOW: i64 = 1_796_083_200_000;

    fn pilots(max_cells: usize) -> Pilots {
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::memory::InMemory::new());
        Pilots::new(
            Lake::from_store(store),
            PilotsConfig {
                max_area_cells: max_cells,
                ..PilotsConfig::default()
            },
        )
        .unwrap()
    }

    fn square(west: f64, south: f64, size: f64) -> Value {
        json!({"type": "Polygon", "coordinates": [[[west, south], [west + size, south],
            [west + size, south + size], [west, south + size], [west, south]]]})
    }

    fn new(area: Value) -> NewPilot {
        NewPilot {
            name: "Kreuzberg rooftops".into(),
            area: Some(area),
            cells: None,
            start: "2026-12-01T00:00:00Z".into(),
            end: None,
            baseline: None,
        }
    }

    fn code(e: PilotError) -> String {
        match e {
            ObjectError::Invalid { code, message } => format!("{code}: {message}"),
            other => other.to_string(),
        }
    }

    #[test]
    fn a_polygon_becomes_the_cells_whose_centres_lie_inside() {
        let p = pilots(20_000);
        let pilot = p.build(new(square(13.38, 52.48, 0.06)), "op", NOW).unwrap();
        // About 0.06° x 0.06° at 52.5° N: 4.1 km x 6.7 km, 27 km², some 37 cells of 0.74 km².
        assert!(
            (25..=50).contains(&pilot.cells.len()),
            "{}",
            pilot.cells.len()
        );
        for c in &pilot.cells {
            let cell = CellIndex::from_str(c).unwrap();
            assert_eq!(cell.resolution(), Resolution::Eight);
            let ll = h3o::LatLng::from(cell);
            assert!((13.38..13.44).contains(&ll.lng()) && (52.48..52.54).contains(&ll.lat()));
        }
        assert!(pilot.baseline_is_default);
        assert_eq!(pilot.baseline, Baseline::default());
        assert_eq!(pilot.start, "2026-12-01T00:00:00.000Z");
    }

    #[test]
    fn bad_areas_are_refused_with_their_reason() {
        let p = pilots(100);
        let bowtie = json!({"type": "Polygon", "coordinates": [[[13.3, 52.4], [13.5, 52.6],
            [13.5, 52.4], [13.3, 52.6], [13.3, 52.4]]]});
        let e = code(p.build(new(bowtie), "op", NOW).unwrap_err());
        assert!(
            e.starts_with("bad_area") && e.contains("self-intersection"),
            "{e}"
        );
        let open = json!({"type": "Polygon", "coordinates": [[[13.3, 52.4], [13.5, 52.4], [13.5, 52.6], [13.3, 52.6]]]});
        let e = code(p.build(new(open), "op", NOW).unwrap_err());
        assert!(e.contains("not closed"), "{e}");
        let swapped = square(52.4, 13.3, 0.03);
        assert!(
            p.build(new(swapped), "op", NOW).is_ok(),
            "lat/lng swapped is a valid place"
        );
        let out = square(179.0, 89.5, 2.0);
        assert!(code(p.build(new(out), "op", NOW).unwrap_err()).contains("longitude must be"));
        let point = json!({"type": "Point", "coordinates": [13.4, 52.5]});
        assert!(code(p.build(new(point), "op", NOW).unwrap_err()).contains("has no area"));
        let e = code(
            p.build(new(square(13.0, 52.0, 2.0)), "op", NOW)
                .unwrap_err(),
        );
        assert!(e.starts_with("area_too_large: "), "{e}");
        let e = code(p.build(new(json!("Berlin")), "op", NOW).unwrap_err());
        assert!(e.starts_with("bad_area"), "{e}");
        let tiny = square(13.4, 52.5, 0.0001);
        assert!(code(p.build(new(tiny), "op", NOW).unwrap_err()).contains("no cell"));
        let mut both = new(square(13.38, 52.48, 0.06));
        both.cells = Some(vec![]);
        assert!(code(p.build(both, "op", NOW).unwrap_err()).contains("one of them"));
        let mut late = new(square(13.38, 52.48, 0.06));
        late.end = Some("2026-11-01T00:00:00Z".into());
        assert!(code(p.build(late, "op", NOW).unwrap_err()).contains("after start"));
    }

    #[test]
    fn vertices_are_bounded_before_anything_is_computed() {
        let p = pilots(20_000);
        let ring: Vec<Value> = (0..=6000)
            .map(|i| {
                let a = (i % 6000) as f64 / 6000.0 * std::f64::consts::TAU;
                json!([13.4 + 0.05 * a.cos(), 52.5 + 0.05 * a.sin()])
            })
            .collect();
        let e = code(
            p.build(
                new(json!({"type": "Polygon", "coordinates": [ring]})),
                "op",
                NOW,
            )
            .unwrap_err(),
        );
        assert!(e.contains("max_area_vertices"), "{e}");
    }

    #[test]
    fn listed_cells_are_brought_to_the_pilots_resolution() {
        let p = pilots(20_000);
        let r7 = h3o::LatLng::new(52.5, 13.4)
            .unwrap()
            .to_cell(Resolution::Seven);
        let r10 = h3o::LatLng::new(52.52, 13.45)
            .unwrap()
            .to_cell(Resolution::Ten);
        let mut n = new(Value::Null);
        n.area = None;
        n.cells = Some(vec![r7.to_string(), r10.to_string()]);
        let pilot = p.build(n, "op", NOW).unwrap();
        let mut expected: BTreeSet<CellIndex> = r7.children(Resolution::Eight).collect();
        expected.insert(r10.parent(Resolution::Eight).unwrap());
        let expected: Vec<String> = expected.iter().map(ToString::to_string).collect();
        assert_eq!(pilot.cells, expected);
        let mut bad = new(Value::Null);
        bad.area = None;
        bad.cells = Some(vec!["not-a-cell".into()]);
        assert!(code(p.build(bad, "op", NOW).unwrap_err()).contains("cells[0]"));
        let mut huge = new(Value::Null);
        huge.area = None;
        huge.cells = Some(vec![r7.parent(Resolution::Zero).unwrap().to_string()]);
        let e = code(p.build(huge, "op", NOW).unwrap_err());
        assert!(e.starts_with("area_too_large: "), "{e}");
    }

    #[tokio::test]
    async fn pilots_are_stored_listed_and_deleted() {
        let p = pilots(20_000);
        let a = p
            .create(new(square(13.38, 52.48, 0.06)), "op", NOW + 1_000)
            .await
            .unwrap();
        let mut other = new(square(13.2, 52.4, 0.05));
        other.name = "Spandau".into();
        other.baseline = Some(Baseline {
            cost_per_site_usd: 250_000.0,
            days_to_deploy: 120.0,
        });
        let b = p.create(other, "op", NOW + 2_000).await.unwrap();
        assert!(!b.baseline_is_default);
        assert_eq!(p.list().await.unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(p.get(&a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(p.get("../../etc/passwd").await.unwrap(), None);
        assert!(p.delete(&a.id).await.unwrap());
        assert!(!p.delete(&a.id).await.unwrap());
        assert_eq!(p.list().await.unwrap(), vec![b]);
    }

    #[tokio::test]
    async fn the_number_of_pilots_is_bounded() {
        let mut p = pilots(20_000);
        p.cfg.max_pilots = 1;
        p.create(new(square(13.38, 52.48, 0.06)), "op", NOW + 1)
            .await
            .unwrap();
        let e = p
            .create(new(square(13.2, 52.4, 0.05)), "op", NOW + 2)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ObjectError::Full { code: "too_many_pilots", message }
                if message.starts_with("1 pilots are stored")),
            "{e}"
        );
    }
}
