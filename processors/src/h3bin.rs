//! H3 binning with h3o: the finest configured resolution is computed once per row, coarser ones are
//! its parents (about 5 ns each instead of about 1 µs for a cell from coordinates).

use h3o::{LatLng, Resolution};

/// Bins points at a fixed list of resolutions.
#[derive(Debug, Clone)]
pub struct Binner {
    /// Configured resolutions, in the caller's order.
    resolutions: Vec<Resolution>,
    finest: Resolution,
}

/// One device's last point and its cells ([`Binner::cells_at`]): hotspots and sensors report from
/// where they are installed, so most rows repeat their device's last point exactly. It lives in the
/// device's validation state ([`crate::validate::DeviceState`]), which the record's checks have
/// just read: a map of its own cost a cache miss per record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastPoint(Option<((u64, u64), Cells)>);

#[derive(Debug, thiserror::Error)]
#[error("invalid H3 resolutions (each 0..=15, one to {MAX_RESOLUTIONS} of them): {0}")]
pub struct BadResolution(u8);

/// At most this many resolutions are binned (cells live inline in each row, no allocation).
pub const MAX_RESOLUTIONS: usize = 4;

/// The cells of one point, one per configured resolution, in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cells {
    len: u8,
    cells: [u64; MAX_RESOLUTIONS],
}

impl std::ops::Deref for Cells {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        &self.cells[..self.len as usize]
    }
}

impl Binner {
    pub fn new(resolutions: &[u8]) -> Result<Binner, BadResolution> {
        if resolutions.len() > MAX_RESOLUTIONS {
            return Err(BadResolution(resolutions.len() as u8));
        }
        let resolutions: Vec<Resolution> = resolutions
            .iter()
            .map(|r| Resolution::try_from(*r).map_err(|_| BadResolution(*r)))
            .collect::<Result<_, _>>()?;
        let finest = resolutions
            .iter()
            .copied()
            .max()
            .ok_or(BadResolution(255))?;
        Ok(Binner {
            resolutions,
            finest,
        })
    }

    /// [`Binner::cells`] of a point reported by a device whose last point is `last`, which it
    /// updates: computing a cell costs about 1 µs, the largest part of a row's processing before
    /// this cache (load-tests/RESULTS.md, the processor profile of issue #26). Same answers as
    /// `cells`.
    pub fn cells_at(&self, last: &mut LastPoint, lat: f64, lng: f64) -> Option<Cells> {
        let point = (lat.to_bits(), lng.to_bits());
        if let Some((p, cells)) = last.0
            && p == point
        {
            return Some(cells);
        }
        let cells = self.cells(lat, lng)?;
        last.0 = Some((point, cells));
        Some(cells)
    }

    /// Cells of `(lat, lng)` at each resolution, or `None` for a point h3o refuses.
    pub fn cells(&self, lat: f64, lng: f64) -> Option<Cells> {
        let cell = LatLng::new(lat, lng).ok()?.to_cell(self.finest);
        let mut out = Cells {
            len: self.resolutions.len() as u8,
            cells: [0; MAX_RESOLUTIONS],
        };
        for (slot, r) in out.cells.iter_mut().zip(&self.resolutions) {
            *slot = u64::from(cell.parent(*r)?);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from the H3 reference library (`h3.latlng_to_cell` in h3-py 4.x).
    #[test]
    fn cells_match_reference_values() {
        let b = Binner::new(&[9, 5, 0]).unwrap();
        // San Francisco, the example of the H3 documentation.
        let sf = b.cells(37.7752702151959, -122.418307270836).unwrap();
        assert_eq!(format!("{:x}", sf[0]), "8928308280fffff");
        // Coarser cells are the parents.
        assert_eq!(format!("{:x}", sf[1]), "85283083fffffff");
        assert_eq!(format!("{:x}", sf[2]), "8029fffffffffff");
        assert!(b.cells(f64::NAN, 0.0).is_none());
        // The lake's default resolutions, at points on four continents and near the pole.
        let lake = Binner::new(&[12, 8]).unwrap();
        for (lat, lng, r12, r8) in [
            (52.52, 13.405, "8c1f1d48945d9ff", "881f1d4895fffff"),
            (-33.8688, 151.2093, "8cbe0e35cbad1ff", "88be0e35cbfffff"),
            (0.5, 0.5, "8c754e8ed3741ff", "88754e8ed3fffff"),
            (89.9, -179.9, "8c03262a696b5ff", "8803262a69fffff"),
        ] {
            let c = lake.cells(lat, lng).unwrap();
            assert_eq!(
                (
                    format!("{:x}", c[0]).as_str(),
                    format!("{:x}", c[1]).as_str()
                ),
                (r12, r8),
                "({lat}, {lng})"
            );
        }
    }

    /// A device's last point gives the cells `cells` computes, for a device that stays, moves, and
    /// comes back.
    #[test]
    fn cells_at_a_last_point_equal_the_cells_of_the_point() {
        let b = Binner::new(&[12, 8]).unwrap();
        let (mut k1, mut k2) = (LastPoint::default(), LastPoint::default());
        let points = [
            (52.52, 13.405),
            (52.52, 13.405),
            (-33.8688, 151.2093),
            (52.52, 13.405),
        ];
        for (lat, lng) in points {
            assert_eq!(
                b.cells_at(&mut k1, lat, lng),
                b.cells(lat, lng),
                "({lat}, {lng})"
            );
            assert_eq!(
                b.cells_at(&mut k2, lng, lat),
                b.cells(lng, lat),
                "({lng}, {lat})"
            );
        }
        assert_eq!(b.cells_at(&mut k1, f64::NAN, 0.0), None);
        assert_eq!(b.cells_at(&mut k1, 52.52, 13.405), b.cells(52.52, 13.405));
    }
}
