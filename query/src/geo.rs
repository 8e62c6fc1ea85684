//! The hexes of an answer, as GeoJSON features and as vector-tile features with the same
//! properties (the HTTP handlers in [`crate::http`] only choose which).

use h3o::{CellIndex, LatLng};
use serde_json::{Value, json};

use crate::mvt;
use crate::params::Bbox;

fn ring(cell: CellIndex) -> Vec<(f64, f64)> {
    cell.boundary().iter().map(|p| (p.lat(), p.lng())).collect()
}

fn geometry(cell: CellIndex) -> Value {
    json!({"type": "Polygon", "coordinates": [crate::udf::cell_ring(cell)]})
}

pub(crate) fn centre_in(bbox: &Bbox, cell: CellIndex) -> bool {
    let c = LatLng::from(cell);
    bbox.contains(c.lat(), c.lng())
}

/// One hex of an answer: its cell and properties.
pub(crate) struct Hex {
    pub(crate) cell: CellIndex,
    pub(crate) props: serde_json::Map<String, Value>,
}

impl Hex {
    pub(crate) fn new(cell: CellIndex) -> Hex {
        let mut props = serde_json::Map::new();
        props.insert("cell".into(), cell.to_string().into());
        props.insert("res".into(), u8::from(cell.resolution()).into());
        Hex { cell, props }
    }
    pub(crate) fn set(&mut self, k: &str, v: impl Into<Value>) {
        self.props.insert(k.into(), v.into());
    }
}

/// Adds a hex to a vector-tile layer with the same properties its GeoJSON feature has (NULLs are
/// left out: MVT has no null).
pub(crate) fn add_to_tile(lb: &mut mvt::LayerBuilder, h: &Hex) {
    let props: Vec<(&str, mvt::Prop)> = h
        .props
        .iter()
        .filter_map(|(k, v)| {
            let p = match v {
                Value::String(s) => mvt::Prop::Str(s.clone()),
                Value::Number(n) => match n.as_u64() {
                    Some(u) => mvt::Prop::U64(u),
                    None => mvt::Prop::F64(n.as_f64()?),
                },
                _ => return None,
            };
            Some((k.as_str(), p))
        })
        .collect();
    lb.add(u64::from(h.cell), &ring(h.cell), &props);
}

/// The GeoJSON `FeatureCollection` of `hexes`, with the answer's freshness and `extra` members.
pub(crate) fn feature_collection(hexes: Vec<Hex>, fresh: Value, extra: Value) -> Value {
    let features: Vec<Value> = hexes
        .into_iter()
        .map(|h| {
            json!({
                "type": "Feature",
                "id": h.cell.to_string(),
                "geometry": geometry(h.cell),
                "properties": Value::Object(h.props),
            })
        })
        .collect();
    let mut body = json!({"type": "FeatureCollection", "features": features, "freshness": fresh});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}
