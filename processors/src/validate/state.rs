//! Per-device validation state.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

/// What a partition remembers of one device: stored sequence numbers (with their device time, for
/// pruning), its valid positions by device time, and valid readings per rate window.
#[derive(Debug, Default, Clone)]
pub struct DeviceState {
    seqs: HashMap<u64, i64>,
    /// Device time ms -> (lat, lng) of valid readings, pruned with the sequence numbers: a new
    /// reading's speed is checked against the readings just before and just after it in device time,
    /// so that a backdated reading cannot jump where the newest one alone would allow. Kept whole for
    /// devices that move (dashcams); installed devices, held near their asserted location, keep the
    /// newest only (the state's size stays what it was for them).
    fixes: BTreeMap<i64, (f64, f64)>,
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
    pub fn accept(
        &mut self,
        seq: u64,
        event_ms: i64,
        (lat, lng): (f64, f64),
        moving: bool,
        window_ms: i64,
    ) {
        if self.seqs.insert(seq, event_ms).is_none() {
            *self
                .windows
                .entry(event_ms.div_euclid(window_ms))
                .or_default() += 1;
        }
        if moving {
            self.fixes.insert(event_ms, (lat, lng));
        } else if self
            .fixes
            .last_key_value()
            .is_none_or(|(t, _)| event_ms >= *t)
        {
            self.fixes.clear();
            self.fixes.insert(event_ms, (lat, lng));
        }
    }

    /// The valid positions nearest to `event_ms` in device time: the one at or before it and the one
    /// at or after it, as `(device time ms, lat, lng)`.
    pub fn neighbours(&self, event_ms: i64) -> impl Iterator<Item = (i64, f64, f64)> + '_ {
        let before = self.fixes.range(..=event_ms).next_back();
        let after = self.fixes.range(event_ms..).next();
        before
            .into_iter()
            .chain(after.filter(|a| Some(a.0) != before.map(|b| b.0)))
            .map(|(t, (lat, lng))| (*t, *lat, *lng))
    }

    /// Drops what is older than `horizon_ms`; returns whether anything is left.
    pub fn prune(&mut self, horizon_ms: i64, window_ms: i64) -> bool {
        self.seqs.retain(|_, t| *t >= horizon_ms);
        self.fixes = self.fixes.split_off(&horizon_ms);
        self.windows
            .retain(|w, _| (*w + 1) * window_ms >= horizon_ms);
        !self.seqs.is_empty()
    }
}
