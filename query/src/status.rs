//! Device status: for every device seen in the last `window`, its last heartbeat and last reading,
//! its last location, and its rejections by reason, in a bounded in-memory cache (a last-value
//! cache) that answers `/v1/devices/{key}/status` and `/v1/devices/status?bbox=` without reading
//! the lake per request.
//!
//! The cache follows the lake's Delta tables ([`follow`]): at start it reads each table's snapshot
//! (the files whose partitions can hold rows of the window), then, every `refresh_interval`, only
//! the files that commits since then added with `dataChange = true`. A compaction's files hold rows
//! already read, and are never read again; so every row is folded in once, and the rejection counts
//! are exact. Where the log no longer holds a commit the cache has not read (a service that was
//! behind for longer than the log's retention), that table is read again from its snapshot: the
//! last-value fields are maxima (reading a row twice changes nothing), and the rejection counts are
//! rebuilt from nothing.
//!
//! Status is by the age of the newest valid row (heartbeat, sensor reading or road observation), by
//! ingest's receive time: `online` up to `online_within`, `stale` up to `offline_after`, `offline`
//! past it. Rows that the processors have validated but not yet committed are not in the cache:
//! ages run up to a commit interval high (seconds), which the thresholds (minutes) absorb.
//!
//! Memory is bounded by `max_devices`: past it, the devices quiet for longest are dropped (and
//! counted, [`STATUS_EVICTED`]). Rejection counts are kept per hour and reason, so that the window
//! slides.

mod follow;

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use hexpulse_lake::Lake;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::params::{self, Bbox};

pub use follow::FollowError;

/// Devices in the cache.
pub const STATUS_DEVICES: &str = "hexpulse_query_status_devices";
/// Devices dropped from the cache because it held `max_devices`.
pub const STATUS_EVICTED: &str = "hexpulse_query_status_evicted_total";
/// One refresh of the cache: reading the new files of every table.
pub const STATUS_REFRESH_SECONDS: &str = "hexpulse_query_status_refresh_seconds";
/// Refreshes that failed (the cache keeps what it had, and tries again).
pub const STATUS_REFRESH_ERRORS: &str = "hexpulse_query_status_refresh_errors_total";

const HOUR_MS: i64 = 3_600_000;

/// `[query.status]`: the device status cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// A device whose newest valid row was received at most this long ago is `online`.
    #[serde(with = "humantime_serde")]
    pub online_within: Duration,
    /// Past `online_within` and up to this, `stale`; past it, `offline`.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Devices with no row (valid or rejected) received in this window are unknown (404), and
    /// rejections are counted over it.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// At most this many devices in the cache (about 200 bytes each, more with rejections); past
    /// it, the devices quiet for longest are dropped.
    pub max_devices: usize,
    /// How often the cache reads the lake's new commits.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            online_within: Duration::from_secs(5 * 60),
            offline_after: Duration::from_secs(60 * 60),
            window: Duration::from_secs(7 * 86_400),
            max_devices: 1_000_000,
            refresh_interval: Duration::from_secs(2),
        }
    }
}

impl StatusConfig {
    /// Checks the thresholds' order.
    pub fn check(&self) -> Result<(), String> {
        if self.online_within.is_zero() || self.online_within >= self.offline_after {
            return Err("online_within must be above zero and below offline_after".into());
        }
        if self.offline_after > self.window {
            return Err("offline_after must be at most window".into());
        }
        if self.max_devices == 0 {
            return Err("max_devices must be at least 1".into());
        }
        if self.refresh_interval.is_zero() {
            return Err("refresh_interval must be above zero".into());
        }
        Ok(())
    }

    /// The state of a device whose newest valid row is `age_ms` old.
    pub fn state(&self, age_ms: Option<i64>) -> State {
        match age_ms {
            Some(a) if a <= self.online_within.as_millis() as i64 => State::Online,
            Some(a) if a <= self.offline_after.as_millis() as i64 => State::Stale,
            _ => State::Offline,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Online,
    Stale,
    Offline,
}

impl State {
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "online" => Some(State::Online),
            "stale" => Some(State::Stale),
            "offline" => Some(State::Offline),
            _ => None,
        }
    }
}

