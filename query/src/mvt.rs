//! Mapbox Vector Tiles (spec 2.1) for hex layers: the protobuf messages, Web-Mercator tile maths and
//! polygon encoding. Only what hex polygons with scalar properties need.

use std::collections::HashMap;

use prost::Message;

pub const EXTENT: u32 = 4096;

#[derive(Clone, PartialEq, Message)]
pub struct Tile {
    #[prost(message, repeated, tag = "3")]
    pub layers: Vec<Layer>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Layer {
    #[prost(uint32, required, tag = "15")]
    pub version: u32,
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub features: Vec<Feature>,
    #[prost(string, repeated, tag = "3")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub values: Vec<Value>,
    #[prost(uint32, optional, tag = "5")]
    pub extent: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Feature {
    #[prost(uint64, optional, tag = "1")]
    pub id: Option<u64>,
    #[prost(uint32, repeated, packed = "true", tag = "2")]
    pub tags: Vec<u32>,
    /// 3 = POLYGON.
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
    #[prost(uint32, repeated, packed = "true", tag = "4")]
    pub geometry: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Value {
    #[prost(string, optional, tag = "1")]
    pub string_value: Option<String>,
    #[prost(double, optional, tag = "3")]
    pub double_value: Option<f64>,
    #[prost(uint64, optional, tag = "5")]
    pub uint_value: Option<u64>,
}

/// A property value of a feature.
#[derive(Debug, Clone, PartialEq)]
pub enum Prop {
    Str(String),
    F64(f64),
    U64(u64),
}

impl Prop {
    fn key(&self) -> String {
        match self {
            Prop::Str(s) => format!("s:{s}"),
            Prop::F64(f) => format!("f:{}", f.to_bits()),
            Prop::U64(u) => format!("u:{u}"),
        }
    }
    fn value(&self) -> Value {
        let mut v = Value::default();
        match self {
            Prop::Str(s) => v.string_value = Some(s.clone()),
            Prop::F64(f) => v.double_value = Some(*f),
            Prop::U64(u) => v.uint_value = Some(*u),
        }
        v
    }
}

/// The bounds of tile z/x/y: (west, south, east, north) in degrees.
pub fn tile_bounds(z: u8, x: u32, y: u32) -> (f64, f64, f64, f64) {
    let n = f64::from(1u32 << z);
    let lng = |x: f64| x / n * 360.0 - 180.0;
    let lat = |y: f64| {
        let t = std::f64::consts::PI * (1.0 - 2.0 * y / n);
        t.sinh().atan().to_degrees()
    };
    (
        lng(f64::from(x)),
        lat(f64::from(y + 1)),
        lng(f64::from(x + 1)),
        lat(f64::from(y)),
    )
}

/// Whether z/x/y names a tile.
pub fn valid_tile(z: u8, x: u32, y: u32) -> bool {
    z <= 24 && x < (1u32 << z) && y < (1u32 << z)
}

/// (lat, lng) → tile pixel coordinates (may fall outside 0..EXTENT for shapes crossing the edge).
fn project(z: u8, x: u32, y: u32, lat: f64, lng: f64) -> (i64, i64) {
    let n = f64::from(1u32 << z);
    let lat = lat.clamp(-85.051_128, 85.051_128).to_radians();
    let wx = (lng + 180.0) / 360.0 * n;
    let wy = (1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n;
    let e = f64::from(EXTENT);
    (
        ((wx - f64::from(x)) * e).round() as i64,
        ((wy - f64::from(y)) * e).round() as i64,
    )
}

fn zigzag(v: i64) -> u32 {
    ((v << 1) ^ (v >> 63)) as u32
}

fn command(id: u32, count: u32) -> u32 {
    (id & 0x7) | (count << 3)
}

/// Geometry commands of one polygon ring given as (lat, lng) vertices (not closed).
pub fn polygon(z: u8, x: u32, y: u32, ring: &[(f64, f64)]) -> Vec<u32> {
    let mut pts: Vec<(i64, i64)> = ring
        .iter()
        .map(|(la, ln)| project(z, x, y, *la, *ln))
        .collect();
    pts.dedup();
    if pts.len() < 3 {
        return Vec::new();
    }
    // Exterior rings wind clockwise in tile coordinates (y down): positive shoelace area.
    let area: i64 = (0..pts.len())
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    if area < 0 {
        pts.reverse();
    }
    let mut out = Vec::with_capacity(pts.len() * 2 + 3);
    let mut cur = (0i64, 0i64);
    out.push(command(1, 1));
    out.push(zigzag(pts[0].0 - cur.0));
    out.push(zigzag(pts[0].1 - cur.1));
    cur = pts[0];
    out.push(command(2, (pts.len() - 1) as u32));
    for p in &pts[1..] {
        out.push(zigzag(p.0 - cur.0));
        out.push(zigzag(p.1 - cur.1));
        cur = *p;
    }
    out.push(command(7, 1));
    out
}

/// Builds one layer from features: (id, ring, properties).
pub struct LayerBuilder {
    layer: Layer,
    keys: HashMap<String, u32>,
    values: HashMap<String, u32>,
    z: u8,
    x: u32,
    y: u32,
}

impl LayerBuilder {
    pub fn new(name: &str, z: u8, x: u32, y: u32) -> LayerBuilder {
        LayerBuilder {
            layer: Layer {
                version: 2,
                name: name.into(),
                extent: Some(EXTENT),
                ..Default::default()
            },
            keys: HashMap::new(),
            values: HashMap::new(),
            z,
            x,
            y,
        }
    }

    pub fn add(&mut self, id: u64, ring: &[(f64, f64)], props: &[(&str, Prop)]) {
        let geometry = polygon(self.z, self.x, self.y, ring);
        if geometry.is_empty() {
            return;
        }
        let mut tags = Vec::with_capacity(props.len() * 2);
        for (k, v) in props {
            let ki = *self.keys.entry((*k).to_string()).or_insert_with(|| {
                self.layer.keys.push((*k).to_string());
                (self.layer.keys.len() - 1) as u32
            });
            let vi = *self.values.entry(v.key()).or_insert_with(|| {
                self.layer.values.push(v.value());
                (self.layer.values.len() - 1) as u32
            });
            tags.push(ki);
            tags.push(vi);
        }
        self.layer.features.push(Feature {
            id: Some(id),
            tags,
            r#type: Some(3),
            geometry,
        });
    }

    pub fn len(&self) -> usize {
        self.layer.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layer.features.is_empty()
    }

    pub fn encode(self) -> Vec<u8> {
        Tile {
            layers: vec![self.layer],
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_and_polygons() {
        let (w, s, e, n) = tile_bounds(0, 0, 0);
        assert_eq!((w, e), (-180.0, 180.0));
        assert!((n - 85.0511).abs() < 1e-3 && (s + 85.0511).abs() < 1e-3);
        assert!(valid_tile(2, 3, 3) && !valid_tile(2, 4, 0));
        // A square in tile 1/0/0 (north-west quarter) encodes as MoveTo, LineTo x3, ClosePath.
        let (w, s, e, n) = tile_bounds(1, 0, 0);
        let ring = [
            (n - 10.0, w + 10.0),
            (n - 10.0, e - 10.0),
            (s + 10.0, e - 10.0),
            (s + 10.0, w + 10.0),
        ];
        let g = polygon(1, 0, 0, &ring);
        assert_eq!(g[0], command(1, 1));
        assert_eq!(g[3], command(2, 3));
        assert_eq!(*g.last().unwrap(), command(7, 1));
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        let mut l = LayerBuilder::new("coverage", 1, 0, 0);
        l.add(
            7,
            &ring,
            &[("devices", Prop::U64(3)), ("cell", Prop::Str("x".into()))],
        );
        let bytes = l.encode();
        let t = Tile::decode(bytes.as_slice()).unwrap();
        assert_eq!(t.layers[0].features.len(), 1);
        assert_eq!(t.layers[0].keys, vec!["devices", "cell"]);
    }
}
