//! Per-device validation state.
//!
//! Laid out for the common case, a device whose readings arrive in order: its newest sequence number,
//! its newest rate window and, for an installed device, its position sit in the state itself, which
//! the partition's device map holds inline. A reading newer than everything stored is so decided
//! without reading the state's heap memory, which for thousands of devices is a cache miss per
//! structure (the processor's profile, load-tests/RESULTS.md). Older readings search sorted vectors.

use std::collections::BTreeMap;

use hexpulse_schemas::wire::KindName;

use crate::h3bin::LastPoint;

/// What a partition remembers of one device: stored sequence numbers (with their device time, for
/// pruning), its valid positions by device time, and valid readings per rate window; also, so that a
/// record needs one look-up of its device, what the registry said of it and its last point's cells.
#[derive(Debug, Clone)]
pub struct DeviceState {
    /// Stored sequence numbers with their device time, sorted by sequence number.
    seqs: Vec<(u64, i64)>,
    /// The last of `seqs`.
    newest_seq: Option<u64>,
    /// At most the oldest device time in `seqs` (`i64::MAX` when empty): pruning skips a device
    /// with nothing old enough.
    oldest_ms: i64,
    /// Valid readings in the newest rate window (window index = device time / window length).
    newest_window: Option<(i64, u32)>,
    /// Valid readings in the windows before it, sorted by window index.
    older_windows: Vec<(i64, u32)>,
    /// Device time ms -> (lat, lng) of valid readings, pruned with the sequence numbers: a new
    /// reading's speed is checked against the readings just before and just after it in device time,
    /// so that a backdated reading cannot jump where the newest one alone would allow. Kept whole for
    /// devices that move (dashcams). Empty while `installed_fix` holds the position.
    fixes: BTreeMap<i64, (f64, f64)>,
    /// An installed device's position (held near its asserted location): the newest only, kept
    /// here rather than in `fixes`. When it is set, `fixes` is empty.
    installed_fix: Option<(i64, (f64, f64))>,
    /// The registry's entry for the device when a reading of it was last accepted, with the
    /// registry's generation then ([`Registered`]).
    registered: Option<Registered>,
    /// The last valid point's H3 cells ([`crate::h3bin::Binner::cells_at`]).
    pub(crate) last_point: LastPoint,
}

/// What the registry said of a device (its kind and asserted location), valid while the registry's
/// generation ([`hexpulse_common::registry::Registry::generation`]) is the one read before the
/// look-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Registered {
    pub generation: u64,
    pub kind: KindName,
    pub asserted: (f64, f64),
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState {
            seqs: Vec::new(),
            newest_seq: None,
            oldest_ms: i64::MAX,
            newest_window: None,
            older_windows: Vec::new(),
            fixes: BTreeMap::new(),
            installed_fix: None,
            registered: None,
            last_point: LastPoint::default(),
        }
    }
}

impl DeviceState {
    /// What the registry said of the device, if that is still what it says (its `generation`).
    pub fn registered(&self, generation: u64) -> Option<Registered> {
        self.registered.filter(|r| r.generation == generation)
    }

    /// Remembers what the registry said of the device at `registered.generation`.
    pub fn set_registered(&mut self, registered: Registered) {
        self.registered = Some(registered);
    }

    pub fn has_seq(&self, seq: u64) -> bool {
        match self.newest_seq {
            None => false,
            Some(n) if seq >= n => seq == n,
            Some(_) => self.seqs.binary_search_by_key(&seq, |s| s.0).is_ok(),
        }
    }

    pub fn count_in_window(&self, event_ms: i64, window_ms: i64) -> u32 {
        let w = event_ms.div_euclid(window_ms);
        match self.newest_window {
            None => 0,
            Some((n, count)) if w == n => count,
            Some((n, _)) if w > n => 0,
            Some(_) => self
                .older_windows
                .binary_search_by_key(&w, |o| o.0)
                .map_or(0, |i| self.older_windows[i].1),
        }
    }

    /// Stores `seq` with its device time (the last time given, for a sequence number fed again);
    /// returns whether it was new.
    fn insert_seq(&mut self, seq: u64, event_ms: i64) -> bool {
        // `oldest_ms` only ever bounds the stored times from below, which is all pruning needs.
        self.oldest_ms = self.oldest_ms.min(event_ms);
        match self.newest_seq {
            Some(n) if seq <= n => match self.seqs.binary_search_by_key(&seq, |s| s.0) {
                Ok(i) => {
                    self.seqs[i].1 = event_ms;
                    return false;
                }
                Err(at) => self.seqs.insert(at, (seq, event_ms)),
            },
            _ => {
                self.seqs.push((seq, event_ms));
                self.newest_seq = Some(seq);
            }
        }
        true
    }

    /// Counts a valid reading in window `w`.
    fn count(&mut self, w: i64) {
        match &mut self.newest_window {
            None => self.newest_window = Some((w, 1)),
            Some((n, count)) if w == *n => *count += 1,
            Some((n, count)) if w > *n => {
                self.older_windows.push((*n, *count));
                self.newest_window = Some((w, 1));
            }
            Some(_) => match self.older_windows.binary_search_by_key(&w, |o| o.0) {
                Ok(i) => self.older_windows[i].1 += 1,
                Err(i) => self.older_windows.insert(i, (w, 1)),
            },
        }
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
        if self.insert_seq(seq, event_ms) {
            self.count(event_ms.div_euclid(window_ms));
        }
        if moving {
            if let Some((t, p)) = self.installed_fix.take() {
                self.fixes.insert(t, p);
            }
            self.fixes.insert(event_ms, (lat, lng));
        } else {
            let newest = match self.installed_fix {
                Some((t, _)) => Some(t),
                None => self.fixes.last_key_value().map(|(t, _)| *t),
            };
            if newest.is_none_or(|t| event_ms >= t) {
                if !self.fixes.is_empty() {
                    self.fixes.clear();
                }
                self.installed_fix = Some((event_ms, (lat, lng)));
            }
        }
    }