/// The device kinds, as the stream tables name them.
pub const KINDS: [&str; 3] = ["heartbeat", "sensor", "road"];

/// A device key: its Ed25519 public key.
pub type Key = [u8; 32];

/// Parses a device key, 64 hexadecimal digits.
pub fn parse_key(s: &str) -> Option<Key> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(s, &mut key).ok()?;
    Some(key)
}

/// When a row was received and when the device says it was made, ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Seen {
    pub(crate) receive_ms: i64,
    pub(crate) event_ms: i64,
}

impl Seen {
    /// Whether this row is newer than `other`: received later, or at the same time but made later
    /// (rows of one request share a receive time), so that the newest row does not depend on the
    /// order files are read in.
    pub(crate) fn newer_than(&self, other: &Seen) -> bool {
        (self.receive_ms, self.event_ms) > (other.receive_ms, other.event_ms)
    }
}

/// Where a device was, by its newest valid row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Place {
    pub(crate) seen: Seen,
    pub(crate) lat: f64,
    pub(crate) lng: f64,
    /// The finest stored H3 cell.
    pub(crate) cell: u64,
}

/// Rejections of one device in one hour (`hour` since the Unix epoch) for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    hour: i32,
    reason: u16,
    count: u32,
}

#[derive(Debug, Clone, Default)]
struct Device {
    /// Index into [`KINDS`], from its valid rows (else its rejections' kind).
    kind: Option<u8>,
    heartbeat: Option<Seen>,
    /// Its newest sensor reading or road observation.
    reading: Option<Seen>,
    place: Option<Place>,
    rejections: Vec<Bucket>,
    /// The newest rejection: receive time and reason.
    last_rejection: Option<(i64, u16)>,
}

impl Device {
    fn last_valid_ms(&self) -> Option<i64> {
        let h = self.heartbeat.map(|s| s.receive_ms);
        let r = self.reading.map(|s| s.receive_ms);
        h.max(r)
    }

    /// The newest row of any kind, valid or rejected.
    fn last_activity_ms(&self) -> i64 {
        let v = self.last_valid_ms().unwrap_or(i64::MIN);
        v.max(self.last_rejection.map_or(i64::MIN, |r| r.0))
    }
}

/// The newest valid row of a device in some rows of one table (a file).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ValidRow {
    pub(crate) seen: Seen,
    pub(crate) place: Place,
}

/// A device's rejections in some rows of the `rejected` table.
#[derive(Debug, Clone, Default)]
pub(crate) struct RejectedRows {
    pub(crate) kind: Option<u8>,
    /// (hour, reason) → count.
    pub(crate) counts: HashMap<(i32, String), u32>,
    pub(crate) last: Option<(i64, String)>,
}

/// What the cache holds, and how far it has read each table.
#[derive(Debug, Default)]
struct Inner {
    devices: HashMap<Key, Device>,
    /// Reason codes, interned.
    reasons: Vec<String>,
    /// The version of each table (heartbeat, sensor, road, rejected) read up to.
    versions: [Option<i64>; 4],
    /// When the last refresh ended, ms.
    as_of_ms: Option<i64>,
}

impl Inner {
    fn reason(&mut self, r: &str) -> u16 {
        match self.reasons.iter().position(|x| x == r) {
            Some(i) => i as u16,
            None => {
                self.reasons.push(r.to_string());
                (self.reasons.len() - 1) as u16
            }
        }
    }

    /// Folds in the newest valid rows of table `kind` (an index into [`KINDS`]).
    fn fold_valid(&mut self, kind: u8, rows: HashMap<Key, ValidRow>) {
        for (key, row) in rows {
            let d = self.devices.entry(key).or_default();
            d.kind = Some(kind);
            let slot = if kind == 0 {
                &mut d.heartbeat
            } else {
                &mut d.reading
            };
            if slot.is_none_or(|s| row.seen.newer_than(&s)) {
                *slot = Some(row.seen);
            }
            if d.place.is_none_or(|p| row.seen.newer_than(&p.seen)) {
                d.place = Some(row.place);
            }
        }
    }

