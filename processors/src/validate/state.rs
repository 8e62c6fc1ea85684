//! Per-device validation state.

use rustc_hash::FxHashMap as HashMap;

/// What a partition remembers of one device: stored sequence numbers (with their device time, for
/// pruning), the last valid position, and valid readings per rate window.
#[derive(Debug, Default, Clone)]
pub struct DeviceState {
    seqs: HashMap<u64, i64>,
    /// (device time ms, lat, lng) of the latest valid reading by device time.
    pub last: Option<(i64, f64, f64)>,
    /// Valid readings per rate window (window index = device time / window length).
    windows: HashMap<i64, u32>,
}

impl DeviceState {
    pub fn has_seq(&self, seq: u64) -> bool {
        self.seqs.contains_key(&seq)
    }

    pub fn count_in_window(&self, event_ms: i64, window_ms: i64) -> u32 {
        self.windows
            .get(&event_ms.div_euclid(window_ms))
            .copied()
            .unwrap_or(0)
    }

    /// Takes in a valid reading. A reading is counted once in its rate window however often it is
    /// fed: a state rebuild feeds one row per lake row, and a sensor reading has a row per
    /// measurement (counting those made a device look over its rate after a rebalance).
    pub fn accept(&mut self, seq: u64, event_ms: i64, lat: f64, lng: f64, window_ms: i64) {
        if self.seqs.insert(seq, event_ms).is_none() {
            *self
                .windows
                .entry(event_ms.div_euclid(window_ms))
                .or_default() += 1;
        }
        if self.last.is_none_or(|(t, _, _)| event_ms >= t) {
            self.last = Some((event_ms, lat, lng));
        }
    }

    /// Drops what is older than `horizon_ms`; returns whether anything is left.
    pub fn prune(&mut self, horizon_ms: i64, window_ms: i64) -> bool {
        self.seqs.retain(|_, t| *t >= horizon_ms);
        self.windows
            .retain(|w, _| (*w + 1) * window_ms >= horizon_ms);
        !self.seqs.is_empty()
    }
}
