//! H3 functions for SQL, backed by h3o.
//!
//! | function | arguments | result |
//! |---|---|---|
//! | `h3_latlng_to_cell(lat, lng, res)` | degrees, degrees, 0..=15 | `UInt64` cell |
//! | `h3_lake_cell(lat, lng, res)` | degrees, degrees, 0..=the finest stored | `UInt64`: the cell the lake stores for the point (TABLES.md's parent rule: the parent at `res` of the point's cell at the finest stored resolution) |
//! | `h3_cell_to_parent(cell, res)` | cell, coarser resolution | `UInt64` cell |
//! | `h3_cell_to_string(cell)` | cell | `Utf8`, the usual hex form (`882a100d25fffff`) |
//! | `h3_string_to_cell(text)` | hex form | `UInt64` cell |
//! | `h3_cell_to_boundary(cell)` | cell | `Utf8`, a GeoJSON Polygon geometry (lng, lat; closed ring) |
//! | `h3_grid_disk(cell, k)` | cell, k ≥ 0 | `List<UInt64>`: the cells within k steps |
//! | `h3_grid_distance(a, b)` | cell, cell | `Int64` steps between them |
//! | `h3_cell_resolution(cell)` | cell | `Int64` |
//! | `h3_cell_to_lat(cell)`, `h3_cell_to_lng(cell)` | cell | `Float64`, the centre |
//!
//! Arguments are coerced (any number for degrees, any integer for cells and resolutions). Data
//! problems give NULL rather than failing the query: an invalid cell index or text, a latitude or
//! longitude out of range, a "parent" finer than the cell, cells too far apart for a distance. A
//! resolution outside 0..=15 or a negative or huge `k` is a mistake in the query itself and fails it
//! with a clear error.

use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, ListBuilder, StringArray, UInt64Array,
    UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, UInt64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use h3o::{CellIndex, LatLng, Resolution};

/// The largest `k` of `h3_grid_disk` (a disk of k has 3k(k+1)+1 cells).
pub const MAX_DISK_K: i64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    LatLngToCell,
    LakeCell,
    CellToParent,
    CellToString,
    StringToCell,
    CellToBoundary,
    GridDisk,
    GridDistance,
    CellResolution,
    CellToLat,
    CellToLng,
}

impl Op {
    const ALL: [Op; 11] = [
        Op::LatLngToCell,
        Op::LakeCell,
        Op::CellToParent,
        Op::CellToString,
        Op::StringToCell,
        Op::CellToBoundary,
        Op::GridDisk,
        Op::GridDistance,
        Op::CellResolution,
        Op::CellToLat,
        Op::CellToLng,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::LatLngToCell => "h3_latlng_to_cell",
            Op::LakeCell => "h3_lake_cell",
            Op::CellToParent => "h3_cell_to_parent",
            Op::CellToString => "h3_cell_to_string",
            Op::StringToCell => "h3_string_to_cell",
            Op::CellToBoundary => "h3_cell_to_boundary",
            Op::GridDisk => "h3_grid_disk",
            Op::GridDistance => "h3_grid_distance",
            Op::CellResolution => "h3_cell_resolution",
            Op::CellToLat => "h3_cell_to_lat",
            Op::CellToLng => "h3_cell_to_lng",
        }
    }

    /// The argument types the inputs are coerced to.
    fn inputs(self) -> Vec<DataType> {
        use DataType::*;
        match self {
            Op::LatLngToCell | Op::LakeCell => vec![Float64, Float64, Int64],
            Op::CellToParent | Op::GridDisk => vec![UInt64, Int64],
            Op::StringToCell => vec![Utf8],
            Op::GridDistance => vec![UInt64, UInt64],
            Op::CellToString
            | Op::CellToBoundary
            | Op::CellResolution
            | Op::CellToLat
            | Op::CellToLng => vec![UInt64],
        }
    }

    fn output(self) -> DataType {
        match self {
            Op::LatLngToCell | Op::LakeCell | Op::CellToParent | Op::StringToCell => {
                DataType::UInt64
            }
            Op::CellToString | Op::CellToBoundary => DataType::Utf8,
            Op::GridDisk => DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true))),
            Op::GridDistance | Op::CellResolution => DataType::Int64,
            Op::CellToLat | Op::CellToLng => DataType::Float64,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct H3Udf {
    op: Op,
    /// The finest resolution the lake stores (for `h3_lake_cell`).
    finest: Resolution,
    signature: Signature,
}