    /// Folds in rejections; with `fresh`, every count held before is dropped first (the table is
    /// being read again from its snapshot).
    fn fold_rejected(&mut self, rows: HashMap<Key, RejectedRows>, fresh: bool) {
        if fresh {
            for d in self.devices.values_mut() {
                d.rejections.clear();
                d.last_rejection = None;
            }
        }
        for (key, rej) in rows {
            let mut buckets: Vec<Bucket> = rej
                .counts
                .iter()
                .map(|((hour, reason), count)| Bucket {
                    hour: *hour,
                    reason: self.reason(reason),
                    count: *count,
                })
                .collect();
            let last = rej.last.map(|(ms, r)| (ms, self.reason(&r)));
            let d = self.devices.entry(key).or_default();
            if d.kind.is_none() {
                d.kind = rej.kind;
            }
            for b in buckets.drain(..) {
                match d
                    .rejections
                    .iter_mut()
                    .find(|x| x.hour == b.hour && x.reason == b.reason)
                {
                    Some(x) => x.count = x.count.saturating_add(b.count),
                    None => d.rejections.push(b),
                }
            }
            // The newest; of rows received at once, the greatest reason (as the files' reader).
            let reasons = &self.reasons;
            let key_of = |(ms, r): (i64, u16)| (ms, reasons[r as usize].as_str());
            if let Some(l) = last
                && d.last_rejection.is_none_or(|x| key_of(l) > key_of(x))
            {
                d.last_rejection = Some(l);
            }
        }
    }