    /// The valid positions nearest to `event_ms` in device time: the one at or before it and the one
    /// at or after it, as `(device time ms, lat, lng)`.
    pub fn neighbours(&self, event_ms: i64) -> impl Iterator<Item = (i64, f64, f64)> + '_ {
        // An installed device's single position is the nearest on one side (or both): once.
        let installed = self.installed_fix.map(|(t, (lat, lng))| (t, lat, lng));
        let (before, after) = if installed.is_some() {
            (None, None)
        } else {
            let before = self.fixes.range(..=event_ms).next_back();
            let after = self.fixes.range(event_ms..).next();
            (before, after.filter(|a| Some(a.0) != before.map(|b| b.0)))
        };
        installed.into_iter().chain(
            before
                .into_iter()
                .chain(after)
                .map(|(t, (lat, lng))| (*t, *lat, *lng)),
        )
    }

    /// Drops what is older than `horizon_ms`; returns whether anything is left.
    pub fn prune(&mut self, horizon_ms: i64, window_ms: i64) -> bool {
        if self.oldest_ms < horizon_ms {
            self.seqs.retain(|(_, t)| *t >= horizon_ms);
            self.newest_seq = self.seqs.last().map(|s| s.0);
            self.oldest_ms = self.seqs.iter().map(|s| s.1).min().unwrap_or(i64::MAX);
        }
        if !self.fixes.is_empty() {
            self.fixes = self.fixes.split_off(&horizon_ms);
        }
        if self.installed_fix.is_some_and(|(t, _)| t < horizon_ms) {
            self.installed_fix = None;
        }
        let keep = |w: i64| (w + 1) * window_ms >= horizon_ms;
        if self.newest_window.is_some_and(|(n, _)| !keep(n)) {
            self.newest_window = None;
            self.older_windows.clear();
        } else {
            self.older_windows.retain(|(w, _)| keep(*w));
        }
        !self.seqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use rand::{Rng, SeedableRng};

    use super::DeviceState;

    /// The state as it was kept before the inline fields: maps for everything.
    #[derive(Default)]
    struct Plain {
        seqs: HashMap<u64, i64>,
        fixes: BTreeMap<i64, (f64, f64)>,
        windows: HashMap<i64, u32>,
    }

    impl Plain {
        fn accept(&mut self, seq: u64, t: i64, p: (f64, f64), moving: bool, window: i64) {
            if self.seqs.insert(seq, t).is_none() {
                *self.windows.entry(t.div_euclid(window)).or_default() += 1;
            }
            if moving {
                self.fixes.insert(t, p);
            } else if self.fixes.last_key_value().is_none_or(|(l, _)| t >= *l) {
                self.fixes.clear();
                self.fixes.insert(t, p);
            }
        }

        fn neighbours(&self, t: i64) -> Vec<(i64, f64, f64)> {
            let before = self.fixes.range(..=t).next_back();
            let after = self.fixes.range(t..).next();
            before
                .into_iter()
                .chain(after.filter(|a| Some(a.0) != before.map(|b| b.0)))
                .map(|(t, (lat, lng))| (*t, *lat, *lng))
                .collect()
        }

        fn prune(&mut self, horizon: i64, window: i64) -> bool {
            self.seqs.retain(|_, t| *t >= horizon);
            self.fixes = self.fixes.split_off(&horizon);
            self.windows.retain(|w, _| (*w + 1) * window >= horizon);
            !self.seqs.is_empty()
        }
    }

    /// Random readings, in order and out of order, of installed and moving devices (a device's kind
    /// may even change), with pruning: every answer equals the plain maps' answer.
    #[test]
    fn answers_equal_those_of_plain_maps() {
        let window = 60_000;
        for seed in 0..200u64 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let (mut state, mut plain) = (DeviceState::default(), Plain::default());
            let mut now = 1_000_000i64;
            let mut seq = 1_000u64;
            let flips = seed % 4 == 0;
            let moving = seed % 3 == 0;
            for _ in 0..rng.random_range(1..300) {
                now += rng.random_range(0..20_000);
                seq += rng.random_range(1..4);
                let back = rng.random_bool(0.2);
                let (s, t) = if back {
                    (
                        seq.saturating_sub(rng.random_range(0..40)),
                        now - rng.random_range(0..600_000),
                    )
                } else {
                    (seq, now)
                };
                let m = if flips { rng.random_bool(0.5) } else { moving };
                let p = (
                    rng.random_range(-80.0..80.0),
                    rng.random_range(-170.0..170.0),
                );
                assert_eq!(
                    state.has_seq(s),
                    plain.seqs.contains_key(&s),
                    "seed {seed} seq {s}"
                );
                let q = t + rng.random_range(-200_000..200_000);
                assert_eq!(
                    state.count_in_window(q, window),
                    plain
                        .windows
                        .get(&q.div_euclid(window))
                        .copied()
                        .unwrap_or(0),
                    "seed {seed} window of {q}"
                );
                assert_eq!(
                    state.neighbours(q).collect::<Vec<_>>(),
                    plain.neighbours(q),
                    "seed {seed} neighbours of {q}"
                );
                state.accept(s, t, p, m, window);
                plain.accept(s, t, p, m, window);
                if rng.random_bool(0.05) {
                    let horizon = now - rng.random_range(0..900_000);
                    assert_eq!(state.prune(horizon, window), plain.prune(horizon, window));
                }
            }
        }
    }
}