impl ScalarUDFImpl for H3Udf {
    fn name(&self) -> &str {
        self.op.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.op.output())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let want = self.op.inputs();
        if arg_types.len() != want.len() {
            return plan_err!(
                "{} takes {} argument(s), got {}",
                self.op.name(),
                want.len(),
                arg_types.len()
            );
        }
        for (got, w) in arg_types.iter().zip(&want) {
            let ok = match w {
                DataType::Utf8 => matches!(
                    got,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
                ),
                DataType::Float64 => got.is_numeric() || got.is_null(),
                _ => got.is_integer() || got.is_null(),
            };
            if !ok {
                return plan_err!(
                    "{}: an argument of type {got} cannot be used where {w} is expected",
                    self.op.name()
                );
            }
        }
        Ok(want)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out = eval(self.op, self.finest, &arrays)?;
        Ok(ColumnarValue::Array(out))
    }
}

/// Registers every H3 function with `ctx`; `finest` is the finest resolution the lake stores (the
/// parent rule's F, for `h3_lake_cell`; registering again replaces the functions).
pub fn register(ctx: &SessionContext, finest: u8) {
    let finest = Resolution::try_from(finest.min(15)).unwrap_or(Resolution::Twelve);
    for op in Op::ALL {
        ctx.register_udf(ScalarUDF::new_from_impl(H3Udf {
            op,
            finest,
            signature: Signature::user_defined(Volatility::Immutable),
        }));
    }
}

/// The names of the registered functions (for docs and the OpenAPI description).
pub fn names() -> Vec<&'static str> {
    Op::ALL.iter().map(|o| o.name()).collect()
}

fn resolution(op: Op, r: i64) -> Result<Resolution> {
    match u8::try_from(r)
        .ok()
        .and_then(|r| Resolution::try_from(r).ok())
    {
        Some(r) => Ok(r),
        None => exec_err!("{}: resolution {r} is outside 0..=15", op.name()),
    }
}

fn cell(v: u64) -> Option<CellIndex> {
    CellIndex::try_from(v).ok()
}

fn u64s(a: &ArrayRef) -> &datafusion::arrow::array::PrimitiveArray<UInt64Type> {
    a.as_primitive::<UInt64Type>()
}

/// Per row: the value of a unary cell function, NULL where the input is NULL or not a cell.
fn map_cells<T>(
    a: &ArrayRef,
    f: impl Fn(CellIndex) -> Option<T>,
) -> impl Iterator<Item = Option<T>> {
    u64s(a).iter().map(move |v| v.and_then(cell).and_then(&f))
}

/// The boundary of `c` as an RFC 7946 exterior ring: [lng, lat] positions, closed (first = last),
/// counter-clockwise. (Cells crossing the antimeridian are not split.)
pub fn cell_ring(c: CellIndex) -> Vec<[f64; 2]> {
    let mut ring: Vec<[f64; 2]> = c.boundary().iter().map(|p| [p.lng(), p.lat()]).collect();
    let area2: f64 = (0..ring.len())
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % ring.len()]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    if area2 < 0.0 {
        ring.reverse();
    }
    if let Some(first) = ring.first().copied() {
        ring.push(first);
    }
    ring
}

fn boundary_geojson(c: CellIndex) -> String {
    serde_json::json!({"type": "Polygon", "coordinates": [cell_ring(c)]}).to_string()
}