    /// Drops what fell out of the window, then the quietest devices past `max_devices`; returns
    /// how many devices the bound dropped.
    fn prune(&mut self, cutoff_ms: i64, max_devices: usize) -> usize {
        let first_hour = cutoff_ms.div_euclid(HOUR_MS) as i32;
        self.devices.retain(|_, d| {
            d.rejections.retain(|b| b.hour >= first_hour);
            if d.last_rejection.is_some_and(|r| r.0 < cutoff_ms) {
                d.last_rejection = None;
            }
            d.last_activity_ms() >= cutoff_ms
        });
        let over = self.devices.len().saturating_sub(max_devices);
        if over > 0 {
            let mut ages: Vec<i64> = self
                .devices
                .values()
                .map(Device::last_activity_ms)
                .collect();
            let (_, cut, _) = ages.select_nth_unstable(over - 1);
            let cut = *cut;
            // Every device quieter than the cut goes, then as many at the cut as are still over.
            self.devices.retain(|_, d| d.last_activity_ms() >= cut);
            let mut left = self.devices.len().saturating_sub(max_devices);
            self.devices.retain(|_, d| {
                if left > 0 && d.last_activity_ms() == cut {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
        }
        over
    }
}

/// The device status cache.
pub struct StatusCache {
    cfg: StatusConfig,
    lake: Lake,
    /// The rules' allowed lateness: how far event dates (the stream tables' partitions) may lie
    /// before receive times.
    lateness_ms: i64,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for StatusCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCache")
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// One device in a box.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    pub device_key: String,
    pub kind: Option<&'static str>,
    pub state: State,
    pub last_seen: Option<String>,
    pub age_s: Option<f64>,
    pub lat: f64,
    pub lng: f64,
    pub h3_cell: String,
}

/// Why a box query has no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum BoxError {
    /// The cache has not read the lake yet.
    Loading,
    /// More devices than the limit.
    TooMany(usize),
}

impl StatusCache {
    pub fn new(cfg: StatusConfig, lake: Lake, lateness_ms: i64) -> StatusCache {
        StatusCache {
            cfg,
            lake,
            lateness_ms,
            inner: RwLock::new(Inner::default()),
        }
    }

    pub fn config(&self) -> &StatusConfig {
        &self.cfg
    }

    /// When the cache last read the lake (ms); `None` until its first read ends.
    pub fn as_of_ms(&self) -> Option<i64> {
        self.inner.read().expect("lock").as_of_ms
    }

    /// Devices in the cache.
    pub fn len(&self) -> usize {
        self.inner.read().expect("lock").devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn freshness(&self, inner: &Inner) -> Value {
        let versions: serde_json::Map<String, Value> = follow::TABLES
            .iter()
            .zip(inner.versions)
            .map(|(t, v)| (t.to_string(), json!(v)))
            .collect();
        json!({
            "as_of": inner.as_of_ms.map(params::rfc3339),
            "lake_versions": versions,
        })
    }

    fn thresholds(&self) -> Value {
        json!({
            "online_within_s": self.cfg.online_within.as_secs_f64(),
            "offline_after_s": self.cfg.offline_after.as_secs_f64(),
            "window_s": self.cfg.window.as_secs_f64(),
        })
    }

    /// When the newest heartbeat of `key` was received (ms): `Ok(None)` for a device without one in
    /// the window, `Err(())` while the cache has not read the lake yet.
    #[allow(clippy::result_unit_err)]
    pub fn last_heartbeat_ms(&self, key: &Key) -> Result<Option<i64>, ()> {
        let inner = self.inner.read().expect("lock");
        if inner.as_of_ms.is_none() {
            return Err(());
        }
        Ok(inner
            .devices
            .get(key)
            .and_then(|d| d.heartbeat)
            .map(|s| s.receive_ms))
    }

    /// The status of one device at `now_ms`: `Ok(None)` for a device without any row in the
    /// window, `Err(())` while the cache has not read the lake yet. `located` says whether its
    /// location may be shown (road devices' locations are raw dashcam positions).
    #[allow(clippy::result_unit_err)]
    pub fn device(
        &self,
        key: &Key,
        now_ms: i64,
        located: impl Fn(Option<&str>) -> bool,
    ) -> Result<Option<Value>, ()> {
        let inner = self.inner.read().expect("lock");
        if inner.as_of_ms.is_none() {
            return Err(());
        }
        let Some(d) = inner.devices.get(key) else {
            return Ok(None);
        };
        let kind = d.kind.map(|k| KINDS[k as usize]);
        let age = |ms: i64| (now_ms - ms) as f64 / 1000.0;
        let seen = |s: Option<Seen>| {
            s.map(|s| {
                json!({
                    "receive_time": params::rfc3339(s.receive_ms),
                    "event_time": params::rfc3339(s.event_ms),
                    "age_s": age(s.receive_ms),
                })
            })
        };
        let last = d.last_valid_ms();
        let place = match d.place {
            Some(p) if located(kind) => json!({
                "lat": p.lat,
                "lng": p.lng,
                "h3_cell": format!("{:x}", p.cell),
                "receive_time": params::rfc3339(p.seen.receive_ms),
            }),
            Some(_) => json!("withheld: road devices' locations need the raw group"),
            None => Value::Null,
        };
        let mut by_reason: std::collections::BTreeMap<&str, u64> = Default::default();
        for b in &d.rejections {
            *by_reason
                .entry(inner.reasons[b.reason as usize].as_str())
                .or_default() += u64::from(b.count);
        }
        let total: u64 = by_reason.values().sum();
        Ok(Some(json!({
            "device_key": hex::encode(key),
            "kind": kind,
            "state": self.cfg.state(last.map(|l| now_ms - l)),
            "last_seen": last.map(params::rfc3339),
            "age_s": last.map(age),
            "last_heartbeat": seen(d.heartbeat),
            "last_reading": seen(d.reading),
            "location": place,
            "rejections": {
                "total": total,
                "by_reason": by_reason,
                "last": d.last_rejection.map(|(ms, r)| json!({
                    "receive_time": params::rfc3339(ms),
                    "reason": inner.reasons[r as usize],
                })),
            },
            "thresholds": self.thresholds(),
            "freshness": self.freshness(&inner),
        })))
    }

    /// The devices whose last location lies in `bbox` (and whose kind and state match, where
    /// given), at most `limit`, sorted by key. Devices whose location may not be shown are left
    /// out.
    pub fn in_box(
        &self,
        bbox: &Bbox,
        kind: Option<&str>,
        state: Option<State>,
        now_ms: i64,
        limit: usize,
        located: impl Fn(Option<&str>) -> bool,
    ) -> Result<(Vec<Located>, Value), BoxError> {
        let inner = self.inner.read().expect("lock");
        if inner.as_of_ms.is_none() {
            return Err(BoxError::Loading);
        }
        let mut out = Vec::new();
        let mut found = 0usize;
        for (key, d) in &inner.devices {
            let Some(p) = d.place else { continue };
            let k = d.kind.map(|k| KINDS[k as usize]);
            if !bbox.contains(p.lat, p.lng) || !located(k) || kind.is_some_and(|w| Some(w) != k) {
                continue;
            }
            let last = d.last_valid_ms();
            let s = self.cfg.state(last.map(|l| now_ms - l));
            if state.is_some_and(|w| w != s) {
                continue;
            }
            found += 1;
            if found > limit {
                continue;
            }
            out.push(Located {
                device_key: hex::encode(key),
                kind: k,
                state: s,
                last_seen: last.map(params::rfc3339),
                age_s: last.map(|l| (now_ms - l) as f64 / 1000.0),
                lat: p.lat,
                lng: p.lng,
                h3_cell: format!("{:x}", p.cell),
            });
        }
        if found > limit {
            return Err(BoxError::TooMany(found));
        }
        out.sort_by(|a, b| a.device_key.cmp(&b.device_key));
        let meta = json!({
            "thresholds": self.thresholds(),
            "freshness": self.freshness(&inner),
        });
        Ok((out, meta))
    }

    /// Reads the lake's new commits into the cache, every `refresh_interval` until `stop`.
    pub async fn run(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let period = self.cfg.refresh_interval;
        // The first read at once (the endpoints answer 503 until it ends), then every period.
        self.refresh_round().await;
        hexpulse_common::tasks::every(period, stop, move || {
            let cache = self.clone();
            async move { cache.refresh_round().await }
        })
        .await;
    }

    /// One refresh, measured and logged.
    async fn refresh_round(&self) {
        let started = std::time::Instant::now();
        match self.refresh().await {
            Ok(()) => {
                metrics::histogram!(STATUS_REFRESH_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::gauge!(STATUS_DEVICES).set(self.len() as f64);
            }
            Err(e) => {
                metrics::counter!(STATUS_REFRESH_ERRORS).increment(1);
                tracing::warn!(error = %e, "device status refresh failed; keeping what the cache holds");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(receive_ms: i64, lat: f64) -> ValidRow {
        let seen = Seen {
            receive_ms,
            event_ms: receive_ms - 5,
        };
        ValidRow {
            seen,
            place: Place {
                seen,
                lat,
                lng: 13.4,
                cell: 0x08c1_f05a_36d4_5dff,
            },
        }
    }

    fn key(i: u8) -> Key {
        [i; 32]
    }

    #[test]
    fn states_by_age() {
        let c = StatusConfig {
            online_within: Duration::from_secs(10),
            offline_after: Duration::from_secs(60),
            ..StatusConfig::default()
        };
        assert_eq!(c.state(Some(0)), State::Online);
        assert_eq!(c.state(Some(10_000)), State::Online);
        assert_eq!(c.state(Some(10_001)), State::Stale);
        assert_eq!(c.state(Some(60_000)), State::Stale);
        assert_eq!(c.state(Some(60_001)), State::Offline);
        assert_eq!(c.state(None), State::Offline);
        assert!(c.check().is_ok());
        let bad = StatusConfig {
            online_within: Duration::from_secs(60),
            offline_after: Duration::from_secs(10),
            ..StatusConfig::default()
        };
        assert!(bad.check().is_err());
        assert!(parse_key(&"ab".repeat(32)).is_some());
        assert!(parse_key(&"AB".repeat(32)).is_some());
        assert!(parse_key("ab").is_none());
        assert!(parse_key(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn newest_rows_win_and_folding_twice_changes_nothing() {
        let mut inner = Inner::default();
        let rows = HashMap::from([(key(1), valid(2_000, 52.0))]);
        inner.fold_valid(0, rows.clone());
        inner.fold_valid(0, HashMap::from([(key(1), valid(1_000, 51.0))]));
        inner.fold_valid(0, rows);
        let d = &inner.devices[&key(1)];
        assert_eq!(d.heartbeat.unwrap().receive_ms, 2_000);
        assert_eq!(d.place.unwrap().lat, 52.0);
        assert_eq!(d.reading, None);
        // A sensor row moves the reading and the place, not the heartbeat.
        inner.fold_valid(1, HashMap::from([(key(1), valid(3_000, 53.0))]));
        let d = &inner.devices[&key(1)];
        assert_eq!(d.heartbeat.unwrap().receive_ms, 2_000);
        assert_eq!(d.reading.unwrap().receive_ms, 3_000);
        assert_eq!(d.place.unwrap().lat, 53.0);
        assert_eq!(d.last_valid_ms(), Some(3_000));
    }

    fn rejected(counts: &[(i32, &str, u32)], last: (i64, &str)) -> RejectedRows {
        RejectedRows {
            kind: Some(0),
            counts: counts
                .iter()
                .map(|(h, r, n)| ((*h, r.to_string()), *n))
                .collect(),
            last: Some((last.0, last.1.to_string())),
        }
    }

    #[test]
    fn rejections_add_up_and_a_fresh_read_starts_over() {
        let mut inner = Inner::default();
        let r = rejected(
            &[(10, "bad_signature", 2), (11, "stale", 1)],
            (11 * HOUR_MS, "stale"),
        );
        inner.fold_rejected(HashMap::from([(key(2), r.clone())]), false);
        inner.fold_rejected(HashMap::from([(key(2), r.clone())]), false);
        let total =
            |i: &Inner| -> u32 { i.devices[&key(2)].rejections.iter().map(|b| b.count).sum() };
        assert_eq!(total(&inner), 6);
        inner.fold_rejected(HashMap::from([(key(2), r)]), true);
        assert_eq!(total(&inner), 3);
        assert_eq!(inner.devices[&key(2)].kind, Some(0));
        // The window slides by the hour: hour 10 goes, hour 11 stays.
        assert_eq!(inner.prune(11 * HOUR_MS, 10), 0);
        assert_eq!(total(&inner), 1);
        // Past the window the device is gone.
        inner.prune(12 * HOUR_MS, 10);
        assert!(inner.devices.is_empty());
    }

    #[test]
    fn the_bound_drops_the_quietest_devices() {
        let mut inner = Inner::default();
        let rows: HashMap<Key, ValidRow> = (0..10u8)
            .map(|i| (key(i), valid(1_000 + i64::from(i), 52.0)))
            .collect();
        inner.fold_valid(0, rows);
        assert_eq!(inner.prune(0, 7), 3);
        assert_eq!(inner.devices.len(), 7);
        for i in 0..3 {
            assert!(!inner.devices.contains_key(&key(i)), "device {i} stayed");
        }
        // Ties at the cut: the quieter device goes whatever the map's order, then one of the tied.
        let mut inner = Inner::default();
        let rows: HashMap<Key, ValidRow> = (0..20u8)
            .map(|i| (key(i), valid(if i == 0 { 500 } else { 1_000 }, 52.0)))
            .collect();
        inner.fold_valid(0, rows);
        assert_eq!(inner.prune(0, 18), 2);
        assert_eq!(inner.devices.len(), 18);
        assert!(!inner.devices.contains_key(&key(0)));
    }
}