fn eval(op: Op, finest: Resolution, a: &[ArrayRef]) -> Result<ArrayRef> {
    Ok(match op {
        Op::LatLngToCell | Op::LakeCell => {
            let (lat, lng) = (
                a[0].as_primitive::<Float64Type>(),
                a[1].as_primitive::<Float64Type>(),
            );
            let res = a[2].as_primitive::<Int64Type>();
            let mut out = UInt64Builder::with_capacity(lat.len());
            for i in 0..lat.len() {
                if lat.is_null(i) || lng.is_null(i) || res.is_null(i) {
                    out.append_null();
                    continue;
                }
                let r = resolution(op, res.value(i))?;
                if op == Op::LakeCell && r > finest {
                    return exec_err!(
                        "h3_lake_cell: the lake stores cells down to resolution {finest}, not {r}"
                    );
                }
                match LatLng::new(lat.value(i), lng.value(i)) {
                    Ok(ll)
                        if (-90.0..=90.0).contains(&lat.value(i))
                            && (-180.0..=180.0).contains(&lng.value(i)) =>
                    {
                        let c = match op {
                            Op::LakeCell => ll.to_cell(finest).parent(r),
                            _ => Some(ll.to_cell(r)),
                        };
                        out.append_option(c.map(u64::from));
                    }
                    _ => out.append_null(),
                }
            }
            Arc::new(out.finish())
        }
        Op::CellToParent => {
            let (cells, res) = (u64s(&a[0]), a[1].as_primitive::<Int64Type>());
            let mut out = UInt64Builder::with_capacity(cells.len());
            for i in 0..cells.len() {
                if cells.is_null(i) || res.is_null(i) {
                    out.append_null();
                    continue;
                }
                let r = resolution(op, res.value(i))?;
                out.append_option(
                    cell(cells.value(i))
                        .and_then(|c| c.parent(r))
                        .map(u64::from),
                );
            }
            Arc::new(out.finish())
        }
        Op::CellToString => Arc::new(StringArray::from_iter(map_cells(&a[0], |c| {
            Some(c.to_string())
        }))),
        Op::StringToCell => {
            let texts = datafusion::arrow::compute::cast(&a[0], &DataType::Utf8)?;
            Arc::new(UInt64Array::from_iter(texts.as_string::<i32>().iter().map(
                |t| {
                    t.and_then(|t| CellIndex::from_str(t.trim()).ok())
                        .map(u64::from)
                },
            )))
        }
        Op::CellToBoundary => Arc::new(StringArray::from_iter(map_cells(&a[0], |c| {
            Some(boundary_geojson(c))
        }))),
        Op::GridDisk => {
            let (cells, ks) = (u64s(&a[0]), a[1].as_primitive::<Int64Type>());
            let mut out = ListBuilder::new(UInt64Builder::new());
            for i in 0..cells.len() {
                if cells.is_null(i) || ks.is_null(i) {
                    out.append_null();
                    continue;
                }
                let k = ks.value(i);
                if !(0..=MAX_DISK_K).contains(&k) {
                    return exec_err!("h3_grid_disk: k = {k} is outside 0..={MAX_DISK_K}");
                }
                match cell(cells.value(i)) {
                    Some(c) => {
                        let mut disk: Vec<u64> = c
                            .grid_disk::<Vec<_>>(k as u32)
                            .into_iter()
                            .map(u64::from)
                            .collect();
                        disk.sort_unstable();
                        out.values().append_slice(&disk);
                        out.append(true);
                    }
                    None => out.append_null(),
                }
            }
            Arc::new(out.finish())
        }
        Op::GridDistance => {
            let (x, y) = (u64s(&a[0]), u64s(&a[1]));
            Arc::new(Int64Array::from_iter((0..x.len()).map(|i| {
                if x.is_null(i) || y.is_null(i) {
                    return None;
                }
                let (p, q) = (cell(x.value(i))?, cell(y.value(i))?);
                p.grid_distance(q).ok().map(i64::from)
            })))
        }
        Op::CellResolution => Arc::new(Int64Array::from_iter(map_cells(&a[0], |c| {
            Some(i64::from(u8::from(c.resolution())))
        }))),
        Op::CellToLat => Arc::new(Float64Array::from_iter(map_cells(&a[0], |c| {
            Some(LatLng::from(c).lat())
        }))),
        Op::CellToLng => Arc::new(Float64Array::from_iter(map_cells(&a[0], |c| {
            Some(LatLng::from(c).lng())
        }))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn functions_work_on_columns_and_literals() {
        let ctx = SessionContext::new();
        register(&ctx, 12);
        let df = ctx
            .sql("SELECT h3_cell_to_string(h3_latlng_to_cell(48.8566, 2.3522, 8)) AS s")
            .await
            .unwrap();
        let b = df.collect().await.unwrap();
        let s = b[0].column(0).as_string::<i32>().value(0).to_string();
        let expect = LatLng::new(48.8566, 2.3522)
            .unwrap()
            .to_cell(Resolution::Eight)
            .to_string();
        assert_eq!(s, expect);
        let err = ctx
            .sql("SELECT h3_latlng_to_cell(1.0, 2.0, 16)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("outside 0..=15"), "{err}");
    }
}
